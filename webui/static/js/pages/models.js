// Models: every model in the registry ($HPO_HOME/models.db) with its version count, and its versions on this
// experiment's checkpoints (each linked to its trial).
import { h, fill, card, fmtTime, fmtClock } from '../util.js';
import { shortUuid } from '../checkpoints.js';

function versionsTable(ctx, versions) {
  return h('table.simple.versions', { 'data-testid': 'model-versions' },
    h('thead', h('tr', ['version', 'checkpoint', 'trial'].map((t) => h('th', t)), h('th.num', 'step'), h('th', 'created'))),
    h('tbody', versions.map((v) => h('tr', { 'data-version': v.version },
      h('td', `v${v.version}`, v.name ? h('span.note', ` ${v.name}`) : null),
      h('td', h('code', { title: v.checkpoint_uuid }, shortUuid(v.checkpoint_uuid)),
        v.checkpoint_state !== 'COMPLETED' ? h('span.note', ` ${v.checkpoint_state.toLowerCase()}`) : null),
      h('td', h('a', { href: ctx.link('trial', v.trial_id) }, `#${v.trial_seq}`), ' ', h('code.note', v.trial_id)),
      h('td.num', String(v.steps_completed)),
      h('td', { title: fmtTime(v.creation_time) }, fmtClock(v.creation_time))))));
}

function modelBlock(ctx, m) {
  const here = m.versions.length;
  return h('section.model', { 'data-testid': 'model', 'data-name': m.name },
    h('div.card-head', h('h3', m.name, m.archived ? h('span.badge.ro', ' archived') : null),
      h('span.note', { 'data-testid': 'model-count' },
        `${m.num_versions} version${m.num_versions === 1 ? '' : 's'}${here ? ` · ${here} from this experiment` : ''}`)),
    m.description ? h('p.model-desc', m.description) : null,
    here ? versionsTable(ctx, m.versions) : h('p.note', 'No version on a checkpoint of this experiment.'));
}

export async function mount(root, ctx) {
  const box = h('div.models');
  root.append(card('Models', h('p.note', 'The model registry ($HPO_HOME/models.db): every model, and its versions on this experiment\'s checkpoints.'), box));
  const models = await ctx.get('/models');
  fill(box, models.length ? models.map((m) => modelBlock(ctx, m))
    : h('p.empty', { 'data-testid': 'models-empty' }, 'No model registered yet. Register a checkpoint with `hpo model register` or hpo.model_registry.ModelRegistry.'));
  window.__hpo.ready.models = performance.now();
  return { destroy() {} };
}
