// Overview: status, progress against the limits, time, best trial, best-so-far curve, top trials,
// importance, and the controls (concurrency / max trials / max duration, stop).
import { h, clear, fill, card, kv, button, fmtNum, fmtDuration, fmtTime, fmtValue, statusPill, throttle, toast,
  api, TRIAL_STATES, STATUS_COLORS } from '../util.js';
import { makeChart, historyOption, importanceOption } from '../charts.js';

export async function mount(root, ctx) {
  const disposers = [];
  const info = h('div.ov-info');
  const progress = h('div.ov-progress');
  const best = h('div.ov-best');
  const controls = h('div.ov-controls');
  const chartEl = h('div.chart.chart-md', { 'data-testid': 'best-so-far-chart' });
  const impEl = h('div.chart.chart-sm');
  const impNote = h('p.note', 'computing…');
  const top = h('div.ov-top');
  const logY = h('input', { type: 'checkbox', onchange: () => drawChart() });
  root.append(
    h('div.grid.ov-grid',
      card('Experiment', info),
      card('Progress', progress),
      card('Best trial', best),
      card('Controls', controls)),
    h('div.grid.ov-grid2',
      h('section.card', h('div.card-head', h('h2.card-title', 'Metric per trial and best so far'),
        h('label.toggle', logY, ' log scale')), chartEl),
      h('section.card', h('h2.card-title', 'Top trials'), top)),
    h('section.card', h('h2.card-title', 'Parameter importance'), impNote, impEl),
  );

  let chart = null, impChart = null, chartData = null;
  const editing = new Set();

  function renderInfo(exp) {
    fill(info, kv([
      ['Name', exp.name || '—'],
      ['ID', h('code', exp.id)],
      ['Status', h('span', statusPill(exp.status), exp.message ? h('span.msg', ' ' + exp.message) : null)],
      ['Tuner', exp.tuner || '—'],
      ['Training service', exp.training_service || '—'],
      ['Started', fmtTime(exp.started_at || exp.created_at)],
      exp.ended_at ? ['Ended', fmtTime(exp.ended_at)] : null,
      ['Folder', h('code.path', exp.directory)],
    ]));
  }

  function bar(value, max, label, testid) {
    const pct = max ? Math.min(100, (100 * value) / max) : 0;
    return h('div.bar-wrap', { 'data-testid': testid },
      h('div.bar-label', label),
      h('div.bar', { role: 'progressbar', 'aria-valuenow': Math.round(pct), 'aria-valuemin': 0, 'aria-valuemax': 100 },
        h('div.bar-fill', { style: { width: `${max ? pct : 0}%` } })));
  }

  function renderProgress(exp) {
    const p = exp.progress;
    const c = exp.trial_counts;
    const maxT = p.max_trial_number;
    const maxD = p.max_experiment_duration_seconds;
    fill(progress, 
      bar(p.trials_done, maxT, maxT ? `${p.trials_done} of ${maxT} trials finished` : `${p.trials_done} trials finished (no limit)`, 'progress-trials'),
      bar(exp.elapsed_seconds, maxD, maxD ? `${fmtDuration(exp.elapsed_seconds)} of ${fmtDuration(maxD)}` +
        (exp.live ? ` · ${fmtDuration(exp.remaining_seconds)} left` : ' (ended)')
        : `${fmtDuration(exp.elapsed_seconds)} elapsed (no time limit)`, 'progress-time'),
      h('div.counts', { 'data-testid': 'status-counts' }, TRIAL_STATES.filter((s) => c[s] || ['RUNNING', 'SUCCEEDED', 'FAILED'].includes(s)).map((s) =>
        h('a.count', { href: `${ctx.prefix}/trials?status=${s}`, title: `show ${s} trials`, 'data-status': s },
          h('span.dot', { style: { background: STATUS_COLORS[s] } }), h('b', String(c[s] || 0)), ' ', s.toLowerCase().replace('_', ' ')))),
      h('p.note', `${c.RUNNING || 0} running of ${p.trial_concurrency} allowed at once`),
    );
  }

  function renderBest(exp) {
    const b = exp.best_trial;
    clear(best);
    if (!b) { best.append(h('p.note', 'No final result yet.')); return; }
    best.append(
      h('div.big-value', { title: String(b.value), 'data-testid': 'best-value' }, fmtNum(b.value)),
      h('p', h('a', { href: ctx.link('trial', b.id) }, `trial #${b.sequence_id} (${b.id})`), ` · ${exp.maximize ? 'maximize' : 'minimize'}`),
      kv(Object.entries(b.parameters || {}).map(([k, v]) => [k, h('span', { title: JSON.stringify(v) }, fmtValue(v))])),
    );
  }

  function field(label, key, value, type, hint) {
    const input = h('input', { type, name: key, value: value ?? '', placeholder: hint, 'data-testid': `edit-${key}`,
      onfocus: () => editing.add(key), onblur: () => editing.delete(key), min: type === 'number' ? 1 : undefined,
      disabled: ctx.readOnly, 'aria-label': label });
    return h('label.field', h('span', label), input);
  }

  function renderControls(exp, force = false) {
    if (!force && editing.size) return;  // do not overwrite what the user is typing
    const cfg = exp.config;
    const form = h('form.controls', { onsubmit: async (e) => {
      e.preventDefault();
      const fd = new FormData(form);
      const body = {};
      const conc = fd.get('trial_concurrency'), maxT = fd.get('max_trial_number'), dur = String(fd.get('max_experiment_duration') || '').trim();
      if (conc !== String(cfg.trial_concurrency)) body.trial_concurrency = Number(conc);
      if (maxT !== String(cfg.max_trial_number ?? '')) body.max_trial_number = maxT === '' ? null : Number(maxT);
      if (dur !== String(cfg.max_experiment_duration ?? '')) body.max_experiment_duration = dur === '' ? null : (/^\d+(\.\d+)?$/.test(dur) ? Number(dur) : dur);
      if (!Object.keys(body).length) { toast('Nothing changed'); return; }
      try {
        await api(ctx.base + '/experiment', { method: 'PATCH', body });
        toast(`Updated ${Object.keys(body).join(', ')}`);
        editing.clear();
        await ctx.loadExp();
      } catch (err) { toast(err.message, 'error'); }
    } },
    field('Concurrency', 'trial_concurrency', cfg.trial_concurrency, 'number'),
    field('Max trials', 'max_trial_number', cfg.max_trial_number, 'number', 'no limit'),
    field('Max duration', 'max_experiment_duration', cfg.max_experiment_duration, 'text', 'e.g. 2h, 30m; empty: none'),
    h('div.row', h('button.btn.primary', { type: 'submit', disabled: ctx.readOnly, 'data-testid': 'save-config' }, 'Save'),
      button('Stop experiment', { icon: 'stop', kind: 'danger', disabled: ctx.readOnly, testid: 'stop-experiment', onclick: async () => {
        if (!confirm('Stop the experiment? Running trials are cancelled (and re-run on resume).')) return;
        try { await api(ctx.base + '/experiment/stop', { method: 'POST' }); toast('Stopping…'); ctx.refreshExp(); } catch (err) { toast(err.message, 'error'); }
      } })));
    fill(controls, form);
    if (ctx.readOnly) controls.append(h('p.note', 'Read-only: the experiment is not running here.'));
  }

  async function loadTop(exp) {
    const rows = await ctx.get(`/trials?sort=value&order=${exp.maximize ? 'desc' : 'asc'}&limit=10&filter=${encodeURIComponent('value!=null')}`);
    const names = (exp.parameter_names || []).slice(0, 3);
    fill(top, h('table.simple', { 'data-testid': 'top-trials' },
      h('thead', h('tr', h('th', '#'), h('th', 'value'), ...names.map((n) => h('th', n)), h('th', 'duration'))),
      h('tbody', rows.map((r) => h('tr',
        h('td', h('a', { href: ctx.link('trial', r.id) }, `#${r.sequence_id}`)),
        h('td.num', { title: String(r.value) }, fmtNum(r.value)),
        ...names.map((n) => h('td', { title: JSON.stringify(r.parameters[n]) }, fmtValue(r.parameters[n]))),
        h('td.num', fmtDuration(r.duration)))))));
    if (!rows.length) top.append(h('p.note', 'No final result yet.'));
  }

  async function drawChart() {
    chartData = await ctx.get('/chart-data');
    if (!chart) { const c = await makeChart(chartEl); chart = c.chart; disposers.push(() => c.dispose()); }
    chart.setOption(historyOption(chartData, { maximize: ctx.exp.maximize, logY: logY.checked }), true);
  }

  async function drawImportance() {
    const imp = await ctx.get('/importance');
    impNote.textContent = imp.importances.length ? `${imp.method} · ${imp.n} trials` : (imp.note || '');
    if (!imp.importances.length) { impEl.style.display = 'none'; return; }
    impEl.style.display = '';
    impEl.style.height = `${Math.max(120, 28 * imp.importances.length + 40)}px`;
    if (!impChart) { const c = await makeChart(impEl); impChart = c.chart; disposers.push(() => c.dispose()); }
    impChart.setOption(importanceOption(imp), true);
  }

  function renderAll(exp) {
    renderInfo(exp); renderProgress(exp); renderBest(exp); renderControls(exp);
  }
  renderAll(ctx.exp);
  renderControls(ctx.exp, true);
  disposers.push(ctx.bus.on('exp', renderAll));
  disposers.push(ctx.bus.on('tick', (exp) => renderProgress(exp)));
  const slow = throttle(() => { drawChart().catch(() => {}); loadTop(ctx.exp).catch(() => {}); }, 1500);
  const slower = throttle(() => drawImportance().catch(() => {}), 10000);
  disposers.push(ctx.bus.on('events', (events) => {
    if (events.some(([k, d]) => (k === 'metric' && d.kind === 'final') || k === 'trial')) { slow(); slower(); }
  }));
  disposers.push(ctx.bus.on('reset', () => { slow(); slower(); }));
  disposers.push(() => { slow.cancel(); slower.cancel(); });
  drawImportance().catch((e) => console.error(e));  // may take a moment (a forest is fitted); not waited for
  await Promise.all([loadTop(ctx.exp), drawChart()].map((p) => p.catch((e) => console.error(e))));
  window.__hpo.ready.overview = performance.now();
  return { destroy() { for (const d of disposers) d(); } };
}
