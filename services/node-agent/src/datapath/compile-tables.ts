// Compiles a rule set into the exact bytes of the datapath's tables (bpf/include/ep_tables.h).
// Pure: no kernel, no I/O. bpf/README.md explains the scheme; in short, each of the three
// fields (source prefix, destination prefix, protocol+port) maps a packet to a class (a set of
// rules that constrain that field and match it) plus a wildcard vector (rules that do not
// constrain it); the first set bit of the AND over the three fields is the matching rule.
import { createHash } from 'node:crypto';
import type { Cidr } from '@edgeplane/proto';
import { CapacityError } from './errors.js';
import { lowerBound } from './id-index.js';
import { checkRuleSetFields, DEFAULT_RULE_ID, MAX_RULES, normalizeRule, ruleSetHeader, validateRuleSet, type NormalizedRule, type RuleSetHeader, type RuleSetSpec } from './rule-set.js';

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

/**
 * EP_SCAN_ENTRIES: a small rule set whose IPv4 source, IPv4 destination and port fields each have
 * at most this many LPM entries also gets its scan table (genFlags.scan, struct ep_scan): the
 * programs classify IPv4 packets by scanning those entries instead of looking them up in the tries.
 */
export const SCAN_ENTRIES = 64;

/** Byte sizes of the table entries, as in ep_tables.h. */
export const sizes = {
  lpmKey: 24,
  classRef: 8 + 8 * SUMMARY_WORDS,
  wordKey: 8,
  word: 8,
  bitvec: 8 * (SUMMARY_WORDS + VECTOR_WORDS),
  /** struct ep_scan: three counts and a pad, then three fields of SCAN_ENTRIES { value, mask, low }. */
  scan: 16 + 3 * SCAN_ENTRIES * 12,
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
export const genFlags = { trackEgress: 0x1, cut: 0x2, services: 0x4, small: 0x8, scan: 0x10 } as const;
/**
 * A rule set of at most this many rules, none naming a prefix list, is small (genFlags.small):
 * the programs classify it from the LPM values' `low` bits (its rules 0..31) and the wildcard
 * vectors' first word alone (bpf/README.md, "Small rule sets").
 */
export const SMALL_RULES = 32;

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
  /** The rule vectors of the prefix lists the rules name (bpf/include/ep_lists.h), in name order. */
  readonly lists: readonly ListVectors[];
  /** ruleCount + 1 struct ep_rule (slot 0 = default action), written at ep_rules[gen * RULE_SLOTS + i]. */
  readonly rules: Uint8Array;
  /** ep_gen_cfg.flags of the generation (genFlags: egress tracking, cut on deny). */
  readonly genFlags: number;
  /** ep_scan[gen] (struct ep_scan) when genFlags has scan, else undefined. */
  readonly scan: Uint8Array | undefined;
  /** sha-256 of the rule set as compiled (every rule's fields in order, the default, the flags): equal fingerprints mean tables that classify alike. */
  readonly fingerprint: Uint8Array;
}

/**
 * The rules that name one prefix list: as a source, as a destination (struct ep_bitvec each; a
 * field no rule names the list in: undefined).
 */
export interface ListVectors {
  readonly name: string;
  readonly src: Uint8Array | undefined;
  readonly dst: Uint8Array | undefined;
}

/** What changed in the tables from one compile of a {@link TableCompiler} to its next. */
export interface TablesDelta {
  /** LPM keys the new tables no longer hold. */
  readonly lpmDeletes: readonly Uint8Array[];
  /** LPM entries added or changed. */
  readonly lpm: MapEntriesSpec;
  /** Class-word keys the new tables no longer hold. */
  readonly wordDeletes: readonly Uint8Array[];
  /** Class words added (a class id's words never change while the class lives). */
  readonly classWords: MapEntriesSpec;
  /** Slots of the rules array (0: the default action, i + 1: rule i) whose entry may have changed. */
  readonly ruleSlots: readonly number[];
  /** Whether a wildcard vector may have changed. */
  readonly wild: boolean;
  /** Whether a prefix list's vector may have changed. */
  readonly lists: boolean;
  /** LPM entries and class words the tables hold after it. */
  readonly lpmCount: number;
  readonly wordCount: number;
}

/**
 * One compile of a {@link TableCompiler}: the fixed-size tables and the counts of the variable
 * ones, and the difference from the compiler's previous compile. `rules`, `wild` and `ruleIds`
 * are the compiler's own and change with its next compile: read them before that, or copy.
 */
export interface CompiledTables {
  readonly compiler: TableCompiler;
  /** Counts the compiler's compiles; `delta` leads from version - 1 to this one. */
  readonly version: number;
  readonly ruleCount: number;
  readonly ruleIds: readonly number[];
  readonly classCount: number;
  readonly lpmCount: number;
  readonly wordCount: number;
  readonly rules: Uint8Array;
  readonly wild: Uint8Array;
  readonly lists: readonly ListVectors[];
  readonly genFlags: number;
  /** ep_scan[gen] when genFlags has scan (a new array each compile), else undefined. */
  readonly scan: Uint8Array | undefined;
  readonly fingerprint: Uint8Array;
  /** The difference from the previous version; undefined when this compile started afresh. */
  readonly delta: TablesDelta | undefined;
  /**
   * The LPM entries (lpmCount of them) of this compile, in chunks of at most `chunk` entries
   * written into one pair of buffers that every chunk reuses: write each chunk before taking the
   * next. A generation written afresh takes its tables this way, never holding them whole (at
   * 65,536 rules the whole LPM table is 10.5 MiB of arrays).
   * @throws Error when the compiler has compiled again since (these tables are gone).
   */
  lpmChunks(chunk?: number): Iterable<MapEntriesSpec>;
  /** The class words (wordCount of them) of this compile, as lpmChunks gives the LPM entries (`chunk` at least VECTOR_WORDS: one class's words are never split). */
  wordChunks(chunk?: number): Iterable<MapEntriesSpec>;
}

/** Entries per chunk of a compile's whole tables (CompiledTables.lpmChunks): 640 KiB of LPM entries. */
export const WHOLE_CHUNK = 4096;

/**
 * Compiles `spec` into tables, afresh. A spec is an input, never changed after it was compiled.
 * @returns new tables the caller owns.
 * @throws RuleSetError for an invalid rule; CapacityError for more than MAX_RULES rules, more
 * than MAX_CLASS_WORDS class words or MAX_CLASS_MEMBERS class memberships (deeply nested
 * prefixes or port ranges each shared by thousands of rules).
 */
