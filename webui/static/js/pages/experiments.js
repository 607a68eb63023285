// Experiments: every experiment in the registry with its status, trials against the budget, best
// value and tuner. Finished ones open here read-only; running ones link to their own dashboard.
import { h, clear, fill, card, fmtNum, fmtDuration, fmtAgo, fmtTime, statusPill, api, icon } from '../util.js';

export async function mount(root) {
  const box = h('div');
  root.append(card('All experiments', h('p.note', 'Every experiment in the registry ($HPO_HOME). Open a stored one to browse it read-only.'), box));
  const rows = await api('/api/v1/experiments');
  const now = Date.now() / 1000;
  fill(box, h('table.simple.experiments', { 'data-testid': 'experiments-table' },
    h('thead', h('tr', ['name', 'id', 'status', 'trials', 'best', 'tuner', 'started', 'ran for', ''].map((t) => h('th', t)))),
    h('tbody', rows.map((e) => {
      const done = e.trial_counts ? ['SUCCEEDED', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED', 'EARLY_STOPPED'].reduce((s, k) => s + (e.trial_counts[k] || 0), 0) : 0;
      const pct = e.max_trial_number ? Math.min(100, (100 * done) / e.max_trial_number) : null;
      let action;
      if (e.current) action = h('a.btn.small', { href: '#/overview' }, 'this dashboard');
      else if (e.running && e.port) {
        action = h('span', h('a.btn.small', { href: `#/x/${encodeURIComponent(e.id)}/overview`, 'data-testid': `open-${e.id}` }, 'Open read-only'), ' ',
          h('a.btn.small', { href: `${location.protocol}//${location.hostname}:${e.port}/`, target: '_blank', rel: 'noopener' }, icon('open'), ' live dashboard'));
      } else if (e.status !== 'MISSING') action = h('a.btn.small', { href: `#/x/${encodeURIComponent(e.id)}/overview`, 'data-testid': `open-${e.id}` }, 'Open read-only');
      return h('tr', { 'data-id': e.id },
        h('td', e.name || h('span.note', '(no name)')),
        h('td', h('code', e.id)),
        h('td', statusPill(e.status), e.error ? h('div.note', e.error) : null),
        h('td', e.trial_counts ? h('div.mini', h('span', `${done}${e.max_trial_number ? ' / ' + e.max_trial_number : ''}`),
          pct !== null ? h('div.bar.thin', h('div.bar-fill', { style: { width: `${pct}%` } })) : null,
          e.trial_counts.FAILED ? h('span.note.failed', ` ${e.trial_counts.FAILED} failed`) : null) : ''),
        h('td.num', { title: e.best_value === null || e.best_value === undefined ? '' : String(e.best_value) }, fmtNum(e.best_value)),
        h('td', e.tuner || ''),
        h('td', { title: fmtTime(e.started_at || e.created_at) }, fmtAgo(e.started_at || e.created_at, now)),
        h('td.num', fmtDuration(e.run_seconds || (e.running && e.started_at ? now - e.started_at : null))),
        h('td', action));
    }))));
  if (!rows.length) box.append(h('p.note', 'No experiment registered.'));
  window.__hpo.ready.experiments = performance.now();
  return { destroy() {} };
}
