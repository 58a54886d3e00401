// The reference model of connection tracking: bpf/CONNTRACK.md written as plainly as possible,
// from the contract alone (never from the C), so the differential test
// (test/conntrack-differential.test.ts) compares two independent readings of it. Classification
// is the reference classifier's (one classifier, not two); this file adds only what the
// contract adds: the two tables keyed by the direction-independent key (conntrack-key.ts), the
// lookup order, ICMP-error relation, the cut re-check and the TCP state machine. Where the
// contract is silent the choice is written next to the code (marked "Assumed:"), and
// test/conntrack-model.test.ts pins each row of its tables.
import { firstMatch, parseFrame, parseIpPacket, ReferenceClassifier } from './reference-classifier.js';
import { CONNTRACK_STAT_NAMES, conntrackTimeoutsNs, DEFAULT_CONNTRACK_CONFIG, type ConntrackConfig } from './conntrack.js';
import { ctKeyOfFlow, ctKeyOfTuple, CT_FLAG_ORIG_B, reverseKey, type CtKey } from './conntrack-key.js';
import { RuleSetError } from './errors.js';
import { ct4Holds, Ct4Slots } from './ct4-table.js';
import { DEFAULT_RULE_ID, EGRESS_RULE_ID, validateRuleSet, type Classification, type NormalizedRuleSet, type PacketHeaders, type RuleSetSpec } from './rule-set.js';

/** `enum ep_ct_state`: the numbers are the kernel's. */
export const ctStates = { none: 0, synSent: 1, synRecv: 2, established: 3, finWait: 4, closing: 5, closed: 6, udp: 7, icmp: 8 } as const;
/** One of ctStates. */
export type CtState = (typeof ctStates)[keyof typeof ctStates];
/** `EP_CT_F_*` bits of ep_ct_entry.flags. */
export const ctFlags = { seenReply: 0x01, finOrig: 0x02, finReply: 0x04, egress: 0x08, origB: CT_FLAG_ORIG_B } as const;
/** `enum ep_ct_stat`, in the kernel's order (the agent's CONNTRACK_STAT_NAMES). */
export const ctStatNames = CONNTRACK_STAT_NAMES;
/** One of ctStatNames. */
export type CtStatName = (typeof CONNTRACK_STAT_NAMES)[number];
/** Default capacities of `ep_ct_new` (LRU) and `ep_ct` (never evicts). */
export const CT_NEW_ENTRIES = 65_536;
export const CT_ENTRIES = 262_144;
/** The agent's default ep_ct4 (EbpfDatapathOptions.ct4Slots). */
export const CT4_SLOTS = 262_144;

/**
 * CONNTRACK.md, "The direct mark": a new entry goes into `ep_ct` while it holds fewer entries
 * than this (half its capacity, rounded down; expired entries not yet deleted count), else into
 * `ep_ct_new`.
 */
export function ctDirectMark(entries: number): number {
  return Math.floor(entries / 2);
}

/** `struct ep_ct_cfg` in nanoseconds, by `enum ep_ct_timeout`. */
export interface CtTimeouts {
  readonly tcpSyn: bigint;
  readonly tcpEstablished: bigint;
  readonly tcpClosing: bigint;
  readonly udp: bigint;
  readonly icmp: bigint;
}

/**
 * The timeouts the agent writes to ep_ct_cfg for `config`, as the model uses them.
 * @returns nanoseconds. @throws ConntrackInputError as conntrackTimeoutsNs().
 */
export function ctTimeouts(config: ConntrackConfig): CtTimeouts {
  const [tcpSyn, tcpEstablished, tcpClosing, udp, icmp] = conntrackTimeoutsNs(config) as [bigint, bigint, bigint, bigint, bigint];
  return { tcpSyn, tcpEstablished, tcpClosing, udp, icmp };
}

/** CONNTRACK.md's defaults (Cilium's): SYN 60 s, established 6 h, closing 10 s, UDP 60 s, ICMP 60 s. */
export const DEFAULT_CT_TIMEOUTS: CtTimeouts = ctTimeouts(DEFAULT_CONNTRACK_CONFIG);

export { reverseKey };
export type { CtKey };

/** `struct ep_ct_entry` (its padding left out). */
export interface CtEntry {
  expiresNs: bigint;
  createdNs: bigint;
  /** [original, reply] direction. */
  packets: [bigint, bigint];
  bytes: [bigint, bigint];
  /** The admitting rule's id; DEFAULT_RULE_ID for the default action, EGRESS_RULE_ID for egress tracking. */
  ruleId: number;
  epoch: number;
  state: CtState;
  flags: number;
}

