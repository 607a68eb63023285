// Chart helpers on the vendored Apache ECharts (webui/static/vendor/echarts, loaded on first use).
import { h, fill, escapeHtml, fmtNum, STATUS_COLORS } from './util.js';

let loading = null;

/** Load the vendored ECharts once (a classic script from this server; nothing from the internet). */
export function loadECharts() {
  if (window.echarts) return Promise.resolve(window.echarts);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = '/static/vendor/echarts/echarts.min.js';
      s.onload = () => resolve(window.echarts);
      s.onerror = () => reject(new Error('could not load the chart library'));
      document.head.append(s);
    });
  }
  return loading;
}

/** A chart in `el` that resizes with it; returns {chart, dispose()}. */
export async function makeChart(el) {
  const echarts = await loadECharts();
  const chart = echarts.init(el, null, { renderer: 'canvas' });
  const ro = new ResizeObserver(() => chart.resize());
  ro.observe(el);
  return { chart, dispose() { ro.disconnect(); chart.dispose(); } };
}

const AXIS = { axisLine: { lineStyle: { color: '#c5ccd8' } }, axisLabel: { color: '#4a5568' },
  splitLine: { lineStyle: { color: '#edf0f5' } }, nameTextStyle: { color: '#4a5568' } };

export const baseGrid = { left: 56, right: 24, top: 28, bottom: 40, containLabel: false };

export function tip(lines) {
  return lines.filter(Boolean).map((l) => escapeHtml(l)).join('<br>');
}

// Trials without a final value that still belong on the metric chart: crosses in a lane under it.
const LANE = { FAILED: 'failed', SUCCEEDED: 'no result' };
const NO_VALUE = 'no value';
const BEST = 'best so far';
const BEST_COLOR = '#f08c00';

/** The series of the metric chart: trials with a final value by status, trials that failed or finished without
 *  one (for the lane), and the best so far (over trial numbers or time); each with its colour and points.
 *  Past a few thousand trials the data is a sample (the best, the worst, the longest, the running ones and each
 *  stretch's lowest and highest): then `data.summary` has the best so far over every trial and how many trials
 *  each series stands for (`total`). */
function historySeries(data, { maximize, logY = false, xTime = false }) {
  const groups = new Map();
  const add = (key, label, color, lane, item) => {
    if (!groups.has(key)) groups.set(key, { key, label, color, lane, points: [] });
    groups.get(key).points.push(item);
  };
  const valued = [];
  for (let i = 0; i < data.count; i++) {
    const st = data.status[i];
    const x = xTime ? 1000 * (data.end[i] || data.start[i] || data.created[i]) : data.seq[i];
    const item = { x, v: data.value[i], id: data.id[i], seq: data.seq[i], status: st, end: data.end[i] };
    if (item.v !== null && item.v !== undefined) {
      if (logY && item.v <= 0) continue;
      valued.push(item);
      add(st, st.toLowerCase().replace('_', ' '), STATUS_COLORS[st] || '#2f6fde', false, item);
    } else if (LANE[st] && data.end[i]) {
      add(`${st}-lane`, LANE[st], st === 'FAILED' ? STATUS_COLORS.FAILED : '#718096', true, item);
    }
  }
  valued.sort((a, b) => a.x - b.x);
  let best = [];
  const summary = data.summary;
  if (summary && summary.best) {
    best = (xTime ? summary.best.time : summary.best.seq).filter((p) => !logY || p[1] > 0);
  } else {
    let cur = null;
    for (const p of valued) {
      if (cur === null || (maximize ? p.v > cur : p.v < cur)) cur = p.v;
      best.push([p.x, cur]);
    }
  }
  const order = [...Object.keys(STATUS_COLORS), 'FAILED-lane', 'SUCCEEDED-lane'];
  const series = [...groups.values()].sort((a, b) => order.indexOf(a.key) - order.indexOf(b.key));
  if (summary && summary.groups) for (const g of series) g.total = summary.groups[g.key] ?? g.points.length;
  series.push({ key: BEST, label: BEST, color: BEST_COLOR, line: true, points: best });
  return series;
}

