// One trial: parameters (exactly as the trial received them), its intermediate-result curve, final
// metrics, every reported value with its time, and a live tail of stdout / stderr.
import { h, clear, fill, card, kv, button, fmtNum, fmtDuration, fmtTime, fmtValue, statusPill, throttle, toast, api,
  withToken } from '../util.js';
import { makeChart, curvesOption } from '../charts.js';
import { CheckpointsCard } from '../checkpoints.js';

const TAIL = 500;
const MAX_LINES = 5000;

export async function mount(root, ctx, route) {
  const id = route.arg;
  const disposers = [];
  let trial;
  try {
    trial = await ctx.get(`/trials/${encodeURIComponent(id)}`);
  } catch (err) {
    root.append(h('div.error-box', `No trial ${id}: ${err.message}`), h('a', { href: ctx.link('trials') }, 'back to the trials'));
    return { destroy() {} };
  }
  const head = h('div.trial-head');
  const paramsBox = h('div');
  const resultBox = h('div');
  const reported = h('div.reported');
  const chartEl = h('div.chart.chart-md', { 'data-testid': 'trial-curve' });
  const noCurve = h('p.note', { 'data-testid': 'no-curve' }, 'No intermediate result reported.');
  const logBox = h('pre.log', { 'data-testid': 'log', tabindex: '0', 'aria-label': 'log' });
  const logEmpty = h('p.log-empty', { 'data-testid': 'log-empty', hidden: true });
  const logInfo = h('span.note', '');
  // a failed trial opens on its stderr (where the error is), unless it wrote nothing there
  const sizes = trial.log_sizes || {};
  let stream = trial.status === 'FAILED' && sizes.stderr ? 'stderr' : 'stdout';
  const tabs = h('div.tabs', { role: 'tablist' }, ['stdout', 'stderr'].map((s) => h('button.tab', { type: 'button', role: 'tab',
    'aria-selected': String(s === stream), 'data-stream': s, onclick: () => { stream = s; for (const t of tabs.children) t.setAttribute('aria-selected', String(t.dataset.stream === s)); openLog(); } }, s)));
  // a distributed trial: its log is every process's, merged (lines prefixed [role-index]), or one process's
  let process = '';
  const processPick = trial.processes ? h('select', { 'aria-label': 'process', 'data-testid': 'log-process',
    onchange: (e) => { process = e.target.value; openLog(); } },
  h('option', { value: '' }, 'all processes'), trial.processes.map((p) => h('option', { value: p.name }, p.name))) : null;
  const processBox = h('div');
  const follow = h('input', { type: 'checkbox', checked: true });
  const checkpoints = new CheckpointsCard(ctx, id);
  const reloadCheckpoints = throttle(() => checkpoints.load().catch(() => {}), 300);
  disposers.push(() => reloadCheckpoints.cancel());
  root.append(
    head,
    h('div.grid.trial-grid',
      card('Parameters', paramsBox),
      card('Result', resultBox),
      h('section.card.span2', h('h2.card-title', 'Intermediate results'), noCurve, chartEl, reported)),
    trial.processes ? card('Processes', processBox) : null,
    checkpoints.el,
    h('section.card', h('div.card-head', h('h2.card-title', 'Log'), tabs, processPick, logInfo, h('label.toggle', follow, ' follow')), logEmpty, logBox),
  );

  // the trial this one re-runs or continues: a link to its page (text only if it is gone)
  function parentLink(seq, parentId, title) {
    return parentId ? h('a', { href: ctx.link('trial', parentId), title: title || 'open that trial', 'data-testid': 'parent-link' }, `#${seq} ${parentId}`) : `#${seq}`;
  }

  function render() {
    const t = trial;
    const ro = ctx.readOnly;
    fill(head, 
      h('a.back', { href: ctx.link('trials') }, '← trials'),
      h('h1', `Trial #${t.sequence_id} `, h('code', t.id)), statusPill(t.status),
      h('span.big-value.inline', { title: String(t.value ?? '') }, t.value === null ? '' : fmtNum(t.value)),
      h('div.spacer'),
      ['RUNNING', 'WAITING'].includes(t.status) ? button('Kill trial', { icon: 'kill', kind: 'danger', disabled: ro, testid: 'kill-trial', onclick: async () => {
        try { await api(`${ctx.base}/trials/${encodeURIComponent(t.id)}/kill`, { method: 'POST' }); toast('Killed'); reload(); } catch (err) { toast(err.message, 'error'); }
      } }) : null,
      ['FAILED', 'USER_CANCELED', 'SYS_CANCELED'].includes(t.status) ? button('Re-run', { icon: 'rerun', disabled: ro, onclick: async () => {
        try { await api(`${ctx.base}/trials/${encodeURIComponent(t.id)}/rerun`, { method: 'POST' }); toast('Re-run queued'); } catch (err) { toast(err.message, 'error'); }
      } }) : null,
    );
    const json = JSON.stringify(t.parameters, null, 2);
    fill(paramsBox, 
      h('table.simple.params', { 'data-testid': 'params' }, h('tbody', Object.entries(t.parameters || {}).map(([k, v]) =>
        h('tr', h('th', k), h('td', { title: JSON.stringify(v) }, typeof v === 'object' ? JSON.stringify(v) : String(v))))))
      , h('div.row', button('Copy as JSON', { icon: 'copy', onclick: () => { navigator.clipboard && navigator.clipboard.writeText(json).then(() => toast('Copied')); } })));
    const finalRows = t.final && typeof t.final === 'object' ? Object.entries(t.final).map(([k, v]) => [`final.${k}`, fmtValue(v)]) : [];
    fill(resultBox, kv([
      ['Final value', t.value === null ? '—' : h('b', { title: String(t.value) }, fmtNum(t.value))],
      ...finalRows,
      ['Status', statusPill(t.status)],
      ['Created', fmtTime(t.created_at)],
      ['Started', fmtTime(t.started_at)],
      ['Ended', fmtTime(t.ended_at)],
      ['Duration', fmtDuration(t.duration)],
      ['Exit code', t.exit_code ?? '—'],
      ['Message', t.message ? h(`span${t.status === 'FAILED' ? '.failed' : ''}`, t.message) : '—'],
      t.rerun_of ? ['Re-run of', parentLink(t.rerun_of, t.rerun_of_id)] : null,
      t.continues ? ['Continues', parentLink(t.continues, t.continues_id, 'trained on from its latest checkpoint')] : null,
      t.gpus && t.gpus.length ? ['GPUs', t.gpus.join(', ')] : null,
    ]));
    if (t.processes) renderProcesses(t);
    const inter = t.metrics.filter((m) => m.kind === 'intermediate');
    fill(reported, t.metrics.length > 0 && h('details', h('summary', `${t.metrics.length} reported values (with times)`),
      h('table.simple', h('thead', h('tr', h('th', 'kind'), h('th', 'step'), h('th', 'value'), h('th', 'reported'), h('th', 'data'))),
        h('tbody', t.metrics.map((m) => h('tr', h('td', m.kind), h('td.num', m.kind === 'final' ? '' : m.step), h('td.num', { title: String(m.value) }, fmtNum(m.value)),
          h('td', fmtTime(m.ts)), h('td', typeof m.data === 'object' ? JSON.stringify(m.data) : String(m.data))))))));
    // no curve to draw: a line that says so, not an empty chart pushing the log below the fold
    chartEl.hidden = !inter.length;
    noCurve.hidden = inter.length > 0;
    if (inter.length) drawCurve(inter);
  }

  function renderProcesses(t) {
    const last = {};
    for (const m of t.process_metrics || []) if (!last[m.process] || last[m.process].kind !== 'final') last[m.process] = m;  // its final result, else its latest
    const chief = t.processes[0] && t.processes[0].name;
    fill(processBox, h('table.simple', { 'data-testid': 'processes' },
      h('thead', h('tr', h('th', 'process'), h('th', 'address'), h('th', 'machine'), h('th', 'pid'), h('th', 'GPUs'), h('th', 'last reported'))),
      h('tbody', t.processes.map((p) => h('tr',
        h('td', p.name, p.name === chief ? h('span.note', ' (chief: the trial\'s results)') : null),
        h('td', h('code', `${p.host}:${p.port}`)), h('td', p.machine || (p.host === '127.0.0.1' ? 'this machine' : '—')), h('td.num', p.pid ?? '—'),
        h('td', (p.gpus || []).join(', ') || '—'),
        h('td.num', p.name === chief ? fmtNum(t.value ?? (t.intermediate || []).at(-1))
          : (last[p.name] ? `${fmtNum(last[p.name].value)} (${last[p.name].kind}${last[p.name].kind === 'final' ? '' : ` ${last[p.name].step}`})` : '—')))))));
  }

  let chart = null;
  async function drawCurve(inter) {
    if (!chart) { const c = await makeChart(chartEl); chart = c; disposers.push(() => c.dispose()); }
    const curves = [{ id: trial.processes ? trial.processes[0].name : trial.id, seq: trial.sequence_id, steps: inter.map((m) => m.step), values: inter.map((m) => m.value) }];
    const others = {};  // a distributed trial: each other process's own curve beside the chief's
    for (const m of trial.process_metrics || []) if (m.kind === 'intermediate') (others[m.process] ||= []).push(m);
    for (const [name, ms] of Object.entries(others)) curves.push({ id: name, seq: trial.sequence_id, steps: ms.map((m) => m.step), values: ms.map((m) => m.value) });
    chart.chart.setOption(curvesOption(curves, { maxLegend: curves.length > 1 ? curves.length : 0 }), true);
  }

  async function reload() {
    try { trial = await ctx.get(`/trials/${encodeURIComponent(id)}`); render(); } catch (err) { /* gone */ }
  }
  const reloadSoon = throttle(reload, 300);
  disposers.push(() => reloadSoon.cancel());

  // -- logs ---------------------------------------------------------------------------------------
  let es = null;
  let lines = 0;
  function showEmpty(empty) {
    logEmpty.textContent = `No output on ${stream}.`;
    logEmpty.hidden = !empty;
    logBox.hidden = empty;
  }
  function appendLines(texts) {
    if (texts.length) showEmpty(false);
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 30;
    const frag = document.createDocumentFragment();
    for (const t of texts) frag.append(h('span.line', t), '\n');  // text nodes: never parsed as HTML
    logBox.append(frag);
    lines += texts.length;
    while (logBox.childNodes.length > MAX_LINES * 2) { logBox.removeChild(logBox.firstChild); logBox.removeChild(logBox.firstChild); }
    if (follow.checked && atBottom) logBox.scrollTop = logBox.scrollHeight;
  }
  async function openLog() {
    if (es) { es.close(); es = null; }
    clear(logBox);
    lines = 0;
    const s = stream;
    let res;
    try {
      res = await ctx.get(`/trials/${encodeURIComponent(id)}/logs?stream=${s}&tail=${TAIL}${process ? `&process=${encodeURIComponent(process)}` : ''}`);
    } catch (err) { logInfo.textContent = err.message; return; }
    if (s !== stream || (processPick && processPick.value !== process)) return;
    logInfo.textContent = res.total_lines > res.lines.length ? `last ${res.lines.length} of ${res.total_lines} lines` : `${res.total_lines} lines`;
    showEmpty(!res.lines.length);
    appendLines(res.lines);
    logBox.scrollTop = logBox.scrollHeight;
    const live = !ctx.readOnly && ['RUNNING', 'WAITING'].includes(trial.status) && !ctx.other;
    if (!live) return;
    es = new EventSource(withToken(`/api/v1/trials/${encodeURIComponent(id)}/logs/stream?stream=${s}&line=${res.next_line}${process ? `&process=${encodeURIComponent(process)}` : ''}`));
    es.addEventListener('lines', (e) => { const d = JSON.parse(e.data); appendLines(d.lines); logInfo.textContent = `${d.line + d.lines.length} lines · following`; });
    es.addEventListener('end', () => { es.close(); es = null; logInfo.textContent = `${lines} lines shown · the trial ended`; });
  }
  disposers.push(() => { if (es) es.close(); });

  disposers.push(ctx.bus.on('events', (events) => {
    for (const [kind, d] of events) {
      if (d.id !== id) continue;
      if (kind === 'checkpoint') { reloadCheckpoints(); continue; }
      if (kind === 'metric' && d.kind !== 'final' && chart) {
        trial.metrics.push({ kind: 'intermediate', step: d.step, value: d.value, data: d.value, ts: Date.now() / 1000 });
      }
      reloadSoon();
    }
  }));
  render();
  await Promise.all([openLog(), checkpoints.load().catch((err) => toast(`Checkpoints: ${err.message}`, 'error'))]);
  window.__hpo.ready.trial = performance.now();
  return { destroy() { for (const d of disposers) d(); } };
}
