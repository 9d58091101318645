/**
 * No silent fallback: when a checkpoint folder gets none of the method (no
 * weight was paired with its Adam moments, so every tensor is coded
 * exactly), say what was found and why, in one line. The layouts named here
 * are recognised by their file names; nothing is unpickled for this.
 */
import type { Checkpoint, ContainerHeader } from '../model/checkpoint.js';

/** DeepSpeed ZeRO's per-rank optimizer partitions (`global_stepN/[bf16_]zero_pp_rank_R_mp_rank_MM_optim_states.pt`). */
const ZERO_PARTITION = /(^|\/)(bf16_)?zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt$/;
/** accelerate's FSDP optimizer files for FULL / LOCAL state dicts, and FSDP1's `optimizer_0/` without `.metadata`. */
const FSDP_OPTIMIZER = /(^|\/)optimizer(_\d+)?\.bin$|(^|\/)optimizer_\d+\//;
/** Megatron-LM's per-rank checkpoint files. */
const MEGATRON = /(^|\/)mp_rank_\d+(_\d+)?\/model_optim_rng\.pt$/;

/** Files that may hold a pickled training state (a loop's `step-N.pt`, a Lightning `.ckpt`). */
const PICKLED = /\.(pt|pth|ckpt|bin|pkl)$/;
/** A Trainer folder's files that never hold optimizer state. */
const TRAINER_EXTRAS = /(^|\/)(scheduler\.pt|rng_state(_\d+)?\.pth|training_args\.bin|pytorch_model(-\d+-of-\d+)?\.bin)$/;

/** The folder (first path part) of a file path, or the path. */
function top(path: string): string {
  return path.includes('/') ? `${path.slice(0, path.indexOf('/'))}/` : path;
}

function sample(paths: readonly string[]): string {
  const tops = [...new Set(paths.map(top))];
  return tops.length <= 2 ? tops.join(', ') : `${tops.slice(0, 2).join(', ')} and ${tops.length - 2} more`;
}

/**
 * The one-line notice for a checkpoint folder the method was not applied
 * to, or null (a single file, `--lossless`, or some parameter was paired).
 * @param checkpoint the opened checkpoint
 * @param header its planned container header
 * @returns `PATH: ...: every tensor is coded exactly` naming what was found
 */
export function methodNotice(checkpoint: Pick<Checkpoint, 'path' | 'files'>, header: Pick<ContainerHeader, 'entries' | 'tensors' | 'options'>): string | null {
  if (header.options.lossless || header.entries.some((e) => e.kind === 'param')) return null;
  const files = checkpoint.files;
  if (files.length === 1 && files[0]!.path === null) return null;
  const paths = files.map((f) => f.path ?? '');
  const blobs = files.filter((f) => f.kind === 'blob').map((f) => f.path ?? '');
  const moments = header.tensors.filter((t) => /(^|[./])exp_avg(_sq)?($|@)/.test(t.name)).map((t) => t.name);
  const zero = paths.filter((p) => ZERO_PARTITION.test(p));
  let found: string;
  if (zero.length > 0) {
    found = `a DeepSpeed ZeRO checkpoint (${sample(zero)}: ${zero.length} optimizer partition file(s) *_optim_states.pt), whose Adam moments are flat fp32 partitions without parameter names or shapes; excp does not unflatten them`;
  } else if (paths.some((p) => MEGATRON.test(p))) {
    found = 'a Megatron-LM checkpoint (mp_rank_*/model_optim_rng.pt), whose optimizer state excp does not read';
  } else if (moments.length > 0) {
    const dcp = files.some((f) => f.kind === 'distcp');
    found = `${moments.length} Adam moment tensor(s) (e.g. '${moments[0]}') but no weight of the same name, shape and sharding to pair them with`
      + (dcp ? " (accelerate keeps the weights in pytorch_model_fsdp_0/ beside optimizer_0/: compress the folder that holds both)" : '');
  } else if (blobs.some((p) => FSDP_OPTIMIZER.test(p))) {
    found = `an FSDP optimizer file (${sample(blobs.filter((p) => FSDP_OPTIMIZER.test(p)))}) that is neither optimizer.pt nor a distributed checkpoint (.metadata), so it is carried as bytes`;
  } else if (blobs.some((p) => p === 'optimizer.pt' || p.endsWith('/optimizer.pt'))) {
    found = 'an optimizer.pt that is not an Adam/AdamW state_dict';
  } else if (blobs.some((p) => PICKLED.test(p) && !TRAINER_EXTRAS.test(p))) {
    const pickled = blobs.filter((p) => PICKLED.test(p) && !TRAINER_EXTRAS.test(p));
    found = `${pickled.length} torch.save file(s) (${pickled.slice(0, 3).join(', ')}${pickled.length > 3 ? ', ...' : ''}) carried as bytes: excp takes Adam moments from a Trainer folder's optimizer.pt, from NAME.exp_avg tensors, and from distributed checkpoints`;
  } else {
    found = 'no optimizer state (weights only)';
  }
  return `${checkpoint.path}: the method was not applied, every tensor is coded exactly: found ${found}`;
}
