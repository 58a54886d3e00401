// The prefix lists that rules name, seen from the agent (bpf/include/ep_lists.h; bpf/README.md,
// "Prefix lists in rules"): one pair of membership tries per list, in a slot of ep_lst4/ep_lst6
// held by the list's name whatever generation names it; per generation (and for the shadow
// union) the lists its rules name (struct ep_lref) and their rule vectors (ep_lvec).
import { parseCidr, prefixChangesBetween, type Cidr } from '@edgeplane/proto';
import type { BpfMap } from 'libbpf-ts';
import { BlocklistPacker, type BlocklistEntry } from './blocklist.js';
import { addToTries, buildTries, removeFromTries, type TriePair } from './blocklist-tables.js';
import type { ListVectors } from './compile-tables.js';
import { DatapathError } from './errors.js';
import type { RuleSetList } from './rule-set.js';

/** EP_LIST_REFS: lists one rule set names (MAX_RULE_SET_PREFIX_LISTS). */
export const LIST_REFS = 16;
/** EP_LIST_SLOTS: list tries held at once. */
export const LIST_SLOTS = 64;
/** sizeof(struct ep_lref): src mask, dst mask, a slot byte per list. */
export const LREF_SIZE = 8 + LIST_REFS;
/** Changes up to this many prefixes are written into a list's tries in place; more build new tries. */
const MAX_IN_PLACE = 4096;

/**
 * The texts added and removed from `before` to `after`, compared whole (a pass over both), or
 * undefined past MAX_IN_PLACE of them.
 */
function differenceOf(before: readonly string[], after: readonly string[]): { add: string[]; remove: string[] } | undefined {
  const gone = new Set(before);
  const add: string[] = [];
  for (const text of after) {
    if (gone.delete(text)) continue;
    add.push(text);
    if (add.length > MAX_IN_PLACE) return undefined;
  }
  if (add.length + gone.size > MAX_IN_PLACE) return undefined;
  return { add, remove: [...gone] };
}

/** The maps ListTables borrows, by their names in the object. */
export interface ListMaps {
  readonly ep_lst4: BpfMap;
  readonly ep_lst6: BpfMap;
  readonly ep_lref: BpfMap;
  readonly ep_lvec: BpfMap;
  readonly ep_shadow_lref: BpfMap;
  readonly ep_shadow_lvec: BpfMap;
}

/** What a slot holds, as this process wrote it. */
interface HeldList {
  readonly name: string;
  prefixes: readonly string[];
  tries: TriePair;
}

/** Where the lists of one rule set are: slot per list, in the rule set's (name) order. */
export interface ListPlacement {
  readonly slots: readonly number[];
  /** Names and slots, for the generation's fingerprint ('' when the rule set names no list). */
  readonly key: string;
}

const u32Bytes = (n: number): Uint8Array => new Uint8Array(new Uint32Array([n]).buffer);

/**
 * The list tries and the per-generation list tables. A slot is reused for its name (its tries
 * updated in place, or replaced by one write of each outer map); a new name takes a slot no
 * generation and no shadow union names. Owns the inner maps it opened; close() releases them
 * (the outer maps keep the tries enforcing).
 */
export class ListTables {
  readonly #maps: ListMaps;
  readonly #held: (HeldList | undefined)[] = new Array<HeldList | undefined>(LIST_SLOTS).fill(undefined);

  constructor(maps: ListMaps) {
    this.#maps = maps;
  }

