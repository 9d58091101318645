/**
 * DCP key layouts: which flat keys of a distributed checkpoint are a
 * parameter's weights and which its Adam moments, and the names the chunks
 * get in excp's tensor table (pure).
 *
 * Layouts (spec/fixtures/dcp/README.md):
 *  - `get_state_dict` saved as `{'model': ..., 'optim': ...}`: `model.<fqn>`,
 *    `optim.state.<fqn>.{step,exp_avg,exp_avg_sq}`, `optim.param_groups.<i>.<key>`;
 *  - accelerate (SHARDED_STATE_DICT): `pytorch_model_fsdp_0/` holds
 *    `model.<fqn>`, `optimizer_0/` holds `optimizer.state.<fqn>.<name>`;
 *  - torchtitan: `model.<fqn>` (or, in current torchtitan, the bare `<fqn>`),
 *    `optimizer.state.<fqn>.<name>`, `optimizer.param_groups.<fqn>.<key>`,
 *    plus `lr_scheduler.*`, `dataloader.*`, `train_state.*` (carried exactly).
 *
 * A key's parts come from `planner_data` (its state-dict path, which keeps
 * dots inside an FQN apart from the joins); without it the flat key is
 * split at `.state.`. Moments are named, so no parameter map is needed: a
 * weight and its two moments pair when they have the same size and the same
 * chunks, and then every weight chunk `NAME` gets its moment chunks as
 * `NAME.exp_avg` and `NAME.exp_avg_sq`, which the planner prunes jointly
 * (lib/model/plan.ts).
 *
 * Names: `DIR/KEY` (DIR only for a DCP folder below the opened one, e.g.
 * accelerate's `optimizer_0/`), and for a tensor of more than one chunk the
 * chunk's offsets, `KEY@17,0`, so a rank's chunks keep their names from one
 * step to the next (the base of a residual is matched by name).
 */
import { ExcpError } from '../../core/errors.js';
import type { DcpChunk, DcpMetadata, DcpTensorItem } from './metadata.js';

/** A DCP folder of a checkpoint: its path below the opened folder ('' for the folder itself) and its metadata. */
export interface DcpFolder {
  dir: string;
  metadata: DcpMetadata;
}

/** Adam's moments, by the key's last part. */
const MOMENTS = ['exp_avg', 'exp_avg_sq'] as const;
type Moment = (typeof MOMENTS)[number];

/** A moment tensor: the optimizer it belongs to (the path before `state`), its parameter and which moment. */
interface MomentKey {
  optimizer: string;
  fqn: string;
  moment: Moment;
}

/**
 * A moment's parts from its planner path, `(..., 'state', fqn, 'exp_avg')`,
 * or from a flattened last part (torchtitan's `flatten_optimizer_state_dict`:
 * `('optimizer', 'state.<fqn>.exp_avg')`), or without a path from the flat key.
 */
function momentOf(key: string, path: readonly (string | number)[] | undefined): MomentKey | null {
  const flat = (text: string, optimizer: string): MomentKey | null => {
    const m = /^state\.(.+)\.(exp_avg|exp_avg_sq)$/.exec(text);
    return m ? { optimizer, fqn: m[1]!, moment: m[2] as Moment } : null;
  };
  if (!path) {
    const m = /^(.*?)\.(state\..+)$/.exec(key);
    return m ? flat(m[2]!, m[1]!) : flat(key, '');
  }
  const n = path.length;
  const last = path[n - 1];
  const fqn = path[n - 2];
  if (n >= 3 && path[n - 3] === 'state' && typeof fqn === 'string' && MOMENTS.includes(last as Moment)) {
    return { optimizer: path.slice(0, n - 3).join('.'), fqn, moment: last as Moment };
  }
  return typeof last === 'string' ? flat(last, path.slice(0, n - 1).join('.')) : null;
}

/** The FQN a model key names: `model.<fqn>` or a bare `<fqn>` (a one- or two-part path). */
function weightFqn(key: string, path: readonly (string | number)[] | undefined): { fqn: string; model: boolean } | null {
  if (path) {
    const last = path[path.length - 1];
    if (path.length > 2 || typeof last !== 'string') return null;
    return { fqn: last, model: path.length === 1 || path[0] === 'model' };
  }
  return key.startsWith('model.') ? { fqn: key.slice('model.'.length), model: true } : { fqn: key, model: false };
}

function sameChunks(a: readonly DcpChunk[], b: readonly DcpChunk[]): boolean {
  const text = (cs: readonly DcpChunk[]): string => cs.map((c) => `${c.offsets.join(',')}:${c.sizes.join(',')}`).sort().join(';');
  return a.length === b.length && text(a) === text(b);
}

