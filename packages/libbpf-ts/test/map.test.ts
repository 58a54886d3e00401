import test from 'ava';
import { BpfMap, encode, LibbpfError, loadObject, loadObjectSpec, NotFoundError, u16, u32, u32KeyRange, u64, type BpfObject } from '../src/index.js';
import { buildFixtures, type Fixtures } from './helpers/fixtures.js';

let fixtures: Fixtures;
let obj: BpfObject;
test.before(async () => {
  fixtures = await buildFixtures();
  obj = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
});
test.after.always(async () => {
  obj?.close();
  await fixtures?.remove();
});

const key = (n: number): Uint8Array => encode(u32, n);
const value = (n: bigint): Uint8Array => encode(u64, n);

test.serial('BpfMap - get, set, delete on a hash map', (t) => {
  const map = obj.map('scratch');
  t.like(map, { name: 'scratch', type: 'hash', keySize: 4, valueSize: 8, maxEntries: 64, flags: 0 });
  t.true(map.id > 0);
  t.is(map.get(key(1)), undefined);
  map.set(key(1), value(10n));
  t.deepEqual(map.get(key(1)), value(10n));
  map.set(key(1), value(11n), 'exist');
  t.deepEqual(map.get(key(1)), value(11n));
  const exists = t.throws(() => map.set(key(1), value(0n), 'noexist'), { instanceOf: LibbpfError });
  t.is(exists?.code, 'EEXIST');
  t.is(exists?.operation, 'map update name=scratch');
  t.regex(exists?.message ?? '', /^map update name=scratch: EEXIST \(File exists\)/);
  t.throws(() => map.set(key(2), value(0n), 'exist'), { instanceOf: NotFoundError });
  t.true(map.delete(key(1)));
  t.false(map.delete(key(1)));
  t.throws(() => map.set(new Uint8Array(3), value(0n)), { instanceOf: RangeError, message: /key is 3 bytes, the map's key size is 4/ });
});

test.serial('BpfMap - setBatch writes in one call, keys() and entries() iterate', (t) => {
  const map = obj.map('scratch');
  const keys = [1, 2, 3, 4, 5].map(key);
  const result = map.setBatch(keys, [10n, 20n, 30n, 40n, 50n].map(value));
  t.deepEqual(result, { count: 5, batched: true });
  t.deepEqual([...map.keys()].map((k) => u32.decode(k)).sort(), [1, 2, 3, 4, 5]);
  const entries = [...map.entries()].map(([k, v]) => [u32.decode(k), u64.decode(v)] as const).sort((a, b) => a[0] - b[0]);
  t.deepEqual(entries, [[1, 10n], [2, 20n], [3, 30n], [4, 40n], [5, 50n]]);
  for (const k of keys) map.delete(k);
  t.deepEqual([...map.keys()], []);
});

test.serial('BpfMap - a full hash map reports E2BIG', (t) => {
  const map = obj.map('scratch');
  map.setBatch(Array.from({ length: 64 }, (_, i) => key(i)), Array.from({ length: 64 }, () => value(1n)));
  const full = t.throws(() => map.set(key(1000), value(1n)), { instanceOf: LibbpfError });
  t.is(full?.code, 'E2BIG');
  for (const k of [...map.keys()]) map.delete(k);
});

test('BpfMap - array maps cannot delete (EINVAL) and iterate every index', (t) => {
  const map = obj.map('drop_port');
  map.set(key(0), encode(u16, 4789));
  t.deepEqual(map.get(key(0)), encode(u16, 4789));
  t.is(t.throws(() => map.delete(key(0)), { instanceOf: LibbpfError })?.code, 'EINVAL');
  t.is([...map.keys()].length, 1);
});

test('BpfMap - per-CPU values, one per possible CPU, rounded up to 8 bytes', (t) => {
  const map = obj.map('counters');
  t.true(map.perCpu);
  const before = map.getPerCpu(key(1));
  t.truthy(before);
  const cpus = before?.length ?? 0;
  t.true(cpus >= 1);
  map.setPerCpu(key(1), Array.from({ length: cpus }, (_, cpu) => value(BigInt(cpu + 1))));
  t.deepEqual(map.getPerCpu(key(1)), Array.from({ length: cpus }, (_, cpu) => value(BigInt(cpu + 1))));
  map.setPerCpu(key(1), [value(7n)]);
  t.deepEqual(map.getPerCpu(key(1)), Array.from({ length: cpus }, () => value(7n)));
  t.throws(() => map.get(key(1)), { instanceOf: LibbpfError, message: /use getPerCpu/ });
  t.throws(() => obj.map('scratch').getPerCpu(key(1)), { instanceOf: LibbpfError, message: /not a per-CPU map/ });
});

test('BpfMap - a per-CPU hash with a 4-byte value uses an 8-byte stride', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'percpu_hash', name: 'pc4', keySize: 4, valueSize: 4, maxEntries: 4 });
  map.setPerCpu(key(9), [encode(u32, 0xdeadbeef)]);
  const values = map.getPerCpu(key(9)) ?? [];
  t.true(values.length >= 1);
  for (const v of values) t.deepEqual(v, encode(u32, 0xdeadbeef));
  t.truthy(cleanup);
});

