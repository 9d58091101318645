/**
 * No silent fallback: when the method cannot be applied to a checkpoint (no
 * weight is paired with its Adam moments, so every tensor is coded
 * exactly), say what was found and why, in one line. It still compresses
 * and restores byte for byte; the line says that the ~50x of the method
 * (weights coded jointly with their moments) is not to be had, and why.
 * The layouts are recognised by their file names and, for an optimizer.pt,
 * its first bytes; nothing is unpickled for this.
 */
import type { Checkpoint, ContainerHeader } from '../model/checkpoint.js';
import { FILE_PREFIX, OPTIMIZER_FILE } from './folder.js';
import { startsLikeZip } from './torch/zip.js';

/** DeepSpeed ZeRO's per-rank optimizer partitions (`global_stepN/[bf16_]zero_pp_rank_R_mp_rank_MM_optim_states.pt`). */
const ZERO_PARTITION = /(^|\/)(bf16_)?zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt$/;
/** DeepSpeed's own files beside them. */
const DEEPSPEED = /(^|\/)(zero_to_fp32\.py|mp_rank_\d+_model_states\.pt)$/;
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

/** How a reader's notice about a file it carried as bytes ends (lib/formats/folder.ts, torch-file.ts). */
const CARRIED = ': carried byte for byte, its state coded exactly';

/**
 * The notices for a checkpoint about to be compressed, one line per thing
 * to know. When the method applies (some parameter is paired with its
 * moments), the reader's own notices (`details`: a second optimizer carried,
 * small ids left unmapped); when it does not, one line that says so and
 * why, taking the reader's reason where it has one; none when exact coding
 * was asked for (`lossless`), since then nothing is lost to explain.
 * @param checkpoint the opened checkpoint
 * @param header its planned container header
 * @param details what the reader said while opening it (its onNotice lines)
 * @returns the lines
 */
export async function checkpointNotices(checkpoint: Checkpoint, header: Pick<ContainerHeader, 'entries' | 'tensors' | 'options'>,
  details: readonly string[] = []): Promise<string[]> {
  if (header.options.lossless) return [];
  const paired = header.entries.some((e) => e.kind === 'param' || (e.kind === 'pack' && e.members!.some((m) => header.tensors[m]!.role !== 'plain')));
  if (paired) return [...details];
  const files = checkpoint.files;
  if (files.length === 1 && files[0]!.path === null) {
    if (details.length > 0) return [...details];
    if (checkpoint.tensors.length === 0) return [];
    return [`notice: ${checkpoint.path}: no tensor has its Adam moments (NAME.exp_avg and NAME.exp_avg_sq): every tensor is coded exactly, which the method cannot shrink much`];
  }
  if (files.length === 0) return [`notice: ${checkpoint.path} is an empty folder: the container holds no files (is the path right?)`];
  return [`notice: ${checkpoint.path}: the method was not applied, every tensor is coded exactly: found ${await whatWasFound(checkpoint, header, details)}`];
}

/** What a folder that gets none of the method holds, in words. */
async function whatWasFound(checkpoint: Checkpoint, header: Pick<ContainerHeader, 'tensors'>, details: readonly string[]): Promise<string> {
  const files = checkpoint.files;
  const paths = files.map((f) => f.path ?? '');
  const blobs = files.filter((f) => f.kind === 'blob').map((f) => f.path ?? '');
  const moments = header.tensors.filter((t) => /(^|[./])exp_avg(_sq)?($|@)/.test(t.name)).map((t) => t.name);
  const zero = paths.filter((p) => ZERO_PARTITION.test(p));
  if (zero.length > 0) {
    return `a DeepSpeed ZeRO checkpoint (${sample(zero)}: ${zero.length} optimizer partition file(s) *_optim_states.pt), whose Adam moments are flat fp32 partitions without parameter names or shapes; excp does not unflatten them`;
  }
  const deepspeed = paths.filter((p) => DEEPSPEED.test(p));
  if (deepspeed.length > 0) return `a DeepSpeed checkpoint (${sample(deepspeed)}) without optimizer partitions excp could use`;
  if (paths.some((p) => MEGATRON.test(p))) return 'a Megatron-LM checkpoint (mp_rank_*/model_optim_rng.pt), whose optimizer state excp does not read';
  if (moments.length > 0) {
    const dcp = files.some((f) => f.kind === 'distcp');
    return `${moments.length} Adam moment tensor(s) (e.g. '${moments[0]}') but no weight of the same name, shape and sharding to pair them with`
      + (dcp ? ' (accelerate keeps the weights in pytorch_model_fsdp_0/ beside optimizer_0/: compress the folder that holds both)' : '');
  }
  if (blobs.some((p) => FSDP_OPTIMIZER.test(p))) {
    return `an FSDP optimizer file (${sample(blobs.filter((p) => FSDP_OPTIMIZER.test(p)))}) that is neither optimizer.pt nor a distributed checkpoint (.metadata), so it is carried as bytes`;
  }
  const optimizer = blobs.find((p) => p === OPTIMIZER_FILE || p.endsWith(`/${OPTIMIZER_FILE}`));
  if (optimizer !== undefined) {
    const info = checkpoint.byName.get(`${FILE_PREFIX}${optimizer}`);
    const head = info && info.end - info.begin >= 4 ? await checkpoint.tensorBytes(info, 0, 4) : new Uint8Array(0);
    if (!startsLikeZip(head)) return `an ${optimizer} in torch's old (non-zip) pickle format (save it again with torch 1.6 or later)`;
    // The reader's reason: `PATH: why: carried byte for byte, ...`.
    const why = details.find((d) => d.endsWith(CARRIED) && d.includes(optimizer));
    const reason = why?.slice(0, -CARRIED.length).replace(/^.*?optimizer\.pt: /, '');
    return `an ${optimizer} that is not an Adam/AdamW state_dict${reason ? ` (${reason})` : ''}`;
  }
  const pickled = blobs.filter((p) => PICKLED.test(p) && !TRAINER_EXTRAS.test(p));
  if (pickled.length > 0) {
    return `${pickled.length} torch.save file(s) (${pickled.slice(0, 3).join(', ')}${pickled.length > 3 ? ', ...' : ''}) carried as bytes: excp takes Adam moments from a Trainer folder's optimizer.pt, from NAME.exp_avg tensors, and from distributed checkpoints`;
  }
  return `no optimizer state (weights only: no ${OPTIMIZER_FILE})`;
}
