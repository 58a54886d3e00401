// The reference classifier: the datapath's semantics written as plainly as possible, straight
// from the rule set (a linear first-match scan), never from the compiled tables. Differential
// tests hold the eBPF programs to it. Frame parsing follows bpf/README.md.
import { cidrContains, type Cidr } from '@edgeplane/proto';
import {
  DEFAULT_RULE_ID,
  validateRuleSet,
  type Classification,
  type NormalizedRule,
  type NormalizedRuleSet,
  type PacketHeaders,
  type RuleSetSpec,
} from './rule-set.js';
import { listMembership } from './prefix-set.js';

/** VLAN tags skipped before the IP header. */
export const MAX_VLAN_TAGS = 2;
/** IPv6 extension headers walked. */
export const MAX_EXTENSION_HEADERS = 8;
/** Bytes of L2 + L3 headers accepted before the L4 header. */
export const MAX_L3_OFFSET = 1024;

const NANO = 1_000_000_000n;
const extensionHeaders = new Set([0, 43, 44, 51, 60]);

/**
 * A frame as the classifier sees it. `l4Offset` is where the upper-layer header starts (null for
 * a non-first fragment, which has none): connection tracking reads ports, TCP flags and ICMP
 * fields there.
 */
export type ParsedFrame =
  | { readonly kind: 'non-ip' }
  | { readonly kind: 'malformed' }
  | { readonly kind: 'ip'; readonly headers: PacketHeaders; readonly l4Offset: number | null };

/**
 * Parses an Ethernet frame: up to MAX_VLAN_TAGS 802.1Q/802.1ad tags, IPv4 (options, fragments)
 * or IPv6 (up to MAX_EXTENSION_HEADERS extension headers), and the TCP/UDP destination port.
 * @returns 'non-ip' for other ethertypes (a third VLAN tag included) and runts shorter than an
 * Ethernet header; 'malformed' for truncated or inconsistent IP/L4 headers.
 */
export function parseFrame(frame: Uint8Array): ParsedFrame {
  if (frame.length < 14) return { kind: 'non-ip' };
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  let ethertype = view.getUint16(12);
  let off = 14;
  for (let i = 0; i < MAX_VLAN_TAGS && (ethertype === 0x8100 || ethertype === 0x88a8); i++) {
    if (off + 4 > frame.length) return { kind: 'malformed' };
    ethertype = view.getUint16(off + 2);
    off += 4;
  }
  if (ethertype === 0x0800) return parseIpv4(frame, view, off);
  if (ethertype === 0x86dd) return parseIpv6(frame, view, off);
  return { kind: 'non-ip' };
}

/**
 * Parses the IP packet of `family` that starts at byte `off` of `frame`, as parseFrame() does
 * after the Ethernet header (ICMP errors embed one).
 * @returns 'malformed' for a truncated or inconsistent header or a version other than `family`.
 */
export function parseIpPacket(frame: Uint8Array, off: number, family: 4 | 6): ParsedFrame {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  return family === 4 ? parseIpv4(frame, view, off) : parseIpv6(frame, view, off);
}

function parseIpv4(frame: Uint8Array, view: DataView, off: number): ParsedFrame {
  if (off + 20 > frame.length) return { kind: 'malformed' };
  const versionIhl = frame[off] as number;
  const ihl = versionIhl & 0x0f;
  if (versionIhl >> 4 !== 4 || ihl < 5 || off + ihl * 4 > frame.length) return { kind: 'malformed' };
  const protocol = frame[off + 9] as number;
  const src = frame.slice(off + 12, off + 16);
  const dst = frame.slice(off + 16, off + 20);
  if ((view.getUint16(off + 6) & 0x1fff) !== 0) return { kind: 'ip', headers: { family: 4, src, dst, protocol, dstPort: null }, l4Offset: null };
  return withPort(frame, view, off + ihl * 4, 4, src, dst, protocol);
}