export function compileTables(spec: RuleSetSpec): TablesSpec {
  const compiler = new TableCompiler();
  compiler.compile(spec);
  return compiler.tables();
}

/**
 * A table compiler that keeps what it built (the prefixes of every rule, their classes, the class
 * table, the rule and wildcard arrays) between compiles, so that a rule set a few rules away
 * from the previous one (same length, rules replaced: the spec objects of unchanged rules are
 * the same objects) costs work proportional to the prefixes the changed rules touch and their
 * nested prefixes, and yields the tables' difference directly ({@link TablesDelta}). A rule
 * inserted or removed moves every later rule's bit (the classifier's first set bit is the first
 * match), so such a change, and one of more than a quarter of the rules, compiles afresh.
 * Class ids are hashes of their rules, so the tables an update yields equal a fresh compile's
 * but where two classes' hashes collide (then both are correct; the probe order differs).
 */
export class TableCompiler {
  #state: CompilerState | undefined;
  #spec: RuleSetSpec | undefined;
  #result: CompiledTables | undefined;
  #version = 0;
  /** The last few deltas, so a generation a few compiles behind catches up by difference. */
  readonly #deltas: { version: number; delta: TablesDelta }[] = [];

  /** The spec compiled last (undefined before the first compile or after a failed one). */
  get spec(): RuleSetSpec | undefined {
    return this.#spec;
  }