/**
 * `ep_ct4` (IPv4 TCP/UDP flows without NAT, layout 6: ct4-table.ts), `ep_ct_new` (other flows
 * without a reply yet, LRU) or `ep_ct` (other flows that have seen one, and new flows created
 * while it was below its direct mark: ctDirectMark()). A flow goes to ep_ct4 when its window
 * there has a free slot, else where ep_ct4 did not exist.
 */
export type CtTable = 'v4' | 'new' | 'established';
/** The tables in the order a lookup tries them. */
export const CT_TABLES: readonly CtTable[] = ['v4', 'established', 'new'];
/** The programs: `edge_xdp` (uplink ingress), `edge_tc_egress` (uplink egress), `edge_tc` (workloads, both directions). */
export type CtHook = 'edge_xdp' | 'edge_tc_egress' | 'edge_tc';
/** The packet's direction relative to the entry's key. */
export type CtDirection = 'orig' | 'reply';

/** An endpoint in `ep_ct_control`: packets from it bypass tracking and policy. */
export interface CtControlEndpoint {
  readonly family: 4 | 6;
  readonly proto: number;
  /** 4 or 16 bytes. */
  readonly addr: Uint8Array;
  readonly port: number;
}

/**
 * A live generation as the programs see it: its rule set (whose rules and default action carry
 * EP_RULE_F_TRACK as `track` / `trackDefault`, and whose `trackEgress` / `cutOnDeny` are
 * `struct ep_gen_cfg`'s flags) and its epoch. Build with ctGeneration() once per apply. Inert.
 */
export interface CtGeneration {
  readonly spec: RuleSetSpec;
  readonly ruleSet: NormalizedRuleSet;
  /** u32, never 0. */
  readonly epoch: number;
}

/**
 * Validates a generation.
 * @returns a new CtGeneration. @throws RuleSetError (as validateRuleSet(), or for an epoch that
 * is not a nonzero u32).
 */
export function ctGeneration(spec: RuleSetSpec, epoch: number): CtGeneration {
  const ruleSet = validateRuleSet(spec);
  if (!Number.isInteger(epoch) || epoch < 1 || epoch > 0xffff_ffff) throw new RuleSetError('epoch', `must be an integer in 1..${0xffff_ffff}, got ${epoch}`);
  return { spec, ruleSet, epoch };
}

/** What step() reads besides the packet: the live generation and the agent's settings. */
export interface CtConfig {
  readonly generation: CtGeneration;
  readonly timeouts: CtTimeouts;
  readonly control: readonly CtControlEndpoint[];
}

/** Why step() decided what it did. */
export type CtReason =
  | 'non-ip'
  | 'malformed'
  /** A control-plane endpoint (ep_ct_control). */
  | 'control'
  /** An entry passed it. */
  | 'established'
  /** An ICMP error quoting a tracked flow. */
  | 'related'
  /** CUT: the entry's flow is denied by the new rule set; the entry is gone. */
  | 'cut'
  /** Passed by a tracking rule (or egress tracking), which created an entry. */
  | 'created'
  /** Classified by a rule (passed without creating an entry, or dropped). */
  | 'rule'
  /** Classified by the default action. */
  | 'default'
  /** Uplink egress without an entry or tracking: passed untouched. */
  | 'egress';

/** What one packet did. */
export interface CtStepResult {
  readonly verdict: 'pass' | 'drop';
  readonly reason: CtReason;
  /** The entry that decided or was created: its flow in the original direction, table and the packet's direction. */
  readonly key?: CtKey;
  readonly table?: CtTable;
  readonly direction?: CtDirection;
  /** A copy of the entry after the packet; absent when none exists (cut, or none created). */
  readonly entry?: CtEntry;
  /** The classifier's verdict when the packet was classified. */
  readonly classification?: Classification;
}

/** The connection-tracking fields of a frame. */
export type CtPacket =
  | { readonly kind: 'non-ip' }
  | { readonly kind: 'malformed' }
  | {
      readonly kind: 'ip';
      readonly headers: PacketHeaders;
      /** The packet's own tuple when its protocol is tracked (TCP, UDP, ICMP echo request/reply). */
      readonly tuple: CtKey | null;
      /** TCP flags byte (0 for other protocols). */
      readonly tcpFlags: number;
      /** ICMP echo request (the only ICMP packet that creates an entry). */
      readonly echoRequest: boolean;
      /** ICMP errors: the tuple of the quoted packet, when it has a tracked protocol. */
      readonly quoted: CtKey | null;
      /** The quoted packet is an ICMP echo reply (its destination is the requester). */
      readonly quotedEchoReply: boolean;
      /** TCP/UDP ports for the control bypass (null for other protocols and non-first fragments). */
      readonly ports: { readonly src: number; readonly dst: number } | null;
    };

