// Compiles a rule set into the exact bytes of the datapath's tables (bpf/include/ep_tables.h).
// Pure: no kernel, no I/O. bpf/README.md explains the scheme; in short, each of the three
// fields (source prefix, destination prefix, protocol+port) maps a packet to a class (a set of
// rules that constrain that field and match it) plus a wildcard vector (rules that do not
// constrain it); the first set bit of the AND over the three fields is the matching rule.
import { createHash } from 'node:crypto';
import type { Cidr } from '@edgeplane/proto';
import { CapacityError } from './errors.js';
import { DEFAULT_RULE_ID, MAX_RULES, validateRuleSet, type NormalizedRule, type RuleSetSpec } from './rule-set.js';

/** u64 words in a rule vector (65,536 bits). */
export const VECTOR_WORDS = MAX_RULES / 64;
/** u64 words in a vector's summary (bit w set iff word w is nonzero). */
export const SUMMARY_WORDS = VECTOR_WORDS / 64;
/** Per generation: the default action plus one slot per rule, in the rules and counters arrays. */
export const RULE_SLOTS = MAX_RULES + 1;
/** Wildcard vectors per generation: src v4/v6, dst v4/v6, one per protocol slot. */
export const WILD_COUNT = 9;
/** Most (class, word) entries one rule set may need (about 64 bytes of kernel memory each). */
export const MAX_CLASS_WORDS = 1 << 20;
/** Most class memberships (rule x prefix pairs, before identical classes merge) the compiler builds. */
export const MAX_CLASS_MEMBERS = 1 << 24;

/** Byte sizes of the table entries, as in ep_tables.h. */
export const sizes = {
  lpmKey: 24,
  classRef: 8 + 8 * SUMMARY_WORDS,
  wordKey: 8,
  word: 8,
  bitvec: 8 * (SUMMARY_WORDS + VECTOR_WORDS),
  rule: 32,
  counter: 16,
} as const;

/** LPM tag byte: field in the high nibble, family or protocol slot in the low one. */
export const tags = { src: 0x00, dst: 0x10, l4: 0x20 } as const;
/** Protocol slots of the L4 field (wildcard vector index = 4 + slot). */
export const protocolSlots = { tcp: 0, udp: 1, icmp: 2, icmpv6: 3, other: 4 } as const;
/** Wildcard vector indexes. */
export const wildIndex = { src4: 0, src6: 1, dst4: 2, dst6: 3, l4: 4 } as const;
/** ep_action values. */
export const actionCodes = { allow: 0, deny: 1, rate_limit: 2 } as const;
/** EP_RULE_F_TRACK: high bit of ep_rule.action; an allowed packet creates a connection entry. */
export const RULE_FLAG_TRACK = 0x100;
/** struct ep_gen_cfg.flags bits (EP_GEN_F_*). */
export const genFlags = { trackEgress: 0x1, cut: 0x2, services: 0x4 } as const;

const NANO = 1_000_000_000n;

/** Entries of one map as packed arrays: entry i is keys[i*keySize..] -> values[i*valueSize..]. */
export interface MapEntriesSpec {
  readonly keySize: number;
  readonly valueSize: number;
  readonly count: number;
  readonly keys: Uint8Array;
  readonly values: Uint8Array;
}

/** Everything one generation of the datapath holds for a rule set. Inert; owns no kernel state. */
export interface TablesSpec {
  readonly ruleCount: number;
  /** Rule id per rule index. */
  readonly ruleIds: readonly number[];
  /** Distinct classes, the empty class 0 included. */
  readonly classCount: number;
  /** Inner LPM trie (ep_lpm): tagged prefix -> struct ep_class_ref. */
  readonly lpm: MapEntriesSpec;
  /** Inner hash (ep_cwords): { class, word } -> u64, nonzero words of non-empty classes only. */
  readonly classWords: MapEntriesSpec;
  /** WILD_COUNT struct ep_bitvec, written at ep_wild[gen * WILD_COUNT + i]. */
  readonly wild: Uint8Array;
  /** ruleCount + 1 struct ep_rule (slot 0 = default action), written at ep_rules[gen * RULE_SLOTS + i]. */
  readonly rules: Uint8Array;
  /** ep_gen_cfg.flags of the generation (genFlags: egress tracking, cut on deny). */
  readonly genFlags: number;
  /** sha-256 of all of the above: equal fingerprints mean identical tables. */
  readonly fingerprint: Uint8Array;
}