test('BpfMap.setPerCpuBatch - writes per-CPU values of many elements in one call', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'percpu_array', name: 'pcbatch', keySize: 4, valueSize: 4, maxEntries: 1000 });
  const cpus = map.getPerCpu(key(0))?.length ?? 0;
  t.true(cpus >= 1);
  const keys = Array.from({ length: 1000 }, (_, i) => key(i));
  const values = keys.map((_, i) => (i % 2 === 0 ? [encode(u32, i)] : Array.from({ length: cpus }, (_, cpu) => encode(u32, i * 10 + cpu))));
  t.deepEqual(map.setPerCpuBatch(keys, values), { count: 1000, batched: true });
  t.deepEqual(map.getPerCpu(key(998)), Array.from({ length: cpus }, () => encode(u32, 998)));
  t.deepEqual(map.getPerCpu(key(999)), Array.from({ length: cpus }, (_, cpu) => encode(u32, 9990 + cpu)));
  t.throws(() => map.setPerCpuBatch([key(0)], [[]]), { instanceOf: RangeError, message: /0 values for \d+ possible CPUs at element 0/ });
  t.throws(() => map.setPerCpuBatch([key(0)], []), { instanceOf: RangeError, message: /1 keys but 0 values/ });
  t.throws(() => obj.map('scratch').setPerCpuBatch([key(0)], [[value(0n)]]), { instanceOf: LibbpfError, message: /not a per-CPU map/ });
  t.deepEqual(map.setPerCpuBatch([], []), { count: 0, batched: true });
  t.truthy(cleanup);
});

test('BpfMap.getPerCpuBatch - reads a range of a per-CPU array in one call, stops at the end', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'percpu_array', name: 'pcread', keySize: 4, valueSize: 16, maxEntries: 300 });
  const keys = Array.from({ length: 300 }, (_, i) => key(i));
  const counter = (n: number): Uint8Array => new Uint8Array([...encode(u64, BigInt(n)), ...new Uint8Array(8)]);
  map.setPerCpuBatch(keys, keys.map((_, i) => [counter(i)]));
  const all = map.getPerCpuBatch(300);
  t.is(all.keys.length, 300);
  t.deepEqual(all.keys.map((k) => u32.decode(k)), Array.from({ length: 300 }, (_, i) => i));
  const cpus = all.values[0]?.length ?? 0;
  t.true(cpus >= 1);
  t.deepEqual(all.values[17], Array.from({ length: cpus }, () => counter(17)));
  // After index 99: elements 100..149.
  const middle = map.getPerCpuBatch(50, key(99));
  t.deepEqual(middle.keys.map((k) => u32.decode(k)), Array.from({ length: 50 }, (_, i) => 100 + i));
  t.is(u64.decode(middle.values[0]?.[0]?.subarray(0, 8) ?? new Uint8Array(8)), 100n);
  // Past the end: what there is.
  t.is(map.getPerCpuBatch(100, key(249)).keys.length, 50);
  t.is(map.getPerCpuBatch(0).keys.length, 0);
  t.throws(() => map.getBatch(1), { instanceOf: LibbpfError, message: /use getPerCpu/ });
  t.truthy(cleanup);
});

