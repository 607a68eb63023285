// Experiments: every experiment in the registry with its project, status (and, in red, why it failed), trials
// against the budget, best value and tuner; a project filter (kept in the URL: #/experiments?project=NAME).
// Finished ones open here read-only; running ones link to their own dashboard.
import { h, fill, card, fmtNum, fmtDuration, fmtAgo, fmtTime, statusPill, api, icon, errorReason, trialsOfMax } from '../util.js';

const COLUMNS = ['name', 'project', 'id', 'status', 'trials', 'best', 'tuner', 'started', 'ran for', ''];
const NO_PROJECT = '\u0000none';  // the filter's value for experiments without a project

export async function mount(root, ctx, route) {
  const box = h('div');
  const select = h('select', { 'data-testid': 'project-filter', 'aria-label': 'project' });
  root.append(card('All experiments', h('div.toolbar', h('p.note', 'Every experiment in the registry ($HPO_HOME). Open a stored one to browse it read-only.'),
    h('label', 'Project ', select)), box));
  const all = await api('/api/v1/experiments');
  const projects = [...new Set(all.map((e) => e.project).filter((p) => p))].sort();
  fill(select, h('option', { value: '' }, 'All projects'), projects.map((p) => h('option', { value: p }, p)),
    all.some((e) => !e.project) && projects.length ? h('option', { value: NO_PROJECT }, '(no project)') : null);
  const asked = route && route.params ? route.params.get('project') : null;
  select.value = projects.includes(asked) ? asked : '';
  const draw = () => {
    const chosen = select.value;
    const rows = chosen === '' ? all : all.filter((e) => (chosen === NO_PROJECT ? !e.project : e.project === chosen));
    history.replaceState(null, '', chosen && chosen !== NO_PROJECT ? `#/experiments?project=${encodeURIComponent(chosen)}` : '#/experiments');
    table(box, rows);
  };
  select.addEventListener('change', draw);
  draw();
  window.__hpo.ready.experiments = performance.now();
  return { destroy() {} };
}

function table(box, rows) {
  const now = Date.now() / 1000;
  fill(box, h('table.simple.experiments', { 'data-testid': 'experiments-table' },
    h('thead', h('tr', COLUMNS.map((t) => h('th', t)))),
    h('tbody', rows.map((e) => {
      const done = e.trial_counts ? ['SUCCEEDED', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED', 'EARLY_STOPPED'].reduce((s, k) => s + (e.trial_counts[k] || 0), 0) : 0;
      const pct = e.max_trial_number ? Math.min(100, (100 * done) / e.max_trial_number) : null;
      const count = trialsOfMax(done, e.max_trial_number);
      let action;
      if (e.current) action = h('a.btn.small', { href: '#/overview' }, 'this dashboard');
      else if (e.running && e.port) {
        action = h('span', h('a.btn.small', { href: `#/x/${encodeURIComponent(e.id)}/overview`, 'data-testid': `open-${e.id}` }, 'Open read-only'), ' ',
          h('a.btn.small', { href: `${location.protocol}//${location.hostname}:${e.port}/`, target: '_blank', rel: 'noopener' }, icon('open'), ' live dashboard'));
      } else if (e.status !== 'MISSING') action = h('a.btn.small', { href: `#/x/${encodeURIComponent(e.id)}/overview`, 'data-testid': `open-${e.id}` }, 'Open read-only');
      const failure = e.status === 'ERROR' && e.message ? e.message : e.error;
      return [h(`tr${failure ? '.has-reason' : ''}`, { 'data-id': e.id },
        h('td', e.name || h('span.note', '(no name)')),
        h('td', { 'data-testid': 'project' }, e.project || ''),
        h('td', h('code', e.id)),
        h('td', statusPill(e.status)),
        h('td', e.trial_counts ? h('div.mini', h('span', { title: count.title, 'data-testid': 'trials-count' }, count.text),
          pct !== null ? h(`div.bar.thin${count.over ? '.over' : ''}`, h('div.bar-fill', { style: { width: `${pct}%` } })) : null,
          e.trial_counts.FAILED ? h('span.note.failed', ` ${e.trial_counts.FAILED} failed`) : null) : ''),
        h('td.num', { title: e.best_value === null || e.best_value === undefined ? '' : String(e.best_value) }, fmtNum(e.best_value)),
        h('td', { title: e.tuner || '', 'data-testid': 'tuner' }, e.tuner_label || ''),
        h('td', { title: fmtTime(e.started_at || e.created_at) }, fmtAgo(e.started_at || e.created_at, now)),
        h('td.num', fmtDuration(e.run_seconds || (e.running && e.started_at ? now - e.started_at : null))),
        h('td', action)),
      failure ? h('tr.reason-row', { 'data-reason-for': e.id }, h('td', { colspan: COLUMNS.length }, errorReason(failure, `reason-${e.id}`))) : null];
    }))));
  if (!rows.length) box.append(h('p.note', 'No experiment registered.'));
}
