/**
 * What the restricted unpickler (pickle.ts) makes of the globals it allows:
 * the allow-list itself, and the inert nodes REDUCE and BUILD produce on
 * those globals (torch storages and tensors, OrderedDict as a Map, latin1
 * bytes, numpy arrays). Kept apart from the opcode loop so that the safety
 * boundary, which globals exist and what each one may turn into, can be
 * reviewed in one short file.
 */
import type { DType } from '../../core/dtype.js';

/** An allow-listed global, pushed by GLOBAL/STACK_GLOBAL. */
export interface PickleGlobal {
  readonly kind: 'global';
  /** `module.name`, e.g. `torch.FloatStorage`. */
  readonly qualifiedName: string;
}

/**
 * A persistent storage reference: `('storage', torch.FloatStorage, key, location, numel)`;
 * torch 2.x writes `torch.storage.UntypedStorage` for the dtypes that have no
 * typed storage class (float8, uint16-64): a byte storage, numel in bytes.
 */
export interface StorageRef {
  readonly kind: 'storage';
  /** Storage key: the zip entry is `<archive>/data/<key>`. */
  readonly key: string;
  /** Element type (U8 for an untyped storage). */
  readonly dtype: DType;
  /** Device it was saved from, e.g. `cpu` or `cuda:0`. */
  readonly location: string;
  /** Elements in the storage (bytes for an untyped storage). */
  readonly numel: number;
}

/**
 * A tensor: a view `(offset, shape, stride)` into a storage, as
 * `_rebuild_tensor_v2` describes it, or `_rebuild_tensor_v3` (torch 2.x, the
 * dtype given apart, over an untyped storage). Offset and strides count
 * elements of the tensor's dtype.
 */
export interface TensorRef {
  readonly kind: 'tensor';
  readonly storage: StorageRef;
  readonly storageKey: string;
  readonly dtype: DType;
  /** Offset into the storage, in elements. */
  readonly storageOffset: number;
  readonly shape: readonly number[];
  readonly stride: readonly number[];
  readonly requiresGrad: boolean;
}

/** A numpy array rebuilt from `_reconstruct` + BUILD (as in rng_state.pth). */
export interface NdArrayRef {
  readonly kind: 'ndarray';
  /** numpy type string with byte order, e.g. `<u4`; empty until BUILD. */
  dtype: string;
  shape: readonly number[];
  /** Raw element bytes (null until BUILD, or when the state held a list). */
  data: Uint8Array | null;
}

/** Any other allow-listed object, described, not constructed. */
export interface PickleObject {
  readonly kind: 'object';
  readonly type: string;
  readonly args: readonly PickleValue[];
  state: PickleValue | undefined;
}

/** A value of the tree the unpickler returns. */
export type PickleValue =
  | null | boolean | number | bigint | string | Uint8Array
  | PickleValue[]
  | Map<PickleValue, PickleValue>
  | Set<PickleValue>
  | PickleGlobal | StorageRef | TensorRef | NdArrayRef | PickleObject;

/** Torch storage classes and the dtype of their elements (an untyped storage counts bytes). */
export const STORAGE_DTYPES: Readonly<Record<string, DType>> = Object.freeze({
  'torch.DoubleStorage': 'F64', 'torch.FloatStorage': 'F32', 'torch.HalfStorage': 'F16', 'torch.BFloat16Storage': 'BF16',
  'torch.LongStorage': 'I64', 'torch.IntStorage': 'I32', 'torch.ShortStorage': 'I16', 'torch.CharStorage': 'I8',
  'torch.ByteStorage': 'U8', 'torch.BoolStorage': 'BOOL', 'torch.storage.UntypedStorage': 'U8',
});

/**
 * torch dtype objects (the last argument of `_rebuild_tensor_v3`) and the
 * element type excp reads them as; null: a dtype torch may write that excp
 * has no element type for (complex, the fnuz float8 variants, ...). Such a
 * global is inert and allowed, but a tensor of it is refused as
 * ERR_BAD_PICKLE, so the file is carried as bytes where a caller can.
 */