test('BpfMap.getPerCpuBatchPacked - the same elements as getPerCpuBatch, in the kernel\'s packed layout', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'percpu_array', name: 'pcpacked', keySize: 4, valueSize: 12, maxEntries: 100 });
  const keys = Array.from({ length: 100 }, (_, i) => key(i));
  map.setPerCpuBatch(keys, keys.map((_, i) => [new Uint8Array([...encode(u64, BigInt(i)), 1, 2, 3, 4])]));
  const packed = map.getPerCpuBatchPacked(40, key(59));
  const objects = map.getPerCpuBatch(40, key(59));
  t.is(packed.count, 40);
  t.is(packed.stride, 16, 'a 12-byte value is padded to 16 per CPU');
  t.is(packed.cpus, objects.values[0]?.length ?? 0);
  t.deepEqual(packed.keys, new Uint8Array(Buffer.concat(objects.keys)));
  for (let i = 0; i < packed.count; i++) {
    for (let cpu = 0; cpu < packed.cpus; cpu++) {
      const at = (i * packed.cpus + cpu) * packed.stride;
      t.deepEqual(packed.values.subarray(at, at + 12), objects.values[i]?.[cpu]);
    }
  }
  t.is(map.getPerCpuBatchPacked(100, key(89)).count, 10, 'past the end: what there is');
  t.is(map.getPerCpuBatchPacked(0).values.length, 0);
  // Into the caller's buffers: the same bytes, as views into them, read after read.
  const layout = map.perCpuLayout();
  t.deepEqual(layout, { cpus: packed.cpus, stride: 16 });
  const into = { keys: new Uint8Array(40 * 4), values: new Uint8Array(40 * layout.cpus * layout.stride) };
  const again = map.getPerCpuBatchPacked(40, key(59), into);
  t.is(again.values.buffer, into.values.buffer, 'no buffer of its own');
  t.is(again.keys.buffer, into.keys.buffer);
  t.deepEqual(again.values, packed.values);
  t.deepEqual(again.keys, packed.keys);
  const first = map.getPerCpuBatchPacked(20, undefined, into);
  t.is(first.values.buffer, into.values.buffer);
  t.deepEqual([...first.keys.subarray(0, 4)], [...key(0)], 'the next read overwrote the buffers from index 0');
  t.throws(() => map.getPerCpuBatchPacked(41, key(0), into), { instanceOf: RangeError, message: /cannot hold 41 elements/ });
  const plain = BpfMap.create({ type: 'array', name: 'plain', keySize: 4, valueSize: 8, maxEntries: 1 });
  t.throws(() => plain.perCpuLayout(), { instanceOf: LibbpfError, message: /not a per-CPU map/ });
  plain.close();
  t.truthy(cleanup);
});