  /**
   * Compiles `spec`, by difference from the previous spec when it can.
   * @returns the compile; the same object again for the same spec object.
   * @throws RuleSetError (nothing changed); CapacityError (nothing changed, or, when it went by
   * difference, the compiler starts afresh next time).
   */
  compile(spec: RuleSetSpec): CompiledTables {
    if (spec === this.#spec && this.#result !== undefined) return this.#result;
    const state = this.#state;
    const changed = state === undefined ? undefined : changedRules(state, spec.rules);
    // Only the changed rules are checked and parsed (the others were, and are the same objects).
    // A rule set that fails the checks changes nothing.
    let build: () => TablesDelta | undefined;
    const fresh = state === undefined || changed === undefined;
    if (fresh) {
      // Checked while it is built (freshState): the held state is not touched until then.
      build = () => {
        this.#state = freshState(spec);
        return undefined;
      };
    } else {
      const ruleSet = validateChanged(state, spec, changed);
      build = () => updateState(state, ruleSet, spec, changed);
    }
    let delta: TablesDelta | undefined;
    try {
      delta = build();
    } catch (error) {
      // A fresh compile builds a state of its own: the held one is as it was.
      if (fresh) throw error;
      this.#state = undefined;
      this.#spec = undefined;
      this.#result = undefined;
      this.#deltas.length = 0;
      throw error;
    }
    const now = this.#state as CompilerState;
    const lists = listVectorsOf(now);
    const scan = scanTable(now, lists);
    const version = ++this.#version;
    this.#spec = spec;
    if (delta === undefined) this.#deltas.length = 0;
    else {
      this.#deltas.push({ version, delta });
      if (this.#deltas.length > MAX_DELTAS) this.#deltas.shift();
    }
    this.#result = {
      compiler: this,
      version,
      ruleCount: now.specs.length,
      ruleIds: now.ruleIds,
      classCount: now.liveClasses + 1,
      lpmCount: now.prefixes.size,
      wordCount: now.classWords,
      rules: now.ruleBytes,
      wild: new Uint8Array(now.wild.buffer),
      lists,
      genFlags: generationFlags(now, lists, scan),
      scan,
      fingerprint: fingerprintOf(now),
      delta,
      lpmChunks: (chunk = WHOLE_CHUNK) => this.#lpmChunks(version, chunk),
      wordChunks: (chunk = WHOLE_CHUNK) => this.#wordChunks(version, chunk),
    };
    return this.#result;
  }

  // The state of compile `version`. @throws Error when the compiler has compiled again since, or forgot it.
  #stateOf(version: number): CompilerState {
    if (this.#version !== version || this.#state === undefined) throw new Error(`tables of compile ${version} are gone: the compiler is at ${this.#version}`);
    return this.#state;
  }

  *#lpmChunks(version: number, chunk: number): Generator<MapEntriesSpec> {
    const size = Math.min(Math.max(1, chunk), this.#stateOf(version).prefixes.size);
    const keys = new Uint8Array(size * sizes.lpmKey);
    const values = new Uint8Array(size * sizes.classRef);
    let entry = 0;
    for (const node of this.#stateOf(version).prefixes.values()) {
      if (entry === size) {
        yield { keySize: sizes.lpmKey, valueSize: sizes.classRef, count: entry, keys, values };
        this.#stateOf(version);
        // Entries are written over zeros (a key's bytes past its prefix, a class vector's bits).
        keys.fill(0);
        values.fill(0);
        entry = 0;
      }
      writeLpmEntry(node, keys, values, entry++);
    }
    if (entry > 0) yield { keySize: sizes.lpmKey, valueSize: sizes.classRef, count: entry, keys, values };
  }

  *#wordChunks(version: number, chunk: number): Generator<MapEntriesSpec> {
    const size = Math.min(Math.max(VECTOR_WORDS, chunk), this.#stateOf(version).classWords);
    const keys = new Uint8Array(size * sizes.wordKey);
    const values = new Uint8Array(size * sizes.word);
    let word = 0;
    for (const [id, cls] of this.#stateOf(version).classes) {
      if (cls.refs <= 0) continue;
      if (word + countWords(cls.rules) > size) {
        yield { keySize: sizes.wordKey, valueSize: sizes.word, count: word, keys, values };
        this.#stateOf(version);
        values.fill(0);
        word = 0;
      }
      word = writeClassWords(id, cls.rules, keys, values, word);
    }
    if (word > 0) yield { keySize: sizes.wordKey, valueSize: sizes.word, count: word, keys, values };
  }

  /** Counts its compiles: a CompiledTables of another version is not the current one. */
  get version(): number {
    return this.#version;
  }

  /** Forgets what it built (its memory): the next compile starts afresh. */
  clear(): void {
    this.#state = undefined;
    this.#spec = undefined;
    this.#result = undefined;
    this.#deltas.length = 0;
  }

  /**
   * The deltas that lead from `version` to the current one, in order (empty when current).
   * @returns undefined when the compiler no longer has them (a fresh compile since, or too old).
   */
  deltasSince(version: number): TablesDelta[] | undefined {
    if (version === this.#version) return [];
    const out = this.#deltas.filter((d) => d.version > version).map((d) => d.delta);
    return out.length === this.#version - version ? out : undefined;
  }

  /**
   * The current tables whole (for writing a generation afresh).
   * @returns new arrays the caller owns.
   * @throws Error before the first compile.
   */
  tables(): TablesSpec {
    const state = this.#state;
    const result = this.#result;
    if (state === undefined || result === undefined) throw new Error('tables: nothing compiled');
    // Each table as one chunk: its buffers are new, the caller's.
    const [lpm = emptyEntries(sizes.lpmKey, sizes.classRef)] = result.lpmChunks(state.prefixes.size);
    const [classWords = emptyEntries(sizes.wordKey, sizes.word)] = result.wordChunks(state.classWords);
    const lists = listVectorsOf(state);
    return {
      ruleCount: state.specs.length,
      ruleIds: [...state.ruleIds],
      classCount: state.liveClasses + 1,
      lpm,
      classWords,
      wild: new Uint8Array(state.wild.buffer.slice(0)),
      lists: lists.map((list) => ({ name: list.name, src: list.src?.slice(), dst: list.dst?.slice() })),
      rules: state.ruleBytes.slice(),
      genFlags: result.genFlags,
      scan: result.scan?.slice(),
      fingerprint: result.fingerprint,
    };
  }
}

function emptyEntries(keySize: number, valueSize: number): MapEntriesSpec {
  return { keySize, valueSize, count: 0, keys: new Uint8Array(0), values: new Uint8Array(0) };
}

/**
 * The table compilers of the datapaths of one agent (one per interface role): a rule set object
 * that one of them compiled last is not compiled again by another (the agent applies the same
 * rule set object to both roles when every policy applies to both), so the compiler's memory is
 * held once. Datapaths that share none (tests, separate agents) use separate pools.
 */
export class TableCompilers {
  readonly #compilers = new Set<TableCompiler>();

  /**
   * Compiles `spec` with the compiler that compiled it last, else with `own` (see TableCompiler.compile).
   * `own` forgets what it built when another compiler's result is taken instead.
   */
  compile(spec: RuleSetSpec, own: TableCompiler): CompiledTables {
    for (const compiler of this.#compilers) {
      if (compiler.spec !== spec) continue;
      if (compiler !== own) own.clear();
      return compiler.compile(spec);
    }
    this.#compilers.add(own);
    return own.compile(spec);
  }
}

/** Deltas a compiler keeps. */
const MAX_DELTAS = 4;

/** A class of the class table: its rules (sorted) and how many prefixes hold it; refs -1: a deleted slot kept for the probe chain. */
interface ClassEntry {
  rules: readonly number[];
  refs: number;
}

interface CompilerState {
  /**
   * The spec objects compiled, by index: an unchanged rule is the same object. A rule's parsed
   * form is not kept (at 65,536 rules ~20 MiB of objects beside the specs): an update parses the
   * rules it replaces again, to take them out.
   */
  specs: RuleSetSpec['rules'];
  prefixes: Map<number | string, PrefixNode>;
  /** Per tag, the prefixes in (value, length) order: a prefix's nested prefixes follow it. */
  byTag: Map<number, PrefixNode[]>;
  classes: Map<number, ClassEntry>;
  liveClasses: number;
  members: number;
  classWords: number;
  wild: Uint32Array;
  /** Per prefix list name, the vector of the rules naming it as source [0] and as destination [1]. */
  lists: Map<string, [Uint32Array | undefined, Uint32Array | undefined]>;
  ruleBytes: Uint8Array;
  ruleIds: number[];
  /** 16 bytes per rule: a digest of its normalized fields, for the fingerprint. */
  digests: Uint8Array;
  defaultSlot: number;
  flags: number;
}

/** What one update collects while it runs. */
interface UpdateLog {
  readonly nodes: Set<PrefixNode>;
  readonly lpmDeletes: Uint8Array[];
  readonly released: number[];
  readonly created: Set<number>;
}

// Indexes of the rules that differ from the state's, or undefined when a fresh compile is due.
function changedRules(state: CompilerState, rules: RuleSetSpec['rules']): number[] | undefined {
  if (rules.length !== state.specs.length) return undefined;
  const limit = Math.max(64, rules.length >> 2);
  const changed: number[] = [];
  for (let i = 0; i < rules.length; i++) {
    if (rules[i] === state.specs[i]) continue;
    if (changed.length === limit) return undefined;
    changed.push(i);
  }
  return changed;
}

/** What an update takes in: the rule set's header, and the new rules at the changed indexes (in their order). */
interface ChangedRuleSet {
  readonly header: RuleSetHeader;
  readonly changed: readonly NormalizedRule[];
}

// validateRuleSet for `spec`, checking only the rules at `changed` (the others are the state's,
// checked when compiled); any problem is left to validateRuleSet, which names the first.
function validateChanged(state: CompilerState, spec: RuleSetSpec, changed: readonly number[]): ChangedRuleSet {
  let rules: NormalizedRule[] = [];
  let header: RuleSetHeader;
  try {
    checkRuleSetFields(spec);
    const leaving = new Set<number>();
    for (const index of changed) leaving.add(state.ruleIds[index] as number);
    const added = new Set<number>();
    for (const index of changed) {
      const rule = normalizeRule(spec.rules[index] as RuleSetSpec['rules'][number], index);
      // A new id must be in no other rule: not twice among the changed ones, and, unless a changed
      // rule held it (ids are unique), in no unchanged one.
      if (added.has(rule.id)) throw new Error('duplicate id');
      if (!leaving.has(rule.id) && (changed.length > MAX_SCANNED_CHANGES || state.ruleIds.includes(rule.id))) throw new Error('id to check');
      added.add(rule.id);
      rules.push(rule);
    }
    header = ruleSetHeader(spec);
  } catch {
    const all = validateRuleSet(spec);
    rules = changed.map((index) => all.rules[index] as NormalizedRule);
    header = all;
  }
  return { header, changed: rules };
}

/** Changed rules whose ids are checked against the others by a scan; more: the whole rule set is validated. */
const MAX_SCANNED_CHANGES = 64;

function emptyState(spec: RuleSetSpec): CompilerState {
  const n = spec.rules.length;
  const state: CompilerState = {
    specs: [...spec.rules],
    prefixes: new Map(),
    byTag: new Map(),
    classes: new Map(),
    liveClasses: 0,
    members: 0,
    classWords: 0,
    wild: new Uint32Array((WILD_COUNT * sizes.bitvec) / 4),
    lists: new Map(),
    ruleBytes: new Uint8Array((n + 1) * sizes.rule),
    ruleIds: spec.rules.map((rule) => rule.id),
    digests: new Uint8Array(n * DIGEST_BYTES),
    defaultSlot: 0,
    flags: 0,
  };
  // Tag-only entries: every lookup finds at least the empty class, so the program never misses.
  for (const tag of [tags.src | 4, tags.src | 6, tags.dst | 4, tags.dst | 6]) nodeAt(state, tag, (tag & 0xf) === 4 ? 32 : 128, (tag & 0xf) === 4 ? 0 : new Uint8Array(16), 0, false);
  for (const slot of Object.values(protocolSlots)) nodeAt(state, tags.l4 | slot, 24, 0, 0, false);
  return state;
}

/**
 * The state of `spec` compiled whole. Each rule is checked and parsed when it is visited and
 * dropped after: a normalized rule is ~5 times its spec's memory (21 MiB at 65,536 rules), which a
 * whole NormalizedRuleSet would keep live through the sweep, at the agent's peak.
 * @throws what validateRuleSet throws for `spec` (the first problem it names); CapacityError.
 */
function freshState(spec: RuleSetSpec): CompilerState {
  let header: RuleSetHeader;
  let state: CompilerState;
  try {
    checkRuleSetFields(spec);
    state = emptyState(spec);
    const ids = new Set<number>();
    spec.rules.forEach((ruleSpec, index) => {
      const rule = normalizeRule(ruleSpec, index);
      // Named by validateRuleSet below.
      if (ids.has(rule.id)) throw new Error('duplicate id');
      ids.add(rule.id);
      visitFresh(state, rule);
      writeRuleSlot(state.ruleBytes, rule);
      writeRuleDigest(rule, state.digests, rule.index * DIGEST_BYTES);
    });
    header = ruleSetHeader(spec);
  } catch (error) {
    // Any problem is left to validateRuleSet, which names the first (as validateChanged does);
    // what it passes (a capacity) is thrown as it came.
    validateRuleSet(spec);
    throw error;
  }
  // Each prefix's class = the rules of every stored prefix containing it (its ancestors and
  // itself): the longest match then stands for all of them. A sweep over the prefixes in
  // (value, length) order keeps the chain of ancestors on a stack.
  const log: UpdateLog = { nodes: new Set(), lpmDeletes: [], released: [], created: new Set() };
  for (const list of state.byTag.values()) {
    list.sort(compareNodes);
    sweep(state, list, 0, [], undefined, log);
  }
  writeHeader(state, header);
  return state;
}

/** Adds the prefixes, wildcard bits and list bits of `rule` (a fresh compile: in index order). */
function visitFresh(state: CompilerState, rule: NormalizedRule): void {
  visitRule(
    rule,
    (tag, width, value, length) => {
      const node = nodeAt(state, tag, width, value, length, false);
      // Most prefixes belong to one rule: a one-element array holds 8 bytes of elements, where a
      // first push would give it 16 slots (~9 MiB at 65,536 rules, for as long as the state lives).
      if (node.rules.length === 0) node.rules = [rule.index];
      else if (node.rules[node.rules.length - 1] !== rule.index) node.rules.push(rule.index);
    },
    (vector) => setVectorBit(state.wild, vector, rule.index),
    (field, name) => setVectorBit(listVector(state, field, name), 0, rule.index),
  );
}

// Moves `state` to `ruleSet` (same length; the rules at `changed` differ) and returns the tables' difference.
function updateState(state: CompilerState, ruleSet: ChangedRuleSet, spec: RuleSetSpec, changed: readonly number[]): TablesDelta {
  const log: UpdateLog = { nodes: new Set(), lpmDeletes: [], released: [], created: new Set() };
  const dirty = new Set<PrefixNode>();
  let listsChanged = false;
  for (const index of changed) {
    // The rule leaving, parsed again from its spec (it was valid when it came in).
    visitRule(
      normalizeRule(state.specs[index] as RuleSetSpec['rules'][number], index),
      (tag, _width, value, length) => {
        const node = state.prefixes.get(keyOf(tag, value, length));
        if (node === undefined) return;
        const at = lowerBound(node.rules, index);
        // A new array, never a change in place: a class may be this very array.
        if (node.rules[at] === index) node.rules = [...node.rules.slice(0, at), ...node.rules.slice(at + 1)];
        dirty.add(node);
      },
      (vector) => clearVectorBit(state.wild, vector, index),
      (field, name) => {
        listsChanged = true;
        clearVectorBit(listVector(state, field, name), 0, index);
      },
    );
  }
  changed.forEach((index, i) => {
    const rule = ruleSet.changed[i] as NormalizedRule;
    state.specs[index] = spec.rules[index] as RuleSetSpec['rules'][number];
    state.ruleIds[index] = rule.id;
    visitRule(
      rule,
      (tag, width, value, length) => {
        const node = nodeAt(state, tag, width, value, length, true);
        const at = lowerBound(node.rules, index);
        if (node.rules[at] !== index) node.rules = [...node.rules.slice(0, at), index, ...node.rules.slice(at)];
        dirty.add(node);
      },
      (vector) => setVectorBit(state.wild, vector, index),
      (field, name) => {
        listsChanged = true;
        setVectorBit(listVector(state, field, name), 0, index);
      },
    );
    writeRuleSlot(state.ruleBytes, rule);
    writeRuleDigest(rule, state.digests, index * DIGEST_BYTES);
  });
  // Recompute the classes of every changed prefix and the prefixes nested in it: in each tag's
  // order they follow it, so each is one run of the list, started with its ancestors' chain.
  const byTag = new Map<number, PrefixNode[]>();
  for (const node of dirty) {
    const list = byTag.get(node.tag) ?? [];
    list.push(node);
    byTag.set(node.tag, list);
  }
  for (const [tag, nodes] of byTag) {
    const list = state.byTag.get(tag) as PrefixNode[];
    nodes.sort(compareNodes);
    let end = 0;
    for (const node of nodes) {
      const at = nodeIndex(list, node);
      if (at < end) continue;
      end = sweep(state, list, at, ancestorsOf(state, node), node, log);
    }
  }
  // Prefixes no rule names any more leave the tables (a fresh compile would not have them).
  for (const node of dirty) {
    if (node.rules.length > 0 || node.length === 0) continue;
    state.prefixes.delete(node.key);
    const list = state.byTag.get(node.tag) as PrefixNode[];
    list.splice(nodeIndex(list, node), 1);
    release(state, node.id, log);
    state.members -= node.cls.length;
    log.nodes.delete(node);
    const key = new Uint8Array(sizes.lpmKey);
    writeLpmKey(node, key, 0);
    log.lpmDeletes.push(key);
  }
  const defaultBefore = state.defaultSlot;
  writeHeader(state, ruleSet.header);
  // Classes no prefix holds any more: deleted (their words too, unless they were born in this update).
  const wordDeletes: Uint8Array[] = [];
  for (const id of log.released) {
    const entry = state.classes.get(id);
    if (entry === undefined || entry.refs !== 0) continue;
    if (!log.created.delete(id)) {
      const keys = new Uint8Array(countWords(entry.rules) * sizes.wordKey);
      writeClassWords(id, entry.rules, keys, undefined, 0);
      for (let at = 0; at < keys.length; at += sizes.wordKey) wordDeletes.push(keys.subarray(at, at + sizes.wordKey));
    }
    killClass(state, id, entry);
  }
  let wordCount = 0;
  for (const id of log.created) wordCount += countWords((state.classes.get(id) as ClassEntry).rules);
  const wordKeys = new Uint8Array(wordCount * sizes.wordKey);
  const wordValues = new Uint8Array(wordCount * sizes.word);
  let word = 0;
  for (const id of log.created) word = writeClassWords(id, (state.classes.get(id) as ClassEntry).rules, wordKeys, wordValues, word);
  const lpmKeys = new Uint8Array(log.nodes.size * sizes.lpmKey);
  const lpmValues = new Uint8Array(log.nodes.size * sizes.classRef);
  let entry = 0;
  for (const node of log.nodes) writeLpmEntry(node, lpmKeys, lpmValues, entry++);
  const ruleSlots = changed.map((index) => index + 1);
  if (state.defaultSlot !== defaultBefore) ruleSlots.unshift(0);
  return {
    lpmDeletes: log.lpmDeletes,
    lpm: { keySize: sizes.lpmKey, valueSize: sizes.classRef, count: log.nodes.size, keys: lpmKeys, values: lpmValues },
    wordDeletes,
    classWords: { keySize: sizes.wordKey, valueSize: sizes.word, count: wordCount, keys: wordKeys, values: wordValues },
    ruleSlots,
    wild: changed.length > 0,
    lists: listsChanged,
    lpmCount: state.prefixes.size,
    wordCount: state.classWords,
  };
}

// Assigns classes to list[from] and the prefixes nested in it (all of the list when `root` is
// undefined), with `stack` the chain of ancestors of list[from]. @returns the index after the run.
function sweep(state: CompilerState, list: readonly PrefixNode[], from: number, stack: PrefixNode[], root: PrefixNode | undefined, log: UpdateLog): number {
  let at = from;
  for (; at < list.length; at++) {
    const node = list[at] as PrefixNode;
    if (root !== undefined && !contains(root, node)) break;
    while (stack.length > 0 && !contains(stack[stack.length - 1] as PrefixNode, node)) stack.pop();
    const parent = stack[stack.length - 1];
    assign(state, node, parent === undefined ? node.rules : mergeSorted(parent.cls, node.rules), log);
    stack.push(node);
  }
  return at;
}

// Gives `node` the class `cls`: the class's id (interned) and, when it changed, an LPM entry to write.
function assign(state: CompilerState, node: PrefixNode, cls: readonly number[], log: UpdateLog): void {
  if (node.id >= 0 && sameRules(node.cls, cls)) return;
  if (node.id > 0) release(state, node.id, log);
  state.members += cls.length - node.cls.length;
  if (state.members > MAX_CLASS_MEMBERS) {
    throw new CapacityError('class-members', MAX_CLASS_MEMBERS, state.members, 'too many rules share nested prefixes or overlapping port ranges; merge rules or flatten prefixes');
  }
  node.cls = cls;
  node.id = intern(state, cls, log);
  log.nodes.add(node);
}

// Identical classes share an id; 0 is the empty class. An id is a hash of the class's rules
// (probed upwards on a collision), not its place in the order: a change to one rule changes the
// ids of the classes that hold it and no others, so the tables of two rule sets a rule apart
// differ in a few entries (the datapath writes only those).
function intern(state: CompilerState, cls: readonly number[], log: UpdateLog): number {
  if (cls.length === 0) return 0;
  let id = classHash(cls);
  let free: number | undefined;
  for (;;) {
    const held = state.classes.get(id);
    if (held === undefined) break;
    if (held.refs < 0) free ??= id;
    else if (sameRules(held.rules, cls)) {
      held.refs++;
      return id;
    }
    id = nextId(id);
  }
  const at = free ?? id;
  state.classes.set(at, { rules: cls, refs: 1 });
  state.liveClasses++;
  state.classWords += countWords(cls);
  if (state.classWords > MAX_CLASS_WORDS) {
    throw new CapacityError('class-words', MAX_CLASS_WORDS, state.classWords, 'too many rules share nested prefixes or overlapping port ranges; merge rules or flatten prefixes');
  }
  log.created.add(at);
  return at;
}

function release(state: CompilerState, id: number, log: UpdateLog): void {
  if (id <= 0) return;
  const entry = state.classes.get(id) as ClassEntry;
  entry.refs--;
  if (entry.refs === 0) log.released.push(id);
}

// A class no prefix holds: its slot is freed, or kept as a tombstone while a later slot may
// belong to a class that probed past it.
function killClass(state: CompilerState, id: number, entry: ClassEntry): void {
  state.liveClasses--;
  state.classWords -= countWords(entry.rules);
  if (state.classes.has(nextId(id))) {
    entry.refs = -1;
    entry.rules = [];
  } else state.classes.delete(id);
}

function nextId(id: number): number {
  return id === 0xffff_ffff ? 1 : id + 1;
}

function writeHeader(state: CompilerState, ruleSet: RuleSetHeader): void {
  const trackBit = ruleSet.trackDefault ? RULE_FLAG_TRACK : 0;
  state.defaultSlot = actionCodes[ruleSet.defaultAction] | trackBit;
  const view = new DataView(state.ruleBytes.buffer, state.ruleBytes.byteOffset);
  view.setUint32(0, state.defaultSlot, true);
  view.setUint32(4, DEFAULT_RULE_ID, true);
  state.flags = (ruleSet.trackEgress ? genFlags.trackEgress : 0) | (ruleSet.cutOnDeny ? genFlags.cut : 0);
}

function writeRuleSlot(bytes: Uint8Array, rule: NormalizedRule): void {
  const offset = (rule.index + 1) * sizes.rule;
  bytes.fill(0, offset, offset + sizes.rule);
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  view.setUint32(offset, actionCodes[rule.action] | (rule.track ? RULE_FLAG_TRACK : 0), true);
  view.setUint32(offset + 4, rule.id, true);
  if (rule.rateLimit !== null) {
    const pps = BigInt(rule.rateLimit.pps);
    const burst = BigInt(rule.rateLimit.burst) * NANO;
    view.setBigUint64(offset + 8, pps, true);
    view.setBigUint64(offset + 16, burst, true);
    view.setBigUint64(offset + 24, (burst + pps - 1n) / pps, true);
  }
}

function writeLpmKey(node: PrefixNode, keys: Uint8Array, keyOffset: number): void {
  new DataView(keys.buffer, keys.byteOffset).setUint32(keyOffset, 8 + node.length, true);
  keys[keyOffset + 4] = node.tag;
  if (typeof node.raw === 'number') {
    const bytes = node.width / 8;
    for (let i = 0; i < bytes; i++) keys[keyOffset + 5 + i] = (node.raw >>> (8 * (bytes - 1 - i))) & 0xff;
  } else {
    keys.set(node.raw, keyOffset + 5);
  }
}

// struct ep_class_ref: the class id, its rules 0..31 as bits (`low`, what a small generation is
// classified by), its summary.
function writeLpmEntry(node: PrefixNode, keys: Uint8Array, values: Uint8Array, entry: number): void {
  writeLpmKey(node, keys, entry * sizes.lpmKey);
  const view = new DataView(values.buffer, values.byteOffset);
  const valueOffset = entry * sizes.classRef;
  view.setUint32(valueOffset, node.id, true);
  for (const rule of node.cls) setBit(view, valueOffset + 8, rule >> 6);
  view.setUint32(valueOffset + 4, lowBits(node.cls), true);
}

// A class's rules 0..31 as the bits of a u32 (bit i = rule i): ep_class_ref.low, and a scan
// entry's `low` before its wildcard rules.
function lowBits(cls: readonly number[]): number {
  let low = 0;
  for (const rule of cls) if (rule < SMALL_RULES) low |= 1 << rule;
  return low >>> 0;
}

// Writes the nonzero words of class `id` from entry `word` on (values undefined: keys only). @returns the entry after them.
function writeClassWords(id: number, cls: readonly number[], keys: Uint8Array, values: Uint8Array | undefined, word: number): number {
  const keyView = new DataView(keys.buffer, keys.byteOffset);
  const valueView = values === undefined ? undefined : new DataView(values.buffer, values.byteOffset);
  let current = -1;
  for (const rule of cls) {
    const w = rule >> 6;
    if (w !== current) {
      current = w;
      keyView.setUint32(word * sizes.wordKey, id, true);
      keyView.setUint32(word * sizes.wordKey + 4, w, true);
      word++;
    }
    if (valueView !== undefined) setBit(valueView, (word - 1) * sizes.word, rule & 63);
  }
  return word;
}

/** Bytes of a rule's digest in the fingerprint. */
const DIGEST_BYTES = 16;
/**
 * The fingerprint's format: a new layout of the tables for the same rule set gets a new number.
 * 3: the LPM values carry their class's rules 0..31 (`low`), which small generations are
 * classified by, so tables an older agent wrote (zeros there) are never adopted as they are.
 * 4: small generations have their scan table (ep_scan, genFlags.scan), which an older agent
 * neither writes nor flags.
 */
const FINGERPRINT_FORMAT = 4;

// A rule's digest: everything of it the tables encode but its index (id, action, track, rate,
// prefixes, protocol, ports), as a sequence of u32s, hashed in four murmur3 lanes of different
// seeds into 16 bytes at `out[offset..]`. Not a cryptographic hash: it tells rule sets apart for
// the fingerprint (an accidental equality is ~2^-128), computed per changed rule without
// allocating; a rule set crafted to collide could only come from whoever may write policies.
function writeRuleDigest(rule: NormalizedRule, out: Uint8Array, offset: number): void {
  digestLanes.set(DIGEST_SEEDS);
  digestCount = 0;
  mixDigest(rule.id);
  mixDigest(actionCodes[rule.action] | (rule.track ? RULE_FLAG_TRACK : 0));
  mixDigest(rule.rateLimit?.pps ?? 0);
  mixDigest(rule.rateLimit?.burst ?? 0);
  mixCidrs(rule.src);
  mixCidrs(rule.dst);
  // Only a rule that names lists mixes them in: a rule set without lists keeps its fingerprint.
  if (rule.srcLists.length + rule.dstLists.length > 0) {
    mixNames(rule.srcLists);
    mixNames(rule.dstLists);
  }
  mixDigest(rule.protocol ?? 0xffff_ffff);
  if (rule.ports === null) mixDigest(0xffff_ffff);
  else {
    mixDigest(rule.ports.length);
    for (const range of rule.ports) mixDigest(range.from * 65536 + range.to);
  }
  const view = new DataView(out.buffer, out.byteOffset);
  for (let lane = 0; lane < 4; lane++) {
    // murmur3's finalizer, lanes crossed so each output word depends on all four.
    let h = ((digestLanes[lane] as number) ^ digestCount ^ (digestLanes[(lane + 1) & 3] as number)) >>> 0;
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    view.setUint32(offset + lane * 4, (h ^ (h >>> 16)) >>> 0, true);
  }
}

const DIGEST_SEEDS = [0x9747b28c, 0x85ebca6b, 0xc2b2ae35, 0x27d4eb2f];
const digestLanes = new Int32Array(4);
let digestCount = 0;

function mixDigest(value: number): void {
  let k = Math.imul(value | 0, 0xcc9e2d51);
  k = Math.imul((k << 15) | (k >>> 17), 0x1b873593);
  for (let lane = 0; lane < 4; lane++) {
    let h = (digestLanes[lane] as number) ^ Math.imul(k, lane * 2 + 1);
    h = (h << 13) | (h >>> 19);
    digestLanes[lane] = Math.imul(h, 5) + 0xe6546b64 + lane;
  }
  digestCount++;
}

function mixNames(names: readonly string[]): void {
  mixDigest(0x4c495354 ^ names.length);
  for (const name of names) {
    mixDigest(name.length);
    for (let i = 0; i < name.length; i++) mixDigest(name.charCodeAt(i));
  }
}

function mixCidrs(list: readonly Cidr[] | null): void {
  if (list === null) return mixDigest(0xffff_ffff);
  mixDigest(list.length);
  for (const cidr of list) {
    mixDigest(cidr.family * 256 + cidr.prefixLength);
    for (let i = 0; i < cidr.address.length; i += 4) mixDigest((((cidr.address[i] as number) << 24) | ((cidr.address[i + 1] as number) << 16) | ((cidr.address[i + 2] as number) << 8) | (cidr.address[i + 3] as number)) >>> 0);
  }
}

// sha-256 over the format, the default slot, the generation flags and every rule's digest in
// order: equal fingerprints mean the same rule set, hence tables that classify alike (two
// compiles of one rule set may lay classes out otherwise only where class hashes collide).
function fingerprintOf(state: CompilerState): Uint8Array {
  const hash = createHash('sha256');
  hash.update(new Uint32Array([FINGERPRINT_FORMAT, state.specs.length, state.defaultSlot, state.flags]));
  hash.update(state.digests.subarray(0, state.specs.length * DIGEST_BYTES));
  return new Uint8Array(hash.digest());
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
  /** The value: a number for prefixes of up to 32 bits (IPv4, L4), a bigint for IPv6 (one kind per tag). */
  readonly value: number | bigint;
  readonly length: number;
  /** The value again, as a number (up to 32 bits) or its bytes (IPv6), for writing keys without bigint arithmetic. */
  readonly raw: number | Uint8Array;
  readonly key: number | string;
  /** Indexes of the rules that name this prefix, ascending; replaced, never changed in place, once its class is assigned (a class may be this array). */
  rules: number[];
  /** Its class: the rules of this prefix and of every prefix containing it, ascending. */
  cls: readonly number[];
  /** The class's id (0: empty; -1: not assigned yet). */
  id: number;
}

type VisitPrefix = (tag: number, width: number, value: number | Uint8Array, length: number) => void;

// Prefixes of up to 32 bits (IPv4, L4) key by one number (tag, length, value in 46 bits): no
// bigint or string per rule. IPv6 keys by text.
function keyOf(tag: number, value: number | Uint8Array | bigint, length: number): number | string {
  if (typeof value === 'number') return tag * 2 ** 38 + length * 2 ** 32 + value;
  return `${tag}/${length}/${typeof value === 'bigint' ? value : bytesToBigint(value)}`;
}

// The node of a prefix, created (and, when `sorted`, put in its place in its tag's list) if new.
function nodeAt(state: CompilerState, tag: number, width: number, value: number | Uint8Array, length: number, sorted: boolean): PrefixNode {
  const key = keyOf(tag, value, length);
  let node = state.prefixes.get(key);
  if (node === undefined) {
    node = { tag, width, value: typeof value === 'number' ? value : bytesToBigint(value), length, raw: value, key, rules: [], cls: [], id: -1 };
    state.prefixes.set(key, node);
    let list = state.byTag.get(tag);
    if (list === undefined) state.byTag.set(tag, (list = []));
    if (sorted) list.splice(insertionIndex(list, node), 0, node);
    else list.push(node);
  }
  return node;
}

function compareNodes(a: PrefixNode, b: PrefixNode): number {
  return a.value < b.value ? -1 : a.value > b.value ? 1 : a.length - b.length;
}

// The first index of `list` (sorted by compareNodes) whose node does not sort before `node`.
function insertionIndex(list: readonly PrefixNode[], node: PrefixNode): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compareNodes(list[mid] as PrefixNode, node) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function nodeIndex(list: readonly PrefixNode[], node: PrefixNode): number {
  const at = insertionIndex(list, node);
  if (list[at] !== node) throw new Error(`compile tables: prefix ${node.key} is not in its list`);
  return at;
}


// The stored prefixes that contain `node` (shorter ones of the same tag), shortest first.
function ancestorsOf(state: CompilerState, node: PrefixNode): PrefixNode[] {
  const out: PrefixNode[] = [];
  for (let length = 0; length < node.length; length++) {
    const shift = node.width - length;
    let key: number | string;
    if (typeof node.raw === 'number') key = keyOf(node.tag, shift >= 32 ? 0 : Math.floor(node.raw / 2 ** shift) * 2 ** shift, length);
    else key = keyOf(node.tag, ((node.value as bigint) >> BigInt(shift)) << BigInt(shift), length);
    const found = state.prefixes.get(key);
    if (found !== undefined) out.push(found);
  }
  return out;
}

// Every prefix and wildcard vector a rule constrains, in the order a fresh compile adds them.
function visitRule(rule: NormalizedRule, prefix: VisitPrefix, wild: (vector: number) => void, list: (field: 0 | 1, name: string) => void): void {
  visitAddressField(rule.src, tags.src, wildIndex.src4, prefix, wild);
  visitAddressField(rule.dst, tags.dst, wildIndex.dst4, prefix, wild);
  for (const name of rule.srcLists) list(0, name);
  for (const name of rule.dstLists) list(1, name);
  visitL4Field(rule, prefix, wild);
}

function visitAddressField(cidrs: readonly Cidr[] | null, tag: number, wild4: number, prefix: VisitPrefix, wild: (vector: number) => void): void {
  if (cidrs === null) {
    wild(wild4);
    wild(wild4 + 1);
    return;
  }
  for (const cidr of cidrs) {
    if (cidr.prefixLength === 0) {
      // 0.0.0.0/0 or ::/0: the whole family, which is what that family's wildcard vector is for.
      wild(cidr.family === 4 ? wild4 : wild4 + 1);
      continue;
    }
    // IPv4 prefixes become numeric keys (u32Of), IPv6 ones stay bytes: the compiler's fast path.
    prefix(tag | cidr.family, cidr.address.length * 8, cidr.family === 4 ? u32Of(cidr.address) : cidr.address, cidr.prefixLength);
  }
}

function visitL4Field(rule: NormalizedRule, prefix: VisitPrefix, wild: (vector: number) => void): void {
  if (rule.protocol === null) {
    for (const slot of Object.values(protocolSlots)) wild(wildIndex.l4 + slot);
    return;
  }
  const slot = slotOf(rule.protocol);
  if (rule.ports === null) {
    wild(wildIndex.l4 + slot);
    return;
  }
  // L4 keys are 24 bits: a zero byte (a port follows; 1 would mean "no port") and the port.
  for (const range of rule.ports) {
    for (const [value, length] of portPrefixes(range.from, range.to)) prefix(tags.l4 | slot, 24, value, 8 + length);
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
  if (typeof outer.value === 'number') {
    const block = 2 ** (outer.width - outer.length);
    return Math.floor((inner.value as number) / block) === Math.floor(outer.value / block);
  }
  const shift = BigInt(outer.width - outer.length);
  return (inner.value as bigint) >> shift === outer.value >> shift;
}

// Both ascending. Returns `a` itself when `b` is empty, and `b` when `a` is (classes and rule
// lists are never changed once built).
function mergeSorted(a: readonly number[], b: readonly number[]): readonly number[] {
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  const sortedB = b;
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

function clearVectorBit(wild: Uint32Array, vector: number, rule: number): void {
  const base = (vector * sizes.bitvec) / 4;
  const at = base + 2 * SUMMARY_WORDS + (rule >> 5);
  wild[at] = ((wild[at] as number) & ~(1 << (rule & 31))) >>> 0;
  // The summary bit stays while the rule's 64-bit word has another bit.
  const pair = base + 2 * SUMMARY_WORDS + ((rule >> 6) << 1);
  if (wild[pair] === 0 && wild[pair + 1] === 0) {
    const w = rule >> 6;
    const summary = base + (w >> 5);
    wild[summary] = ((wild[summary] as number) & ~(1 << (w & 31))) >>> 0;
  }
}

// The vector of the rules naming list `name` in `field` (0: source, 1: destination), created empty.
function listVector(state: CompilerState, field: 0 | 1, name: string): Uint32Array {
  let pair = state.lists.get(name);
  if (pair === undefined) state.lists.set(name, (pair = [undefined, undefined]));
  return (pair[field] ??= new Uint32Array(sizes.bitvec / 4));
}

function isSmall(state: CompilerState, lists: readonly ListVectors[]): boolean {
  return state.specs.length <= SMALL_RULES && lists.length === 0;
}

// ep_gen_cfg.flags of the compiled rule set: the header's, small when it is (SMALL_RULES), scan
// when it has its scan table.
function generationFlags(state: CompilerState, lists: readonly ListVectors[], scan: Uint8Array | undefined): number {
  return state.flags | (isSmall(state, lists) ? genFlags.small : 0) | (scan === undefined ? 0 : genFlags.scan);
}

// struct ep_scan of a small rule set (bpf/include/ep_tables.h): per field, its IPv4 (or port)
// LPM entries longest first as { value, mask, low }, `low` being the class's rules 0..31 OR the
// field's wildcard rules 0..31. Undefined when the rule set is not small or a field has more than
// SCAN_ENTRIES entries.
function scanTable(state: CompilerState, lists: readonly ListVectors[]): Uint8Array | undefined {
  if (!isSmall(state, lists)) return undefined;
  const l4 = Object.values(protocolSlots).flatMap((slot) => state.byTag.get(tags.l4 | slot) ?? []);
  const fields = [state.byTag.get(tags.src | 4) ?? [], state.byTag.get(tags.dst | 4) ?? [], l4];
  if (fields.some((nodes) => nodes.length > SCAN_ENTRIES)) return undefined;
  const out = new Uint8Array(sizes.scan);
  const view = new DataView(out.buffer);
  // Rules 0..31 of wildcard vector `vector`: the low half of its first word.
  const wildLow = (vector: number): number => state.wild[(vector * sizes.bitvec) / 4 + 2 * SUMMARY_WORDS] as number;
  fields.forEach((nodes, field) => {
    view.setUint32(field * 4, nodes.length, true);
    // Longest first: the first match is the longest, the LPM lookup's answer. Nodes of one length
    // never overlap (nor do two slots' port entries, whose masks hold the slot).
    const sorted = [...nodes].sort((a, b) => b.length - a.length);
    sorted.forEach((node, i) => {
      let value: number;
      let mask: number;
      let vector: number;
      if (field < 2) {
        mask = node.length === 0 ? 0 : (0xffff_ffff << (32 - node.length)) >>> 0;
        value = (node.raw as number) & mask;
        vector = field === 0 ? wildIndex.src4 : wildIndex.dst4;
      } else {
        const slot = node.tag & 0xf;
        mask = (0xff00_0000 | (node.length === 0 ? 0 : (0xff_ffff << (24 - node.length)) & 0xff_ffff)) >>> 0;
        value = ((slot << 24) | (node.raw as number)) & mask;
        vector = wildIndex.l4 + slot;
      }
      const low = wildLow(vector) | lowBits(node.cls);
      const at = 16 + (field * SCAN_ENTRIES + i) * 12;
      view.setUint32(at, value >>> 0, true);
      view.setUint32(at + 4, mask, true);
      view.setUint32(at + 8, low >>> 0, true);
    });
  });
  return out;
}

// The state's list vectors that hold a rule, in name order (views of the state's arrays).
function listVectorsOf(state: CompilerState): ListVectors[] {
  const nonEmpty = (vector: Uint32Array | undefined): Uint8Array | undefined => {
    if (vector === undefined) return undefined;
    for (let i = 0; i < 2 * SUMMARY_WORDS; i++) if (vector[i] !== 0) return new Uint8Array(vector.buffer, vector.byteOffset, vector.byteLength);
    return undefined;
  };
  const out: ListVectors[] = [];
  for (const name of [...state.lists.keys()].sort()) {
    const [src, dst] = state.lists.get(name) as [Uint32Array | undefined, Uint32Array | undefined];
    const list = { name, src: nonEmpty(src), dst: nonEmpty(dst) };
    if (list.src !== undefined || list.dst !== undefined) out.push(list);
    else state.lists.delete(name);
  }
  return out;
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