export const TORCH_DTYPES: Readonly<Record<string, DType | null>> = Object.freeze({
  'torch.float64': 'F64', 'torch.float32': 'F32', 'torch.float16': 'F16', 'torch.bfloat16': 'BF16',
  'torch.int64': 'I64', 'torch.int32': 'I32', 'torch.int16': 'I16', 'torch.int8': 'I8',
  'torch.uint64': 'U64', 'torch.uint32': 'U32', 'torch.uint16': 'U16', 'torch.uint8': 'U8', 'torch.bool': 'BOOL',
  'torch.float8_e4m3fn': 'F8_E4M3', 'torch.float8_e5m2': 'F8_E5M2',
  'torch.float8_e4m3fnuz': null, 'torch.float8_e5m2fnuz': null, 'torch.float8_e8m0fnu': null, 'torch.float4_e2m1fn_x2': null,
  'torch.complex32': null, 'torch.complex64': null, 'torch.complex128': null,
});

/**
 * Globals accepted by default: what torch.save emits for optimizer,
 * scheduler and RNG state (torch 1.x and 2.x, numpy 1.x and 2.x), plus the
 * torch dtype objects and torch.device, which torch's own weights_only
 * loader also accepts. None of them is ever called.
 */
export const DEFAULT_ALLOWED_GLOBALS: ReadonlySet<string> = new Set([
  ...Object.keys(STORAGE_DTYPES),
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_tensor_v3',
  'torch._utils._rebuild_parameter', 'torch._utils._rebuild_parameter_with_state',
  'torch.Size', 'torch.device',
  ...Object.keys(TORCH_DTYPES),
  'builtins.set', 'builtins.frozenset',
  '_codecs.encode',
  'numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct', 'numpy.ndarray', 'numpy.dtype',
  'numpy.dtypes.UInt32DType',
]);

/** Freeze an array in place to mark it as a tuple. */
export function tuple(items: PickleValue[]): PickleValue[] {
  Object.freeze(items);
  return items;
}

/** True for a tuple (a frozen array). */
export function isTuple(v: PickleValue | undefined): v is PickleValue[] {
  return Array.isArray(v) && Object.isFrozen(v);
}

/** True for an allow-listed global marker. */
export function isGlobal(v: PickleValue): v is PickleGlobal {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Map) && !(v instanceof Set) &&
    !(v instanceof Uint8Array) && v.kind === 'global';
}

function isIntList(v: PickleValue | undefined): v is number[] {
  return Array.isArray(v) && v.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0);
}

/** BINPERSID: a torch storage reference, checked field by field. */
export function persistent(pid: PickleValue, fail: (what: string) => never): StorageRef {
  // torch: ('storage', storage_type, key, location, numel)
  if (!isTuple(pid) || pid.length !== 5 || pid[0] !== 'storage') return fail('persistent id is not a torch storage tuple');
  const [, type, key, location, numel] = pid;
  if (!isGlobal(type!) || STORAGE_DTYPES[type.qualifiedName] === undefined) return fail('persistent id names no storage type');
  if (typeof key !== 'string' || typeof location !== 'string') return fail('storage key and location must be strings');
  if (typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) return fail(`storage ${key} has invalid element count`);
  return Object.freeze({ kind: 'storage', key, dtype: STORAGE_DTYPES[type.qualifiedName]!, location, numel } as const);
}

/** `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`; v3 adds the dtype (`v3`: true). */
function tensor(args: PickleValue[], fail: (what: string) => never, v3 = false): TensorRef {
  const [storage, offset, shape, stride, requiresGrad] = args;
  if (typeof storage !== 'object' || storage === null || !('kind' in storage) || storage.kind !== 'storage') return fail('tensor without a storage');
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) return fail('tensor storage offset is not a non-negative integer');
  if (!isIntList(shape) || !isIntList(stride) || shape.length !== stride.length) return fail('tensor shape/stride are not matching integer tuples');
  let dtype = (storage as StorageRef).dtype;
  if (v3) {
    const d = args[6];
    if (d === undefined || !isGlobal(d) || !(d.qualifiedName in TORCH_DTYPES)) return fail('_rebuild_tensor_v3 without a torch dtype');
    const known = TORCH_DTYPES[d.qualifiedName];
    if (!known) return fail(`tensors of ${d.qualifiedName} are not supported`);
    dtype = known;
  }
  return Object.freeze({
    kind: 'tensor', storage: storage as StorageRef, storageKey: (storage as StorageRef).key, dtype,
    storageOffset: offset, shape: [...shape], stride: [...stride], requiresGrad: requiresGrad === true,
  } as const);
}

