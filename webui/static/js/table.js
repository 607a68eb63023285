// A virtualised table: only the rows in view (plus a margin) exist in the DOM, and rows are fetched
// from the server in blocks as they scroll into view, so 10,000 or 1,000,000 trials scroll alike.
import { h, clear } from './util.js';

const BLOCK = 200;
const MAX_BLOCKS = 25;  // rows kept loaded at most (5,000): the blocks farthest from view go first

export class VirtualTable {
  /**
   * @param {Element} root
   * @param {object} o  columns: [{key, title, width (px), fit (widen to the content shown, up to maxWidth),
   *   flex (take the room left), sort, render(row, el) -> text, element or an array of them}],
   *   fetch(offset, limit, signal) ->
   *   Promise<{rows, total}>, rowKey(row), onRowClick(row, event), rowHeight
   */
  constructor(root, o) {
    this.o = o;
    this.rowHeight = o.rowHeight || 30;
    this.columns = o.columns;
    this.blocks = new Map();     // block index -> rows
    this.inflight = new Map();   // block index -> promise
    this.total = null;
    this.generation = 0;
    this.rowEls = [];
    this.byKey = new Map();      // row key -> row (loaded rows only)
    this.sort = o.sort || null;
    this.fitted = new Map();     // column key -> the width its content needed (fit columns only grow)
    this.el = h('div.vt', { role: 'table', 'data-testid': 'trial-table' });
    this.scroller = h('div.vt-scroll');
    this.head = h('div.vt-head', { role: 'row' });
    this.spacer = h('div.vt-spacer');
    this.rowsEl = h('div.vt-rows');
    this.empty = h('div.vt-empty', o.emptyText || 'No rows');
    this.spacer.append(this.rowsEl);
    this.scroller.append(this.head, this.spacer, this.empty);
    this.el.append(this.scroller);
    clear(root).append(this.el);
    this._frame = null;
    this.scroller.addEventListener('scroll', () => this.schedule(), { passive: true });
    this._ro = new ResizeObserver(() => this.schedule());
    this._ro.observe(this.scroller);
    this.setColumns(this.columns);
  }

  destroy() {
    this._ro.disconnect();
    this.generation++;
    if (this._frame) cancelAnimationFrame(this._frame);
  }

  setColumns(columns) {
    this.columns = columns;
    for (const c of columns) if (c.fit) c.width = Math.max(c.width, this.fitted.get(c.key) || 0);
    this.template = columns.map((c) => (c.flex ? `minmax(${c.width}px, 1fr)` : `${c.width}px`)).join(' ');
    const width = columns.reduce((s, c) => s + c.width, 0);
    this.minWidth = width;
    clear(this.head);
    this.head.style.gridTemplateColumns = this.template;
    this.head.style.minWidth = `${width}px`;
    this.spacer.style.minWidth = `${width}px`;
    for (const c of columns) {
      const active = this.sort && c.sort && this.sort.key === c.sort;
      const cell = h('div.vt-th', { role: 'columnheader', title: c.tip || c.title, 'data-col': c.key,
        'aria-sort': active ? (this.sort.desc ? 'descending' : 'ascending') : undefined });
      if (c.header) cell.append(c.header());
      else cell.append(h('span.vt-th-label', c.title));
      if (c.sort) {
        cell.classList.add('sortable');
        cell.append(h('span.sort-mark', active ? (this.sort.desc ? '▼' : '▲') : ''));
        cell.addEventListener('click', (e) => {
          if (e.target.closest('input')) return;
          const desc = active ? !this.sort.desc : (c.defaultDesc || false);
          this.o.onSort && this.o.onSort({ key: c.sort, desc });
        });
      }
      this.head.append(cell);
    }
    for (const el of this.rowEls) el.remove();
    this.rowEls = [];
    this.schedule(true);
  }

  /** Drop everything (new sort/filter) and load from the top. */
  reset(keepScroll = false) {
    this.generation++;
    this.blocks.clear();
    this.inflight.clear();
    this.byKey.clear();
    this.total = null;
    if (!keepScroll) this.scroller.scrollTop = 0;
    this.schedule(true);
  }

  /** Re-fetch the blocks in view (and the total) without blanking them; drop the others. */
  refresh() {
    const [a, b] = this.blockRange();
    for (const k of [...this.blocks.keys()]) if (k < a || k > b) this.blocks.delete(k);
    this.generation++;
    this.inflight.clear();
    for (let k = a; k <= b; k++) this.load(k, true);
    if (a > b) this.load(0, true);
  }

  /** Patch a loaded row in place (a live event) and redraw it if in view. */
  patch(key, fields) {
    const row = this.byKey.get(key);
    if (!row) return false;
    Object.assign(row, fields);
    this.schedule(true);
    return true;
  }

  rowAt(i) {
    const b = this.blocks.get(Math.floor(i / BLOCK));
    return b ? b[i % BLOCK] : undefined;
  }

  loadedRows() {
    const out = [];
    for (const rows of this.blocks.values()) out.push(...rows);
    return out;
  }

  blockRange() {
    const rh = this.rowHeight;
    const top = Math.max(0, this.scroller.scrollTop - 10 * rh);
    const bottom = this.scroller.scrollTop + this.scroller.clientHeight + 10 * rh;
    const a = Math.floor(top / rh / BLOCK);
    let b = Math.floor(bottom / rh / BLOCK);
    if (this.total !== null) b = Math.min(b, Math.max(0, Math.ceil(this.total / BLOCK) - 1));
    return [a, b];
  }