function parseIpv6(frame: Uint8Array, view: DataView, off: number): ParsedFrame {
  if (off + 40 > frame.length || (frame[off] as number) >> 4 !== 6) return { kind: 'malformed' };
  const src = frame.slice(off + 8, off + 24);
  const dst = frame.slice(off + 24, off + 40);
  let next = frame[off + 6] as number;
  off += 40;
  for (let i = 0; i < MAX_EXTENSION_HEADERS && extensionHeaders.has(next); i++) {
    if (off > MAX_L3_OFFSET || off + 8 > frame.length) return { kind: 'malformed' };
    const length = frame[off + 1] as number;
    if (next === 44) {
      const fragmentOffset = view.getUint16(off + 2) >> 3;
      next = frame[off] as number;
      off += 8;
      if (fragmentOffset !== 0) return { kind: 'ip', headers: { family: 6, src, dst, protocol: next, dstPort: null }, l4Offset: null };
    } else {
      const headerLength = next === 51 ? (length + 2) * 4 : (length + 1) * 8;
      next = frame[off] as number;
      off += headerLength;
    }
  }
  if (extensionHeaders.has(next)) return { kind: 'malformed' };
  return withPort(frame, view, off, 6, src, dst, next);
}

function withPort(frame: Uint8Array, view: DataView, off: number, family: 4 | 6, src: Uint8Array, dst: Uint8Array, protocol: number): ParsedFrame {
  if (protocol !== 6 && protocol !== 17) return { kind: 'ip', headers: { family, src, dst, protocol, dstPort: null }, l4Offset: off };
  if (off > MAX_L3_OFFSET || off + 4 > frame.length) return { kind: 'malformed' };
  return { kind: 'ip', headers: { family, src, dst, protocol, dstPort: view.getUint16(off + 2) }, l4Offset: off };
}

/**
 * First rule of `ruleSet` matching `headers`.
 * @returns the rule, or undefined when the default action applies.
 */
export function firstMatch(ruleSet: NormalizedRuleSet, headers: PacketHeaders): NormalizedRule | undefined {
  let inList: (name: string, address: Uint8Array) => boolean = NO_LIST;
  if (ruleSet.lists.length > 0) {
    inList = memberships.get(ruleSet) ?? listMembership(ruleSet.lists);
    memberships.set(ruleSet, inList);
  }
  return ruleSet.rules.find((rule) => ruleMatches(rule, headers, inList));
}

const NO_LIST = (): boolean => false;
const memberships = new WeakMap<NormalizedRuleSet, (name: string, address: Uint8Array) => boolean>();

/**
 * True if `rule` matches `headers` (source, destination, protocol and port all match); an address
 * matches a field with a prefix of it or, through `inList`, one of its prefix lists.
 */
export function ruleMatches(rule: NormalizedRule, headers: PacketHeaders, inList: (name: string, address: Uint8Array) => boolean = NO_LIST): boolean {
  const inAny = (cidrs: readonly Cidr[] | null, lists: readonly string[], address: Uint8Array): boolean =>
    cidrs === null || cidrs.some((cidr) => cidrContains(cidr, address)) || lists.some((name) => inList(name, address));
  if (!inAny(rule.src, rule.srcLists, headers.src) || !inAny(rule.dst, rule.dstLists, headers.dst)) return false;
  if (rule.protocol !== null && rule.protocol !== headers.protocol) return false;
  if (rule.ports === null) return true;
  const port = headers.dstPort;
  return port !== null && rule.ports.some((range) => port >= range.from && port <= range.to);
}

/** Packets and bytes. */
export interface CounterValue {
  packets: number;
  bytes: number;
}

/** Options of ReferenceClassifier. */
export interface ReferenceClassifierOptions {
  /** Monotonic clock in nanoseconds for the token buckets. Default: process.hrtime.bigint. */
  now?: () => bigint;
}

/**
 * The oracle: classifies frames against a rule set, keeping per-rule counters and per-source
 * token buckets exactly as the datapath defines them. Holds no resources.
 */
export class ReferenceClassifier {
  #ruleSet: NormalizedRuleSet;
  readonly #now: () => bigint;
  readonly #buckets = new Map<string, { tokens: bigint; last: bigint }>();
  readonly #counters = new Map<number, CounterValue>();
  readonly #stats = { nonIp: { packets: 0, bytes: 0 }, malformed: { packets: 0, bytes: 0 }, rateLimited: { packets: 0, bytes: 0 } };

