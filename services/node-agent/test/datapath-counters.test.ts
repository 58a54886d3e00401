// CounterTables on real kernel maps shaped like the object's (no programs, no interfaces):
// zeroing, per-CPU sums, folding into the carry by rule id, pruning, the stats slots.
import test from 'ava';
import { BpfMap, encode, u32 } from 'libbpf-ts';
import { RULE_SLOTS } from '../src/datapath/compile-tables.js';
import { CounterTables, STAT_SLOTS, type CounterTotals } from '../src/datapath/counters.js';
import { DEFAULT_RULE_ID } from '../src/datapath/rule-set.js';
import { epCounter } from '../src/datapath/table-codecs.js';

function maps(): { counters: BpfMap; stats: BpfMap; carry: BpfMap; close(): void } {
  const counters = BpfMap.create({ type: 'percpu_array', name: 'ep_counters', keySize: 4, valueSize: 16, maxEntries: 2 * RULE_SLOTS });
  const stats = BpfMap.create({ type: 'percpu_array', name: 'ep_stats', keySize: 4, valueSize: 16, maxEntries: 4 });
  const carry = BpfMap.create({ type: 'hash', name: 'ep_carry', keySize: 4, valueSize: 16, maxEntries: 64 });
  return { counters, stats, carry, close: () => [counters, stats, carry].forEach((map) => map.close()) };
}

const counter = (packets: number, bytes: number): Uint8Array => encode(epCounter, { packets: BigInt(packets), bytes: BigInt(bytes) });

test('counters - fold sums over CPUs into the carry by rule id, skips empty slots, adds to what was carried', (t) => {
  const m = maps();
  t.teardown(() => m.close());
  const tables = new CounterTables(m.counters, m.stats, m.carry);
  const slot = (index: number): Uint8Array => encode(u32, RULE_SLOTS + index); // generation 1
  // One value for every possible CPU: each CPU counted it.
  m.counters.setPerCpu(slot(0), [counter(1, 100)]);
  m.counters.setPerCpu(slot(1), [counter(3, 300)]);
  const cpus = m.counters.getPerCpu(slot(0))?.length ?? 0;
  t.true(cpus >= 1);
  t.deepEqual(tables.readGeneration(1, 3), [
    { packets: cpus, bytes: 100 * cpus },
    { packets: 3 * cpus, bytes: 300 * cpus },
    { packets: 0, bytes: 0 },
  ]);
  tables.fold(1, [7, 9]);
  tables.fold(1, [7, 9]);
  const carried: CounterTotals = new Map();
  tables.addCarry(carried);
  // A hash map iterates in no set order: compare as objects (keys in numeric order).
  t.deepEqual(
    Object.fromEntries(carried),
    {
      [DEFAULT_RULE_ID]: { packets: 2 * cpus, bytes: 200 * cpus },
      7: { packets: 6 * cpus, bytes: 600 * cpus },
    },
    'rule 9 counted nothing and is not carried',
  );
  // Live counts add to the carried ones under the same rule id.
  tables.addGeneration(carried, 1, [7, 9]);
  t.deepEqual(carried.get(7), { packets: 9 * cpus, bytes: 900 * cpus });
  t.deepEqual(carried.get(9), { packets: 0, bytes: 0 });

  tables.zero(1, 2);
  t.deepEqual(tables.readGeneration(1, 3), [0, 1, 2].map(() => ({ packets: 0, bytes: 0 })));
  tables.pruneCarry(new Set([7]));
  const pruned: CounterTotals = new Map();
  tables.addCarry(pruned);
  t.deepEqual([...pruned.keys()], [7]);
});