  /**
   * Makes every list of `lists` held in a slot with its prefixes as given: in place when this
   * process holds it with a few prefixes different, whole into new tries (one switch per family)
   * otherwise. A list held under its name already is updated where it is, so whatever generation
   * names it meets the new prefixes at once (a list's change is enforced as soon as it is
   * written, as the blocklist's is).
   * @param busy slots that must not be taken for another name (named by a live table).
   * @returns the lists' slots.
   * @throws DatapathError (a list being written may hold part of its change; it is written whole next time).
   */
  place(lists: readonly RuleSetList[], busy: ReadonlySet<number>): ListPlacement {
    const slots: number[] = [];
    for (const list of lists) slots.push(this.#hold(list, busy, slots));
    return { slots, key: lists.map((list, i) => `${list.name}=${slots[i]}`).join(',') };
  }

  /** The slots the lists of generation `generation` (or the shadow union: 'shadow') name, as the maps say. */
  namedBy(generation: number | 'shadow'): Set<number> {
    const bytes = generation === 'shadow' ? this.#maps.ep_shadow_lref.get(u32Bytes(0)) : this.#maps.ep_lref.get(u32Bytes(generation));
    const out = new Set<number>();
    if (bytes === undefined) return out;
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const mask = view.getUint32(0, true) | view.getUint32(4, true);
    for (let i = 0; i < LIST_REFS; i++) if (mask & (1 << i)) out.add((bytes[8 + i] as number) & (LIST_SLOTS - 1));
    return out;
  }

  /**
   * Writes which lists generation `generation` (or the shadow union) names and their rule vectors.
   * @throws Error from the kernel.
   */
  writeTables(generation: number | 'shadow', vectors: readonly ListVectors[], placement: ListPlacement): void {
    const lref = new Uint8Array(LREF_SIZE);
    const view = new DataView(lref.buffer);
    let src = 0;
    let dst = 0;
    const keys: Uint8Array[] = [];
    const values: Uint8Array[] = [];
    const base = generation === 'shadow' ? 0 : generation * 2 * LIST_REFS;
    vectors.forEach((list, i) => {
      lref[8 + i] = placement.slots[i] as number;
      if (list.src !== undefined) {
        src |= 1 << i;
        keys.push(u32Bytes(base + i));
        values.push(list.src);
      }
      if (list.dst !== undefined) {
        dst |= 1 << i;
        keys.push(u32Bytes(base + LIST_REFS + i));
        values.push(list.dst);
      }
    });
    view.setUint32(0, src >>> 0, true);
    view.setUint32(4, dst >>> 0, true);
    const vec = generation === 'shadow' ? this.#maps.ep_shadow_lvec : this.#maps.ep_lvec;
    if (keys.length > 0) vec.setBatch(keys, values);
    (generation === 'shadow' ? this.#maps.ep_shadow_lref : this.#maps.ep_lref).set(u32Bytes(generation === 'shadow' ? 0 : generation), lref);
  }

  /** Releases the inner maps this object opened; idempotent. The tries keep enforcing. */
  close(): void {
    for (let slot = 0; slot < LIST_SLOTS; slot++) this.#forget(slot);
  }

  // The slot of `list`, holding its prefixes. `taken`: slots this placement already gave.
  #hold(list: RuleSetList, busy: ReadonlySet<number>, taken: readonly number[]): number {
    const at = this.#held.findIndex((held) => held?.name === list.name);
    if (at >= 0) {
      const held = this.#held[at] as HeldList;
      if (held.prefixes === list.prefixes) return at;
      try {
        if (this.#updateInPlace(held, list.prefixes)) return at;
      } catch (cause) {
        this.#forget(at);
        throw new DatapathError(`update prefix list ${list.name} slot=${at}`, { cause });
      }
      this.#load(at, list);
      return at;
    }
    // A free slot first; else one holding a list nothing names (its tries are replaced).
    const usable = (slot: number): boolean => !busy.has(slot) && !taken.includes(slot);
    let slot = this.#held.findIndex((held, i) => held === undefined && usable(i) && !this.#installed(i));
    if (slot < 0) slot = this.#held.findIndex((_, i) => usable(i));
    if (slot < 0) throw new DatapathError(`place prefix list ${list.name}: all ${LIST_SLOTS} list slots are named by live tables`);
    this.#load(slot, list);
    return slot;
  }

  // Whether the outer maps hold tries at `slot` (left by an earlier process: not known here).
  #installed(slot: number): boolean {
    return this.#maps.ep_lst4.get(u32Bytes(slot)) !== undefined;
  }

  // Writes `prefixes` into `held`'s tries by difference. @returns false (nothing written) when the change is large or does not fit.
  #updateInPlace(held: HeldList, prefixes: readonly string[]): boolean {
    const changes = prefixChangesBetween(held.prefixes, prefixes, MAX_IN_PLACE) ?? differenceOf(held.prefixes, prefixes);
    if (changes === undefined) return false;
    const parse = (text: string): Cidr => {
      const cidr = parseCidr(text);
      if (cidr === undefined) throw new Error(`prefix list entry ${JSON.stringify(text)} is not a CIDR`);
      return cidr;
    };
    const adds: BlocklistEntry[] = changes.add.map((text) => ({ cidr: parse(text), expiresTaiNs: 0n, flags: 0 }));
    const removes = changes.remove.map(parse);
    const fits = (family: 4 | 6): boolean => {
      const trie = family === 4 ? held.tries.v4 : held.tries.v6;
      const added = adds.filter((entry) => entry.cidr.family === family).length;
      return trie.count + added - removes.filter((cidr) => cidr.family === family).length <= trie.capacity;
    };
    if (!fits(4) || !fits(6)) return false;
    // Removes first, so that the adds always have room.
    removeFromTries(held.tries, removes);
    if (!addToTries(held.tries, adds)) throw new Error('list tries full after the removals');
    held.prefixes = prefixes;
    return true;
  }

  // Builds `list` into new tries and installs them at `slot` (one write per family).
  #load(slot: number, list: RuleSetList): void {
    let tries: (TriePair & { batched: boolean }) | undefined;
    try {
      const packer = new BlocklistPacker({ v4: list.prefixes.length });
      for (const text of list.prefixes) {
        if (!packer.addText(text)) throw new Error(`prefix list entry ${JSON.stringify(text)} is not a CIDR`);
      }
      tries = buildTries(packer.finish(), 'ep_lst');
      this.#forget(slot);
      this.#maps.ep_lst4.setInnerMap(u32Bytes(slot), tries.v4.map);
      this.#maps.ep_lst6.setInnerMap(u32Bytes(slot), tries.v6.map);
      this.#held[slot] = { name: list.name, prefixes: list.prefixes, tries };
    } catch (cause) {
      if (tries !== undefined && this.#held[slot]?.tries !== tries) {
        tries.v4.map.close();
        tries.v6.map.close();
      }
      throw new DatapathError(`load prefix list ${list.name} slot=${slot} prefixes=${list.prefixes.length}`, { cause });
    }
  }

  #forget(slot: number): void {
    const held = this.#held[slot];
    if (held === undefined) return;
    held.tries.v4.map.close();
    held.tries.v6.map.close();
    this.#held[slot] = undefined;
  }
}