const TCP = 6;
const UDP = 17;
const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const ACK = 0x10;
/** IPv6 extension headers parseFrame() walks (hop-by-hop, routing, fragment, AH, destination). */
const ipv6ExtensionHeaders = new Set([0, 43, 44, 51, 60]);
const icmpErrors = { 4: new Set([3, 11, 12]), 6: new Set([1, 2, 3, 4]) } as const;
const echo = { 4: { request: 8, reply: 0, proto: 1 }, 6: { request: 128, reply: 129, proto: 58 } } as const;

/**
 * Parses what connection tracking reads from a frame: parseFrame()'s headers (the classifier's
 * own parser), then ports, TCP flags, the ICMP echo identifier and an ICMP error's quoted tuple.
 * As CONNTRACK.md: a packet whose tracked fields are cut short (a TCP header under 14 bytes, an
 * ICMP header under 8) or a non-first fragment is not tracked (classified every time); a quote
 * whose IPv6 header is followed by extension headers gives no tuple. Assumed: the quote is parsed
 * as the outer family; a quoted TCP/UDP packet needs its 4 port bytes, a quoted echo its 8.
 * @returns the parsed packet; never throws.
 */
export function parseCtPacket(frame: Uint8Array): CtPacket {
  const parsed = parseFrame(frame);
  if (parsed.kind !== 'ip') return parsed;
  const headers = parsed.headers;
  const off = parsed.l4Offset;
  const base = { kind: 'ip' as const, headers, tuple: null, tcpFlags: 0, echoRequest: false, quoted: null, quotedEchoReply: false, ports: null };
  if (off === null) return base;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const p = headers.protocol;
  if (p === TCP || p === UDP) {
    // parseFrame() has checked the 4 port bytes.
    const sport = view.getUint16(off);
    const dport = view.getUint16(off + 2);
    const ports = { src: sport, dst: dport };
    if (p === TCP && off + 14 > frame.length) return { ...base, ports };
    return { ...base, ports, tuple: keyOf(headers, sport, dport), tcpFlags: p === TCP ? (frame[off + 13] as number) : 0 };
  }
  const icmp = echo[headers.family];
  if (p !== icmp.proto || off + 8 > frame.length) return base;
  const type = frame[off] as number;
  if (type === icmp.request || type === icmp.reply) {
    const id = view.getUint16(off + 4);
    return { ...base, tuple: keyOf(headers, id, id), echoRequest: type === icmp.request };
  }
  if (!icmpErrors[headers.family].has(type)) return base;
  const quoted = quotedTuple(frame, view, off + 8, headers.family);
  return { ...base, quoted: quoted?.key ?? null, quotedEchoReply: quoted?.echoReply ?? false };
}

function quotedTuple(frame: Uint8Array, view: DataView, off: number, family: 4 | 6): { key: CtKey; echoReply: boolean } | null {
  // CONNTRACK.md: an inner IPv6 header followed by extension headers is not looked into.
  if (family === 6 && off + 40 <= frame.length && ipv6ExtensionHeaders.has(frame[off + 6] as number)) return null;
  const inner = parseIpPacket(frame, off, family);
  if (inner.kind !== 'ip' || inner.l4Offset === null) return null;
  const at = inner.l4Offset;
  const p = inner.headers.protocol;
  if (p === TCP || p === UDP) return { key: keyOf(inner.headers, view.getUint16(at), view.getUint16(at + 2)), echoReply: false };
  const icmp = echo[family];
  if (p !== icmp.proto || at + 8 > frame.length) return null;
  const type = frame[at] as number;
  if (type !== icmp.request && type !== icmp.reply) return null;
  const id = view.getUint16(at + 4);
  return { key: keyOf(inner.headers, id, id), echoReply: type === icmp.reply };
}

function keyOf(headers: PacketHeaders, sport: number, dport: number): CtKey {
  const pad = (address: Uint8Array): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(address);
    return out;
  };
  return { family: headers.family, proto: headers.protocol, sport, dport, src: pad(headers.src), dst: pad(headers.dst) };
}

