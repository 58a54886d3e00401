// Differences between two counter reads (rule-counts.ts eachMoved): packed reads of the same ids,
// of ids replaced in place or shifted (an apply between the reads), rules retired, and reads
// without packed counts. Pure: no kernel.
import test from 'ava';
import type { Counter, DatapathCounters } from '../src/datapath/datapath.js';
import { eachMoved, lazyRules } from '../src/datapath/rule-counts.js';

const zero: Counter = { packets: 0, bytes: 0 };

/** A read as the eBPF datapath gives it: packed sums by live id, `rules` built when asked for. */
function packedRead(counts: [id: number, packets: number][], retired: [number, number][] = [], sameIds?: readonly number[]): DatapathCounters {
  const ids = sameIds ?? counts.map(([id]) => id);
  const sums = new Float64Array(counts.flatMap(([, packets]) => [packets, packets * 100]));
  const rules = lazyRules({ ids, sums });
  return {
    get rules() {
      return rules();
    },
    packed: { ids, sums },
    retired: new Map(retired.map(([id, packets]) => [id, { packets, bytes: packets * 100 }])),
    defaultAction: zero, nonIp: zero, malformed: zero, unconfigured: zero, rateLimited: zero,
    conntrack: {} as DatapathCounters['conntrack'],
  };
}

function moved(current: DatapathCounters, before: DatapathCounters | undefined): [number, number, number][] {
  const out: [number, number, number][] = [];
  eachMoved(current, before, (id, packets, bytes) => out.push([id, packets, bytes]));
  return out;
}

test('rule counts - the moves between reads of the same, replaced, shifted and retired rules', (t) => {
  const first = packedRead([[10, 5], [11, 0], [12, 7], [13, 1]]);
  t.deepEqual(moved(first, undefined), [[10, 5, 500], [12, 7, 700], [13, 1, 100]], 'since zero');
  // The same ids array: slot by slot.
  const same = packedRead([[10, 6], [11, 0], [12, 7], [13, 4]], [], first.packed!.ids);
  t.deepEqual(moved(same, first), [[10, 1, 100], [13, 3, 300]]);
  // An apply replaced rule 12 by 20 at its slot (a new ids array): the others compared by id.
  const replaced = packedRead([[10, 8], [11, 2], [20, 3], [13, 1]], [[12, 9]]);
  t.deepEqual(moved(replaced, first), [[10, 3, 300], [11, 2, 200], [20, 3, 300], [12, 2, 200]], "the retired rule 12 moved from what it counted live");
  // An apply inserted rule 30 first: every rule's slot shifted.
  const shifted = packedRead([[30, 2], [10, 9], [11, 2], [20, 5], [13, 4]]);
  t.deepEqual(moved(shifted, replaced), [[30, 2, 200], [10, 1, 100], [20, 2, 200], [13, 3, 300]]);
  // A rule back live that `before` held retired: counted from its retired count.
  const back = packedRead([[12, 11], [10, 9]]);
  t.deepEqual(moved(back, replaced), [[12, 2, 200], [10, 1, 100]]);
  // A read without packed counts (the memory datapath) against a packed one, and the other way.
  const unpacked = (counts: [number, number][]): DatapathCounters => ({ rules: new Map(counts.map(([id, packets]) => [id, { packets, bytes: packets * 100 }])), defaultAction: zero, nonIp: zero, malformed: zero, unconfigured: zero, rateLimited: zero, conntrack: {} as DatapathCounters['conntrack'] });
  t.deepEqual(moved(unpacked([[10, 12], [13, 4]]), shifted), [[10, 3, 300]]);
  t.deepEqual(moved(packedRead([[10, 13], [13, 6]]), unpacked([[10, 12], [13, 4]])), [[10, 1, 100], [13, 2, 200]]);
});
