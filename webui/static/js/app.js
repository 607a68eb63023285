// The dashboard's shell: navigation, the experiment header, the router (#/page, #/x/EXPERIMENT/page
// for another experiment, read-only) and the live event stream (server-sent events, no polling).
import { h, clear, fill, api, withToken, throttle, Bus, fmtDuration, statusPill, icon, toast, END_STATES } from './util.js';

const PAGES = {
  overview: () => import('./pages/overview.js'),
  trials: () => import('./pages/trials.js'),
  trial: () => import('./pages/trial.js'),
  charts: () => import('./pages/charts.js'),
  models: () => import('./pages/models.js'),
  experiments: () => import('./pages/experiments.js'),
};
const NAV = [['overview', 'Overview'], ['trials', 'Trials'], ['charts', 'Charts'], ['models', 'Models'], ['experiments', 'Experiments']];

const state = { page: null, route: null, ctx: null, events: null, mainExp: null };
window.__hpo = { state, ready: {} };

function parseHash() {
  let raw = location.hash.replace(/^#\/?/, '');
  let query = '';
  const q = raw.indexOf('?');
  if (q >= 0) { query = raw.slice(q + 1); raw = raw.slice(0, q); }
  const parts = raw.split('/').filter(Boolean).map(decodeURIComponent);
  let other = null;
  if (parts[0] === 'x' && parts[1]) { other = parts[1]; parts.splice(0, 2); }
  const name = PAGES[parts[0]] ? parts[0] : 'overview';
  return { name, arg: parts[1] || null, other, params: new URLSearchParams(query) };
}

/** Per-experiment context: the API base, read-only flag, the latest /experiment answer, the event bus. */
class Ctx {
  constructor(other) {
    this.other = other;
    this.base = other ? `/api/v1/experiments/${encodeURIComponent(other)}` : '/api/v1';
    this.prefix = other ? `#/x/${encodeURIComponent(other)}` : '#';
    this.bus = new Bus();
    this.exp = null;
    this.refreshExp = throttle(() => this.loadExp().catch(() => {}), 500);
  }
  get readOnly() { return !this.exp || this.exp.read_only || !this.exp.live || this.other !== null; }
  link(page, arg) { return `${this.prefix}/${page}${arg ? '/' + encodeURIComponent(arg) : ''}`; }
  get(path, opts) { return api(this.base + path, opts); }
  async loadExp() {
    this.exp = await this.get('/experiment');
    this.bus.emit('exp', this.exp);
    return this.exp;
  }
}

const shell = {};

function buildShell() {
  const nav = h('nav#nav', { 'aria-label': 'pages' },
    h('a.brand', { href: '#/overview', title: 'hpo dashboard' }, h('img', { src: '/static/favicon.svg', alt: '', width: 22, height: 22 }), h('span', 'hpo')),
    ...NAV.map(([key, label]) => h('a.nav-link', { href: `#/${key}`, 'data-page': key, 'data-testid': `nav-${key}` },
      icon(key, 18), h('span', label))),
    h('div.nav-foot', h('span#live-dot.live-dot', { title: 'live updates' }), h('span#live-label', 'connecting')));
  const top = h('header#topbar',
    h('div.tb-title', h('span#tb-name.tb-name', '…'), h('code#tb-id.tb-id', ''), h('span#tb-status', '')),
    h('div#tb-banner.tb-banner', ''),
    h('div.tb-right', h('span#tb-elapsed.tb-meta', ''), h('span#tb-counts.tb-meta', '')));
  const page = h('main#page', { tabindex: '-1' });
  document.body.append(h('div#shell', nav, h('div#main', top, page)), h('div#toasts', { 'aria-live': 'polite' }));
  Object.assign(shell, { nav, top, page });
}

function renderTop(ctx) {
  const exp = ctx.exp;
  if (!exp) return;
  document.title = `${exp.name || exp.id} · hpo`;
  document.getElementById('tb-name').textContent = exp.name || 'experiment';
  document.getElementById('tb-id').textContent = exp.id;
  clear(document.getElementById('tb-status')).append(statusPill(exp.status));
  const banner = document.getElementById('tb-banner');
  clear(banner);
  if (ctx.other) {
    banner.append(h('span.badge.ro', 'read-only'), ' viewing another experiment · ',
      h('a', { href: '#/experiments' }, 'back to experiments'));
  } else if (exp.read_only) {
    banner.append(h('span.badge.ro', { 'data-testid': 'read-only' }, 'read-only'), ' stored experiment (hpo view)');
  } else if (!exp.live) {
    banner.append(h('span.badge.ro', { 'data-testid': 'read-only' }, 'ended'), ' the experiment has ended; nothing can be changed');
  }
  const c = exp.trial_counts || {};
  document.getElementById('tb-elapsed').textContent = `elapsed ${fmtDuration(exp.elapsed_seconds)}`;
  document.getElementById('tb-counts').textContent = `${c.RUNNING || 0} running · ${exp.progress.trials_done} done`;
  for (const a of shell.nav.querySelectorAll('a.nav-link')) {
    const key = a.dataset.page;
    a.href = key === 'experiments' ? '#/experiments' : ctx.link(key);
  }
}

// -- live events ---------------------------------------------------------------------------------
function setLive(text, on) {
  document.getElementById('live-label').textContent = text;
  document.getElementById('live-dot').classList.toggle('on', !!on);
}

function connectEvents(ctx) {
  if (state.events) return;
  const es = new EventSource(withToken('/api/v1/events'));
  state.events = es;
  es.addEventListener('hello', (e) => {
    const hello = JSON.parse(e.data);
    if (hello.live) setLive('live', true);
    else setLive(hello.read_only ? 'read-only' : 'ended', false);
    ctx.refreshExp();
    ctx.bus.emit('reset', {});
  });
  es.addEventListener('batch', (e) => {
    const { events } = JSON.parse(e.data);
    let expChanged = false;
    for (const [kind, data] of events) {
      if (['status', 'config', 'trial', 'checkpoint'].includes(kind) || (kind === 'metric' && data.kind === 'final')) expChanged = true;
      if (kind === 'status' && END_STATES.includes(data.status)) setLive('ended', false);
    }
    ctx.bus.emit('events', events);
    if (expChanged) ctx.refreshExp();
  });
  es.addEventListener('reset', () => { ctx.refreshExp(); ctx.bus.emit('reset', {}); });
  es.onerror = () => { if (es.readyState !== EventSource.OPEN) setLive('reconnecting', false); };
}

// -- routing -------------------------------------------------------------------------------------
async function route() {
  const r = parseHash();
  let ctx;
  if (!r.other) {
    if (!state.mainCtx) {
      state.mainCtx = new Ctx(null);
      state.mainCtx.bus.on('exp', () => { if (state.ctx === state.mainCtx) renderTop(state.mainCtx); });
      connectEvents(state.mainCtx);
    }
    ctx = state.mainCtx;
  } else {
    if (!state.otherCtx || state.otherCtx.other !== r.other) {
      state.otherCtx = new Ctx(r.other);
      const oc = state.otherCtx;
      oc.bus.on('exp', () => { if (state.ctx === oc) renderTop(oc); });
    }
    ctx = state.otherCtx;
  }
  const switched = state.ctx !== ctx;
  state.ctx = ctx;
  const loading = PAGES[r.name]();  // the page's module comes while the experiment does
  loading.catch(() => {});
  if (!ctx.exp || switched) {
    try {
      await ctx.loadExp();
    } catch (err) {
      fill(shell.page, h('div.error-box', `Could not load the experiment: ${err.message}`));
      return;
    }
  }
  for (const a of shell.nav.querySelectorAll('a.nav-link')) a.classList.toggle('active', a.dataset.page === r.name);
  if (state.page && state.page.destroy) {
    try { state.page.destroy(); } catch (e) { console.error(e); }
  }
  state.page = null;
  state.route = r;
  const el = h('div.page-body', { 'data-page': r.name });
  fill(shell.page, el);
  try {
    const mod = await loading;
    if (state.route !== r) return;
    state.page = await mod.mount(el, ctx, r);
  } catch (err) {
    console.error(err);
    el.append(h('div.error-box', `This page failed: ${err.message}`));
  }
}

buildShell();
window.addEventListener('hashchange', route);
route();
// keep elapsed / remaining time ticking without asking the server
setInterval(() => {
  const ctx = state.ctx;
  if (ctx && ctx.exp && ctx.exp.live) {
    ctx.exp.elapsed_seconds += 1;
    if (ctx.exp.remaining_seconds !== null) ctx.exp.remaining_seconds = Math.max(0, ctx.exp.remaining_seconds - 1);
    ctx.bus.emit('tick', ctx.exp);
    document.getElementById('tb-elapsed').textContent = `elapsed ${fmtDuration(ctx.exp.elapsed_seconds)}`;
  }
}, 1000);
export { toast };