  /** @throws RuleSetError, CapacityError as validateRuleSet(). */
  constructor(ruleSet: RuleSetSpec, options: ReferenceClassifierOptions = {}) {
    this.#ruleSet = validateRuleSet(ruleSet);
    this.#now = options.now ?? process.hrtime.bigint;
  }

  /**
   * Switches to another rule set; counters and buckets (keyed by rule id) carry over, like the
   * datapath's. `normalized`: what validateRuleSet(ruleSet) returned, when the caller has it.
   * @throws RuleSetError, CapacityError as validateRuleSet() (nothing changed).
   */
  replace(ruleSet: RuleSetSpec, normalized: NormalizedRuleSet = validateRuleSet(ruleSet)): void {
    this.#ruleSet = normalized;
  }

  /** Classifies one frame, counting it and consuming a token when a rate-limit rule matches. */
  classify(frame: Uint8Array): Classification {
    const parsed = parseFrame(frame);
    if (parsed.kind === 'non-ip') {
      add(this.#stats.nonIp, frame.length);
      return { kind: 'non-ip', verdict: 'pass' };
    }
    if (parsed.kind === 'malformed') {
      add(this.#stats.malformed, frame.length);
      return { kind: 'malformed', verdict: 'drop' };
    }
    return this.classifyHeaders(parsed.headers, frame.length);
  }

  /** Classifies already parsed headers of a `length`-byte frame (counted like classify()). */
  classifyHeaders(headers: PacketHeaders, length: number): Classification {
    const rule = firstMatch(this.#ruleSet, headers);
    if (rule === undefined) {
      this.#count(DEFAULT_RULE_ID, length);
      const action = this.#ruleSet.defaultAction;
      return { kind: 'default', action, verdict: action === 'allow' ? 'pass' : 'drop' };
    }
    this.#count(rule.id, length);
    let verdict: 'pass' | 'drop' = rule.action === 'deny' ? 'drop' : 'pass';
    if (rule.action === 'rate_limit' && !this.#takeToken(rule, headers)) {
      verdict = 'drop';
      add(this.#stats.rateLimited, length);
    }
    return { kind: 'rule', ruleIndex: rule.index, ruleId: rule.id, action: rule.action, verdict };
  }

  /** Counters by rule id (DEFAULT_RULE_ID for the default action); rules never hit are absent. */
  counters(): ReadonlyMap<number, Readonly<CounterValue>> {
    return this.#counters;
  }

  /** Frames that never reached a rule, and rate-limit drops. */
  stats(): { readonly nonIp: Readonly<CounterValue>; readonly malformed: Readonly<CounterValue>; readonly rateLimited: Readonly<CounterValue> } {
    return this.#stats;
  }

  #count(id: number, length: number): void {
    const counter = this.#counters.get(id) ?? { packets: 0, bytes: 0 };
    add(counter, length);
    this.#counters.set(id, counter);
  }

  // Same arithmetic as ep_rate_ok() in bpf/include/classifier.h: nano-tokens, a new source
  // starts with a full bucket, a refill never exceeds the burst.
  #takeToken(rule: NormalizedRule, headers: PacketHeaders): boolean {
    const rate = rule.rateLimit;
    if (rate === null) return true;
    const burst = BigInt(rate.burst) * NANO;
    const pps = BigInt(rate.pps);
    const fill = (burst + pps - 1n) / pps;
    const key = `${rule.id}/${headers.family}/${Array.from(headers.src).join('.')}`;
    const now = this.#now();
    const bucket = this.#buckets.get(key);
    if (bucket === undefined) {
      this.#buckets.set(key, { tokens: burst - NANO, last: now });
      return true;
    }
    const elapsed = now > bucket.last ? now - bucket.last : 0n;
    let tokens = elapsed >= fill ? burst : bucket.tokens + elapsed * pps;
    if (tokens > burst) tokens = burst;
    if (now > bucket.last) bucket.last = now;
    if (tokens >= NANO) {
      bucket.tokens = tokens - NANO;
      return true;
    }
    bucket.tokens = tokens;
    return false;
  }
}

function add(counter: CounterValue, length: number): void {
  counter.packets += 1;
  counter.bytes += length;
}
