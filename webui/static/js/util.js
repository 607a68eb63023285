// Small helpers shared by every page: DOM building (text only, never HTML strings), formatting,
// the API client (token from the URL, kept in sessionStorage), throttling, toasts.

/** h('div.card#id', {onclick, title, ...}, child, ...) -> Element. Strings become text nodes. */
export function h(spec, attrs, ...children) {
  const m = /^([a-z0-9]+)?((?:[.#][\w-]+)*)$/i.exec(spec);
  const el = document.createElement((m && m[1]) || 'div');
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === '.') el.classList.add(part.slice(1)); else el.id = part.slice(1);
    }
  }
  const plain = attrs !== null && typeof attrs === 'object' && !(attrs instanceof Node) && !Array.isArray(attrs);
  if (!plain) {  // not an attribute object: the first child (0 and '' included)
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

/** Replace el's children (null / false children are skipped, strings become text). */
export function fill(el, ...children) { clear(el); append(el, children); return el; }

const ICONS = {
  overview: 'M3 3h8v8H3zM13 3h8v5h-8zM13 10h8v11h-8zM3 13h8v8H3z',
  trials: 'M3 5h18v2H3zM3 11h18v2H3zM3 17h18v2H3z',
  charts: 'M3 20h18v1H3zM5 10h3v9H5zM10.5 5h3v14h-3zM16 13h3v6h-3z',
  experiments: 'M4 4h16v4H4zM4 10h16v4H4zM4 16h16v4H4z',
  stop: 'M6 6h12v12H6z',
  kill: 'M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z',
  rerun: 'M12 4a8 8 0 1 0 8 8h-2a6 6 0 1 1-1.8-4.3L13 11h7V4l-2.4 2.4A8 8 0 0 0 12 4z',
  compare: 'M4 4h7v16H4zM13 4h7v16h-7z',
  columns: 'M3 4h5v16H3zM10 4h4v16h-4zM16 4h5v16h-5z',
  plus: 'M11 4h2v7h7v2h-7v7h-2v-7H4v-2h7z',
  back: 'M10 5 3 12l7 7 1.4-1.4L6.8 13H21v-2H6.8l4.6-4.6z',
  open: 'M14 3h7v7h-2V6.4l-9.3 9.3-1.4-1.4L17.6 5H14zM5 5h6v2H7v10h10v-4h2v6H5z',
  copy: 'M8 3h11v13h-2V5H8zM5 7h10v14H5z',
  save: 'M5 3h11l3 3v15H5zM8 5v4h7V5zM8 13v6h8v-6z',
  models: 'M12 2 21 7v10l-9 5-9-5V7zm0 2.3L5.2 8 12 11.7 18.8 8zM5 9.7v6.1l6 3.3v-6.1zm8 9.4 6-3.3V9.7l-6 3.3z',
};

/** An inline SVG icon (no icon font, nothing fetched). */
export function icon(name, size = 16) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('width', size);
  svg.setAttribute('height', size);
  svg.setAttribute('aria-hidden', 'true');
  svg.classList.add('icon');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICONS[name] || ICONS.plus);
  path.setAttribute('fill', 'currentColor');
  svg.append(path);
  return svg;
}

/** A button with an icon and a text label (every button is labelled). */
export function button(label, opts = {}) {
  const { icon: ic, onclick, kind = '', title, disabled, testid } = opts;
  return h(`button.btn${kind ? '.' + kind.trim().split(/\s+/).join('.') : ''}`, { type: 'button', onclick, title: title || label, disabled,
    'data-testid': testid }, ic ? icon(ic) : null, h('span', label));
}

// -- formatting --------------------------------------------------------------------------------
export function fmtNum(v, digits = 5) {
  if (v === null || v === undefined || v === '') return '';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-4 || a >= 1e7)) return v.toExponential(digits - 2);
  return String(Number(v.toPrecision(digits)));
}

/** Bytes as B / KiB / MiB / GiB / TiB ('' when unknown). */
export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} B` : `${n < 10 ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

export function fmtValue(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return fmtNum(v);
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '';
  if (s < 0) s = 0;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60), sec = Math.round(s % 60);
  if (m < 60) return `${m} m ${String(sec).padStart(2, '0')} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${String(m % 60).padStart(2, '0')} m`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

export function fmtTime(ts) {
  if (!ts) return '';
  return new Date(ts * 1000).toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** A compact time for a table cell: the clock today, the day and minute this year, else the date. */
export function fmtClock(ts, now = new Date()) {
  if (!ts) return '';
  const d = new Date(ts * 1000);
  if (d.toDateString() === now.toDateString()) {
    return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }
  if (d.getFullYear() === now.getFullYear()) {
    return d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false });
  }
  return d.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
}

/** "12 / 20" trials against the maximum; past a maximum that was lowered (or trials re-run or added by
 *  hand), the count and the maximum apart: "19, over the max of 5". */
export function trialsOfMax(done, max) {
  if (!max) return { text: `${done}`, over: false };
  if (done <= max) return { text: `${done} / ${max}`, over: false };
  return { text: `${done}, over the max of ${max}`, over: true,
    title: `${done} trials ran; the maximum is now ${max} (it was lowered after they started, or trials were re-run or added by hand)` };
}