/** REDUCE on an allow-listed global: build a description, call nothing. */
export function reduce(fn: PickleValue, args: PickleValue, fail: (what: string) => never): PickleValue {
  if (!isGlobal(fn)) return fail('REDUCE on something that is not a global');
  if (!isTuple(args)) return fail(`REDUCE ${fn.qualifiedName} without an argument tuple`);
  switch (fn.qualifiedName) {
    case 'collections.OrderedDict': {
      const m = new Map<PickleValue, PickleValue>();
      const pairs = args[0];
      if (args.length > 1 || (pairs !== undefined && !Array.isArray(pairs))) return fail('OrderedDict arguments');
      for (const pair of pairs ?? []) {
        if (!Array.isArray(pair) || pair.length !== 2) return fail('OrderedDict item is not a pair');
        m.set(pair[0]!, pair[1]!);
      }
      return m;
    }
    case 'torch._utils._rebuild_tensor_v2': case 'torch._utils._rebuild_tensor':
      return tensor(args, fail);
    case 'torch._utils._rebuild_tensor_v3':
      return tensor(args, fail, true);
    case 'torch._utils._rebuild_parameter': case 'torch._utils._rebuild_parameter_with_state': {
      const [data, requiresGrad] = args;
      if (typeof data !== 'object' || data === null || !('kind' in data) || data.kind !== 'tensor') return fail('parameter without a tensor');
      return Object.freeze({ ...(data as TensorRef), requiresGrad: requiresGrad === true });
    }
    case 'torch.Size':
      if (!isIntList(args[0])) return fail('torch.Size of non-integers');
      return tuple([...args[0]]);
    case 'builtins.set': case 'builtins.frozenset':
      if (args.length > 1 || (args[0] !== undefined && !Array.isArray(args[0]))) return fail('set arguments');
      return new Set(args[0] as PickleValue[] | undefined);
    case '_codecs.encode': {
      // Protocol 2 pickles bytes as _codecs.encode(text, 'latin1'): invert it here.
      const [s, codec] = args;
      if (typeof s !== 'string' || (codec !== 'latin1' && codec !== 'latin-1')) return fail('_codecs.encode is only read for latin1 text');
      const out = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c > 255) return fail('_codecs.encode text is not latin1');
        out[i] = c;
      }
      return out;
    }
    case 'numpy.core.multiarray._reconstruct': case 'numpy._core.multiarray._reconstruct':
      return { kind: 'ndarray', dtype: '', shape: [], data: null };
    default:
      return { kind: 'object', type: fn.qualifiedName, args, state: undefined };
  }
}

/** BUILD: record state on descriptive nodes; never calls __setstate__. */
export function build(target: PickleValue, state: PickleValue, fail: (what: string) => never): void {
  if (target instanceof Map) return; // OrderedDict.__dict__ (e.g. state_dict _metadata): not needed
  if (typeof target !== 'object' || target === null || Array.isArray(target) || target instanceof Set || target instanceof Uint8Array) {
    return fail('BUILD on a value that takes no state');
  }
  if (target.kind === 'ndarray') {
    // ndarray.__setstate__((version, shape, dtype, is_fortran, rawdata))
    if (!isTuple(state) || state.length !== 5) return fail('numpy array state is not a 5-tuple');
    const [, shape, dtype, , raw] = state;
    if (!isIntList(shape)) return fail('numpy array shape');
    const d = dtype as PickleValue;
    if (typeof d !== 'object' || d === null || !('kind' in d) || d.kind !== 'object' || d.type !== 'numpy.dtype') return fail('numpy array dtype');
    const dstate = d.state;
    const order = isTuple(dstate) && typeof dstate[1] === 'string' ? dstate[1] : '|';
    target.dtype = `${order}${String(d.args[0])}`;
    target.shape = [...shape];
    target.data = raw instanceof Uint8Array ? raw : null;
    return;
  }
  if (target.kind === 'object') {
    target.state = state;
    return;
  }
  fail(`BUILD on a ${target.kind}`);
}