/**
 * The tables compiled last and the spec object they came from, both held weakly: the agent
 * applies one rule set object to the datapaths of both interface roles, one after the other,
 * and the second apply takes the first one's tables instead of compiling the same rule set
 * again (half the compile time and the peak memory of an apply). Weak, so nothing is kept
 * alive for it: once the tables are garbage, the next call compiles.
 */
let recent: { spec: WeakRef<RuleSetSpec>; tables: WeakRef<TablesSpec> } | undefined;

/**
 * Compiles `spec` into tables. A spec is an input, never changed after it was compiled: the same
 * spec object compiled again may get the same (read-only) tables.
 * @returns the tables; read-only, shared with other callers that compiled the same spec object.
 * @throws RuleSetError for an invalid rule; CapacityError for more than MAX_RULES rules, more
 * than MAX_CLASS_WORDS class words or MAX_CLASS_MEMBERS class memberships (deeply nested
 * prefixes or port ranges each shared by thousands of rules).
 */
export function compileTables(spec: RuleSetSpec): TablesSpec {
  const reused = recent?.spec.deref() === spec ? recent.tables.deref() : undefined;
  if (reused !== undefined) return reused;
  const tables = compileTablesOnce(spec);
  recent = { spec: new WeakRef(spec), tables: new WeakRef(tables) };
  return tables;
}

