/**
 * A restricted unpickler: reads the pickles PyTorch writes (`data.pkl` inside
 * optimizer.pt, scheduler.pt, rng_state.pth) into plain JS values WITHOUT
 * executing anything.
 *
 * Format: Python's Lib/pickle.py and Lib/pickletools.py (opcode reference,
 * protocols 0-5). torch.save writes protocol 2; the opcodes it emits for an
 * optimizer state_dict are PROTO, EMPTY_DICT, MARK, SETITEMS, BINUNICODE,
 * BININT1/BININT2/BININT/LONG1, BINFLOAT, NONE/NEWFALSE/NEWTRUE, EMPTY_LIST,
 * APPENDS, EMPTY_TUPLE/TUPLE/TUPLE1/TUPLE2, GLOBAL, REDUCE, BINPERSID,
 * BINPUT/LONG_BINPUT, BINGET/LONG_BINGET and STOP; rng_state.pth adds TUPLE3
 * and BUILD. Protocol 4/5 opcodes (FRAME, MEMOIZE, STACK_GLOBAL,
 * SHORT_BINUNICODE, BINUNICODE8, bytes, sets) are read too.
 *
 * Safety model: GLOBAL/STACK_GLOBAL is checked against an allow-list the
 * moment it is read, and anything else (os.system, posix.system,
 * builtins.eval, subprocess.Popen, ...) throws ERR_UNSAFE_PICKLE naming it
 * before any further opcode runs. Allowed globals become inert markers;
 * REDUCE/NEWOBJ/BUILD on them build descriptive nodes (a tensor reference,
 * a Map for OrderedDict, bytes for `_codecs.encode`), never a call. Every
 * length is checked against the bytes left, and every opcode consumes at
 * least one input byte, so time and memory are linear in the input size.
 *
 * Value mapping: None -> null, bool -> boolean, int -> number (bigint beyond
 * 2^53), float -> number, str -> string, bytes -> Uint8Array, list -> array,
 * tuple -> frozen array (Object.isFrozen tells them apart), dict/OrderedDict
 * -> Map, set/frozenset -> Set.
 *
 * The allow-list and what allowed globals become live in pickle-objects.ts.
 */
import { ExcpError } from '../../core/errors.js';
import { ByteReader } from '../../core/bytes.js';
import { type PickleGlobal, type PickleValue, build, DEFAULT_ALLOWED_GLOBALS, isGlobal, isTuple, persistent, reduce, tuple } from './pickle-objects.js';

export type { NdArrayRef, PickleGlobal, PickleObject, PickleValue, StorageRef, TensorRef } from './pickle-objects.js';