  load(k, replace = false) {
    if (this.inflight.has(k) || (!replace && this.blocks.has(k))) return;
    const gen = this.generation;
    const p = this.o.fetch(k * BLOCK, BLOCK).then(({ rows, total }) => {
      if (gen !== this.generation) return;
      this.inflight.delete(k);
      const old = this.blocks.get(k);
      if (old) for (const r of old) this.byKey.delete(this.o.rowKey(r));
      this.blocks.set(k, rows);
      for (const r of rows) this.byKey.set(this.o.rowKey(r), r);
      if (this.blocks.size > MAX_BLOCKS) this.evict();
      const changed = this.total !== total;
      this.total = total;
      if (changed && this.o.onTotal) this.o.onTotal(total);
      this.schedule(true);
      if (this.o.onLoad) this.o.onLoad();
    }).catch((err) => {
      if (gen !== this.generation) return;
      this.inflight.delete(k);
      if (this.o.onError) this.o.onError(err);
    });
    this.inflight.set(k, p);
  }

  /** Forget the loaded blocks farthest from view, down to MAX_BLOCKS (scrolling back loads them again), so
   *  that scrolling through 100,000 trials keeps the page's memory flat. */
  evict() {
    const [a, b] = this.blockRange();
    const far = [...this.blocks.keys()].filter((k) => k < a - 1 || k > b + 1)
      .sort((x, y) => Math.max(a - y, y - b) - Math.max(a - x, x - b));
    for (const k of far.slice(0, this.blocks.size - MAX_BLOCKS)) {
      for (const r of this.blocks.get(k)) this.byKey.delete(this.o.rowKey(r));
      this.blocks.delete(k);
    }
  }

  schedule(force = false) {
    if (force) this._force = true;
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => { this._frame = null; this.render(); });
  }

  render() {
    const rh = this.rowHeight;
    const total = this.total ?? 0;
    this.spacer.style.height = `${total * rh}px`;
    this.empty.style.display = this.total === 0 ? '' : 'none';
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / rh) - 5);
    const visible = Math.ceil((this.scroller.clientHeight || 600) / rh) + 10;
    const last = this.total === null ? first + visible : Math.min(total, first + visible);
    const [a, b] = this.blockRange();
    for (let k = a; k <= b; k++) this.load(k);
    const count = Math.max(0, last - first);
    while (this.rowEls.length < count) {
      const el = h('div.vt-row', { role: 'row' });
      el.style.gridTemplateColumns = this.template;
      el.style.height = `${rh}px`;
      el.addEventListener('click', (e) => {
        const row = this.rowAt(Number(el.dataset.index));
        if (row && this.o.onRowClick) this.o.onRowClick(row, e);
      });
      this.rowsEl.append(el);
      this.rowEls.push(el);
    }
    while (this.rowEls.length > count) this.rowEls.pop().remove();
    this.rowsEl.style.transform = `translateY(${first * rh}px)`;
    const force = this._force;
    this._force = false;
    let drawn = false;
    for (let j = 0; j < count; j++) {
      const i = first + j;
      const el = this.rowEls[j];
      const row = this.rowAt(i);
      const stamp = row ? row : null;
      if (!force && el._row === stamp && el.dataset.index === String(i) && stamp) continue;
      el._row = stamp;
      el.dataset.index = String(i);
      clear(el);
      if (!row) {
        el.classList.add('loading');
        el.removeAttribute('data-id');
        el.append(h('div.vt-td.placeholder', { style: { gridColumn: '1 / -1' } }, '…'));
        continue;
      }
      el.classList.remove('loading');
      el.dataset.id = this.o.rowKey(row);
      if (this.o.rowClass) el.className = 'vt-row ' + this.o.rowClass(row);
      for (const c of this.columns) {
        const td = h('div.vt-td', { role: 'cell', 'data-col': c.key });
        for (const out of [].concat(c.render(row, td))) {
          if (out !== undefined && out !== null && out !== '') td.append(out instanceof Node ? out : h('span', String(out)));
        }
        el.append(td);
      }
      drawn = true;
    }
    if (drawn || force) this.fit();
    if (this.o.onRender) this.o.onRender();
  }

  /** Widen the fit columns whose header or rows on screen need more room (never narrower: no jitter). */
  fit() {
    let grew = false;
    this.columns.forEach((c, i) => {
      if (!c.fit) return;
      let need = 0;
      for (const row of [this.head, ...this.rowEls]) {
        const cell = row.children[i];
        if (cell && !row.classList.contains('loading')) need = Math.max(need, contentWidth(cell));
      }
      need = Math.min(need, c.maxWidth || 400);
      if (need > c.width) { this.fitted.set(c.key, need); grew = true; }
    });
    if (grew) this.setColumns(this.columns);
  }
}

/** The width a cell's content needs: its children side by side (4 px apart) and 8 px of padding each side. */
function contentWidth(cell) {
  let w = 16 + 4 * Math.max(0, cell.children.length - 1);
  for (const child of cell.children) w += Math.max(child.scrollWidth, child.offsetWidth);
  return w + 1;
}