test('counters - stats slots follow enum ep_stat; maps of the wrong value size are refused', (t) => {
  const m = maps();
  t.teardown(() => m.close());
  const tables = new CounterTables(m.counters, m.stats, m.carry);
  m.stats.setPerCpu(encode(u32, STAT_SLOTS.malformed), [counter(2, 64)]);
  const cpus = m.stats.getPerCpu(encode(u32, 0))?.length ?? 0;
  const zero = { packets: 0, bytes: 0 };
  t.deepEqual(tables.readStats(), { nonIp: zero, malformed: { packets: 2 * cpus, bytes: 64 * cpus }, unconfigured: zero, rateLimited: zero });
  const narrow = BpfMap.create({ type: 'percpu_array', name: 'narrow', keySize: 4, valueSize: 8, maxEntries: 4 });
  t.teardown(() => narrow.close());
  t.throws(() => new CounterTables(m.counters, narrow, m.carry), { instanceOf: RangeError, message: /struct ep_counter is 16 bytes/ });
  t.throws(() => new CounterTables(m.counters, m.stats, narrow), { instanceOf: RangeError });
});

test('counters - per-CPU values differ and exceed 32 bits: each slot is their exact sum, in generation 0 and 1', (t) => {
  const m = maps();
  t.teardown(() => m.close());
  const tables = new CounterTables(m.counters, m.stats, m.carry);
  const cpus = m.counters.getPerCpu(encode(u32, 0))?.length ?? 0;
  const big = 2 ** 40 + 5;
  for (const generation of [0, 1]) {
    // CPU c counted c + 1 packets of `big` bytes each in the generation's slot 1 (rule id 7).
    m.counters.setPerCpu(encode(u32, generation * RULE_SLOTS + 1), Array.from({ length: cpus }, (_, cpu) => counter(cpu + 1 + generation, big * (cpu + 1))));
  }
  const triangle = (cpus * (cpus + 1)) / 2;
  t.deepEqual(tables.readGeneration(0, 2), [{ packets: 0, bytes: 0 }, { packets: triangle, bytes: big * triangle }]);
  t.deepEqual(tables.readGeneration(1, 2)[1], { packets: triangle + cpus, bytes: big * triangle });
  const totals: CounterTotals = new Map();
  tables.addGeneration(totals, 0, [7]);
  tables.addGeneration(totals, 1, [7]);
  t.deepEqual(totals.get(7), { packets: 2 * triangle + cpus, bytes: 2 * big * triangle });
  tables.fold(1, [7]);
  const carried: CounterTotals = new Map();
  tables.addCarry(carried);
  t.deepEqual(Object.fromEntries(carried), { 7: { packets: triangle + cpus, bytes: big * triangle } });
});

test('counters - a generation of many slots is read in pieces: every slot summed at its place, across the pieces and in both generations, read after read', (t) => {
  const m = maps();
  t.teardown(() => m.close());
  const tables = new CounterTables(m.counters, m.stats, m.carry);
  const { cpus } = m.counters.perCpuLayout();
  // Slot i of generation g counted i + g packets of 3 bytes on every CPU (65,537 slots: more
  // than one piece of 128 KiB, whatever the CPU count up to 64).
  const count = Math.min(RULE_SLOTS, 65_537);
  for (const generation of [0, 1]) {
    const keys = Array.from({ length: count }, (_, i) => encode(u32, generation * RULE_SLOTS + i));
    m.counters.setPerCpuBatch(keys, keys.map((_, i) => [counter(i + generation, 3 * (i + generation))]));
  }
  for (const generation of [1, 0, 1]) {
    const read = tables.readGeneration(generation, count);
    t.is(read.length, count);
    const wrong = read.findIndex((c, i) => c.packets !== cpus * (i + generation) || c.bytes !== 3 * cpus * (i + generation));
    t.is(wrong, -1, `generation ${generation}: slot ${wrong} is ${JSON.stringify(read[wrong])}`);
  }
  // Reading past the map's end: what there is.
  t.is(tables.readGeneration(1, RULE_SLOTS + 10).length, RULE_SLOTS);
});