/** The ECharts option for historySeries (series named by key; those in `hidden` left empty); trials without a
 *  value go in a lane of their own under the plot, on the same x axis, never at a made-up metric value. */
function historyOption(series, { logY = false, xTime = false, hidden = new Set() } = {}) {
  const points = series.filter((g) => !g.line);
  const many = points.reduce((n, g) => n + g.points.length, 0);
  const valued = points.some((g) => !g.lane && g.points.length);
  const lane = points.some((g) => g.lane && g.points.length);
  const xs = points.flatMap((g) => g.points.map((p) => p.x));
  const x = { ...AXIS, ...(xTime ? { type: 'time' } : { type: 'value', minInterval: 1 }),
    min: xs.length ? Math.min(...xs) : undefined, max: xs.length ? Math.max(...xs) : undefined };
  const name = { name: xTime ? 'time' : 'trial', nameLocation: 'middle', nameGap: 26 };
  return {
    animation: false,
    // fixed bounds, so that the lane lines up with the plot whatever the labels' widths
    grid: (lane ? [{ ...baseGrid, bottom: 66 }, { left: baseGrid.left, bottom: 40, height: 16 }] : [{ ...baseGrid }])
      .map((g) => ({ ...g, right: 30, top: g.height ? undefined : 30, outerBoundsMode: 'none' })),
    tooltip: { trigger: 'item', formatter: (p) => {
      if (p.seriesName === BEST) return tip([`best so far: ${fmtNum(p.data[1])}`]);
      const d = p.data[2];
      return tip([`trial #${d.seq} (${d.id})`, p.seriesName.endsWith('-lane')
        ? `${d.status.toLowerCase()}, no final result` : `value ${fmtNum(d.v)} · ${d.status.toLowerCase()}`,
      d.end ? `ended ${fmtClockShort(d.end)}` : '', 'click to open']);
    } },
    xAxis: lane ? [{ ...x, gridIndex: 0, axisLabel: { show: false } }, { ...x, ...name, gridIndex: 1, splitLine: { show: false } }]
      : [{ ...x, ...name }],
    yAxis: [{ type: logY ? 'log' : 'value', name: valued ? 'metric' : 'metric (no final result yet)', scale: true, ...AXIS,
      nameTextStyle: { ...AXIS.nameTextStyle, align: 'left' },
      axisLabel: { show: valued, color: '#4a5568', formatter: (v) => fmtNum(v, 4) } },
    lane ? { type: 'category', gridIndex: 1, data: [NO_VALUE], ...AXIS, axisTick: { show: false },
      axisLabel: { color: '#4a5568', fontSize: 11 } } : null].filter(Boolean),
    dataZoom: [{ type: 'inside', xAxisIndex: lane ? [0, 1] : 0 }, { type: 'inside', yAxisIndex: 0 }],
    series: series.map((g) => {
      const data = hidden.has(g.key) ? [] : g.points;
      if (g.line) {
        return { id: g.key, name: g.key, type: 'line', step: 'end', data, showSymbol: false,
          lineStyle: { color: g.color, width: 2 }, itemStyle: { color: g.color }, z: 3 };
      }
      return { id: g.key, name: g.key, type: 'scatter', data: data.map((p) => [p.x, g.lane ? NO_VALUE : p.v, p]),
        xAxisIndex: g.lane ? 1 : 0, yAxisIndex: g.lane ? 1 : 0, cursor: 'pointer',
        symbol: g.lane ? 'path://M2,0 L5,3 L8,0 L10,2 L7,5 L10,8 L8,10 L5,7 L2,10 L0,8 L3,5 L0,2 Z' : 'circle',
        symbolSize: g.lane ? 9 : many > 3000 ? 3 : 6, large: many > 2000, itemStyle: { color: g.color, opacity: g.lane ? 0.9 : 0.75 } };
    }),
  };
}