/** A string naming `key` (equal keys, equal strings): for maps and messages. */
export function keyId(key: CtKey): string {
  const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');
  return `${key.family}/${key.proto}/${hex(key.src)}:${key.sport}>${hex(key.dst)}:${key.dport}`;
}

/** The classifier's view of `key` (its original direction). */
export function keyHeaders(key: CtKey): PacketHeaders {
  const width = key.family === 4 ? 4 : 16;
  return {
    family: key.family,
    src: key.src.slice(0, width),
    dst: key.dst.slice(0, width),
    protocol: key.proto,
    dstPort: key.proto === TCP || key.proto === UDP ? key.dport : null,
  };
}

/** Which timeout a transition sets: `closing-keep` is closing without extending an earlier deadline. */
export type CtTimeoutKind = 'syn' | 'established' | 'closing' | 'closing-keep' | 'udp' | 'icmp';

/** One row of the TCP table applied. */
export interface TcpTransition {
  readonly state: CtState;
  readonly flags: number;
  readonly timeout: CtTimeoutKind;
  /** The row that applied, for tests and coverage: 'rst', 'syn-retransmit', 'syn-ack', 'ack', 'reuse', 'fin', 'other'. */
  readonly row: string;
}

/**
 * The TCP state machine of CONNTRACK.md for a packet of a found entry: the first row that matches
 * applies (Assumed: rows do not combine, so an ACK+FIN completing SYN_RECV sets no FIN flag;
 * "orig SYN (retransmit)" is any orig packet with SYN; SEEN_REPLY is set by the caller).
 * @returns the next state, flags and timeout kind.
 */
export function tcpTransition(state: CtState, flags: number, direction: CtDirection, tcp: number): TcpTransition {
  const syn = (tcp & SYN) !== 0;
  const ack = (tcp & ACK) !== 0;
  const orig = direction === 'orig';
  if ((tcp & RST) !== 0) return { state: ctStates.closed, flags, timeout: 'closing', row: 'rst' };
  if (state === ctStates.synSent && orig && syn) return { state, flags, timeout: 'syn', row: 'syn-retransmit' };
  if (state === ctStates.synSent && !orig && syn && ack) return { state: ctStates.synRecv, flags, timeout: 'syn', row: 'syn-ack' };
  if (state === ctStates.synRecv && orig && ack && !syn) return { state: ctStates.established, flags, timeout: 'established', row: 'ack' };
  if ((state === ctStates.closed || state === ctStates.closing) && orig && syn && !ack) {
    return { state: ctStates.synSent, flags: flags & (ctFlags.egress | ctFlags.origB), timeout: 'syn', row: 'reuse' };
  }
  const finable = state === ctStates.established || state === ctStates.synSent || state === ctStates.synRecv || state === ctStates.finWait;
  if (finable && (tcp & FIN) !== 0) {
    const next = flags | (orig ? ctFlags.finOrig : ctFlags.finReply);
    const both = (next & (ctFlags.finOrig | ctFlags.finReply)) === (ctFlags.finOrig | ctFlags.finReply);
    return { state: both ? ctStates.closing : ctStates.finWait, flags: next, timeout: both ? 'closing' : 'established', row: 'fin' };
  }
  return { state, flags, timeout: stateTimeout(state), row: 'other' };
}

function stateTimeout(state: CtState): CtTimeoutKind {
  switch (state) {
    case ctStates.synSent:
    case ctStates.synRecv:
      return 'syn';
    case ctStates.closing:
    case ctStates.closed:
      return 'closing-keep';
    case ctStates.udp:
      return 'udp';
    case ctStates.icmp:
      return 'icmp';
    default:
      return 'established';
  }
}

/**
 * The state a new entry starts in (the packet is its original direction), or undefined when the
 * packet creates none (TCP RST, ICMP other than an echo request). Assumed: RST wins over SYN.
 */
export function creationState(packet: Extract<CtPacket, { kind: 'ip' }>): { state: CtState; flags: number; timeout: CtTimeoutKind } | undefined {
  const tuple = packet.tuple;
  if (tuple === null) return undefined;
  if (tuple.proto === UDP) return { state: ctStates.udp, flags: 0, timeout: 'udp' };
  if (tuple.proto !== TCP) return packet.echoRequest ? { state: ctStates.icmp, flags: 0, timeout: 'icmp' } : undefined;
  const tcp = packet.tcpFlags;
  if ((tcp & RST) !== 0) return undefined;
  if ((tcp & SYN) !== 0 && (tcp & ACK) === 0) return { state: ctStates.synSent, flags: 0, timeout: 'syn' };
  // Loose pickup, then the FIN row applies to this packet too.
  const fin = tcpTransition(ctStates.established, 0, 'orig', tcp & FIN);
  return { state: fin.state, flags: fin.flags, timeout: fin.timeout };
}