test('BpfMap.setPerCpuBatchPacked - packed keys (u32KeyRange) and per-CPU values in the kernel layout, read back as written', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'percpu_array', name: 'pcsetpk', keySize: 4, valueSize: 12, maxEntries: 100 });
  const { cpus, stride } = map.perCpuLayout();
  // Elements 30..69, each CPU its own value (element i, CPU c: i * 100 + c, then 4 marker bytes).
  const values = new Uint8Array(40 * cpus * stride);
  for (let i = 0; i < 40; i++) {
    for (let cpu = 0; cpu < cpus; cpu++) values.set([...encode(u64, BigInt((30 + i) * 100 + cpu)), 9, 8, 7, 6], (i * cpus + cpu) * stride);
  }
  const keys = u32KeyRange(30, 40);
  t.deepEqual([...keys.subarray(0, 8)], [...key(30), ...key(31)], "u32KeyRange: the u32 codec's bytes, back to back");
  t.deepEqual(map.setPerCpuBatchPacked(keys, values), { count: 40, batched: true });
  t.deepEqual(map.getPerCpuBatchPacked(40, key(29)).values, values);
  t.deepEqual(map.getPerCpu(key(69))?.map((v) => u64.decode(v.subarray(0, 8))), Array.from({ length: cpus }, (_, cpu) => BigInt(6900 + cpu)));
  t.deepEqual(map.getPerCpu(key(29)), Array.from({ length: cpus }, () => new Uint8Array(12)), 'elements outside the range untouched');
  // Into a buffer the caller keeps: a view of exactly the keys asked for.
  const into = new Uint8Array(16);
  const two = u32KeyRange(7, 2, into);
  t.is(two.buffer, into.buffer);
  t.deepEqual([...two], [...key(7), ...key(8)]);
  t.throws(() => u32KeyRange(0, 5, into), { instanceOf: RangeError, message: /5 keys do not fit in 16 bytes/ });
  t.throws(() => map.setPerCpuBatchPacked(u32KeyRange(0, 2), new Uint8Array(cpus * stride)), { instanceOf: RangeError, message: /not whole elements/ });
  t.throws(() => map.setPerCpuBatchPacked(new Uint8Array(6), new Uint8Array(0)), { instanceOf: RangeError, message: /not whole elements/ });
  t.throws(() => obj.map('scratch').setPerCpuBatchPacked(u32KeyRange(0, 1), new Uint8Array(8)), { instanceOf: LibbpfError, message: /not a per-CPU map/ });
  t.deepEqual(map.setPerCpuBatchPacked(new Uint8Array(0), new Uint8Array(0)), { count: 0, batched: true });
  t.truthy(cleanup);
});

test('BpfMap.getBatch - walks a hash map across calls', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'hash', name: 'hbatch', keySize: 4, valueSize: 8, maxEntries: 2048 });
  const keys = Array.from({ length: 1500 }, (_, i) => key(i * 7));
  map.setBatch(keys, keys.map((_, i) => value(BigInt(i * 7 + 1))));
  const read = map.getBatch(5000);
  t.is(read.keys.length, 1500);
  const pairs = read.keys.map((k, i) => [u32.decode(k), u64.decode(read.values[i] as Uint8Array)] as const).sort((a, b) => a[0] - b[0]);
  t.deepEqual(pairs, keys.map((_, i) => [i * 7, BigInt(i * 7 + 1)] as const));
  // Whole buckets only: a short read stops before a bucket that would not fit.
  const some = map.getBatch(10).keys.length;
  t.true(some >= 1 && some <= 10, `read ${some}`);
  t.throws(() => map.getBatch(-1), { instanceOf: RangeError });
  t.truthy(cleanup);
});

test('BpfMap.getBatches - reads every element of a hash a chunk per call, and an empty map as nothing', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'hash', name: 'hbatches', keySize: 4, valueSize: 8, maxEntries: 4096 });
  t.deepEqual([...map.getBatches(16)], []);
  const keys = Array.from({ length: 3000 }, (_, i) => key(i * 3));
  map.setBatch(keys, keys.map((_, i) => value(BigInt(i))));
  const chunks = [...map.getBatches(256)];
  t.true(chunks.length >= 12, `${chunks.length} chunks`);
  t.true(chunks.every((chunk) => chunk.count <= 256 && chunk.keys.length === chunk.count * 4 && chunk.values.length === chunk.count * 8));
  const pairs = chunks.flatMap((chunk) => Array.from({ length: chunk.count }, (_, i) => [u32.decode(chunk.keys.subarray(i * 4)), u64.decode(chunk.values.subarray(i * 8))] as const));
  pairs.sort((a, b) => a[0] - b[0]);
  t.deepEqual(pairs, keys.map((_, i) => [i * 3, BigInt(i)] as const));
  // A chunk of 1 still works: a bucket holding more elements is read with a larger buffer.
  t.is([...map.getBatches(1)].reduce((n, chunk) => n + chunk.count, 0), 3000);
  t.throws(() => [...map.getBatches(0)], { instanceOf: RangeError });
  t.truthy(cleanup);
});

