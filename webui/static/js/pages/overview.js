// Overview: why it failed (in red), status, progress against the limits, time, best trial, the controls
// while it runs; the metric per trial beside parameter importance; the top trials with every parameter.
import { h, clear, fill, card, kv, button, fmtNum, fmtDuration, fmtTime, fmtClock, fmtValue, statusPill, throttle, toast,
  api, errorReason, trialsOfMax, TRIAL_STATES, STATUS_COLORS } from '../util.js';
import { MetricChart, ImportanceCard } from '../charts.js';
import { bestCheckpoint } from '../checkpoints.js';

export async function mount(root, ctx) {
  const disposers = [];
  const reason = h('div');
  const info = h('div.ov-info');
  const progress = h('div.ov-progress');
  const best = h('div.ov-best');
  const controls = h('div.ov-controls');
  const controlsCard = card('Controls', controls);
  const metric = new MetricChart(ctx, 'best-so-far-chart');
  const importance = new ImportanceCard(ctx, ctx.exp.parameter_names || [], { limit: 10 });
  const top = h('div.ov-top');
  disposers.push(() => metric.dispose(), () => importance.dispose());
  root.append(
    reason,
    h('div.grid.ov-grid',
      card('Experiment', info),
      card('Progress', progress),
      card('Best trial', best),
      controlsCard),
    h('div.grid.ov-grid2',
      h('section.card', h('div.card-head', h('h2.card-title', 'Metric per trial and best so far'), ...metric.controls()),
        metric.legend, metric.el),
      importance.card),
    h('section.card', h('h2.card-title', 'Top trials'), top),
  );

  const editing = new Set();

  function renderInfo(exp) {
    const failed = exp.status === 'ERROR' && exp.message;
    fill(reason, failed ? errorReason(exp.message) : null);
    reason.hidden = !failed;
    const when = (ts) => h('span', { title: fmtTime(ts) }, fmtClock(ts));
    fill(info, kv([
      ['Name', exp.name || '—'],
      ['ID', h('code', exp.id)],
      ['Status', h('span', statusPill(exp.status), exp.message && !failed ? h('span.msg', ' ' + exp.message) : null)],
      ['Tuner', h('span', { title: exp.tuner || '' }, exp.tuner_label || '—')],
      ['Service', exp.training_service || '—'],
      ['Started', when(exp.started_at || exp.created_at)],
      exp.ended_at ? ['Ended', when(exp.ended_at)] : null,
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
    const count = trialsOfMax(p.trials_done, maxT);
    let label = `${p.trials_done} trials finished (no limit)`;
    if (maxT) label = count.over ? `${count.text}: trials finished` : `${p.trials_done} of ${maxT} trials finished`;
    fill(progress,
      bar(p.trials_done, maxT, h('span', { title: count.title }, label), 'progress-trials'),
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
    if (!b) best.append(h('p.note', 'No final result yet.'));
    else {
      best.append(
        h('div.big-value', { title: String(b.value), 'data-testid': 'best-value' }, fmtNum(b.value)),
        h('p', h('a', { href: ctx.link('trial', b.id) }, `trial #${b.sequence_id} (${b.id})`), ` · ${exp.maximize ? 'maximize' : 'minimize'}`),
        kv(Object.entries(b.parameters || {}).map(([k, v]) => [k, h('span', { title: JSON.stringify(v) }, fmtValue(v))])),
      );
    }
    const ckpt = bestCheckpoint(ctx, exp.best_checkpoint);
    if (ckpt) best.append(ckpt);
  }

  function field(label, key, value, type, hint) {
    const input = h('input', { type, name: key, value: value ?? '', placeholder: hint, 'data-testid': `edit-${key}`,
      onfocus: () => editing.add(key), onblur: () => editing.delete(key), min: type === 'number' ? 1 : undefined,
      'aria-label': label });
    return h('label.field', h('span', label), input);
  }

  function renderControls(exp, force = false) {
    controlsCard.hidden = ctx.readOnly;  // the limits of an experiment that cannot change are under Progress
    if (ctx.readOnly || (!force && editing.size)) return;  // do not overwrite what the user is typing
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
    h('div.row', h('button.btn.primary', { type: 'submit', 'data-testid': 'save-config' }, 'Save'),
      button('Stop experiment', { icon: 'stop', kind: 'danger', testid: 'stop-experiment', onclick: async () => {
        if (!confirm('Stop the experiment? Running trials are cancelled (and re-run on resume).')) return;
        try { await api(ctx.base + '/experiment/stop', { method: 'POST' }); toast('Stopping…'); ctx.refreshExp(); } catch (err) { toast(err.message, 'error'); }
      } })));
    fill(controls, form);
  }

  async function loadTop(exp) {
    const rows = await ctx.get(`/trials?sort=value&order=${exp.maximize ? 'desc' : 'asc'}&limit=10&filter=${encodeURIComponent('value!=null')}`);
    const names = exp.parameter_names || [];
    fill(top, h('div.scroll-x', h('table.simple.top-trials', { 'data-testid': 'top-trials' },
      h('thead', h('tr', h('th', '#'), h('th.num', 'value'), ...names.map((n) => h('th', { title: n }, n)), h('th', 'status'), h('th.num', 'duration'))),
      h('tbody', rows.map((r, i) => h(`tr${i === 0 ? '.best' : ''}`, { 'data-id': r.id },
        h('td', h('a', { href: ctx.link('trial', r.id) }, `#${r.sequence_id}`)),
        h('td.num', { title: String(r.value) }, i === 0 ? h('span.best-mark', { title: 'the best trial', 'data-testid': 'best-marker' }, '★ ') : null, fmtNum(r.value)),
        ...names.map((n) => h('td', { title: JSON.stringify(r.parameters[n]) ?? '' }, fmtValue(r.parameters[n]))),
        h('td', statusPill(r.status)),
        h('td.num', fmtDuration(r.duration))))))));
    if (!rows.length) top.append(h('p.note', 'No final result yet.'));
  }

  async function drawChart() { await metric.update(await ctx.get('/chart-data')); }

  function renderAll(exp) {
    renderInfo(exp); renderProgress(exp); renderBest(exp); renderControls(exp);
  }
  renderAll(ctx.exp);
  renderControls(ctx.exp, true);
  disposers.push(ctx.bus.on('exp', renderAll));
  disposers.push(ctx.bus.on('tick', (exp) => renderProgress(exp)));
  const slow = throttle(() => { drawChart().catch(() => {}); loadTop(ctx.exp).catch(() => {}); }, 1500);
  const slower = throttle(() => importance.load().catch(() => {}), 10000);
  disposers.push(ctx.bus.on('events', (events) => {
    if (events.some(([k, d]) => (k === 'metric' && d.kind === 'final') || k === 'trial')) { slow(); slower(); }
  }));
  disposers.push(ctx.bus.on('reset', () => { slow(); slower(); }));
  disposers.push(() => { slow.cancel(); slower.cancel(); });
  importance.load().catch((e) => console.error(e));  // not waited for: the page is ready without it
  await Promise.all([loadTop(ctx.exp), drawChart()].map((p) => p.catch((e) => console.error(e))));
  window.__hpo.ready.overview = performance.now();
  return { destroy() { for (const d of disposers) d(); } };
}