test('counters - readTotals hands out the same sums while nothing counts, and a new array (the old one untouched) once something does', (t) => {
  const m = maps();
  t.teardown(() => m.close());
  const tables = new CounterTables(m.counters, m.stats, m.carry);
  const { cpus } = m.counters.perCpuLayout();
  const live = { generation: 1, ids: [7, 9] };
  const idle = { generation: 0, ids: [7, 9] };
  m.counters.setPerCpu(encode(u32, RULE_SLOTS + 2), [counter(2, 200)]); // rule 9, live generation
  const first = tables.readTotals(live, idle, true);
  t.deepEqual([...first.packed.sums], [0, 0, 2 * cpus, 200 * cpus]);
  const second = tables.readTotals(live, idle, true);
  t.is(second.packed.sums, first.packed.sums, 'nothing counted: the same array');
  m.counters.setPerCpu(encode(u32, RULE_SLOTS + 1), [counter(1, 50)]); // rule 7 counts
  const third = tables.readTotals(live, idle, true);
  t.not(third.packed.sums, first.packed.sums);
  t.deepEqual([...third.packed.sums], [cpus, 50 * cpus, 2 * cpus, 200 * cpus]);
  t.deepEqual([...first.packed.sums], [0, 0, 2 * cpus, 200 * cpus], 'what was handed out before is as it was');
  // Only the last slot differs: the new array keeps the slots before it (copied) and takes the new count.
  m.counters.setPerCpu(encode(u32, RULE_SLOTS + 2), [counter(3, 300)]);
  const fourth = tables.readTotals(live, idle, true);
  t.not(fourth.packed.sums, third.packed.sums);
  t.deepEqual([...fourth.packed.sums], [cpus, 50 * cpus, 3 * cpus, 300 * cpus]);
  t.deepEqual([...third.packed.sums], [cpus, 50 * cpus, 2 * cpus, 200 * cpus], 'the array before is untouched');
  // Only the default action's slot differs.
  m.counters.setPerCpu(encode(u32, RULE_SLOTS), [counter(4, 400)]);
  const fifth = tables.readTotals(live, idle, true);
  t.deepEqual(fifth.defaultAction, { packets: 4 * cpus, bytes: 400 * cpus });
  t.deepEqual([...fifth.packed.sums], [...fourth.packed.sums]);
  t.deepEqual(fourth.defaultAction, { packets: 0, bytes: 0 });
  const other = tables.readTotals({ generation: 1, ids: [7, 9] }, idle, true);
  t.not(other.packed.sums, fifth.packed.sums, 'other ids (a new array): a new array of sums');
  t.deepEqual([...other.packed.sums], [...fifth.packed.sums]);
});

test('counters - readTotals puts the idle generation and the carry at the live slot of each rule id (ids in any order, above 2^31 too), the rest as retired', (t) => {
  const m = maps();
  t.teardown(() => m.close());
  const tables = new CounterTables(m.counters, m.stats, m.carry);
  const { cpus } = m.counters.perCpuLayout();
  // 300 distinct ids, half of them above 2^31, in no order; the idle generation holds them rotated
  // by one slot, and one id the live generation does not have.
  const live = Array.from({ length: 300 }, (_, i) => ((i * 2_654_435_761) % 0xffff_ff00) + 1);
  t.is(new Set(live).size, 300);
  const idleIds = [...live.slice(1), 0xffff_fe00];
  for (let slot = 1; slot <= 300; slot++) m.counters.setPerCpu(encode(u32, slot), [counter(slot, 10 * slot)]); // generation 0 (idle)
  // The carry: one live id, one id no generation holds.
  m.carry.set(encode(u32, live[150]!), counter(1000, 1000));
  m.carry.set(encode(u32, 77), counter(5, 50));
  const totals = tables.readTotals({ generation: 1, ids: live }, { generation: 0, ids: idleIds }, true);
  const sums = totals.packed.sums;
  // live[i] is at live slot i + 1; the idle generation counted it at slot i (idleIds[i - 1]), live[0] nowhere.
  for (let i = 0; i < 300; i++) {
    const fromIdle = i === 0 ? 0 : i * cpus;
    const carried = i === 150 ? 1000 : 0;
    t.is(sums[2 * i], fromIdle + carried, `packets of live[${i}]`);
    t.is(sums[2 * i + 1], 10 * fromIdle + carried, `bytes of live[${i}]`);
  }
  t.deepEqual(Object.fromEntries(totals.retired), { [0xffff_fe00]: { packets: 300 * cpus, bytes: 3000 * cpus }, 77: { packets: 5, bytes: 50 } });
});