/** Options of {@link unpickle}. */
export interface UnpickleOptions {
  /** Qualified names (`module.name`) allowed; default {@link DEFAULT_ALLOWED_GLOBALS}. */
  allowedGlobals?: ReadonlySet<string>;
  /** Largest pickle accepted, in bytes (default 256 MiB). */
  maxBytes?: number;
  /** Largest LONG1/LONG4 integer, in bytes (default 1024). */
  maxIntBytes?: number;
  /** Error-message prefix (default `pickle`). */
  stage?: string;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const MARK = Symbol('mark');
type Slot = PickleValue | typeof MARK;

/**
 * Unpickle without executing anything.
 * @param bytes the pickle (e.g. the `data.pkl` entry of a torch zip)
 * @returns the value tree
 * @throws ExcpError ERR_UNSAFE_PICKLE (a global outside the allow-list), ERR_BAD_PICKLE
 *   (unsupported opcode, malformed structure), ERR_TRUNCATED, ERR_TRAILING_DATA
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions = {}): PickleValue {
  const stage = options.stage ?? 'pickle';
  const allowed = options.allowedGlobals ?? DEFAULT_ALLOWED_GLOBALS;
  const maxBytes = options.maxBytes ?? 256 * 1024 * 1024;
  const maxIntBytes = options.maxIntBytes ?? 1024;
  if (bytes.length > maxBytes) throw new ExcpError('ERR_BAD_PICKLE', `${stage}: ${bytes.length} bytes exceeds the limit of ${maxBytes}`);
  const r = new ByteReader(bytes, stage);
  const stack: Slot[] = [];
  const memo = new Map<number, PickleValue>();
  const fail: (what: string) => never = (what) => {
    throw new ExcpError('ERR_BAD_PICKLE', `${stage}: ${what} (opcode at byte ${opStart})`);
  };
  const pop = (): PickleValue => {
    const v = stack.pop();
    if (v === undefined || v === MARK) return fail('stack underflow');
    return v;
  };
  const top = (): PickleValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) return fail('stack underflow');
    return v;
  };
  const popMark = (): PickleValue[] => {
    const at = stack.lastIndexOf(MARK);
    if (at < 0) return fail('no MARK on the stack');
    const items = stack.splice(at) as PickleValue[];
    items.shift();
    return items;
  };
  const text = (n: number): string => {
    try {
      return utf8.decode(r.bytesView(n));
    } catch (err) {
      if (err instanceof ExcpError) throw err;
      return fail('string is not valid UTF-8');
    }
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, r.offset);
    if (end < 0) throw new ExcpError('ERR_TRUNCATED', `${stage}: unterminated GLOBAL line at byte ${r.offset}`);
    const s = text(end - r.offset);
    r.offset += 1; // the newline
    return s;
  };
  const global = (module: string, name: string): PickleGlobal => {
    const qualifiedName = `${module}.${name}`;
    if (!allowed.has(qualifiedName)) {
      throw new ExcpError('ERR_UNSAFE_PICKLE', `${stage}: global ${JSON.stringify(qualifiedName)} at byte ${opStart} is not on the allow-list; refusing to load (nothing was executed)`);
    }
    return Object.freeze({ kind: 'global', qualifiedName } as const);
  };
  const setItems = (target: PickleValue, items: PickleValue[]): void => {
    if (!(target instanceof Map)) return fail('SETITEM(S) on a non-dict');
    if (items.length % 2 !== 0) return fail('SETITEMS with an odd number of items');
    for (let i = 0; i < items.length; i += 2) target.set(items[i]!, items[i + 1]!);
  };
  const appendItems = (target: PickleValue, items: PickleValue[]): void => {
    if (Array.isArray(target) && !Object.isFrozen(target)) {
      for (const item of items) target.push(item);
    } else if (target instanceof Set) {
      for (const item of items) target.add(item);
    } else {
      fail('APPEND(S)/ADDITEMS on a non-list');
    }
  };
  const put = (index: number): void => {
    memo.set(index, top());
  };
  const get = (index: number): void => {
    const v = memo.get(index);
    if (v === undefined) fail(`memo key ${index} was never stored`);
    stack.push(v!);
  };
  const int = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  const long = (n: number): number | bigint => {
    if (n > maxIntBytes) fail(`integer of ${n} bytes exceeds the limit of ${maxIntBytes}`);
    const b = r.bytesView(n);
    if (n === 0) return 0;
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b[n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
    return int(v);
  };
  let opStart = 0;
  for (;;) {
    opStart = r.offset;
    if (r.remaining === 0) throw new ExcpError('ERR_TRUNCATED', `${stage}: ended at byte ${r.offset} without STOP`);
    const op = r.u8();
    switch (op) {
      case 0x80: { // PROTO
        const proto = r.u8();
        if (proto > 5) fail(`protocol ${proto} is not supported`);
        break;
      }
      case 0x95: { // FRAME: a length hint only
        const n = r.u64();
        if (n > r.remaining) throw new ExcpError('ERR_TRUNCATED', `${stage}: frame of ${n} bytes at byte ${opStart} exceeds the ${r.remaining} left`);
        break;
      }
      case 0x2e: { // STOP
        const result = pop();
        if (stack.length !== 0) fail(`STOP with ${stack.length} items left on the stack`);
        if (r.remaining !== 0) throw new ExcpError('ERR_TRAILING_DATA', `${stage}: ${r.remaining} bytes after STOP at byte ${opStart}`);
        return result;
      }
      case 0x28: stack.push(MARK); break; // MARK
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: stack.push(top()); break; // DUP
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line();
        const name = line();
        stack.push(global(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x71: put(r.u8()); break; // BINPUT
      case 0x72: put(r.u32()); break; // LONG_BINPUT
      case 0x94: put(memo.size); break; // MEMOIZE
      case 0x68: get(r.u8()); break; // BINGET
      case 0x6a: get(r.u32()); break; // LONG_BINGET
      case 0x7d: stack.push(new Map()); break; // EMPTY_DICT
      case 0x64: { // DICT
        const m = new Map<PickleValue, PickleValue>();
        setItems(m, popMark());
        stack.push(m);
        break;
      }
      case 0x73: { // SETITEM
        const value = pop();
        const key = pop();
        setItems(top(), [key, value]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x6c: stack.push(popMark()); break; // LIST
      case 0x61: { // APPEND
        const item = pop();
        appendItems(top(), [item]);
        break;
      }
      case 0x65: case 0x90: { // APPENDS, ADDITEMS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x8f: stack.push(new Set()); break; // EMPTY_SET
      case 0x91: stack.push(new Set(popMark())); break; // FROZENSET
      case 0x29: stack.push(tuple([])); break; // EMPTY_TUPLE
      case 0x74: stack.push(tuple(popMark())); break; // TUPLE
      case 0x85: case 0x86: case 0x87: { // TUPLE1..3
        const n = op - 0x84;
        if (stack.length < n) fail('stack underflow');
        const items: PickleValue[] = [];
        for (let i = 0; i < n; i++) items.unshift(pop());
        stack.push(tuple(items));
        break;
      }
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4b: stack.push(r.u8()); break; // BININT1
      case 0x4d: stack.push(r.u16()); break; // BININT2
      case 0x4a: stack.push(r.u32() | 0); break; // BININT (signed)
      case 0x8a: stack.push(long(r.u8())); break; // LONG1
      case 0x8b: stack.push(long(r.u32())); break; // LONG4
      case 0x47: { // BINFLOAT: big-endian double
        r.need(8);
        stack.push(r.view.getFloat64(r.offset, false));
        r.offset += 8;
        break;
      }
      case 0x58: stack.push(text(r.u32())); break; // BINUNICODE
      case 0x8c: stack.push(text(r.u8())); break; // SHORT_BINUNICODE
      case 0x8d: stack.push(text(r.u64())); break; // BINUNICODE8
      case 0x55: stack.push(latin1(r.bytesView(r.u8()))); break; // SHORT_BINSTRING (Python 2 str)
      case 0x54: stack.push(latin1(r.bytesView(r.u32()))); break; // BINSTRING
      case 0x43: stack.push(r.bytesView(r.u8()).slice()); break; // SHORT_BINBYTES
      case 0x42: stack.push(r.bytesView(r.u32()).slice()); break; // BINBYTES
      case 0x8e: stack.push(r.bytesView(r.u64()).slice()); break; // BINBYTES8
      case 0x51: stack.push(persistent(pop(), fail)); break; // BINPERSID
      case 0x52: { // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(reduce(fn, args, fail));
        break;
      }
      case 0x81: { // NEWOBJ: cls.__new__(cls, *args), described only
        const args = pop();
        const cls = pop();
        if (!isGlobal(cls) || !isTuple(args)) fail('NEWOBJ needs a global and a tuple');
        stack.push({ kind: 'object', type: (cls as PickleGlobal).qualifiedName, args: args as PickleValue[], state: undefined });
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        build(top(), state, fail);
        break;
      }
      default:
        fail(`opcode 0x${op.toString(16).padStart(2, '0')} is not supported`);
    }
  }
}

function latin1(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]!);
  return s;
}
