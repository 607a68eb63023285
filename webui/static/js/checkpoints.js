// Checkpoints: a trial's list (its card on the trial page) and the experiment's best (on the overview).
// Locations are shown and copied as stored (a local folder or an s3:// URL); nothing here reads them.
import { h, fill, button, fmtNum, fmtBytes, fmtTime, fmtClock, statusPill, copyText } from './util.js';

export function shortUuid(uuid) { return String(uuid).slice(0, 8); }

export function copyPathButton(ckpt, testid = 'copy-path') {
  return button('Copy path', { icon: 'copy', kind: 'small', testid, title: `Copy ${ckpt.location}`,
    onclick: () => copyText(ckpt.location, 'Copied path') });
}

/** Metadata as compact key=value (steps_completed is the step column already). */
export function metadataText(meta) {
  if (!meta || typeof meta !== 'object') return '';
  return Object.entries(meta).filter(([k]) => k !== 'steps_completed')
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(' ');
}

function stateCell(c) {
  const why = c.state === 'COMPLETED' ? null : (c.message || c.state.toLowerCase());
  return h('td', { title: why }, statusPill(c.state), c.state === 'ERROR' && c.message ? h('span.ck-msg', ` ${c.message}`) : null);
}

function checkpointRow(c) {
  const meta = metadataText(c.metadata);
  return h(`tr.ck-${c.state.toLowerCase()}`, { 'data-uuid': c.uuid, 'data-state': c.state },
    h('td.num', String(c.steps_completed)),
    h('td.num', { title: String(c.value ?? '') }, fmtNum(c.value)),
    h('td.num', { title: `${c.size} bytes` }, fmtBytes(c.size)),
    stateCell(c),
    h('td', { title: fmtTime(c.report_time) }, fmtClock(c.report_time)),
    h('td.ck-meta', { title: meta }, meta || '—'),
    h('td', h('code', { title: c.uuid }, shortUuid(c.uuid))),
    h('td', c.state === 'DELETED' ? null : copyPathButton(c)));
}

export function checkpointsTable(rows) {
  return h('table.simple.checkpoints', { 'data-testid': 'checkpoints' },
    h('thead', h('tr', ['step', 'value', 'size'].map((t) => h('th.num', t)), ['state', 'saved', 'metadata', 'uuid', ''].map((t) => h('th', t)))),
    h('tbody', rows.map(checkpointRow)));
}

/** The trial page's card: the trial's checkpoints, newest first; hidden while it has none. */
export class CheckpointsCard {
  constructor(ctx, trialId) {
    this.ctx = ctx;
    this.trialId = trialId;
    this.count = h('span.note', '');
    this.body = h('div.scroll-x');
    this.el = h('section.card', { hidden: true, 'data-testid': 'checkpoints-card' },
      h('div.card-head', h('h2.card-title', 'Checkpoints'), this.count), this.body);
  }

  async load() {
    this.render(await this.ctx.get(`/checkpoints?trial=${encodeURIComponent(this.trialId)}`));
  }

  render(rows) {
    this.el.hidden = !rows.length;
    const kept = rows.filter((c) => c.state === 'COMPLETED').length;
    this.count.textContent = `${rows.length} saved · ${kept} kept`;
    fill(this.body, checkpointsTable(rows));
  }
}

/** The overview's best checkpoint (null when there is none). */
export function bestCheckpoint(ctx, c) {
  if (!c) return null;
  return h('div.best-ckpt', { 'data-testid': 'best-checkpoint', 'data-uuid': c.uuid },
    h('div.sub-title', 'Best checkpoint'),
    h('p.ck-line', h('a', { href: ctx.link('trial', c.trial_id), 'data-testid': 'best-checkpoint-trial' }, `trial #${c.trial_seq}`),
      ` · step ${c.steps_completed} · `, h('b', { title: String(c.value) }, fmtNum(c.value)), ` · ${fmtBytes(c.size)}`),
    h('div.row', copyPathButton(c, 'best-checkpoint-copy'), h('code.path.ck-loc', { title: c.location }, c.location)));
}
