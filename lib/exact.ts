// TEMPORARY STUB (lead): raw copy; the exact-coding helper replaces this file.
export function encodeExact(data: Uint8Array, _dtype: string, _base?: Uint8Array): Uint8Array {
  return data.slice();
}
export function decodeExact(coded: Uint8Array, _dtype: string, byteLength: number, _base?: Uint8Array): Uint8Array {
  return coded.slice(0, byteLength);
}
