// Trials: a virtualised table of every trial (server-side sort, filter and paging), live status and
// metric updates, column chooser, kill / re-run / compare of selected trials, and a custom trial form.
import { h, fill, button, fmtNum, fmtDuration, fmtValue, fmtTime, fmtClock, measure, statusPill, throttle, toast, api,
  TRIAL_STATES, STATUS_COLORS } from '../util.js';
import { VirtualTable } from '../table.js';
import { makeChart, curvesOption } from '../charts.js';

// Parameters come right after the result; the columns after them are narrow (compact times), the
// message column is shown once a trial has one, and the actions column only while some trial has an action.
const HEAD_COLUMNS = ['select', 'seq', 'id', 'status', 'value'];
const TAIL_COLUMNS = ['message', 'duration', 'latest', 'started', 'actions', 'ended', 'exit_code'];
const HIDDEN_BY_DEFAULT = new Set(['ended', 'exit_code']);
const ACTION_STATES = ['RUNNING', 'WAITING', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED'];

export async function mount(root, ctx, route) {
  const exp = ctx.exp;
  const params = route.params;
  const state = {
    sort: { key: params.get('sort') || 'seq', desc: params.get('order') === 'desc' },
    status: new Set((params.get('status') || '').split(',').filter((s) => TRIAL_STATES.includes(s))),
    filters: params.getAll('filter'),
    q: params.get('q') || '',
    selected: new Set(),
  };
  const paramNames = exp.parameter_names || [];
  const metricKeys = (exp.metric_keys || []).filter((k) => k !== 'default');
  const allCols = [...HEAD_COLUMNS, ...paramNames.map((n) => `param.${n}`), ...metricKeys.map((k) => `metric.${k}`), ...TAIL_COLUMNS];
  // the user's own choices ({column: shown}); every other column follows the experiment
  const chosen = (() => {
    try {
      const v = JSON.parse(localStorage.getItem('hpo-columns') || 'null');
      return v && !Array.isArray(v) && typeof v === 'object' ? v : {};
    } catch (e) { return {}; }
  })();
  function byDefault(c, e) {
    const counts = e.trial_counts || {};
    if (c === 'message') return counts.FAILED > 0 || e.progress.trials_without_result > 0 || e.progress.trials_waiting_with_reason > 0;
    if (c === 'actions') return !ctx.readOnly && ACTION_STATES.some((s) => counts[s] > 0);
    return !HIDDEN_BY_DEFAULT.has(c);
  }
  const isShown = (c, e = ctx.exp) => ['select', 'seq', 'id', 'status'].includes(c) || (c in chosen ? chosen[c] : byDefault(c, e));
  let bestId = exp.best_trial ? exp.best_trial.id : null;

  const disposers = [];
  const countLabel = h('span.count-label', { 'data-testid': 'trial-count' }, '…');
  const selLabel = h('span.sel-label', '');
  const filterInput = h('input.filter-input', { type: 'text', placeholder: 'filter: value<0.5, param.lr>=1e-3, param.act==relu, message~oom',
    value: state.filters.join(', '), 'aria-label': 'filter', 'data-testid': 'filter-input' });
  const searchInput = h('input.search-input', { type: 'search', placeholder: 'search id or parameters', value: state.q, 'aria-label': 'search' });
  const statusBox = h('div.status-filter', { role: 'group', 'aria-label': 'status filter' },
    TRIAL_STATES.map((s) => h('button.chip', { type: 'button', 'aria-pressed': String(state.status.has(s)), 'data-status': s,
      title: `show only ${s} (toggle)`, onclick: (e) => {
        if (state.status.has(s)) state.status.delete(s); else state.status.add(s);
        e.currentTarget.setAttribute('aria-pressed', String(state.status.has(s)));
        apply();
      } }, h('span.dot', { style: { background: STATUS_COLORS[s] } }), s.toLowerCase().replace('_', ' '))));
  const colMenu = h('div.menu', { hidden: true, 'data-testid': 'column-menu' });
  const compareBox = h('div.compare', { hidden: true });
  const formBox = h('div.custom-form', { hidden: true });
  const tableHost = h('div.table-host');
  // actions on trials: disabled once the experiment cannot change (it may end while the page is open)
  const actionButtons = [
    button('Kill selected', { icon: 'kill', kind: 'danger', testid: 'kill-selected', onclick: () => killSelected() }),
    button('Re-run selected', { icon: 'rerun', onclick: () => rerun([...state.selected]) }),
    button('Re-run all failed', { icon: 'rerun', testid: 'rerun-failed', onclick: () => rerun(null) }),
    button('New trial', { icon: 'plus', onclick: () => showForm() }),
  ];
  const lockActions = () => { for (const b of actionButtons) b.disabled = ctx.readOnly; };
  lockActions();
  const toolbar = h('div.toolbar',
    statusBox,
    h('form.filter-form', { onsubmit: (e) => { e.preventDefault(); apply(); } }, filterInput, searchInput,
      h('button.btn', { type: 'submit' }, 'Apply')),
  );
  const actions = h('div.toolbar.actions',
    countLabel, selLabel,
    h('div.spacer'),
    h('div.menu-wrap', button('Columns', { icon: 'columns', onclick: () => { colMenu.hidden = !colMenu.hidden; }, testid: 'columns-button' }), colMenu),
    button('Compare', { icon: 'compare', testid: 'compare-button', title: 'compare the selected trials', onclick: () => compare() }),
    ...actionButtons,
  );
  root.append(h('section.card.trials-card', toolbar, actions, compareBox, formBox, tableHost));

  // -- columns ------------------------------------------------------------------------------------
  function colDef(key) {
    if (key === 'select') {
      return { key, title: '', width: 34, header: () => h('input', { type: 'checkbox', title: 'clear the selection',
        checked: state.selected.size > 0, onchange: (e) => { if (!e.target.checked) { state.selected.clear(); updateSel(); table.schedule(true); } else e.target.checked = false; } }),
        render: (r) => h('input', { type: 'checkbox', 'aria-label': `select trial ${r.id}`, checked: state.selected.has(r.id), 'data-select': r.id,
          onchange: (e) => { if (e.target.checked) state.selected.add(r.id); else state.selected.delete(r.id); updateSel(); } }) };
    }
    const fit = { width: 40, fit: true };
    if (key === 'seq') return { key, title: '#', ...fit, sort: 'seq', render: (r) => String(r.sequence_id) };
    if (key === 'id') return { key, title: 'id', ...fit, sort: 'id', render: (r) => h('a', { href: ctx.link('trial', r.id), title: 'open the trial' }, r.id) };
    if (key === 'status') {
      // as wide as the longest status, so that a row changing status never clips it
      return { key, title: 'status', width: Math.max(...TRIAL_STATES.map((s) => measure(statusPill(s)))) + 17, sort: 'status',
        render: (r) => { const pill = statusPill(r.status); if (r.message) pill.title = r.message; return pill; } };
    }
    if (key === 'value') {
      return { key, title: 'value', ...fit, sort: 'value', defaultDesc: exp.maximize, tip: 'final result (the tuned metric)',
        render: (r) => [r.id === bestId ? h('span.best-mark', { title: 'the best trial', 'data-testid': 'best-marker' }, '★') : null,
          h('span.num', { title: r.value === null ? '' : String(r.value) }, fmtNum(r.value))] };
    }
    if (key === 'duration') return { key, title: 'duration', ...fit, sort: 'duration', render: (r) => h('span.num', fmtDuration(r.duration)) };
    if (key === 'latest') return { key, title: 'latest / steps', ...fit, tip: 'latest intermediate result and number of results',
      render: (r) => (r.steps ? h('span.num', { title: String(r.latest) }, `${fmtNum(r.latest)} · ${r.steps}`) : '') };
    if (key === 'started') return { key, title: 'started', ...fit, sort: 'started_at', render: (r) => h('span', { title: fmtTime(r.started_at) }, fmtClock(r.started_at)) };
    if (key === 'ended') return { key, title: 'ended', ...fit, sort: 'ended_at', render: (r) => h('span', { title: fmtTime(r.ended_at) }, fmtClock(r.ended_at)) };
    if (key === 'message') {
      return { key, title: 'message', width: 220, flex: true, sort: 'message',
        render: (r) => h(`span${r.status === 'FAILED' ? '.failed' : ''}`, { title: r.message || '' }, (r.message || '').split('\n')[0]) };
    }
    if (key === 'exit_code') return { key, title: 'exit', ...fit, sort: 'exit_code', render: (r) => String(r.exit_code ?? '') };
    if (key === 'actions') {
      return { key, title: 'actions', ...fit, render: (r) => {
        if (ctx.readOnly) return '';
        if (r.status === 'RUNNING' || r.status === 'WAITING') {
          return button('Kill', { icon: 'kill', kind: 'small danger', testid: `kill-${r.id}`, onclick: () => kill(r.id) });
        }
        if (['FAILED', 'USER_CANCELED', 'SYS_CANCELED'].includes(r.status)) {
          return button('Re-run', { icon: 'rerun', kind: 'small', onclick: () => rerun([r.id]) });
        }
        return '';
      } };
    }
    if (key.startsWith('param.')) {
      const name = key.slice(6);
      return { key, title: name, ...fit, maxWidth: 240, sort: key, tip: `parameter ${name}`, render: (r) => {
        const v = (r.parameters || {})[name];
        return h('span', { title: JSON.stringify(v) ?? '', class: typeof v === 'number' ? 'num' : '' }, fmtValue(v));
      } };
    }
    if (key.startsWith('metric.')) {
      const name = key.slice(7);
      return { key, title: name, ...fit, maxWidth: 200, sort: key, tip: `final result key ${name}`, render: (r) => {
        const v = r.final && typeof r.final === 'object' ? r.final[name] : undefined;
        return h('span.num', { title: String(v ?? '') }, fmtValue(v));
      } };
    }
    return { key, title: key, width: 100, render: () => '' };
  }
  const columns = () => allCols.filter((c) => isShown(c)).map(colDef);

  function renderColMenu() {
    fill(colMenu, h('div.menu-title', 'Columns'), allCols.filter((c) => c !== 'select').map((c) => h('label.menu-item',
      h('input', { type: 'checkbox', checked: isShown(c), disabled: ['seq', 'id', 'status'].includes(c), 'data-col': c, onchange: (e) => {
        chosen[c] = e.target.checked;
        try { localStorage.setItem('hpo-columns', JSON.stringify(chosen)); } catch (err) { /* private mode */ }
        table.setColumns(columns());
      } }), ' ', c.replace(/^param\./, 'param: ').replace(/^metric\./, 'metric: '))));
  }

  // -- data ---------------------------------------------------------------------------------------
  function query(offset, limit) {
    const q = new URLSearchParams({ limit: String(limit), offset: String(offset), sort: state.sort.key, order: state.sort.desc ? 'desc' : 'asc' });
    if (state.status.size) q.set('status', [...state.status].join(','));
    for (const f of state.filters) q.append('filter', f);
    if (state.q) q.set('q', state.q);
    return q;
  }
  async function fetchRows(offset, limit) {
    const res = await api(`${ctx.base}/trials?${query(offset, limit)}`, { raw: true });
    const rows = await res.json();
    return { rows, total: Number(res.headers.get('X-Total-Count') || rows.length) };
  }
  const table = new VirtualTable(tableHost, {
    columns: columns(), sort: state.sort, fetch: fetchRows, rowKey: (r) => r.id,
    rowClass: (r) => [state.selected.has(r.id) ? 'selected' : '', r.id === bestId ? 'best' : ''].join(' '),
    onSort: (s) => { state.sort = s; table.sort = s; table.setColumns(columns()); apply(); },
    onTotal: (n) => { countLabel.textContent = `${n.toLocaleString()} ${n === 1 ? 'trial' : 'trials'}${state.status.size || state.filters.length || state.q ? ' match' : ''}`; },
    onLoad: () => { if (!window.__hpo.ready.trials) { window.__hpo.ready.trials = performance.now(); performance.mark('hpo-trials-interactive'); } },
    onRowClick: (r, e) => {
      if (e.target.closest('a, button, input')) return;
      if (e.detail === 2) location.hash = ctx.link('trial', r.id);
    },
    onError: (err) => { countLabel.textContent = err.message; countLabel.classList.add('error'); },
    emptyText: 'No trial matches.',
  });
  disposers.push(() => table.destroy());
  renderColMenu();

  function apply() {
    state.filters = filterInput.value.split(/[,;](?![^"']*["'])/).map((s) => s.trim()).filter(Boolean);
    state.q = searchInput.value.trim();
    countLabel.classList.remove('error');
    const q = query(0, 0);
    q.delete('limit'); q.delete('offset');
    if (q.get('sort') === 'seq') q.delete('sort');
    if (q.get('order') === 'asc') q.delete('order');
    const hash = `${ctx.prefix}/trials${q.toString() ? '?' + q : ''}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
    table.reset();
  }

  function updateSel() {
    selLabel.textContent = state.selected.size ? `${state.selected.size} selected` : '';
  }

  // -- actions ------------------------------------------------------------------------------------
  async function kill(id) {
    try { await api(`${ctx.base}/trials/${encodeURIComponent(id)}/kill`, { method: 'POST' }); toast(`Trial ${id} killed`); } catch (err) { toast(err.message, 'error'); }
  }
  async function killSelected() {
    const ids = [...state.selected];
    if (!ids.length) { toast('Select running trials first'); return; }
    for (const id of ids) {
      const row = table.byKey.get(id);
      if (row && !['RUNNING', 'WAITING'].includes(row.status)) continue;
      await kill(id);
    }
  }
  async function rerun(ids) {
    if (ids && !ids.length) { toast('Select failed trials first'); return; }
    try {
      const res = await api(`${ctx.base}/trials/rerun`, { method: 'POST', body: ids ? { trial_ids: ids } : {} });
      toast(res.queued.length ? `Re-running ${res.queued.length} trial(s)` : 'Nothing to re-run (only failed or cancelled trials not re-run yet)');
    } catch (err) { toast(err.message, 'error'); }
  }

  function showForm() {
    formBox.hidden = !formBox.hidden;
    if (formBox.hidden) return;
    const space = exp.config.search_space || {};
    const best = exp.best_trial ? exp.best_trial.parameters : {};
    const inputs = {};
    const form = h('form', { onsubmit: async (e) => {
      e.preventDefault();
      const parameters = {};
      try {
        for (const [name, input] of Object.entries(inputs)) parameters[name] = JSON.parse(input.value);
      } catch (err) { toast('Each value must be JSON (numbers as 0.1, strings as "relu")', 'error'); return; }
      try { await api(`${ctx.base}/trials`, { method: 'POST', body: { parameters } }); toast('Trial queued'); formBox.hidden = true; } catch (err) { toast(err.message, 'error'); }
    } },
    h('h3', 'New trial with given parameters'),
    h('div.form-grid', Object.entries(space).map(([name, spec]) => {
      inputs[name] = h('input', { type: 'text', value: JSON.stringify(best[name] ?? (spec._value ? spec._value[0] : null)), 'aria-label': name });
      return h('label.field', h('span', name), inputs[name], h('small', `${spec._type} ${JSON.stringify(spec._value)}`));
    })),
    h('div.row', h('button.btn.primary', { type: 'submit' }, 'Queue trial'), button('Cancel', { onclick: () => { formBox.hidden = true; } })));
    fill(formBox, form);
  }

  let cmpChart = null;
  async function compare() {
    const ids = [...state.selected].slice(0, 20);
    if (ids.length < 1) { toast('Select two or more trials to compare'); return; }
    compareBox.hidden = false;
    const details = await Promise.all(ids.map((id) => api(`${ctx.base}/trials/${encodeURIComponent(id)}`)));
    const names = [...new Set(details.flatMap((d) => Object.keys(d.parameters || {})))];
    const chartEl = h('div.chart.chart-sm', { 'data-testid': 'compare-chart' });
    const diff = (n) => new Set(details.map((d) => JSON.stringify((d.parameters || {})[n]))).size > 1;
    fill(compareBox, 
      h('div.card-head', h('h3', `Compare ${ids.length} trials`), button('Close', { onclick: () => { compareBox.hidden = true; } })),
      h('div.compare-grid', chartEl, h('div.scroll-x', h('table.simple.compare-table', { 'data-testid': 'compare-table' },
        h('thead', h('tr', h('th', ''), details.map((d) => h('th', h('a', { href: ctx.link('trial', d.id) }, `#${d.sequence_id} ${d.id}`))))),
        h('tbody',
          h('tr', h('th', 'status'), details.map((d) => h('td', statusPill(d.status)))),
          h('tr', h('th', 'value'), details.map((d) => h('td.num', fmtNum(d.value)))),
          h('tr', h('th', 'duration'), details.map((d) => h('td.num', fmtDuration(d.duration)))),
          names.map((n) => h(`tr${diff(n) ? '.differs' : ''}`, { title: diff(n) ? 'values differ' : 'same value' }, h('th', n),
            details.map((d) => h('td', fmtValue((d.parameters || {})[n]))))))))));
    if (cmpChart) cmpChart.dispose();
    cmpChart = await makeChart(chartEl);
    cmpChart.chart.setOption(curvesOption(details.map((d) => ({ id: d.id, seq: d.sequence_id,
      steps: d.metrics.filter((m) => m.kind === 'intermediate').map((m) => m.step),
      values: d.metrics.filter((m) => m.kind === 'intermediate').map((m) => m.value) }))), true);
  }
  disposers.push(() => cmpChart && cmpChart.dispose());

  // -- live ---------------------------------------------------------------------------------------
  const refresh = throttle(() => table.refresh(), 400);
  disposers.push(() => refresh.cancel());
  disposers.push(ctx.bus.on('events', (events) => {
    let structural = false;
    for (const [kind, d] of events) {
      if (kind === 'trial') {
        const known = table.patch(d.id, { status: d.status });
        if (!known || state.status.size || state.sort.key !== 'seq') structural = true;
        else if (d.status !== 'RUNNING') structural = true;  // timestamps, exit code, message
      } else if (kind === 'metric') {
        if (d.kind === 'final') { table.patch(d.id, { value: d.value }); structural = true; } else {
          const row = table.byKey.get(d.id);
          if (row) table.patch(d.id, { latest: d.value, steps: Math.max(row.steps || 0, d.step || 0) });
        }
      }
    }
    if (structural) refresh();
  }));
  disposers.push(ctx.bus.on('reset', () => refresh()));
  let shownKeys = columns().map((c) => c.key).join();
  disposers.push(ctx.bus.on('exp', (e) => {
    lockActions();
    const best = e.best_trial ? e.best_trial.id : null;
    const keys = allCols.filter((c) => isShown(c, e)).join();
    const moved = best !== bestId;
    bestId = best;
    if (keys !== shownKeys) { shownKeys = keys; table.setColumns(columns()); renderColMenu(); } else if (moved) table.schedule(true);
  }));
  const onDoc = (e) => { if (!colMenu.hidden && !e.target.closest('.menu-wrap')) colMenu.hidden = true; };
  document.addEventListener('click', onDoc);
  disposers.push(() => document.removeEventListener('click', onDoc));
  return { table, destroy() { for (const d of disposers) d(); } };
}
