/**
 * What a checkpoint holds that the method cannot use, said in one line each
 * (through a compress's onNotice): a folder that is empty, one without
 * optimizer state, an optimizer.pt in torch's old pickle format, a
 * DeepSpeed or torch.distributed.checkpoint (FSDP) layout, a file without
 * Adam moments. Such a checkpoint still compresses and restores byte for
 * byte; the notice says that the method (weights pruned jointly with their
 * moments, ~50x) was not applied, and why.
 */
import type { Checkpoint, ContainerHeader } from '../model/checkpoint.js';
import { FILE_PREFIX, OPTIMIZER_FILE } from '../formats/folder.js';

const DEEPSPEED = /(^|\/)(global_step\d+\/.*_(model|optim)_states\.pt|zero_to_fp32\.py)$/;
const DCP = /(^|\/)(\.metadata|[^/]*\.distcp)$/;
/** A zip file (torch.save since torch 1.6) starts with a local file header. */
const ZIP = [0x50, 0x4b, 0x03, 0x04];

/**
 * Notices for a checkpoint about to be compressed.
 * @param current the opened checkpoint
 * @param header its planned container header
 * @returns one line per finding (none for a checkpoint the method applies to)
 */
export async function checkpointNotices(current: Checkpoint, header: ContainerHeader): Promise<string[]> {
  const paths = current.files.map((f) => f.path).filter((p): p is string => p !== null);
  const folder = current.files.length === 0 || paths.length > 0;
  const hasParams = header.entries.some((e) => e.kind === 'param' || (e.kind === 'pack' && e.members!.some((m) => header.tensors[m]!.role !== 'plain')));
  const out: string[] = [];
  const notApplied = 'carried byte for byte; the method (weights pruned jointly with their Adam moments) was not applied';
  if (!folder) {
    if (!hasParams && current.tensors.length > 0) out.push(`notice: ${current.path}: no tensor has its Adam moments (NAME.exp_avg and NAME.exp_avg_sq): every tensor is coded exactly, which the method cannot shrink much`);
    return out;
  }
  if (current.files.length === 0) return [`notice: ${current.path} is an empty folder: the container holds no files (is the path right?)`];
  const deepspeed = paths.filter((p) => DEEPSPEED.test(p));
  const dcp = paths.filter((p) => DCP.test(p));
  if (deepspeed.length) out.push(`notice: ${current.path} has a DeepSpeed layout (${deepspeed.slice(0, 2).join(', ')}${deepspeed.length > 2 ? ', ...' : ''}): its files are ${notApplied}`);
  if (dcp.length) out.push(`notice: ${current.path} has torch.distributed.checkpoint files, as FSDP writes them (${dcp.slice(0, 2).join(', ')}${dcp.length > 2 ? ', ...' : ''}): they are ${notApplied}`);
  const optimizer = current.files.find((f) => f.path === OPTIMIZER_FILE);
  if (optimizer && optimizer.kind === 'blob') {
    const info = current.byName.get(`${FILE_PREFIX}${OPTIMIZER_FILE}`);
    const head = info && info.end - info.begin >= 4 ? await current.tensorBytes(info, 0, 4) : new Uint8Array(0);
    if (!ZIP.every((b, i) => head[i] === b)) {
      out.push(`notice: ${current.path}/${OPTIMIZER_FILE} is in torch's old (non-zip) pickle format: it is ${notApplied} (save it again with torch 1.6 or later)`);
    }
  } else if (!optimizer && !deepspeed.length && !dcp.length) {
    out.push(`notice: ${current.path} has no ${OPTIMIZER_FILE}: without Adam moments its weights are coded exactly, which the method cannot shrink much`);
  }
  return out;
}
