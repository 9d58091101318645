import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseSafetensors, serializeSafetensors, readHeaderLength, MAX_HEADER_BYTES } from '../lib/formats/safetensors.js';
import { ExcpError } from '../lib/core/errors.js';

function file(json: unknown, dataLength: number, pad = 0): Uint8Array {
  const text = new TextEncoder().encode(typeof json === 'string' ? json : JSON.stringify(json));
  const out = new Uint8Array(8 + text.length + pad + dataLength);
  new DataView(out.buffer).setUint32(0, text.length + pad, true);
  out.set(text, 8);
  out.fill(0x20, 8 + text.length, 8 + text.length + pad);
  return out;
}

const code = (c: string) => (e: unknown) => e instanceof ExcpError && e.code === c;

describe('safetensors header', () => {
  it('parses a hand-made file: offsets, dtypes, metadata, padding, 0-rank and empty tensors', () => {
    const bytes = file({ __metadata__: { step: '3' }, b: { dtype: 'BF16', shape: [2], data_offsets: [4, 8] }, a: { dtype: 'F32', shape: [], data_offsets: [0, 4] }, e: { dtype: 'I64', shape: [0, 5], data_offsets: [8, 8] } }, 8, 3);
    const { tensors, metadata, header } = parseSafetensors(bytes);
    assert.deepEqual(tensors.map((t) => [t.name, t.dtype, t.shape, t.data.length]), [['a', 'F32', [], 4], ['b', 'BF16', [2], 4], ['e', 'I64', [0, 5], 0]]);
    assert.deepEqual(metadata, { step: '3' });
    assert.equal(header.dataOffset, bytes.length - 8);
  });

  it('round-trips through serializeSafetensors with 8-byte aligned data', () => {
    const data = new Uint8Array([1, 2, 3, 4, 5, 6]);
    const bytes = serializeSafetensors([{ name: 'x', dtype: 'F16', shape: [3], data }], { k: 'v' });
    const p = parseSafetensors(bytes);
    assert.equal(p.header.dataOffset % 8, 0);
    assert.deepEqual([...p.tensors[0]!.data], [...data]);
  });

  it('one error code per kind of bad header', () => {
    assert.throws(() => readHeaderLength(new Uint8Array(3)), code('ERR_TRUNCATED'));
    const huge = new Uint8Array(8);
    new DataView(huge.buffer).setUint32(0, MAX_HEADER_BYTES + 1, true);
    assert.throws(() => readHeaderLength(huge), code('ERR_HEADER_TOO_LARGE'));
    const beyond = new Uint8Array(16);
    new DataView(beyond.buffer).setUint32(4, 0x100, true); // 2^40
    assert.throws(() => readHeaderLength(beyond), code('ERR_HEADER_TOO_LARGE'));
    assert.throws(() => parseSafetensors(file('{"a": ', 0)), code('ERR_BAD_HEADER'));
    assert.throws(() => parseSafetensors(file('[1,2]', 0)), code('ERR_BAD_HEADER'));
    const invalidUtf8 = file('{"\u00e9": 1}', 0);
    invalidUtf8[10] = 0xff;
    assert.throws(() => parseSafetensors(invalidUtf8), code('ERR_BAD_HEADER'));
    assert.throws(() => parseSafetensors(file({ a: { dtype: 'F99', shape: [1], data_offsets: [0, 4] } }, 4)), code('ERR_DTYPE'));
    assert.throws(() => parseSafetensors(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, 4)), code('ERR_SHAPE'));
    assert.throws(() => parseSafetensors(file({ a: { dtype: 'F32', shape: [1e9, 1e9, 1e9], data_offsets: [0, 4] } }, 4)), code('ERR_SHAPE'));
    assert.throws(() => parseSafetensors(file({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8)), code('ERR_SHAPE')); // hole
    assert.throws(() => parseSafetensors(file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [2, 6] } }, 8)), code('ERR_SHAPE')); // overlap
    assert.throws(() => parseSafetensors(file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, 2)), code('ERR_TRUNCATED'));
    assert.throws(() => parseSafetensors(file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, 9)), code('ERR_TRAILING_DATA'));
    assert.throws(() => parseSafetensors(file({ __metadata__: { a: 1 } }, 0)), code('ERR_BAD_HEADER'));
  });
});
