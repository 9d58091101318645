/**
 * The restricted unpickler: opcodes torch emits, the allow-list, limits,
 * malicious pickles (nothing may run), and mutation fuzzing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { ExcpError } from '../lib/core/errors.js';
import { DEFAULT_ALLOWED_GLOBALS, isTuple } from '../lib/formats/torch/pickle-objects.js';
import { type PickleValue, type TensorRef, unpickle } from '../lib/formats/torch/pickle.js';
import { readZipDirectory } from '../lib/formats/torch/zip.js';
import { uniform, errorOf } from './helpers.js';

const FIXTURES = new URL('./fixtures/torch/', import.meta.url);
const load = (path: string): Uint8Array => new Uint8Array(readFileSync(new URL(path, FIXTURES)));
const reference = JSON.parse(readFileSync(new URL('reference.json', FIXTURES), 'utf8'));
const MARKER: string = reference.malicious_marker;

/** The data.pkl entry of a torch zip. */
function dataPkl(path: string): Uint8Array {
  const bytes = load(path);
  const dir = readZipDirectory(bytes.length, (o, l) => bytes.subarray(o, o + l));
  const e = dir.entries.find((x) => x.name.endsWith('/data.pkl'))!;
  return bytes.subarray(e.dataOffset, e.dataOffset + e.size);
}

/** Bytes from a mix of numbers and latin1 strings. */
function b(...parts: (number | string)[]): Uint8Array {
  const out: number[] = [];
  for (const p of parts) {
    if (typeof p === 'number') out.push(p);
    else for (const ch of p) out.push(ch.charCodeAt(0));
  }
  return new Uint8Array(out);
}



test('protocol 2 by hand: dict, list, tuple, ints, float, strings, memo', () => {
  const value = unpickle(b(
    0x80, 2, //                    PROTO 2
    0x7d, 0x71, 0, //              EMPTY_DICT, BINPUT 0
    0x28, //                       MARK
    0x58, 1, 0, 0, 0, 'a', //      BINUNICODE 'a'
    0x5d, 0x71, 1, //              EMPTY_LIST, BINPUT 1
    0x28, 0x4b, 7, 0x4d, 0x34, 0x12, 0x4a, 0xff, 0xff, 0xff, 0xff, 0x65, // MARK 7 0x1234 -1 APPENDS
    0x58, 1, 0, 0, 0, 'b', //      BINUNICODE 'b'
    0x47, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a, // BINFLOAT 0.1 (big-endian)
    0x58, 1, 0, 0, 0, 'c', //      BINUNICODE 'c'
    0x4b, 1, 0x4e, 0x88, 0x87, //  1 None True TUPLE3
    0x58, 1, 0, 0, 0, 'd', //      BINUNICODE 'd'
    0x68, 1, //                    BINGET 1 (the same list object)
    0x58, 1, 0, 0, 0, 'e', //      BINUNICODE 'e'
    0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, // LONG1 2^63 (positive: top byte 0)
    0x58, 1, 0, 0, 0, 'f', //      BINUNICODE 'f'
    0x8a, 1, 0xfe, //              LONG1 -2
    0x75, //                       SETITEMS
    0x2e, //                       STOP
  )) as Map<PickleValue, PickleValue>;
  assert.ok(value instanceof Map);
  assert.deepEqual(value.get('a'), [7, 0x1234, -1]);
  assert.equal(value.get('b'), 0.1);
  const c = value.get('c');
  assert.ok(isTuple(c));
  assert.deepEqual([...c], [1, null, true]);
  assert.equal(value.get('d'), value.get('a'), 'memo gives the same object');
  assert.equal(value.get('e'), 2n ** 63n);
  assert.equal(value.get('f'), -2);
  assert.ok(!isTuple(value.get('a')));
});

test('protocol 4 by hand: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL of an allowed global', () => {
  const body = b(
    0x8c, 11, 'collections', 0x94, // SHORT_BINUNICODE, MEMOIZE (0)
    0x8c, 11, 'OrderedDict', 0x94, // MEMOIZE (1)
    0x93, 0x94, //                   STACK_GLOBAL, MEMOIZE (2)
    0x29, 0x52, 0x94, //             EMPTY_TUPLE REDUCE MEMOIZE (3)
    0x8c, 1, 'k', 0x43, 2, 1, 2, 0x73, // 'k' SHORT_BINBYTES b'\x01\x02' SETITEM
    0x2e,
  );
  const frame = new Uint8Array(11);
  frame.set([0x80, 4, 0x95, body.length]);
  const value = unpickle(new Uint8Array([...frame, ...body]));
  assert.ok(value instanceof Map);
  assert.deepEqual(value.get('k'), new Uint8Array([1, 2]));
});