function deadline(kind: CtTimeoutKind, now: bigint, old: bigint, timeouts: CtTimeouts): bigint {
  switch (kind) {
    case 'syn':
      return now + timeouts.tcpSyn;
    case 'established':
      return now + timeouts.tcpEstablished;
    case 'closing':
      return now + timeouts.tcpClosing;
    case 'closing-keep': {
      const fresh = now + timeouts.tcpClosing;
      return old < fresh ? old : fresh;
    }
    case 'udp':
      return now + timeouts.udp;
    case 'icmp':
      return now + timeouts.icmp;
  }
}

/** Options of ConntrackModel. */
export interface ConntrackModelOptions {
  /** Capacity of `ep_ct_new` (LRU). Default CT_NEW_ENTRIES. */
  newEntries?: number;
  /** Capacity of `ep_ct`. Default CT_ENTRIES. */
  entries?: number;
  /**
   * Slots of `ep_ct4` (a power of two). Default CT4_SLOTS. 0: none, every flow as before layout 6
   * (the kernel always has one; the model's tests of ep_ct's rules use IPv4 flows without it).
   */
  v4Slots?: number;
  /** Clock of the classifier's token buckets (rate-limit rules). Default process.hrtime.bigint. */
  classifierNow?: () => bigint;
}

interface Stored {
  /** The flow in its original direction (the table's key with EP_CT_F_ORIG_B applied). */
  readonly key: CtKey;
  entry: CtEntry;
}

/** The table id of a flow given in its original direction (an echo: the request). */
function flowId(original: CtKey): string {
  return keyId(ctKeyOfFlow(original).key);
}

/**
 * One role's connection table (`ep_ct_new` + `ep_ct`), its `ep_ct_stats` and its classifier
 * counters, stepped packet by packet. Holds no resources; deterministic given its inputs.
 */
export class ConntrackModel {
  readonly #newEntries: number;
  readonly #entries: number;
  readonly #classifierNow: (() => bigint) | undefined;
  // Map order is the LRU order of ep_ct_new: least recently used first.
  readonly #tables: Record<Exclude<CtTable, 'v4'>, Map<string, Stored>> = { new: new Map(), established: new Map() };
  readonly #v4: Ct4Slots<Stored> | undefined;
  readonly #stats: Record<CtStatName, number> = Object.fromEntries(CONNTRACK_STAT_NAMES.map((name) => [name, 0])) as Record<CtStatName, number>;
  #classifier: ReferenceClassifier | undefined;
  #generation: CtGeneration | undefined;

  constructor(options: ConntrackModelOptions = {}) {
    this.#newEntries = options.newEntries ?? CT_NEW_ENTRIES;
    this.#entries = options.entries ?? CT_ENTRIES;
    const v4Slots = options.v4Slots ?? CT4_SLOTS;
    this.#v4 = v4Slots === 0 ? undefined : new Ct4Slots<Stored>(v4Slots, (stored) => stored.entry.expiresNs);
    this.#classifierNow = options.classifierNow;
  }