test('BpfMap.getBatches - into: every chunk read into buffers the caller keeps, walk after walk; a bucket larger than the chunk grows them there', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  const map = BpfMap.create({ type: 'hash', name: 'hbatchinto', keySize: 4, valueSize: 8, maxEntries: 4096 });
  const keys = Array.from({ length: 3000 }, (_, i) => key(i * 3));
  map.setBatch(keys, keys.map((_, i) => value(BigInt(i))));
  const into = { keys: new Uint8Array(0), values: new Uint8Array(0) };
  const walk = (chunk: number): [number, bigint][] => {
    const pairs: [number, bigint][] = [];
    for (const c of map.getBatches(chunk, into)) {
      t.is(c.keys.buffer, into.keys.buffer, 'keys read into the caller buffer');
      t.is(c.values.buffer, into.values.buffer, 'values read into the caller buffer');
      for (let i = 0; i < c.count; i++) pairs.push([u32.decode(c.keys.subarray(i * 4)), u64.decode(c.values.subarray(i * 8))]);
    }
    return pairs.sort((a, b) => a[0] - b[0]);
  };
  const expected = keys.map((_, i): [number, bigint] => [i * 3, BigInt(i)]);
  t.deepEqual(walk(256), expected);
  t.true(into.keys.length >= 256 * 4 && into.values.length >= 256 * 8, 'sized by the walk');
  const [k, v] = [into.keys, into.values];
  t.deepEqual(walk(256), expected, 'a second walk: the same elements');
  t.is(into.keys, k, 'a second walk of the same chunk: the same buffers');
  t.is(into.values, v);
  // A chunk of 1: a bucket holding more elements is read with larger buffers, kept in `into`.
  const small = { keys: new Uint8Array(0), values: new Uint8Array(0) };
  t.is([...map.getBatches(1, small)].reduce((n, c) => n + c.count, 0), 3000);
  t.true(small.keys.length >= 4 && small.values.length >= 8);
  t.truthy(cleanup);
});

test('BpfMap.typed - typed get/set/delete/entries/setBatch', (t) => {
  using cleanup = { [Symbol.dispose]: () => raw.close() };
  const raw = BpfMap.create({ type: 'hash', name: 'typed', keySize: 4, valueSize: 8, maxEntries: 8 });
  const map = raw.typed(u32, u64);
  map.set(1, 100n);
  t.is(map.get(1), 100n);
  t.deepEqual(map.setBatch([[2, 200n], [3, 300n]]), { count: 2, batched: true });
  t.deepEqual([...map.entries()].sort((a, b) => a[0] - b[0]), [[1, 100n], [2, 200n], [3, 300n]]);
  t.deepEqual([...map.keys()].sort(), [1, 2, 3]);
  t.true(map.delete(2));
  t.is(map.get(2), undefined);
  t.throws(() => raw.typed(u16, u64), { instanceOf: RangeError, message: /key codec is 2 bytes/ });
  t.truthy(cleanup);
});

test('BpfMap.setBatch - falls back to single updates with the reason when the type has no batch', (t) => {
  using cleanup = { [Symbol.dispose]: () => map.close() };
  // devmap has no batch operations (kernel returns ENOTSUPP); its values are ifindexes (lo = 1).
  const map = BpfMap.create({ type: 'devmap', name: 'nobatch', keySize: 4, valueSize: 4, maxEntries: 4 });
  const result = map.setBatch([key(0), key(1)], [encode(u32, 1), encode(u32, 1)]);
  t.false(result.batched);
  t.is(result.count, 2);
  t.regex(result.fallbackReason ?? '', /devmap map: ENOTSUPP/);
  t.deepEqual(map.get(key(1)), encode(u32, 1));
  t.truthy(cleanup);
});