function compileTablesOnce(spec: RuleSetSpec): TablesSpec {
  const ruleSet = validateRuleSet(spec);
  const rules = ruleSet.rules;
  const wild = new Uint32Array((WILD_COUNT * sizes.bitvec) / 4);
  const prefixes = new Map<number | string, PrefixNode>();
  const addPrefix = (tag: number, width: number, value: number | Uint8Array, length: number, rule: number): void => {
    // Prefixes of up to 32 bits (IPv4, L4) key by one number (tag, length, value in 46 bits):
    // no bigint or string per rule. IPv6 keys by text.
    const big = typeof value === 'number' ? undefined : bytesToBigint(value);
    const key = big === undefined ? tag * 2 ** 38 + length * 2 ** 32 + (value as number) : `${tag}/${length}/${big}`;
    let node = prefixes.get(key);
    if (node === undefined) {
      node = { tag, width, value: big ?? BigInt(value as number), length, raw: value, rules: [], cls: [] };
      prefixes.set(key, node);
    }
    if (rule >= 0 && node.rules[node.rules.length - 1] !== rule) node.rules.push(rule);
  };
  // Tag-only entries: every lookup finds at least the empty class, so the program never misses.
  for (const tag of [tags.src | 4, tags.src | 6, tags.dst | 4, tags.dst | 6]) addPrefix(tag, tag & 4 ? 32 : 128, tag & 4 ? 0 : new Uint8Array(16), 0, -1);
  for (const slot of Object.values(protocolSlots)) addPrefix(tags.l4 | slot, 24, 0, 0, -1);

  for (const rule of rules) {
    addAddressField(rule.src, tags.src, wildIndex.src4, rule.index, wild, addPrefix);
    addAddressField(rule.dst, tags.dst, wildIndex.dst4, rule.index, wild, addPrefix);
    addL4Field(rule, wild, addPrefix);
  }

  // Each prefix's class = the rules of every stored prefix containing it (its ancestors and
  // itself): the longest match then stands for all of them. A sweep over the prefixes in
  // (value, length) order keeps the chain of ancestors on a stack.
  const byTag = new Map<number, PrefixNode[]>();
  for (const node of prefixes.values()) {
    const list = byTag.get(node.tag) ?? [];
    list.push(node);
    byTag.set(node.tag, list);
  }
  let members = 0;
  for (const list of byTag.values()) {
    list.sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : a.length - b.length));
    const stack: PrefixNode[] = [];
    for (const node of list) {
      while (stack.length > 0 && !contains(stack[stack.length - 1] as PrefixNode, node)) stack.pop();
      const parent = stack[stack.length - 1];
      node.cls = parent === undefined ? node.rules : mergeSorted(parent.cls, node.rules);
      members += node.cls.length;
      if (members > MAX_CLASS_MEMBERS) {
        throw new CapacityError('class-members', MAX_CLASS_MEMBERS, members, 'too many rules share nested prefixes or overlapping port ranges; merge rules or flatten prefixes');
      }
      stack.push(node);
    }
  }

  // Identical classes share an id; 0 is the empty class. An id is a hash of the class's rules
  // (probed upwards on a collision, in this deterministic order), not its place in the order:
  // a change to one rule changes the ids of the classes that hold it and no others, so the
  // tables of two rule sets a rule apart differ in a few entries (the datapath writes only those).
  const byId = new Map<number, readonly number[]>([[0, []]]);
  const classes: [number, readonly number[]][] = [[0, []]];
  const idOf = new Map<readonly number[], number>();
  let classWordCount = 0;
  const lpmKeys = new Uint8Array(prefixes.size * sizes.lpmKey);
  const lpmValues = new Uint8Array(prefixes.size * sizes.classRef);
  const lpmKeyView = new DataView(lpmKeys.buffer);
  const lpmValueView = new DataView(lpmValues.buffer);
  let entry = 0;
  for (const node of prefixes.values()) {
    let id = node.cls.length === 0 ? 0 : idOf.get(node.cls);
    if (id === undefined) {
      id = classHash(node.cls);
      for (;;) {
        const held = byId.get(id);
        if (held === undefined) {
          byId.set(id, node.cls);
          classes.push([id, node.cls]);
          classWordCount += countWords(node.cls);
          if (classWordCount > MAX_CLASS_WORDS) {
            throw new CapacityError('class-words', MAX_CLASS_WORDS, classWordCount, 'too many rules share nested prefixes or overlapping port ranges; merge rules or flatten prefixes');
          }
          break;
        }
        if (sameRules(held, node.cls)) break;
        id = id === 0xffff_ffff ? 1 : id + 1;
      }
      idOf.set(node.cls, id);
    }
    const keyOffset = entry * sizes.lpmKey;
    lpmKeyView.setUint32(keyOffset, 8 + node.length, true);
    lpmKeys[keyOffset + 4] = node.tag;
    if (typeof node.raw === 'number') {
      const bytes = node.width / 8;
      for (let i = 0; i < bytes; i++) lpmKeys[keyOffset + 5 + i] = (node.raw >>> (8 * (bytes - 1 - i))) & 0xff;
    } else {
      lpmKeys.set(node.raw, keyOffset + 5);
    }
    const valueOffset = entry * sizes.classRef;
    lpmValueView.setUint32(valueOffset, id, true);
    for (const rule of node.cls) setBit(lpmValueView, valueOffset + 8, rule >> 6);
    entry++;
  }

  const wordKeys = new Uint8Array(classWordCount * sizes.wordKey);
  const wordValues = new Uint8Array(classWordCount * sizes.word);
  const wordKeyView = new DataView(wordKeys.buffer);
  const wordValueView = new DataView(wordValues.buffer);
  let word = 0;
  classes.forEach(([id, cls]) => {
    let current = -1;
    for (const rule of cls) {
      const w = rule >> 6;
      if (w !== current) {
        current = w;
        wordKeyView.setUint32(word * sizes.wordKey, id, true);
        wordKeyView.setUint32(word * sizes.wordKey + 4, w, true);
        word++;
      }
      setBit(wordValueView, (word - 1) * sizes.word, rule & 63);
    }
  });

  const ruleBytes = new Uint8Array((rules.length + 1) * sizes.rule);
  const ruleView = new DataView(ruleBytes.buffer);
  const trackBit = (track: boolean): number => (track ? RULE_FLAG_TRACK : 0);
  ruleView.setUint32(0, actionCodes[ruleSet.defaultAction] | trackBit(ruleSet.trackDefault), true);
  ruleView.setUint32(4, DEFAULT_RULE_ID, true);
  for (const rule of rules) {
    const offset = (rule.index + 1) * sizes.rule;
    ruleView.setUint32(offset, actionCodes[rule.action] | trackBit(rule.track), true);
    ruleView.setUint32(offset + 4, rule.id, true);
    if (rule.rateLimit !== null) {
      const pps = BigInt(rule.rateLimit.pps);
      const burst = BigInt(rule.rateLimit.burst) * NANO;
      ruleView.setBigUint64(offset + 8, pps, true);
      ruleView.setBigUint64(offset + 16, burst, true);
      ruleView.setBigUint64(offset + 24, (burst + pps - 1n) / pps, true);
    }
  }

  const wildBytes = new Uint8Array(wild.buffer);
  const lpm: MapEntriesSpec = { keySize: sizes.lpmKey, valueSize: sizes.classRef, count: prefixes.size, keys: lpmKeys, values: lpmValues };
  const classWords: MapEntriesSpec = { keySize: sizes.wordKey, valueSize: sizes.word, count: classWordCount, keys: wordKeys, values: wordValues };
  const flags = (ruleSet.trackEgress ? genFlags.trackEgress : 0) | (ruleSet.cutOnDeny ? genFlags.cut : 0);
  const hash = createHash('sha256');
  // Generation flags are hashed only when set: a rule set without them keeps the fingerprint the
  // layout-1 agent gave it, so a node upgraded in place finds its live tables to be its own
  // (bpf/README.md, "Upgrades and the pinned layout").
  const flagBytes = flags === 0 ? [] : [new Uint8Array(new Uint32Array([flags]).buffer)];
  for (const part of [lpmKeys, lpmValues, wordKeys, wordValues, wildBytes, ruleBytes, ...flagBytes]) {
    hash.update(new Uint32Array([part.length]));
    hash.update(part);
  }
  return {
    ruleCount: rules.length,
    ruleIds: rules.map((rule) => rule.id),
    classCount: classes.length,
    lpm,
    classWords,
    wild: wildBytes,
    rules: ruleBytes,
    genFlags: flags,
    fingerprint: new Uint8Array(hash.digest()),
  };
}

