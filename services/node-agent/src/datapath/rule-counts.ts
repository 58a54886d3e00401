// Reading packed rule counts (DatapathCounters.packed): the differences between two reads, and a
// by-id map built only for readers that ask for one. No eBPF here: the agent's logic uses it
// with any datapath.
import type { Counter, DatapathCounters, PackedRuleCounts } from './datapath.js';

/**
 * Calls `fn` with each rule whose count moved between two reads (`before` absent: since zero),
 * with the difference. A packed read against a packed read of the same live ids is compared slot
 * by slot; otherwise by id, a rule `before` did not have live looked up in its retired counts.
 * Live rules come first, then retired ones.
 */
export function eachMoved(current: DatapathCounters, before: DatapathCounters | undefined, fn: (id: number, packets: number, bytes: number) => void): void {
  const was = (id: number): Counter | undefined => before?.rules.get(id) ?? before?.retired?.get(id);
  const packed = current.packed;
  if (packed !== undefined) {
    const { ids, sums } = packed;
    const aligned = before?.packed !== undefined && before.packed.ids === ids ? before.packed.sums : undefined;
    for (let i = 0; i < ids.length; i++) {
      let packets = sums[2 * i]!;
      let bytes = sums[2 * i + 1]!;
      if (aligned !== undefined) {
        packets -= aligned[2 * i]!;
        bytes -= aligned[2 * i + 1]!;
      } else if (packets > 0 && before !== undefined) {
        const b = was(ids[i]!);
        packets -= b?.packets ?? 0;
        bytes -= b?.bytes ?? 0;
      }
      if (packets > 0) fn(ids[i]!, packets, bytes);
    }
  } else {
    for (const [id, c] of current.rules) {
      const b = was(id);
      if (c.packets - (b?.packets ?? 0) > 0) fn(id, c.packets - (b?.packets ?? 0), c.bytes - (b?.bytes ?? 0));
    }
  }
  for (const [id, c] of current.retired ?? []) {
    const b = was(id);
    if (c.packets - (b?.packets ?? 0) > 0) fn(id, c.packets - (b?.packets ?? 0), c.bytes - (b?.bytes ?? 0));
  }
}

/** A `rules` map over packed counts, built when first asked for (readers of every rule use `packed`). */
export function lazyRules(packed: PackedRuleCounts): () => ReadonlyMap<number, Counter> {
  let rules: Map<number, Counter> | undefined;
  return () => {
    if (rules === undefined) {
      rules = new Map();
      for (let i = 0; i < packed.ids.length; i++) rules.set(packed.ids[i]!, { packets: packed.sums[2 * i]!, bytes: packed.sums[2 * i + 1]! });
    }
    return rules;
  };
}
