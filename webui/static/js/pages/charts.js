// Charts: metric per trial, intermediate curves overlaid (with quartile band over all trials),
// parallel coordinates, parameter importance, durations. Data comes in bulk (one request per chart).
import { h, throttle } from '../util.js';
import { makeChart, MetricChart, ImportanceCard, curvesOption, parallelOption, durationOption } from '../charts.js';

export async function mount(root, ctx) {
  const exp = ctx.exp;
  const disposers = [];
  const charts = {};
  const el = {
    curves: h('div.chart.chart-md', { 'data-testid': 'chart-curves' }),
    parallel: h('div.chart.chart-lg', { 'data-testid': 'chart-parallel' }),
    duration: h('div.chart.chart-sm', { 'data-testid': 'chart-duration' }),
  };
  const metric = new MetricChart(ctx, 'chart-history');
  const importance = new ImportanceCard(ctx, exp.parameter_names || []);
  disposers.push(() => metric.dispose(), () => importance.dispose());
  const logCurves = h('input', { type: 'checkbox', onchange: () => drawCurves() });
  const bands = h('input', { type: 'checkbox', checked: true, onchange: () => drawCurves() });
  const topN = h('select', { onchange: () => drawCurves(), 'aria-label': 'number of curves' },
    [10, 20, 50, 100, 200].map((n) => h('option', { value: n, selected: n === 20 }, `best ${n}`)));
  const parNote = h('p.note', 'Drag along an axis to select a range; click the axis again to clear it. Colour: the metric.');
  root.append(
    h('section.card', h('div.card-head', h('h2.card-title', 'Metric per trial'), ...metric.controls()), metric.legend, metric.el),
    h('section.card', h('div.card-head', h('h2.card-title', 'Intermediate results'), topN, h('label.toggle', bands, ' median & quartiles of all trials'),
      h('label.toggle', logCurves, ' log scale')), h('p.note', 'The best trials by final result plus the running ones; hover a line to highlight it.'), el.curves),
    h('section.card', h('h2.card-title', 'Hyper-parameters (parallel coordinates)'), parNote, el.parallel),
    h('div.grid.two',
      importance.card,
      h('section.card', h('h2.card-title', 'Durations'), h('p.note', 'Per trial, coloured by status as on the metric chart.'), el.duration)),
  );

  async function chart(name) {
    if (!charts[name]) { charts[name] = await makeChart(el[name]); disposers.push(() => charts[name].dispose()); }
    return charts[name].chart;
  }
  let data = null;
  async function loadData() { data = await ctx.get('/chart-data'); return data; }
  async function drawHistory() { await metric.update(data); }
  async function drawCurves() {
    const res = await ctx.get(`/metrics?top=${topN.value}&bands=${bands.checked}`);
    (await chart('curves')).setOption(curvesOption(res.trials, { logY: logCurves.checked, bands: bands.checked ? res.bands : null }), true);
  }
  async function drawParallel() {
    const names = [...new Set([...(exp.parameter_names || []), ...Object.keys(data.params)])].filter((n) => data.params[n]);
    const c = await chart('parallel');
    if (!names.length || !data.value.some((v) => v !== null)) { c.clear(); parNote.textContent = 'No finished trial yet.'; return; }
    c.setOption(parallelOption(data, { maximize: exp.maximize, names }), true);
  }
  async function drawDuration() { (await chart('duration')).setOption(durationOption(data), true); }

  async function drawAll() {
    await loadData();
    await Promise.all([drawHistory(), drawParallel(), drawDuration(), drawCurves(), importance.load()].map((p) => p.catch((e) => console.error(e))));
  }
  const redraw = throttle(() => drawAll().catch(() => {}), 3000);
  disposers.push(() => redraw.cancel());
  disposers.push(ctx.bus.on('events', (events) => { if (events.some(([k]) => k === 'trial' || k === 'metric')) redraw(); }));
  disposers.push(ctx.bus.on('reset', () => redraw()));
  await drawAll();
  window.__hpo.ready.charts = performance.now();
  return { destroy() { for (const d of disposers) d(); } };
}