/** The experiment's failure reason in red: the first line prominent, the rest (often the first failed
 *  trial's stderr, indented) as preformatted text. */
export function errorReason(message, testid = 'error-reason') {
  const [first, ...rest] = String(message).split('\n');
  return h('div.error-reason', { role: 'alert', 'data-testid': testid },
    h('strong.error-first', first), rest.length ? h('pre.error-rest', rest.join('\n')) : null);
}

/** The rendered width of an element built for measuring (not shown; removed at once). */
export function measure(el) {
  const box = h('div', { style: { position: 'absolute', visibility: 'hidden', left: '-10000px', top: '0', whiteSpace: 'nowrap' } }, el);
  document.body.append(box);
  const w = el.getBoundingClientRect().width;
  box.remove();
  return Math.ceil(w);
}

export function fmtAgo(ts, now = Date.now() / 1000) {
  if (!ts) return '';
  const d = now - ts;
  if (d < 60) return `${Math.max(0, Math.round(d))} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400 * 2) return `${Math.round(d / 3600)} h ago`;
  return `${Math.round(d / 86400)} d ago`;
}

export function statusPill(status) {
  return h(`span.pill.st-${String(status || 'unknown').toLowerCase()}`, { 'data-status': status }, status || '?');
}

// -- API ---------------------------------------------------------------------------------------
let TOKEN = null;
(function initToken() {
  const params = new URLSearchParams(location.search);
  const t = params.get('token');
  try {
    if (t) {
      sessionStorage.setItem('hpo-token', t);
      params.delete('token');
      const rest = params.toString();
      history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
    }
    TOKEN = t || sessionStorage.getItem('hpo-token');
  } catch (e) { TOKEN = t; }
})();

export function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(TOKEN);
}

export class ApiError extends Error {
  constructor(status, text) { super(text || `HTTP ${status}`); this.status = status; }
}

export async function api(path, { method = 'GET', body, signal, raw = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (TOKEN) headers.Authorization = 'Bearer ' + TOKEN;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal, credentials: 'same-origin', cache: 'no-store' });
  if (!res.ok) throw new ApiError(res.status, (await res.text()).trim());
  if (raw) return res;
  return res.json();
}

// -- misc --------------------------------------------------------------------------------------
/** Call fn at most once per `ms`, always with a trailing call after the last request. */
export function throttle(fn, ms) {
  let timer = null, last = 0, pending = false;
  const run = () => { timer = null; last = performance.now(); pending = false; fn(); };
  const wrapped = () => {
    pending = true;
    if (timer) return;
    const wait = Math.max(0, last + ms - performance.now());
    timer = setTimeout(run, wait);
  };
  wrapped.cancel = () => { if (timer) clearTimeout(timer); timer = null; pending = false; };
  wrapped.pending = () => pending;
  return wrapped;
}

export function toast(text, kind = 'info') {
  const box = document.getElementById('toasts');
  if (!box) return;
  const el = h(`div.toast.${kind}`, { role: kind === 'error' ? 'alert' : 'status' }, text);
  box.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 3500);
}

/** Put text on the clipboard and say so in a toast (or say why it could not). */
export async function copyText(text, what = 'Copied') {
  try {
    if (!navigator.clipboard) throw new Error('the clipboard is not available on this page');
    await navigator.clipboard.writeText(text);
    toast(`${what}: ${text}`);
  } catch (err) {
    toast(`Could not copy: ${err.message}`, 'error');
  }
}

/** A tiny event bus. */
export class Bus {
  constructor() { this.map = new Map(); }
  on(name, fn) {
    if (!this.map.has(name)) this.map.set(name, new Set());
    this.map.get(name).add(fn);
    return () => this.map.get(name).delete(fn);
  }
  emit(name, data) { for (const fn of [...(this.map.get(name) || [])]) { try { fn(data); } catch (e) { console.error(e); } } }
}

export function card(title, ...children) {
  return h('section.card', title ? h('h2.card-title', title) : null, ...children);
}

export function kv(rows) {
  return h('dl.kv', rows.filter(Boolean).map(([k, v]) => [h('dt', k), h('dd', v === '' || v === null || v === undefined ? '—' : v)]));
}

export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

export function paramNames(exp, rows) {
  const names = new Set(exp && exp.parameter_names ? exp.parameter_names : []);
  for (const r of rows || []) for (const k of Object.keys(r.parameters || {})) names.add(k);
  return [...names];
}

export const END_STATES = ['DONE', 'STOPPED', 'ERROR', 'CRASHED'];
export const TRIAL_STATES = ['WAITING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED', 'EARLY_STOPPED'];
export const STATUS_COLORS = {
  WAITING: '#9aa3b2', RUNNING: '#2f6fde', SUCCEEDED: '#1f9d55', FAILED: '#d64545',
  USER_CANCELED: '#b7791f', SYS_CANCELED: '#a0aec0', EARLY_STOPPED: '#805ad5',
};