/**
 * The elementary prefixes covering the inclusive range from..to of a `bits`-wide space.
 * @returns [value, length] pairs, at most 2 * bits - 2 of them.
 */
export function rangeToPrefixes(from: number, to: number, bits: number): [number, number][] {
  const out: [number, number][] = [];
  let start = from;
  while (start <= to) {
    let size = 0;
    // Largest aligned block starting at `start` that stays within the range.
    while (size < bits && start % 2 ** (size + 1) === 0 && start + 2 ** (size + 1) - 1 <= to) size++;
    out.push([start, bits - size]);
    start += 2 ** size;
  }
  return out;
}

// Rule sets repeat the same few port ranges thousands of times.
const portPrefixCache = new Map<number, readonly [number, number][]>();
function portPrefixes(from: number, to: number): readonly [number, number][] {
  const key = from * 65536 + to;
  let prefixes = portPrefixCache.get(key);
  if (prefixes === undefined) {
    prefixes = rangeToPrefixes(from, to, 16);
    if (portPrefixCache.size > 4096) portPrefixCache.clear();
    portPrefixCache.set(key, prefixes);
  }
  return prefixes;
}

interface PrefixNode {
  readonly tag: number;
  readonly width: number;
  readonly value: bigint;
  readonly length: number;
  /** The value again, as a number (up to 32 bits) or its bytes (IPv6), for writing keys without bigint arithmetic. */
  readonly raw: number | Uint8Array;
  readonly rules: number[];
  cls: number[];
}

type AddPrefix = (tag: number, width: number, value: number | Uint8Array, length: number, rule: number) => void;

function addAddressField(cidrs: readonly Cidr[] | null, tag: number, wild4: number, rule: number, wild: Uint32Array, addPrefix: AddPrefix): void {
  if (cidrs === null) {
    setVectorBit(wild, wild4, rule);
    setVectorBit(wild, wild4 + 1, rule);
    return;
  }
  for (const cidr of cidrs) {
    if (cidr.prefixLength === 0) {
      // 0.0.0.0/0 or ::/0: the whole family, which is what that family's wildcard vector is for.
      setVectorBit(wild, cidr.family === 4 ? wild4 : wild4 + 1, rule);
      continue;
    }
    // IPv4 prefixes become numeric keys (u32Of), IPv6 ones stay bytes: the compiler's fast path.
    addPrefix(tag | cidr.family, cidr.address.length * 8, cidr.family === 4 ? u32Of(cidr.address) : cidr.address, cidr.prefixLength, rule);
  }
}

