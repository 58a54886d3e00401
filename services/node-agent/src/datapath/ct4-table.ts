// The IPv4 flow table ep_ct4 (layout 6; bpf/CONNTRACK.md, "The IPv4 table") seen from TypeScript:
// its hash and tags (ep_ct4_ref in bpf/include/ep_ct4.h), its lines read back as connection
// entries, and Ct4Slots, its placement rules (which slot a flow takes, which it frees), for the
// reference model and the tests. The C is the table; this file must agree with it, and the
// differential test (conntrack-differential.test.ts) checks that it does, slot by slot.
import { encode, type CodecValue } from 'libbpf-ts';
import type { CtKey } from './conntrack-key.js';
import { epCt4Cold, epCt4Slot, type epCtEntry, NO_CT_NAT } from './table-codecs.js';

/** A slot that never held a flow: every probe sequence ends there. */
export const CT4_EMPTY = 0;
/** A slot whose flow was deleted: free, and probe sequences go on past it. */
export const CT4_DEAD = 2;
/** The bit that makes a flow's busy tag its live tag. */
export const CT4_LIVE = 0x8000_0000;
/** Slots from a flow's home that may hold it (EP_CT4_PROBES). */
export const CT4_PROBES = 8;
/** The smallest ep_ct4 (one window) and the largest the agent sizes. */
export const CT4_MIN_SLOTS = CT4_PROBES;
export const CT4_MAX_SLOTS = 1 << 24;

const M64 = (1n << 64n) - 1n;
const GOLDEN = 0x9e3779b97f4a7c15n;

/** Whether a table key (ep_ct_key order) belongs in ep_ct4: IPv4 TCP or UDP. */
export function ct4Holds(key: CtKey): boolean {
  return key.family === 4 && (key.proto === 6 || key.proto === 17);
}

/**
 * Where flow `key` (a table key: side a, side b) lives in an ep_ct4 of `slots` slots: its home
 * slot and its busy tag (its live tag is busy | CT4_LIVE), as ep_ct4_ref computes them.
 * @throws RangeError if `slots` is not a power of two.
 */
export function ct4Place(key: CtKey, slots: number): { home: number; busy: number } {
  if (!Number.isInteger(slots) || slots < 1 || (slots & (slots - 1)) !== 0) throw new RangeError(`ep_ct4 has a power of two slots, got ${slots}`);
  const word = (bytes: Uint8Array): bigint => BigInt(new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true));
  const ab = (word(key.dst) << 32n) | word(key.src);
  const rest = (BigInt(key.proto) << 32n) | (BigInt(key.dport) << 16n) | BigInt(key.sport);
  let x = (ab * GOLDEN) & M64;
  x = ((x ^ rest) * GOLDEN) & M64;
  x ^= x >> 30n;
  x = (x * 0xbf58476d1ce4e5b9n) & M64;
  x ^= x >> 27n;
  x = (x * 0x94d049bb133111ebn) & M64;
  x ^= x >> 31n;
  const home = Number(x & BigInt(slots - 1));
  const busy = ((Number(x >> 32n) & ~CT4_LIVE) | 3) >>> 0;
  return { home, busy };
}

/** Whether a tag is a flow's (busy or live), not EMPTY or DEAD. */
function holdsFlow(tag: number): boolean {
  return tag !== CT4_EMPTY && tag !== CT4_DEAD;
}

/**
 * One ep_ct4 line and its ep_ct4_cold as ep_ct would hold the flow: its table key and a
 * `struct ep_ct_entry` (no NAT). Undefined for a line that holds no live flow.
 */
export function ct4Entry(line: CodecValue<typeof epCt4Slot>, cold: CodecValue<typeof epCt4Cold>): { key: CtKey; entry: CodecValue<typeof epCtEntry> } | undefined {
  if ((line.tag & CT4_LIVE) === 0) return undefined;
  const address = (four: Uint8Array): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(four);
    return out;
  };
  return {
    key: { family: 4, proto: line.proto, sport: line.ap, dport: line.bp, src: address(line.a), dst: address(line.b) },
    entry: {
      expiresNs: line.expiresNs,
      createdNs: cold.createdNs,
      packets: line.packets,
      bytes: line.bytes,
      ruleId: cold.ruleId,
      epoch: line.epoch,
      state: line.state,
      flags: line.flags,
      pad0: 0,
      pad1: 0,
      nat: NO_CT_NAT,
    },
  };
}

/**
 * `struct ep_ct4_slot` bytes of a live line for flow `key` (table key) holding `entry`, and its
 * ep_ct4_cold; `busy` is the flow's busy tag (ct4Place).
 */
export function ct4Line(key: CtKey, entry: CodecValue<typeof epCtEntry>, busy: number): { line: Uint8Array; cold: Uint8Array } {
  const line = encode(epCt4Slot, {
    tag: (busy | CT4_LIVE) >>> 0,
    epoch: entry.epoch,
    a: key.src.subarray(0, 4),
    b: key.dst.subarray(0, 4),
    ap: key.sport,
    bp: key.dport,
    proto: key.proto,
    state: entry.state,
    flags: entry.flags,
    pad: 0,
    expiresNs: entry.expiresNs,
    packets: entry.packets,
    bytes: entry.bytes,
  });
  return { line, cold: encode(epCt4Cold, { createdNs: entry.createdNs, ruleId: entry.ruleId, pad: 0 }) };
}

