/**
 * excp: extreme compression of training checkpoints (ExCP, ICML 2024), as
 * composable Node streams. Public surface only; README "Architecture" walks
 * the layers.
 */
export { ExcpError, CODES, type ErrorCode } from './core/errors.js';
export { FORMAT_VERSION, TOOL_VERSION } from './core/constants.js';
export { DEFAULT_OPTIONS, resolveOptions, PAPER_OPTIONS, type CodecOptions } from './core/options.js';
export type { DType } from './core/dtype.js';
export type { Checkpoint, CheckpointFile, ContainerFooter, ContainerHeader, EntrySpec, FileSpec, Role, TensorInfo, TensorSpec } from './model/checkpoint.js';
export { parseSafetensors, serializeSafetensors, parseSafetensorsHeader, buildSafetensorsHeader, type TensorData, type SafetensorsHeader } from './formats/safetensors.js';
export { selectAbs, keepRank, paperFactor } from './method/select.js';
export { fitKMeans, assignClusters } from './method/kmeans.js';
export { quantizeGathered, dequantizeStream } from './method/quantize.js';
export { encodeSymbols, decodeSymbols } from './coding/symbols.js';
export { encodeExact, decodeExact } from './coding/exact.js';
export { encodeChunk, decodeChunk, type ChunkLayout, type ChunkInput } from './method/codec.js';
export { planEntries, planHeader } from './model/plan.js';
export { FILE_KINDS, fileFormat, openCheckpoint, type InputFormat, type OpenOptions } from './formats/registry.js';
export type { FileFormat, FilePlacement } from './formats/file-format.js';
export { SafetensorsFile, SafetensorsMemory } from './formats/safetensors-file.js';
export { SafetensorsStream } from './formats/safetensors-stream.js';
export { BaseCheck, MIN_BASE_COSINE, type BaseVerdict } from './method/base-check.js';
export { ChunkSource, type ChunkJob } from './stream/source.js';
export { ChunkEncoder, ChunkDecoder } from './stream/codec.js';
export { ContainerWriter, ContainerReader } from './stream/container.js';
export { StreamWriter } from './stream/writer.js';
export { compress, compressBuffer, compressTo, compressReadable, STREAM_MEMORY_BYTES, streamMemoryBytes, type BaseCheckMode, type CompressOptions, type CompressStats } from './api/compress.js';
export { restoreTensors, type TensorRestoreOptions, type TensorRestoreResult } from './api/extract.js';
export { RecordReorder } from './stream/reorder.js';
export { restore, restoreBuffer, restoreTo, restoreToFile, restoreToFolder, type RestoreOptions } from './api/restore.js';
export { readContainerFile, holdsFolder } from './api/open.js';
export { compressRank, restoreRanks, readRankSet, RANKS_FILE, type RankManifest, type RankSet } from './api/ranks.js';
export { DcpCheckpoint, type DcpRankInfo } from './formats/dcp/checkpoint.js';
export { writeAtomically, type OutputOptions } from './io/output.js';
export { inspectContainer, verifyContainer } from './api/inspect.js';
export { compareCheckpoints, exceededLimit, formatCompare, type CompareLimits, type CompareReport } from './api/compare.js';
