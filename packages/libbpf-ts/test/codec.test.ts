import test from 'ava';
import { array, bytes, encode, struct, u16, u16be, u32, u32be, u64, u8 } from '../src/index.js';

test('codec - integers round-trip in host (little-endian) order', (t) => {
  t.deepEqual([...encode(u32, 0x01020304)], [4, 3, 2, 1]);
  t.deepEqual([...encode(u16, 0x0102)], [2, 1]);
  t.is(u8.decode(encode(u8, 255)), 255);
  t.is(u32.decode(encode(u32, 0xffffffff)), 0xffffffff);
  t.is(u64.decode(encode(u64, 0xfedcba9876543210n)), 0xfedcba9876543210n);
  t.deepEqual([...encode(u64, 1n)], [1, 0, 0, 0, 0, 0, 0, 0]);
});

test('codec - network-order integers keep packet byte order', (t) => {
  t.deepEqual([...encode(u16be, 53)], [0, 53]);
  t.deepEqual([...encode(u32be, 0x0a000001)], [10, 0, 0, 1]);
  t.is(u16be.decode(new Uint8Array([0x1f, 0x90])), 8080);
});

test('codec - bytes and arrays are fixed length', (t) => {
  const mac = bytes(6);
  t.deepEqual(mac.decode(encode(mac, new Uint8Array([1, 2, 3, 4, 5, 6]))), new Uint8Array([1, 2, 3, 4, 5, 6]));
  t.throws(() => encode(mac, new Uint8Array(5)), { instanceOf: RangeError });
  const pair = array(u32, 2);
  t.is(pair.size, 8);
  t.deepEqual(pair.decode(encode(pair, [7, 9])), [7, 9]);
});

test('codec - struct lays fields out as clang does, padding zeroed', (t) => {
  // struct { __u8 proto; __u16 port; __u32 addr; __u64 bytes; } -> offsets 0, 2, 4, 8; size 16
  const key = struct({ proto: u8, port: u16be, addr: u32be, bytes: u64 });
  t.is(key.size, 16);
  t.is(key.align, 8);
  const value = { proto: 17, port: 53, addr: 0x0a000001, bytes: 1234n };
  const encoded = encode(key, value);
  t.deepEqual([...encoded.subarray(0, 8)], [17, 0, 0, 53, 10, 0, 0, 1]);
  t.deepEqual(key.decode(encoded), value);
  t.deepEqual(key.fields, [
    { name: 'proto', offset: 0, size: 1 },
    { name: 'port', offset: 2, size: 2 },
    { name: 'addr', offset: 4, size: 4 },
    { name: 'bytes', offset: 8, size: 8 },
  ]);
  // trailing padding of a struct { __u32; __u8; } is 3 bytes
  t.is(struct({ a: u32, b: u8 }).size, 8);
});