function sameKey(x: CtKey, y: CtKey): boolean {
  if (x.proto !== y.proto || x.sport !== y.sport || x.dport !== y.dport) return false;
  for (let i = 0; i < 4; i++) if (x.src[i] !== y.src[i] || x.dst[i] !== y.dst[i]) return false;
  return true;
}

/** What Ct4Slots.create did (enum ep_ct4_made), and how many expired flows it deleted on the way (EXPIRED). */
export interface Ct4Made {
  readonly made: 'created' | 'exists' | 'full';
  readonly expired: number;
}

/**
 * ep_ct4's placement, one CPU at a time: lines by slot index (absent: EMPTY), each with its tag,
 * its table key and a value whose deadline `expires` reads. Deterministic; holds no resources.
 */
export class Ct4Slots<T> {
  readonly size: number;
  readonly #expires: (value: T) => bigint;
  readonly #lines = new Map<number, { tag: number; key: CtKey; value: T }>();

  /** @throws RangeError if `size` is not a power of two in CT4_MIN_SLOTS..CT4_MAX_SLOTS. */
  constructor(size: number, expires: (value: T) => bigint) {
    if (!Number.isInteger(size) || size < CT4_MIN_SLOTS || size > CT4_MAX_SLOTS || (size & (size - 1)) !== 0) throw new RangeError(`ep_ct4 slots must be a power of two in ${CT4_MIN_SLOTS}..${CT4_MAX_SLOTS}, got ${size}`);
    this.size = size;
    this.#expires = expires;
  }

  /** The slot indexes of `key`'s window, home first. */
  window(key: CtKey): number[] {
    const { home } = ct4Place(key, this.size);
    return Array.from({ length: CT4_PROBES }, (_, i) => (home + i) & (this.size - 1));
  }

  /** The flow `key`'s line (live tag and key), expired or not, as ep_ct4_find. */
  find(key: CtKey): { index: number; value: T } | undefined {
    const live = (ct4Place(key, this.size).busy | CT4_LIVE) >>> 0;
    for (const index of this.window(key)) {
      const line = this.#lines.get(index);
      if (line === undefined) return undefined;
      if (line.tag === live && sameKey(line.key, key)) return { index, value: line.value };
    }
    return undefined;
  }

  /** Gives the flow in slot `index` (live) value `value`, in place. */
  replace(index: number, value: T): void {
    const line = this.#lines.get(index);
    if (line !== undefined && (line.tag & CT4_LIVE) !== 0) line.value = value;
  }

  /** Deletes the flow in slot `index` (DEAD). */
  kill(index: number): void {
    const line = this.#lines.get(index);
    if (line !== undefined && holdsFlow(line.tag)) line.tag = CT4_DEAD;
  }

  /**
   * Creates flow `key` with `value` at `now` as ep_ct4_create: its own expired line is deleted on
   * the way, it takes the first free slot of its window (EMPTY, DEAD, or a flow expired before
   * `now`: the reference model's reading of a deadline, ConntrackModel; the kernel's equal to now
   * too, a difference no test can time),
   * and reusing an expired flow's slot deletes that flow. No free slot: 'full', nothing changed
   * but the deletions of its own expired line.
   */
  create(key: CtKey, value: T, now: bigint): Ct4Made {
    const live = (ct4Place(key, this.size).busy | CT4_LIVE) >>> 0;
    let expired = 0;
    let free: number | undefined;
    for (const index of this.window(key)) {
      const line = this.#lines.get(index);
      let tag = line?.tag ?? CT4_EMPTY;
      if (line !== undefined && tag === live && sameKey(line.key, key)) {
        if (this.#expires(line.value) >= now) return { made: 'exists', expired };
        line.tag = tag = CT4_DEAD;
        expired++;
      }
      const reusable = tag === CT4_EMPTY || tag === CT4_DEAD || ((tag & CT4_LIVE) !== 0 && line !== undefined && this.#expires(line.value) < now);
      if (free === undefined && reusable) free = index;
      if (tag === CT4_EMPTY) break;
    }
    if (free === undefined) return { made: 'full', expired };
    if ((((this.#lines.get(free)?.tag ?? 0) & CT4_LIVE) >>> 0) !== 0) expired++;
    this.#lines.set(free, { tag: live, key, value });
    return { made: 'created', expired };
  }

  /** Every line holding a flow (live tag, expired or not). */
  *flows(): IterableIterator<{ index: number; key: CtKey; value: T }> {
    for (const [index, line] of this.#lines) if ((line.tag & CT4_LIVE) !== 0) yield { index, key: line.key, value: line.value };
  }

  /** Empties the table (every slot EMPTY). */
  clear(): void {
    this.#lines.clear();
  }
}