  /**
   * Runs one frame through `hook` at monotonic time `now` (ns) under `config`.
   * @returns the verdict, why, and the entry after the packet (a copy).
   */
  step(frame: Uint8Array, hook: CtHook, now: bigint, config: CtConfig): CtStepResult {
    const classifier = this.#classifierFor(config.generation);
    const egress = hook === 'edge_tc_egress';
    const packet = parseCtPacket(frame);
    if (packet.kind !== 'ip') {
      // Egress never drops and has no classifier counters (Assumed: nor non-IP/malformed stats).
      const classification = egress ? undefined : classifier.classify(frame);
      const verdict = egress || packet.kind === 'non-ip' ? 'pass' : 'drop';
      return { verdict, reason: packet.kind, ...(classification === undefined ? {} : { classification }) };
    }
    if (this.#isControl(packet, egress, config.control)) {
      this.#stats.control++;
      return { verdict: 'pass', reason: 'control' };
    }
    if (packet.tuple !== null) {
      // One key for both directions; the direction is the entry's (is the packet from the side
      // that opened the flow?). An echo request is only ever the original direction and an echo
      // reply the reply one ("reply 0/129 in the reply direction"; Linux keys ICMP by type, so a
      // request the other way round is a flow of its own): the key's side a is the requester.
      const isEcho = packet.tuple.proto !== TCP && packet.tuple.proto !== UDP;
      const found = this.#lookup(packet.tuple, isEcho && !packet.echoRequest, now);
      if (found !== undefined) return this.#onEntry(found, packet, frame.length, egress, now, config);
    }
    // Step 4. At uplink egress, which passes everything, the lookup only finds the load-balanced
    // flow whose error the hook translates (LB.md, "ICMP errors"): nothing is counted RELATED,
    // but an expired entry it meets is deleted as anywhere.
    if (packet.quoted !== null) {
      const related = this.#lookup(packet.quoted, packet.quotedEchoReply, now);
      if (related !== undefined && !egress) {
        this.#stats.related++;
        return { verdict: 'pass', reason: 'related', key: related.stored.key, table: related.table, direction: related.direction, entry: copy(related.stored.entry) };
      }
    }
    const generation = config.generation;
    const start = creationState(packet);
    if (egress) {
      if (!generation.ruleSet.trackEgress || start === undefined || packet.tuple === null) return { verdict: 'pass', reason: 'egress' };
      return this.#create(packet.tuple, start, frame.length, now, config, EGRESS_RULE_ID, ctFlags.egress, undefined);
    }
    const classification = classifier.classifyHeaders(packet.headers, frame.length);
    if (classification.kind !== 'rule' && classification.kind !== 'default') throw new Error('unreachable: headers classify to a rule or the default');
    const reason = classification.kind;
    if (classification.verdict === 'drop') return { verdict: 'drop', reason, classification };
    const ruleId = classification.kind === 'rule' ? classification.ruleId : DEFAULT_RULE_ID;
    const tracks = classification.kind === 'rule' ? generation.ruleSet.rules[classification.ruleIndex]?.track === true : generation.ruleSet.trackDefault;
    if (!tracks || start === undefined || packet.tuple === null) return { verdict: 'pass', reason, classification };
    return this.#create(packet.tuple, start, frame.length, now, config, ruleId, 0, classification);
  }

  /**
   * The entry of the flow whose original direction is exactly `key` (not its reverse) in `only`
   * (default: ep_ct4, ep_ct, then ep_ct_new), expired or not; no side effects.
   * @returns a copy with its table, or undefined.
   */
  get(key: CtKey, only?: CtTable): { table: CtTable; entry: CtEntry } | undefined {
    for (const table of only === undefined ? CT_TABLES : [only]) {
      const stored = this.#stored(table, key);
      if (stored !== undefined && keyId(stored.key) === keyId(key)) return { table, entry: copy(stored.entry) };
    }
    return undefined;
  }