function addL4Field(rule: NormalizedRule, wild: Uint32Array, addPrefix: AddPrefix): void {
  if (rule.protocol === null) {
    for (const slot of Object.values(protocolSlots)) setVectorBit(wild, wildIndex.l4 + slot, rule.index);
    return;
  }
  const slot = slotOf(rule.protocol);
  if (rule.ports === null) {
    setVectorBit(wild, wildIndex.l4 + slot, rule.index);
    return;
  }
  // L4 keys are 24 bits: a zero byte (a port follows; 1 would mean "no port") and the port.
  for (const range of rule.ports) {
    for (const [value, length] of portPrefixes(range.from, range.to)) addPrefix(tags.l4 | slot, 24, value, 8 + length, rule.index);
  }
}

/** The L4 protocol slot of an IP protocol number. */
export function slotOf(protocol: number): number {
  switch (protocol) {
    case 6:
      return protocolSlots.tcp;
    case 17:
      return protocolSlots.udp;
    case 1:
      return protocolSlots.icmp;
    case 58:
      return protocolSlots.icmpv6;
    default:
      return protocolSlots.other;
  }
}

function contains(outer: PrefixNode, inner: PrefixNode): boolean {
  if (inner.length < outer.length) return false;
  const shift = BigInt(outer.width - outer.length);
  return inner.value >> shift === outer.value >> shift;
}

function mergeSorted(a: readonly number[], b: readonly number[]): number[] {
  if (b.length === 0) return a as number[];
  const sortedB = [...b].sort((x, y) => x - y);
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < sortedB.length) {
    const x = i < a.length ? (a[i] as number) : Infinity;
    const y = j < sortedB.length ? (sortedB[j] as number) : Infinity;
    const next = Math.min(x, y);
    if (x === next) i++;
    if (y === next) j++;
    out.push(next);
  }
  return out;
}

/** A class's id: FNV-1a over its rule indexes, never 0 (the empty class's). */
function classHash(rules: readonly number[]): number {
  let h = 0x811c9dc5;
  for (const rule of rules) {
    h = Math.imul(h ^ (rule & 0xffff), 0x01000193);
    h = Math.imul(h ^ (rule >>> 16), 0x01000193);
  }
  return h >>> 0 || 1;
}

function sameRules(a: readonly number[], b: readonly number[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function countWords(sortedRules: readonly number[]): number {
  let count = 0;
  let current = -1;
  for (const rule of sortedRules) {
    if (rule >> 6 !== current) {
      current = rule >> 6;
      count++;
    }
  }
  return count;
}

/** Sets bit `bit` of the u64 array at byte `offset` (little-endian u64s). */
function setBit(view: DataView, offset: number, bit: number): void {
  const at = offset + (bit >> 5) * 4;
  view.setUint32(at, (view.getUint32(at, true) | (1 << (bit & 31))) >>> 0, true);
}

function setVectorBit(wild: Uint32Array, vector: number, rule: number): void {
  const base = (vector * sizes.bitvec) / 4;
  const w = rule >> 6;
  const summary = base + (w >> 5);
  wild[summary] = ((wild[summary] as number) | (1 << (w & 31))) >>> 0;
  const at = base + 2 * SUMMARY_WORDS + (rule >> 5);
  wild[at] = ((wild[at] as number) | (1 << (rule & 31))) >>> 0;
}

function u32Of(bytes: Uint8Array): number {
  return (((bytes[0] as number) << 24) | ((bytes[1] as number) << 16) | ((bytes[2] as number) << 8) | (bytes[3] as number)) >>> 0;
}

function bytesToBigint(bytes: Uint8Array): bigint {
  let value = 0n;
  for (const byte of bytes) value = (value << 8n) | BigInt(byte);
  return value;
}