test('optimizer data.pkl: tensors become storage references, nothing else', () => {
  const tree = unpickle(dataPkl('bf16/checkpoint-4/optimizer.pt')) as Map<PickleValue, PickleValue>;
  const state = tree.get('state') as Map<PickleValue, PickleValue>;
  assert.equal(state.size, 49);
  const s0 = state.get(0) as Map<PickleValue, PickleValue>;
  const expAvg = s0.get('exp_avg') as TensorRef;
  assert.equal(expAvg.kind, 'tensor');
  assert.equal(expAvg.dtype, 'BF16');
  assert.deepEqual(expAvg.shape, [40, 12]);
  assert.deepEqual(expAvg.stride, [12, 1]);
  assert.equal(expAvg.storageOffset, 0);
  assert.equal(expAvg.storage.location, 'cpu');
  assert.equal(expAvg.storage.numel, 480);
  const step = s0.get('step') as TensorRef;
  assert.equal(step.dtype, 'F32');
  assert.deepEqual(step.shape, []);
  const groups = tree.get('param_groups') as Map<PickleValue, PickleValue>[];
  const ref = reference.runs.bf16.checkpoints['checkpoint-4'].optimizer.param_groups;
  assert.equal(groups.length, 2);
  groups.forEach((g, i) => {
    assert.deepEqual(g.get('params'), ref[i].params);
    assert.equal(g.get('lr'), ref[i].lr);
    assert.deepEqual([...(g.get('betas') as number[])], ref[i].betas);
    assert.equal(g.get('weight_decay'), ref[i].weight_decay);
    assert.equal(g.get('foreach'), null);
  });
});

test('scheduler.pt and rng_state.pth read into plain values', () => {
  const sched = unpickle(dataPkl('fp32/checkpoint-8/scheduler.pt')) as Map<PickleValue, PickleValue>;
  const ref = reference.runs.fp32.checkpoints['checkpoint-8'].scheduler;
  for (const key of ['base_lrs', 'last_epoch', '_step_count', '_last_lr', 'verbose']) assert.deepEqual(sched.get(key), ref[key], key);
  const rng = unpickle(dataPkl('fp32/checkpoint-8/rng_state.pth')) as Map<PickleValue, PickleValue>;
  const python = rng.get('python') as PickleValue[];
  assert.ok(isTuple(python));
  assert.equal(python[0], 3);
  assert.equal((python[1] as number[]).length, 625);
  const numpy = rng.get('numpy') as PickleValue[];
  assert.equal(numpy[0], 'MT19937');
  const state = numpy[1] as { kind: string; dtype: string; shape: number[]; data: Uint8Array };
  assert.equal(state.kind, 'ndarray');
  assert.equal(state.dtype, '<u4');
  assert.deepEqual(state.shape, [624]);
  assert.equal(state.data.length, 624 * 4);
  const cpu = rng.get('cpu') as TensorRef;
  assert.equal(cpu.dtype, 'U8');
  assert.deepEqual(cpu.shape, [5056]);
});

test('malicious pickles are refused at the GLOBAL, naming it, and nothing runs', () => {
  assert.equal(existsSync(MARKER), false, `${MARKER} must not exist before the test`);
  const cases: [Uint8Array, string][] = [
    [load('malicious/os_system.pkl'), 'posix.system'],
    [load('malicious/builtins_eval.pkl'), 'builtins.eval'],
    [dataPkl('malicious/optimizer.pt'), 'posix.system'],
    [dataPkl('fp32/checkpoint-4/training_args.bin'), 'transformers.training_args.TrainingArguments'],
    [b(0x80, 2, 'cos\nsystem\n', 0xff, 0xff), 'os.system'], // refused before the junk after it is read
    [b(0x80, 2, 'csubprocess\nPopen\n'), 'subprocess.Popen'],
    [b(0x80, 4, 0x8c, 8, 'builtins', 0x8c, 4, 'exec', 0x93), 'builtins.exec'],
    [b(0x80, 2, 'ctorch\nload\n'), 'torch.load'],
  ];
  for (const [bytes, name] of cases) {
    const err = errorOf(() => unpickle(bytes));
    assert.equal(err.code, 'ERR_UNSAFE_PICKLE', name);
    assert.ok(err.message.includes(JSON.stringify(name)), err.message);
  }
  // Even a global the caller chooses to allow is only described, never called.
  const described = unpickle(load('malicious/os_system.pkl'), { allowedGlobals: new Set([...DEFAULT_ALLOWED_GLOBALS, 'posix.system']) }) as Map<PickleValue, PickleValue>;
  const evil = (described.get('param_groups') as PickleValue[])[0] as unknown as { kind: string; type: string; args: PickleValue[] };
  assert.deepEqual([evil.kind, evil.type, evil.args], ['object', 'posix.system', [`touch ${MARKER}`]]);
  assert.equal(existsSync(MARKER), false, 'the command in the pickle was not executed');
});