  /** Every entry of `table`, copies (ep_ct_new from least to most recently used; ep_ct4's expired ones too, with their slot). */
  entries(table: CtTable): { key: CtKey; entry: CtEntry; slot?: number }[] {
    if (table === 'v4') return [...(this.#v4?.flows() ?? [])].map((line) => ({ key: line.value.key, entry: copy(line.value.entry), slot: line.index }));
    return [...this.#tables[table].values()].map((one) => ({ key: one.key, entry: copy(one.entry) }));
  }

  // The flow of `original`'s entry in `table` (under its table key), either direction.
  #stored(table: CtTable, original: CtKey): Stored | undefined {
    if (table !== 'v4') return this.#tables[table].get(flowId(original));
    return this.#v4?.find(ctKeyOfFlow(original).key)?.value;
  }

  /**
   * Writes the entry of the flow whose original direction is `key` directly, as a test or the
   * agent writing the map would (an expired one, say). Its EP_CT_F_ORIG_B comes from `key`
   * (whatever `entry.flags` says), and it replaces the entry of either direction of the flow.
   * @throws RangeError when `table` is ep_ct and full (the kernel's E2BIG); ep_ct_new evicts.
   */
  put(table: CtTable, key: CtKey, entry: CtEntry): void {
    const stored = { ...copy(entry), flags: (entry.flags & ~CT_FLAG_ORIG_B) | ctKeyOfFlow(key).origFlag };
    if (!this.#insert(table, key, stored)) throw new RangeError(`put ${table} key=${keyId(key)}: table full`);
  }

  /** Removes every entry (the stats stay). */
  clear(): void {
    this.#tables.new.clear();
    this.#tables.established.clear();
    this.#v4?.clear();
  }

  /** `ep_ct_stats` summed over CPUs, by name. */
  stats(): Readonly<Record<CtStatName, number>> {
    return { ...this.#stats };
  }

  /** The classifier's per-rule counters (packets classified, i.e. without an entry). */
  counters(): ReturnType<ReferenceClassifier['counters']> {
    return this.#classifier?.counters() ?? new Map();
  }

  #classifierFor(generation: CtGeneration): ReferenceClassifier {
    if (this.#classifier === undefined) {
      this.#classifier = new ReferenceClassifier(generation.spec, this.#classifierNow === undefined ? {} : { now: this.#classifierNow });
    } else if (this.#generation !== generation) {
      this.#classifier.replace(generation.spec);
    }
    this.#generation = generation;
    return this.#classifier;
  }

  // Step 2, TCP/UDP only: the packet's source; at uplink egress its destination (the node
  // talking to a control endpoint).
  #isControl(packet: Extract<CtPacket, { kind: 'ip' }>, egress: boolean, control: readonly CtControlEndpoint[]): boolean {
    const h = packet.headers;
    if (packet.ports === null) return false;
    const addr = egress ? h.dst : h.src;
    const port = egress ? packet.ports.dst : packet.ports.src;
    return control.some((c) => c.family === h.family && c.proto === h.protocol && c.port === port && c.addr.length === addr.length && c.addr.every((b, i) => b === addr[i]));
  }

  // Step 3: the packet's key once in ep_ct, then (absent there) once in ep_ct_new; an expired
  // entry met on the way is deleted and counted. Assumed: step 4's lookup of a quoted tuple is
  // the same lookup, expiry included.
  #lookup(tuple: CtKey, echoReply: boolean, now: bigint): { table: CtTable; stored: Stored; direction: CtDirection } | undefined {
    const { key, srcIsB } = ctKeyOfTuple(tuple, echoReply);
    const id = keyId(key);
    // ep_ct4 first (its flows only): an expired line is deleted (DEAD) and counted, as below.
    const line = ct4Holds(key) ? this.#v4?.find(key) : undefined;
    if (line !== undefined) {
      if (line.value.entry.expiresNs >= now) {
        const origB = (line.value.entry.flags & CT_FLAG_ORIG_B) !== 0;
        return { table: 'v4', stored: line.value, direction: srcIsB === origB ? 'orig' : 'reply' };
      }
      this.#v4?.kill(line.index);
      this.#stats.expired++;
    }
    for (const table of ['established', 'new'] as const) {
      const stored = this.#tables[table].get(id);
      if (stored === undefined) continue;
      this.#tables[table].delete(id);
      if (stored.entry.expiresNs < now) {
        this.#stats.expired++;
        continue;
      }
      this.#tables[table].set(id, stored); // most recently used
      const origB = (stored.entry.flags & CT_FLAG_ORIG_B) !== 0;
      return { table, stored, direction: srcIsB === origB ? 'orig' : 'reply' };
    }
    return undefined;
  }

  // Step 5.
  #onEntry(
    found: { table: CtTable; stored: Stored; direction: CtDirection },
    packet: Extract<CtPacket, { kind: 'ip' }>,
    length: number,
    egress: boolean,
    now: bigint,
    config: CtConfig,
  ): CtStepResult {
    const { stored, direction } = found;
    let table = found.table;
    const entry = stored.entry;
    const generation = config.generation;
    // "Otherwise set entry.epoch" read as: every packet that is not cut, on the hooks that
    // re-check (with or without CUT; every apply has a new epoch, so a later CUT generation
    // re-checks either way). Assumed: egress never sets the epoch (it does not re-check, so
    // setting it would let an outbound packet excuse the flow from the next inbound re-check).
    if (!egress) {
      if (generation.ruleSet.cutOnDeny && entry.epoch !== generation.epoch && this.#recheckDrops(stored.key, entry, generation)) {
        if (table === 'v4') {
          const line = this.#v4?.find(ctKeyOfFlow(stored.key).key);
          if (line !== undefined) this.#v4?.kill(line.index);
        } else {
          this.#tables[table].delete(flowId(stored.key));
        }
        this.#stats.cut++;
        return { verdict: 'drop', reason: 'cut', key: stored.key, table, direction };
      }
      entry.epoch = generation.epoch;
    }
    let kind: CtTimeoutKind;
    if (stored.key.proto === TCP) {
      const next = tcpTransition(entry.state, entry.flags, direction, packet.tcpFlags);
      entry.state = next.state;
      entry.flags = next.flags;
      kind = next.timeout;
    } else {
      kind = stored.key.proto === UDP ? 'udp' : 'icmp';
    }
    entry.expiresNs = deadline(kind, now, entry.expiresNs, config.timeouts);
    const d = direction === 'orig' ? 0 : 1;
    entry.packets[d] += 1n;
    entry.bytes[d] += BigInt(length);
    if (direction === 'reply') entry.flags |= ctFlags.seenReply;
    this.#stats.established++;
    // Assumed: every reply packet of an entry still in ep_ct_new tries the move (so a flow gets
    // into ep_ct once there is room), counting INSERT_FAILED each time it fails.
    if (table === 'new' && direction === 'reply') {
      if (this.#insert('established', stored.key, entry)) {
        this.#tables.new.delete(flowId(stored.key));
        this.#stats.promoted++;
        table = 'established';
      } else {
        this.#stats.insertFailed++;
      }
    }
    return { verdict: 'pass', reason: 'established', key: stored.key, table, direction, entry: copy(entry) };
  }

