/**
 * excp: extreme compression of training checkpoints (ExCP, ICML 2024), as
 * composable Node streams. Public surface only.
 */
export { ExcpError, CODES, type ErrorCode } from './errors.js';
export { DEFAULT_OPTIONS, FORMAT_VERSION, TOOL_VERSION } from './constants.js';
export { resolveOptions, PAPER_OPTIONS } from './options.js';
export type { CodecOptions, EntrySpec, TensorSpec, ChunkInput, Role } from './types.js';
export type { DType } from './dtype.js';
export { parseSafetensors, serializeSafetensors, parseSafetensorsHeader, buildSafetensorsHeader, type TensorInfo, type TensorData, type SafetensorsHeader } from './safetensors.js';
export { computeResidual, applyResidual } from './residual.js';
export { pruneJoint, weightThreshold, medianAbs } from './prune.js';
export { fitKMeans, assignClusters } from './kmeans.js';
export { quantizeStream, dequantizeStream } from './quantize.js';
export { encodeSymbols, decodeSymbols } from './symbols.js';
export { encodeExact, decodeExact } from './exact.js';
export { encodeChunk, decodeChunk, type ChunkLayout } from './codec.js';
export { planSafetensors, planEntries } from './plan.js';
export type { ContainerHeader, ContainerFooter } from './container.js';
export { SafetensorsFile, SafetensorsMemory, type TensorReader } from './stream/checkpoint-file.js';
export { ChunkSource, type ChunkJob } from './stream/source.js';
export { ChunkEncoder, ChunkDecoder } from './stream/codec.js';
export { ContainerWriter, ContainerReader } from './stream/container.js';
export { SafetensorsWriter } from './stream/writer.js';
export {
  compress, restore, compressBuffer, restoreBuffer, compressTo, restoreTo, restoreToFile, restoreToFolder, compressReadable,
  type CompressOptions, type RestoreOptions,
} from './pipeline.js';
export { writeAtomically, type OutputOptions } from './output.js';
export { inspectContainer, verifyContainer, readContainerIndex } from './inspect.js';
export { compareCheckpoints, formatCompare, type CompareReport } from './compare.js';