function fmtClockShort(ts) {
  return new Date(ts * 1000).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

/** The metric per trial and the best so far, with a legend that says what each colour is (click: hide or
 *  show it), the x axis by trial number or by time, a log scale, and a click on a trial opening it. */
export class MetricChart {
  constructor(ctx, testid) {
    this.ctx = ctx;
    this.hidden = new Set();
    this.el = h('div.chart.chart-md', { 'data-testid': testid });
    this.legend = h('div.legend', { 'data-testid': 'metric-legend', role: 'group', 'aria-label': 'legend' });
    this.logY = h('input', { type: 'checkbox', onchange: () => this.draw() });
    this.xAxis = h('select', { 'aria-label': 'x axis', 'data-testid': 'x-axis', onchange: () => this.draw() },
      h('option', { value: 'trial' }, 'by trial number'), h('option', { value: 'time' }, 'by time'));
    this.chart = null;
  }

  /** The controls for the card's head. */
  controls() { return [h('label.toggle', 'x axis ', this.xAxis), h('label.toggle', this.logY, ' log scale')]; }

  async update(data) { this.data = data; await this.draw(); }

  async draw() {
    if (!this.data) return;
    const xTime = this.xAxis.value === 'time', logY = this.logY.checked;
    const series = historySeries(this.data, { maximize: this.ctx.exp.maximize, logY, xTime });
    if (!this.chart) {
      this.chart = await makeChart(this.el);
      this.chart.chart.on('click', (p) => {
        const d = p.data && p.data[2];
        if (d && d.id) location.hash = this.ctx.link('trial', d.id);
      });
    }
    this.chart.chart.setOption(historyOption(series, { logY, xTime, hidden: this.hidden }), true);
    fill(this.legend, series.map((g) => h('button.legend-item', { type: 'button', 'aria-pressed': String(!this.hidden.has(g.key)),
      'data-series': g.key, title: g.lane ? `${g.label}: no final result, in the lane under the chart (click to hide)` : 'click to hide or show',
      onclick: () => { if (this.hidden.has(g.key)) this.hidden.delete(g.key); else this.hidden.add(g.key); this.draw(); } },
    h(`span.swatch${g.line ? '.line' : g.lane ? '.cross' : ''}`, { style: { [g.lane ? 'color' : 'background']: g.color } }),
    h('span', g.label), g.line ? null : h('b', String(g.total ?? g.points.length)))));
    if (this.data.sampled) {
      this.legend.append(h('span.note', { 'data-testid': 'sampled-note', title: 'every trial is counted; the chart draws '
        + 'the best, the worst, the longest, the running ones and the lowest and highest of each stretch of trials' },
      `${this.data.count.toLocaleString()} of ${this.data.total.toLocaleString()} trials drawn`));
    }
  }

  dispose() { if (this.chart) this.chart.dispose(); }
}

/** Parameter importance: the parameters' names with empty bars while it is computed (as tall as the chart that
 *  replaces them), then the chart; a line of text when there is nothing to show yet. */
export class ImportanceCard {
  constructor(ctx, names, { limit = Infinity } = {}) {
    this.ctx = ctx;
    this.limit = limit;
    this.note = h('p.note', 'computing…');
    this.skeleton = h('div.imp-skeleton', { 'aria-hidden': 'true' }, names.slice(0, limit).map((n) =>
      h('div.imp-row', h('span.imp-name', n), h('span.imp-bar'))));
    this.el = h('div.chart', { 'data-testid': 'importance-chart', hidden: true });
    this.card = h('section.card', { 'data-testid': 'importance-card' }, h('h2.card-title', 'Parameter importance'), this.note, this.skeleton, this.el);
    this.chart = null;
  }

  async load() {
    const imp = await this.ctx.get('/importance');
    const items = imp.importances.slice(0, this.limit);
    const more = imp.importances.length - items.length;
    this.note.textContent = items.length ? `${imp.method} · ${imp.n} trials${more > 0 ? ` · the top ${items.length} of ${imp.importances.length} (all on Charts)` : ''}`
      : (imp.note || 'nothing to show yet');
    this.skeleton.hidden = true;
    this.el.hidden = !items.length;
    if (!items.length) return;
    this.el.style.height = `${28 * items.length + 40}px`;
    if (!this.chart) this.chart = await makeChart(this.el);
    this.chart.chart.resize();
    this.chart.chart.setOption(importanceOption({ ...imp, importances: items }), true);
  }

  dispose() { if (this.chart) this.chart.dispose(); }
}

/** Intermediate curves of some trials, with optional median / quartile band over all trials. */
export function curvesOption(curves, { logY = false, bands = null, highlight = null, maxLegend = 12 } = {}) {
  const series = [];
  if (bands && bands.step && bands.step.length) {
    series.push({ name: 'quartiles (all trials)', type: 'line', data: bands.step.map((s, i) => [s, bands.p25[i]]),
      lineStyle: { opacity: 0 }, symbol: 'none', stack: 'band', silent: true, areaStyle: { opacity: 0 } });
    series.push({ name: 'quartiles (all trials)', type: 'line',
      data: bands.step.map((s, i) => [s, bands.p75[i] - bands.p25[i]]), lineStyle: { opacity: 0 }, symbol: 'none',
      stack: 'band', silent: true, areaStyle: { color: 'rgba(47,111,222,0.12)' } });
    series.push({ name: 'median (all trials)', type: 'line', data: bands.step.map((s, i) => [s, bands.median[i]]),
      symbol: 'none', lineStyle: { color: '#1a365d', width: 2, type: 'dashed' }, silent: true, z: 5 });
  }
  for (const c of curves) {
    const pts = [];
    for (let i = 0; i < c.steps.length; i++) {
      const v = c.values[i];
      if (v === null || (logY && v <= 0)) continue;
      pts.push([c.steps[i], v]);
    }
    const hot = highlight && highlight.has(c.id);
    series.push({ name: `#${c.seq} ${c.id}`, type: 'line', data: pts, showSymbol: pts.length < 30, symbolSize: 4,
      emphasis: { focus: 'series', lineStyle: { width: 3 } },
      lineStyle: { width: hot ? 3 : 1.4, opacity: highlight && !hot ? 0.35 : 0.9 } });
  }
  const names = curves.map((c) => `#${c.seq} ${c.id}`);
  return {
    animation: false,
    grid: { ...baseGrid, right: curves.length <= maxLegend ? 150 : 24 },
    legend: curves.length <= maxLegend ? { type: 'scroll', orient: 'vertical', right: 0, top: 10, data: names,
      textStyle: { color: '#4a5568' } } : undefined,
    tooltip: { trigger: 'item', formatter: (p) => tip([p.seriesName, `step ${p.data[0]}: ${fmtNum(p.data[1])}`]) },
    xAxis: { type: 'value', name: 'step', nameLocation: 'middle', nameGap: 26, min: 'dataMin', minInterval: 1, ...AXIS },
    yAxis: { type: logY ? 'log' : 'value', scale: true, name: 'intermediate result', ...AXIS,
      axisLabel: { color: '#4a5568', formatter: (v) => fmtNum(v, 4) } },
    dataZoom: [{ type: 'inside', xAxisIndex: 0 }],
    series,
  };
}

/** Parallel coordinates: one axis per parameter (categorical where needed) and the metric. */
export function parallelOption(data, { maximize, names, maxLines = data.sampled ? 1000 : 2000 } = {}) {
  const idx = [];
  for (let i = 0; i < data.count; i++) if (data.value[i] !== null && data.value[i] !== undefined) idx.push(i);
  let chosen = idx;
  if (idx.length > maxLines) {  // keep the best and a uniform sample of the rest
    const sorted = [...idx].sort((a, b) => (maximize ? data.value[b] - data.value[a] : data.value[a] - data.value[b]));
    const keep = new Set(sorted.slice(0, Math.floor(maxLines / 2)));
    const rest = sorted.slice(Math.floor(maxLines / 2));
    const step = rest.length / (maxLines - keep.size);
    for (let k = 0; k < maxLines - keep.size; k++) keep.add(rest[Math.floor(k * step)]);
    chosen = [...keep];
  }
  const axes = [];
  const cols = [];
  names.forEach((name, dim) => {
    const col = data.params[name] || [];
    const numeric = chosen.every((i) => col[i] === null || col[i] === undefined || typeof col[i] === 'number');
    if (numeric) {
      const vals = chosen.map((i) => col[i]).filter((v) => typeof v === 'number');
      const positive = vals.length && vals.every((v) => v > 0);
      const span = positive ? Math.max(...vals) / Math.min(...vals) : 0;
      axes.push({ dim, name, type: positive && span > 1000 ? 'log' : 'value', scale: true });
    } else {
      const cats = [...new Set(chosen.map((i) => String(col[i])))].sort();
      axes.push({ dim, name, type: 'category', data: cats });
    }
    cols.push({ col, numeric });
  });
  axes.push({ dim: names.length, name: 'metric', type: 'value', scale: true,
    nameTextStyle: { fontWeight: 'bold', color: '#1a202c' } });
  const rows = chosen.map((i) => [...cols.map(({ col, numeric }) => (numeric ? col[i] : String(col[i]))), data.value[i], data.id[i], data.seq[i]]);
  const vals = rows.map((r) => r[names.length]);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  return {
    animation: false,
    parallelAxis: axes.map((a) => ({ ...a, nameTextStyle: { color: '#1a202c', ...(a.nameTextStyle || {}) },
      axisLabel: { color: '#4a5568', formatter: a.type === 'category' ? undefined : (v) => fmtNum(v, 3) },
      axisLine: { lineStyle: { color: '#8a94a6' } } })),
    parallel: { left: 50, right: 140, top: 40, bottom: 30, parallelAxisDefault: { nameLocation: 'start', nameGap: 16,
      areaSelectStyle: { width: 18, opacity: 0.25 } } },
    visualMap: { type: 'continuous', min: Number.isFinite(lo) ? lo : 0, max: Number.isFinite(hi) ? hi : 1,
      dimension: names.length, inRange: { color: maximize ? ['#d64545', '#f2c94c', '#1f9d55'] : ['#1f9d55', '#f2c94c', '#d64545'] },
      right: 10, top: 'middle', calculable: true, itemHeight: 180, text: ['metric', ''], textStyle: { color: '#4a5568' },
      formatter: (v) => fmtNum(v, 4) },
    tooltip: { trigger: 'item', formatter: (p) => tip([`trial #${p.data[names.length + 2]} (${p.data[names.length + 1]})`,
      ...names.map((n, k) => `${n} = ${typeof p.data[k] === 'number' ? fmtNum(p.data[k]) : p.data[k]}`),
      `metric = ${fmtNum(p.data[names.length])}`]) },
    series: [{ type: 'parallel', data: rows, smooth: false, progressive: 800,
      lineStyle: { width: 1, opacity: rows.length > 1000 ? 0.25 : 0.6 },
      emphasis: { lineStyle: { width: 2.5, opacity: 1 } },
      inactiveOpacity: 0.04, activeOpacity: 1 }],
  };
}

function importanceOption(imp) {
  const items = [...imp.importances].reverse();
  return {
    animation: false,
    grid: { left: 110, right: 50, top: 8, bottom: 24 },
    tooltip: { trigger: 'item', formatter: (p) => tip([`${p.name}: ${fmtNum(p.value, 3)}`, items[p.dataIndex].kind]) },
    xAxis: { type: 'value', ...AXIS, axisLabel: { color: '#4a5568', formatter: (v) => fmtNum(v, 2) } },
    yAxis: { type: 'category', data: items.map((d) => d.name), ...AXIS,
      axisLabel: { color: '#1a202c', width: 100, overflow: 'truncate' } },
    series: [{ type: 'bar', data: items.map((d) => d.value), barMaxWidth: 22, itemStyle: { color: '#2f6fde' },
      label: { show: true, position: 'right', formatter: (p) => fmtNum(p.value, 2), color: '#4a5568' } }],
  };
}

export function durationOption(data) {
  const durs = [];
  for (let i = 0; i < data.count; i++) {
    if (data.start[i] && data.end[i]) durs.push([data.seq[i], data.end[i] - data.start[i], data.status[i], data.id[i]]);
  }
  const values = durs.map((d) => d[1]).sort((a, b) => a - b);
  const bins = data.summary && data.summary.duration_bins ? data.summary.duration_bins.map((b) => [...b]) : [];
  if (values.length && !bins.length) {
    const lo = values[0], hi = values[values.length - 1];
    const n = Math.min(40, Math.max(5, Math.ceil(Math.sqrt(values.length))));
    const w = (hi - lo) / n || 1;
    for (let k = 0; k < n; k++) bins.push([lo + k * w, lo + (k + 1) * w, 0]);
    for (const v of values) bins[Math.min(n - 1, Math.floor((v - lo) / w))][2]++;
  }
  return {
    animation: false,
    grid: [{ left: 56, right: '53%', top: 30, bottom: 40 }, { left: '55%', right: 20, top: 30, bottom: 40 }],
    title: [{ text: 'histogram (trials per bin)', left: 56, top: 0, textStyle: { fontSize: 12, color: '#4a5568', fontWeight: 'normal' } },
      { text: 'per trial (seconds)', left: '55%', top: 0, textStyle: { fontSize: 12, color: '#4a5568', fontWeight: 'normal' } }],
    tooltip: { trigger: 'item', formatter: (p) => (p.seriesIndex === 0
      ? tip([`${fmtNum(p.data[0], 3)}–${fmtNum(p.data[1], 3)} s`, `${p.data[2]} trials`])
      : tip([`trial #${p.data[0]} (${p.data[3]})`, `${fmtNum(p.data[1], 4)} s`, p.data[2]])) },
    xAxis: [{ type: 'value', gridIndex: 0, name: 'seconds', nameLocation: 'middle', nameGap: 26, scale: true, ...AXIS },
      { type: 'value', gridIndex: 1, name: 'trial', nameLocation: 'middle', nameGap: 26, min: 'dataMin', ...AXIS }],
    yAxis: [{ type: 'value', gridIndex: 0, ...AXIS },
      { type: 'value', gridIndex: 1, scale: true, ...AXIS }],
    series: [
      { type: 'custom', xAxisIndex: 0, yAxisIndex: 0, data: bins, renderItem: (params, api) => {
        const a = api.coord([api.value(0), api.value(2)]);
        const b = api.coord([api.value(1), 0]);
        return { type: 'rect', shape: { x: a[0] + 1, y: a[1], width: Math.max(1, b[0] - a[0] - 2), height: b[1] - a[1] },
          style: { fill: '#2f6fde' } };
      }, encode: { x: [0, 1], y: 2 } },
      { type: 'scatter', xAxisIndex: 1, yAxisIndex: 1, data: durs, symbolSize: durs.length > 3000 ? 2 : 4,
        large: durs.length > 2000, itemStyle: { color: (p) => STATUS_COLORS[p.data[2]] || '#2f6fde', opacity: 0.7 } },
    ],
  };
}