  // The CUT re-check: a rule entry re-classifies its original tuple (dropped by a deny rule or a
  // deny default); an egress entry re-classifies its reply tuple and only an explicit deny rule
  // cuts it. Assumed: the re-check is not counted on rule counters and consumes no rate-limit
  // token; a rate-limit rule keeps the flow.
  #recheckDrops(key: CtKey, entry: CtEntry, generation: CtGeneration): boolean {
    const egress = (entry.flags & ctFlags.egress) !== 0;
    const rule = firstMatch(generation.ruleSet, keyHeaders(egress ? reverseKey(key) : key));
    if (rule === undefined) return !egress && generation.ruleSet.defaultAction === 'deny';
    return rule.action === 'deny';
  }

  // Step 6 / egress creation. Assumed: the creating packet is counted in packets[0]/bytes[0].
  #create(
    key: CtKey,
    start: { state: CtState; flags: number; timeout: CtTimeoutKind },
    length: number,
    now: bigint,
    config: CtConfig,
    ruleId: number,
    flags: number,
    classification: Classification | undefined,
  ): CtStepResult {
    const entry: CtEntry = {
      expiresNs: deadline(start.timeout, now, now, config.timeouts),
      createdNs: now,
      packets: [1n, 0n],
      bytes: [BigInt(length), 0n],
      ruleId,
      epoch: config.generation.epoch,
      state: start.state,
      flags: start.flags | flags | ctKeyOfFlow(key).origFlag,
    };
    // ep_ct4 for its flows while their window has a free slot. Otherwise the direct mark: below
    // it the entry goes straight into ep_ct (which then has room: the mark is below its
    // capacity), above it into ep_ct_new.
    const tableKey = ctKeyOfFlow(key).key;
    const made = ct4Holds(tableKey) ? this.#v4?.create(tableKey, { key, entry }, now) : undefined;
    if (made !== undefined) this.#stats.expired += made.expired;
    let table: CtTable;
    if (made?.made === 'created') {
      table = 'v4';
    } else {
      table = this.#tables.established.size < ctDirectMark(this.#entries) ? 'established' : 'new';
      this.#insert(table, key, entry);
    }
    this.#stats.created++;
    return {
      verdict: 'pass',
      reason: 'created',
      key,
      table,
      direction: 'orig',
      entry: copy(entry),
      ...(classification === undefined ? {} : { classification }),
    };
  }

  // ep_ct_new evicts its least recently used entry when full; ep_ct refuses (false). `key` is
  // the flow's original direction; the table holds it under the flow's key.
  #insert(table: CtTable, key: CtKey, entry: CtEntry): boolean {
    if (table === 'v4') {
      const tableKey = ctKeyOfFlow(key).key;
      if (this.#v4 === undefined || !ct4Holds(tableKey)) return false;
      const line = this.#v4.find(tableKey);
      if (line !== undefined) {
        this.#v4.replace(line.index, { key, entry });
        return true;
      }
      // At a time before every deadline: only an EMPTY or DEAD slot is free, no flow is deleted.
      return this.#v4.create(tableKey, { key, entry }, -1n).made === 'created';
    }
    const map = this.#tables[table];
    const id = flowId(key);
    if (!map.has(id) && map.size >= (table === 'new' ? this.#newEntries : this.#entries)) {
      if (table === 'established') return false;
      const oldest = map.keys().next().value as string;
      map.delete(oldest);
    }
    map.delete(id);
    map.set(id, { key, entry });
    return true;
  }
}

function copy(entry: CtEntry): CtEntry {
  return { ...entry, packets: [entry.packets[0], entry.packets[1]], bytes: [entry.bytes[0], entry.bytes[1]] };
}