test('one refusal per kind of malformed pickle', () => {
  const cases: [Uint8Array, string, RegExp][] = [
    [b(0x80, 2, 0x4e), 'ERR_TRUNCATED', /without STOP/],
    [b(0x80, 2, 0x58, 9, 0, 0, 0, 'ab'), 'ERR_TRUNCATED', /needs 9 bytes/],
    [b(0x80, 2, 0x4e, 0x2e, 0x4e), 'ERR_TRAILING_DATA', /after STOP/],
    [b(0x80, 2, 0x2e), 'ERR_BAD_PICKLE', /underflow/],
    [b(0x80, 2, 0x4e, 0x4e, 0x2e), 'ERR_BAD_PICKLE', /left on the stack/],
    [b(0x80, 2, 0x68, 5, 0x2e), 'ERR_BAD_PICKLE', /memo key 5/],
    [b(0x80, 2, 0x74, 0x2e), 'ERR_BAD_PICKLE', /no MARK/],
    [b(0x80, 2, 'I12\n.'), 'ERR_BAD_PICKLE', /opcode 0x49/],
    [b(0x80, 6, 0x4e, 0x2e), 'ERR_BAD_PICKLE', /protocol 6/],
    [b(0x80, 2, 0x4e, 0x4b, 1, 0x4b, 2, 0x73, 0x2e), 'ERR_BAD_PICKLE', /non-dict/],
    [b(0x80, 2, 0x29, 0x4b, 1, 0x61, 0x2e), 'ERR_BAD_PICKLE', /non-list/],
    [b(0x80, 2, 0x4e, 0x29, 0x52, 0x2e), 'ERR_BAD_PICKLE', /not a global/],
    [b(0x80, 2, 0x58, 2, 0, 0, 0, 0xc3, 0x28, 0x2e), 'ERR_BAD_PICKLE', /UTF-8/],
    [b(0x80, 2, 0x8b, 0, 8, 0, 0), 'ERR_BAD_PICKLE', /limit/],
    [b(0x80, 2, 0x4b, 1, 0x51, 0x2e), 'ERR_BAD_PICKLE', /persistent id/],
    [b(0x80, 2, 'ctorch._utils\n_rebuild_tensor_v2\n', 0x4e, 0x85, 0x52, 0x2e), 'ERR_BAD_PICKLE', /without a storage/],
    [b(0x80, 2, 'ccollections\nOrderedDict\n', 0x4b, 1, 0x85, 0x52, 0x2e), 'ERR_BAD_PICKLE', /OrderedDict/],
    [b(0x80, 2, 0x5d, 0x4e, 0x62, 0x2e), 'ERR_BAD_PICKLE', /BUILD/],
  ];
  for (const [bytes, expected, message] of cases) {
    const err = errorOf(() => unpickle(bytes));
    assert.equal(err.code, expected, err.message);
    assert.match(err.message, message);
  }
  assert.equal(errorOf(() => unpickle(b(0x80, 2, 0x4e, 0x2e), { maxBytes: 3 })).code, 'ERR_BAD_PICKLE');
});

test('cycles and deep nesting build without recursion', () => {
  // l = []; l.append(l)
  const cyclic = unpickle(b(0x80, 2, 0x5d, 0x71, 0, 0x68, 0, 0x61, 0x2e)) as PickleValue[];
  assert.equal(cyclic[0], cyclic);
  // 100000 nested lists: linear time, no stack overflow in the unpickler.
  const depth = 100000;
  const deep = new Uint8Array(2 + depth * 2 + depth + 1);
  deep.set([0x80, 2]);
  let at = 2;
  for (let i = 0; i < depth; i++) deep[at++] = 0x5d; // EMPTY_LIST
  for (let i = 0; i < depth - 1; i++) deep[at++] = 0x61; // APPEND into the one below
  deep[at++] = 0x2e;
  const value = unpickle(deep.subarray(0, at));
  assert.ok(Array.isArray(value));
});

test('fuzz: 4000 seeded mutations of torch pickles end in success or an ExcpError', () => {
  const sources = [dataPkl('fp32/checkpoint-4/scheduler.pt'), dataPkl('bf16/checkpoint-4/rng_state.pth'), dataPkl('fp32/checkpoint-4/optimizer.pt').subarray(0, 3000)];
  const rand = uniform(99);
  for (let round = 0; round < 4000; round++) {
    const bytes = sources[round % sources.length]!.slice();
    const edits = 1 + Math.floor(rand() * 3);
    for (let k = 0; k < edits; k++) {
      const at = Math.floor(rand() * bytes.length);
      bytes[at] = round % 2 ? Math.floor(rand() * 256) : bytes[at]! ^ (1 << Math.floor(rand() * 8));
    }
    const length = round % 5 === 0 ? Math.floor(rand() * bytes.length) : bytes.length;
    try {
      unpickle(bytes.subarray(0, length));
    } catch (err) {
      if (!(err instanceof ExcpError)) throw new Error(`round ${round}: ${String(err)}`);
    }
  }
  assert.equal(existsSync(MARKER), false);
});
