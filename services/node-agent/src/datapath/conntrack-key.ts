// The key of the connection tables (layout 3, bpf/CONNTRACK.md "Tables"): one key for both
// directions of a flow, plus the entry's EP_CT_F_ORIG_B saying which side opened it. This file
// is the one place in TypeScript that orders endpoints and rebuilds a flow's original direction:
// the reference model, the codecs' readers (listings), the layout-2 migration and the tests use it.

/** `EP_CT_F_ORIG_B`: the key's side b (dst, dport) opened the flow. */
export const CT_FLAG_ORIG_B = 0x10;

const TCP = 6;
const UDP = 17;

/**
 * A flow tuple as `struct ep_ct_key` lays it out: addresses 16 bytes (IPv4 in the first 4, the
 * rest zero), ports in host order (an ICMP echo's identifier in both). As a key its (src, sport)
 * is side a and (dst, dport) side b; as a tuple, source and destination.
 */
export interface CtKey {
  readonly family: 4 | 6;
  /** 6 tcp, 17 udp, 1 icmp, 58 icmpv6. */
  readonly proto: number;
  readonly sport: number;
  readonly dport: number;
  readonly src: Uint8Array;
  readonly dst: Uint8Array;
}

/** The same tuple seen from the other end. @returns a new key sharing the address arrays. */
export function reverseKey(key: CtKey): CtKey {
  return { family: key.family, proto: key.proto, sport: key.dport, dport: key.sport, src: key.dst, dst: key.src };
}

/** True for TCP and UDP (keyed in canonical order); anything else tracked is an ICMP echo. */
function ordered(proto: number): boolean {
  return proto === TCP || proto === UDP;
}

// (a, ap) after (b, bp): the address compared as bytes, then the port (ep_ct_after in C).
function after(a: Uint8Array, ap: number, b: Uint8Array, bp: number): boolean {
  for (let i = 0; i < 16; i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return ap > bp;
}

/**
 * The table key of a packet's tuple. TCP/UDP: the endpoints in canonical order. ICMP echo: the
 * requester as side a, so `echoReply` says the tuple is a reply (its destination requested).
 * @returns the key (a new object sharing the address arrays) and whether the tuple's source is
 * side b; never throws.
 */
export function ctKeyOfTuple(tuple: CtKey, echoReply = false): { key: CtKey; srcIsB: boolean } {
  const srcIsB = ordered(tuple.proto) ? after(tuple.src, tuple.sport, tuple.dst, tuple.dport) : echoReply;
  return { key: srcIsB ? reverseKey(tuple) : tuple, srcIsB };
}

/**
 * The table key of a flow given in its original direction (for an echo, the request) and the
 * EP_CT_F_ORIG_B bit its entry carries.
 * @returns the key and the flag bit (0 or CT_FLAG_ORIG_B).
 */
export function ctKeyOfFlow(original: CtKey): { key: CtKey; origFlag: number } {
  const { key, srcIsB } = ctKeyOfTuple(original, false);
  return { key, origFlag: srcIsB ? CT_FLAG_ORIG_B : 0 };
}

/**
 * The original direction of the flow stored under `key` with entry flags `flags` (the
 * originator's side from EP_CT_F_ORIG_B).
 * @returns the tuple as the flow's first packet had it; never throws.
 */
export function originalTuple(key: CtKey, flags: number): CtKey {
  return (flags & CT_FLAG_ORIG_B) !== 0 ? reverseKey(key) : key;
}