test('BpfMap.create - lpm_trie and errors carry code and operation', (t) => {
  const lpm = BpfMap.create({ type: 'lpm_trie', name: 'cidrs', keySize: 8, valueSize: 4, maxEntries: 16, flags: 1 /* BPF_F_NO_PREALLOC */ });
  lpm.set(new Uint8Array([24, 0, 0, 0, 10, 1, 2, 0]), encode(u32, 1));
  t.deepEqual(lpm.get(new Uint8Array([32, 0, 0, 0, 10, 1, 2, 77])), encode(u32, 1)); // longest-prefix match
  lpm.close();
  lpm.close();
  const bad = t.throws(() => BpfMap.create({ type: 'lpm_trie', name: 'bad', keySize: 8, valueSize: 4, maxEntries: 16 }), { instanceOf: LibbpfError });
  t.is(bad?.code, 'EINVAL');
  t.is(bad?.operation, 'map create name=bad type=lpm_trie');
  t.throws(() => BpfMap.create({ type: 'no_such_type', keySize: 4, valueSize: 4, maxEntries: 1 }), { instanceOf: NotFoundError, message: /known map types: .*hash/ });
});

test('BpfMap.fromId - opens the same map; close twice is safe; closed maps say EBADF', (t) => {
  const source = obj.map('scratch');
  const again = BpfMap.fromId(source.id);
  t.like(again, { name: 'scratch', type: 'hash', keySize: 4, valueSize: 8, maxEntries: 64 });
  t.is(again.id, source.id);
  t.not(again.fd, source.fd);
  again.close();
  again.close();
  t.throws(() => again.get(key(1)), { instanceOf: LibbpfError, message: /EBADF/ });
  t.throws(() => BpfMap.fromId(0x7ffffff0), { instanceOf: NotFoundError, message: /^map open id=2147483632: ENOENT/ });
});

test('BpfMap - asyncDispose closes an owned map', async (t) => {
  let fd = -1;
  {
    await using map = BpfMap.create({ type: 'array', keySize: 4, valueSize: 4, maxEntries: 1 });
    fd = map.fd;
  }
  t.true(fd >= 0);
});

test('BpfMap.withMapped - a mmapable array shares its values with the syscall path both ways; another map is refused', (t) => {
  const map = BpfMap.create({ type: 'array', name: 'mapped', keySize: 4, valueSize: 12, maxEntries: 1000, flags: 0x400 /* BPF_F_MMAPABLE */ });
  t.teardown(() => map.close());
  map.set(key(999), new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]));
  const seen = map.withMapped((values) => {
    // A 12-byte value takes 16 bytes: element i at i * 16; the mapping is whole pages.
    t.is(values.byteLength, 16_384);
    const last = Array.from(values.subarray(999 * 16, 999 * 16 + 12));
    values.set([42, 0, 0, 0], 7 * 16);
    Atomics.store(new BigUint64Array(values.buffer, values.byteOffset, values.byteLength / 8), 2 * 2, 0x0102030405060708n);
    return last;
  });
  t.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  t.deepEqual(map.get(key(7)), new Uint8Array([42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  t.deepEqual(map.get(key(2)), new Uint8Array([8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0]));
  const plain = BpfMap.create({ type: 'array', name: 'plain', keySize: 4, valueSize: 8, maxEntries: 4 });
  t.teardown(() => plain.close());
  const refused = t.throws(() => plain.withMapped(() => t.fail('not called')), { instanceOf: LibbpfError });
  t.is(refused?.operation, 'map mmap name=plain length=4096');
});
