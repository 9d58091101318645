/**
 * excp: extreme compression of training checkpoints (ExCP, ICML 2024), as
 * composable Node streams. Public surface only.
 */
export { ExcpError, CODES, type ErrorCode } from './core/errors.js';
export { FORMAT_VERSION, TOOL_VERSION } from './core/constants.js';
export { DEFAULT_OPTIONS, resolveOptions, PAPER_OPTIONS, type CodecOptions } from './core/options.js';
export type { EntrySpec, TensorSpec, Role } from './model/checkpoint.js';
export type { DType } from './core/dtype.js';
export { parseSafetensors, serializeSafetensors, parseSafetensorsHeader, buildSafetensorsHeader, type TensorInfo, type TensorData, type SafetensorsHeader } from './formats/safetensors.js';
export { selectAbs, keepRank, paperFactor } from './method/select.js';
export { fitKMeans, assignClusters } from './method/kmeans.js';
export { quantizeGathered, dequantizeStream } from './method/quantize.js';
export { encodeSymbols, decodeSymbols } from './coding/symbols.js';
export { encodeExact, decodeExact } from './coding/exact.js';
export { encodeChunk, decodeChunk, type ChunkLayout, type ChunkInput } from './method/codec.js';
export { planSafetensors, planEntries } from './model/plan.js';
export type { ContainerHeader, ContainerFooter } from './container/format.js';
export { SafetensorsFile, SafetensorsMemory, type TensorReader } from './formats/safetensors-file.js';
export { ChunkSource, type ChunkJob } from './stream/source.js';
export { ChunkEncoder, ChunkDecoder } from './stream/codec.js';
export { ContainerWriter, ContainerReader } from './stream/container.js';
export { SafetensorsWriter } from './stream/writer.js';
export {
  compress, restore, compressBuffer, restoreBuffer, compressTo, restoreTo, restoreToFile, restoreToFolder, compressReadable,
  type CompressOptions, type RestoreOptions,
} from './api/pipeline.js';
export { writeAtomically, type OutputOptions } from './io/output.js';
export { inspectContainer, verifyContainer, readContainerIndex } from './api/inspect.js';
export { compareCheckpoints, formatCompare, type CompareReport } from './api/compare.js';