/** A tensor item with its folder. */
interface Located {
  folder: DcpFolder;
  item: DcpTensorItem;
}

/**
 * The name of each tensor chunk of a checkpoint's DCP folders.
 * @param folders every DCP folder of the checkpoint
 * @returns a function from (folder, key, chunk) to the chunk's tensor name
 * @throws ExcpError ERR_BAD_HEADER when two chunks would get the same name
 */
export function nameChunks(folders: readonly DcpFolder[]): (folder: DcpFolder, key: string, chunk: DcpChunk) => string {
  const base = (folder: DcpFolder, key: string): string => (folder.dir ? `${folder.dir}/${key}` : key);
  const suffix = (item: DcpTensorItem, chunk: DcpChunk): string => (item.chunks.length > 1 ? `@${chunk.offsets.join(',')}` : '');
  // Weights by FQN, across folders (accelerate keeps them beside the optimizer's folder).
  const weights = new Map<string, (Located & { model: boolean })[]>();
  const moments = new Map<string, Located & MomentKey>();
  for (const folder of folders) {
    for (const item of folder.metadata.items.values()) {
      if (item.kind !== 'tensor') continue;
      const path = folder.metadata.paths.get(item.key);
      const moment = momentOf(item.key, path);
      if (moment) {
        moments.set(`${folder.dir}\0${moment.optimizer}\0${moment.fqn}\0${moment.moment}`, { folder, item, ...moment });
        continue;
      }
      const w = weightFqn(item.key, path);
      if (w) weights.set(w.fqn, [...(weights.get(w.fqn) ?? []), { folder, item, model: w.model }]);
    }
  }
  // Pair: the exp_avg of each (folder, optimizer, fqn) with its exp_avg_sq and one weight of the same size and chunks.
  const renamed = new Map<DcpTensorItem, (chunk: DcpChunk) => string>();
  for (const m of moments.values()) {
    if (m.moment !== 'exp_avg') continue;
    const v = moments.get(`${m.folder.dir}\0${m.optimizer}\0${m.fqn}\0exp_avg_sq`);
    if (!v) continue;
    const fits = (w: Located): boolean => w.item.size.join() === m.item.size.join() && sameChunks(w.item.chunks, m.item.chunks) && sameChunks(w.item.chunks, v.item.chunks);
    const candidates = (weights.get(m.fqn) ?? []).filter((w) => fits(w) && !renamed.has(w.item));
    const pick = pickWeight(candidates, m.folder);
    if (!pick) continue;
    const weightName = (chunk: DcpChunk): string => `${base(pick.folder, pick.item.key)}${suffix(pick.item, chunk)}`;
    renamed.set(pick.item, weightName);
    renamed.set(m.item, (chunk) => `${weightName(chunk)}.exp_avg`);
    renamed.set(v.item, (chunk) => `${weightName(chunk)}.exp_avg_sq`);
  }
  const names = new Map<string, string>();
  const nameOf = (folder: DcpFolder, key: string, chunk: DcpChunk): string => {
    const item = folder.metadata.items.get(key);
    if (!item || item.kind !== 'tensor') throw new ExcpError('ERR_BAD_HEADER', `dcp: '${key}' is not a tensor`);
    return renamed.get(item)?.(chunk) ?? `${base(folder, key)}${suffix(item, chunk)}`;
  };
  // Every name once: a moment's name must not be some other tensor's key.
  for (const folder of folders) {
    for (const item of folder.metadata.items.values()) {
      if (item.kind !== 'tensor') continue;
      for (const chunk of item.chunks) {
        const name = nameOf(folder, item.key, chunk);
        const other = names.get(name);
        if (other !== undefined) throw new ExcpError('ERR_BAD_HEADER', `dcp: '${base(folder, item.key)}' and '${other}' would both be named '${name}'`);
        names.set(name, base(folder, item.key));
      }
    }
  }
  return nameOf;
}

/** One weight among the candidates: the only one; else the only one in the moments' folder, or the only `model.` one. */
function pickWeight<T extends Located & { model: boolean }>(candidates: readonly T[], folder: DcpFolder): T | null {
  if (candidates.length <= 1) return candidates[0] ?? null;
  const tests: ((c: T) => boolean)[] = [(c) => c.folder === folder && c.model, (c) => c.folder === folder, (c) => c.model];
  for (const test of tests) {
    const narrowed = candidates.filter(test);
    if (narrowed.length === 1) return narrowed[0]!;
  }
  return null;
}
