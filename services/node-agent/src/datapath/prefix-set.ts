// Membership of an address in a prefix list, for the reference classifier and the in-memory
// datapath (the eBPF datapath looks lists up in LPM tries: bpf/include/ep_lists.h). Built once per
// list array (lists are inputs, never changed after they were applied), linear in its prefixes; a
// lookup costs one set probe per distinct prefix length of the address's family.
import { parseCidr } from '@edgeplane/proto';
import type { RuleSetList } from './rule-set.js';

/** The prefixes of one list, by family and prefix length: the masked address as a key. */
export class PrefixSet {
  readonly #v4 = new Map<number, Set<number>>();
  readonly #v6 = new Map<number, Set<string>>();

  /** @throws Error for a text that is not a CIDR (lists are validated before they reach a node). */
  constructor(prefixes: readonly string[]) {
    for (const text of prefixes) {
      const cidr = parseCidr(text);
      if (cidr === undefined) throw new Error(`prefix list entry ${JSON.stringify(text)} is not a CIDR`);
      if (cidr.family === 4) setOf(this.#v4, cidr.prefixLength).add(v4Key(cidr.address, cidr.prefixLength));
      else setOf(this.#v6, cidr.prefixLength).add(v6Key(cidr.address, cidr.prefixLength));
    }
  }

  /** Whether a prefix of the list holds `address` (4 bytes: IPv4, 16: IPv6). */
  has(address: Uint8Array): boolean {
    if (address.length === 4) {
      for (const [length, keys] of this.#v4) if (keys.has(v4Key(address, length))) return true;
      return false;
    }
    for (const [length, keys] of this.#v6) if (keys.has(v6Key(address, length))) return true;
    return false;
  }
}

const built = new WeakMap<readonly string[], PrefixSet>();

/** The PrefixSet of a list's array, built at its first use. */
export function prefixSetOf(prefixes: readonly string[]): PrefixSet {
  let set = built.get(prefixes);
  if (set === undefined) built.set(prefixes, (set = new PrefixSet(prefixes)));
  return set;
}

/** A membership test over the lists of a rule set: (name, address) -> in the list. */
export function listMembership(lists: readonly RuleSetList[]): (name: string, address: Uint8Array) => boolean {
  const sets = new Map(lists.map((list) => [list.name, list.prefixes] as const));
  return (name, address) => {
    const prefixes = sets.get(name);
    return prefixes !== undefined && prefixSetOf(prefixes).has(address);
  };
}

function setOf<K>(map: Map<number, Set<K>>, length: number): Set<K> {
  let set = map.get(length);
  if (set === undefined) map.set(length, (set = new Set()));
  return set;
}

function v4Key(address: Uint8Array, length: number): number {
  const value = (((address[0] as number) << 24) | ((address[1] as number) << 16) | ((address[2] as number) << 8) | (address[3] as number)) >>> 0;
  return length === 0 ? 0 : value >>> (32 - length);
}

function v6Key(address: Uint8Array, length: number): string {
  let key = '';
  const whole = length >> 3;
  for (let i = 0; i < whole; i++) key += String.fromCharCode(address[i] as number);
  const rest = length & 7;
  if (rest > 0) key += String.fromCharCode((address[whole] as number) & (0xff << (8 - rest)) & 0xff);
  return key;
}
