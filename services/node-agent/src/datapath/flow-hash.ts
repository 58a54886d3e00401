// The flow hash of L4 load balancing (issue 14): which Maglev slot a new flow to a service
// takes. The datapath computes it in C (bpf/include/ep_hash.h); this is the same function for
// the reference model and tests, held to the C one by flow-hash-differential.test.ts, which runs
// the C version in the kernel (BPF_PROG_TEST_RUN) over thousands of IPv4 and IPv6 tuples.
//
// Compatibility rule: the words a tuple becomes, jhash2 and EP_FLOW_HASH_SEED are part of the
// datapath contract. Two nodes with the same service must send the same flow to the same backend,
// and a node upgraded with a different hash would send every established-but-untracked flow
// elsewhere; change any of them only as a new, versioned hash. flow-hash.test.ts pins values.

/** `EP_FLOW_HASH_SEED`: the fixed jhash2 seed of the flow hash (ep_hash.h; "EPLB" in ASCII). */
export const FLOW_HASH_SEED = 0x45504c42;

/** lookup3's (and Linux include/linux/jhash.h's) initial value, `JHASH_INITVAL`. */
const JHASH_INITVAL = 0xdeadbeef;

const rol32 = (x: number, k: number): number => (x << k) | (x >>> (32 - k));

/**
 * Bob Jenkins' lookup3 `hashword()`, which is Linux's `jhash2()` (include/linux/jhash.h): a hash
 * of `length` 32-bit words of `k` with seed `initval`. ep_hash.h has the C twin; the Maglev table
 * (maglev.ts) hashes backend keys with it too, so this is the one jhash in TypeScript.
 * @returns the hash, an unsigned 32-bit integer; reads `k[0..length)`, never throws.
 */
export function jhash2(k: ArrayLike<number>, length: number, initval: number): number {
  let a = (JHASH_INITVAL + (length << 2) + initval) | 0;
  let b = a;
  let c = a;
  let i = 0;
  let left = length;
  while (left > 3) {
    a = (a + (k[i] as number)) | 0;
    b = (b + (k[i + 1] as number)) | 0;
    c = (c + (k[i + 2] as number)) | 0;
    // __jhash_mix
    a = (a - c) | 0; a ^= rol32(c, 4); c = (c + b) | 0;
    b = (b - a) | 0; b ^= rol32(a, 6); a = (a + c) | 0;
    c = (c - b) | 0; c ^= rol32(b, 8); b = (b + a) | 0;
    a = (a - c) | 0; a ^= rol32(c, 16); c = (c + b) | 0;
    b = (b - a) | 0; b ^= rol32(a, 19); a = (a + c) | 0;
    c = (c - b) | 0; c ^= rol32(b, 4); b = (b + a) | 0;
    left -= 3;
    i += 3;
  }
  if (left === 0) return c >>> 0;
  if (left === 3) c = (c + (k[i + 2] as number)) | 0;
  if (left >= 2) b = (b + (k[i + 1] as number)) | 0;
  a = (a + (k[i] as number)) | 0;
  // __jhash_final
  c ^= b; c = (c - rol32(b, 14)) | 0;
  a ^= c; a = (a - rol32(c, 11)) | 0;
  b ^= a; b = (b - rol32(a, 25)) | 0;
  c ^= b; c = (c - rol32(b, 16)) | 0;
  a ^= c; a = (a - rol32(c, 4)) | 0;
  b ^= a; b = (b - rol32(a, 14)) | 0;
  c ^= b; c = (c - rol32(b, 24)) | 0;
  return c >>> 0;
}

/** A flow as the load balancer hashes it: what ep_hash.h's `ep_flow_hash()` takes. */
export interface FlowTuple {
  readonly family: 4 | 6;
  /** IP protocol: 6 tcp, 17 udp. */
  readonly proto: number;
  /** 4 or 16 bytes (an IPv4 address may also come as 16 bytes, zero after the first 4). */
  readonly src: Uint8Array;
  readonly dst: Uint8Array;
  /** Host order, 0..65535. */
  readonly sport: number;
  readonly dport: number;
}

/** Words of the hashed tuple (ep_hash.h `EP_FLOW_HASH_WORDS`). */
export const FLOW_HASH_WORDS = 10;

// The little-endian word of 4 address bytes from `at`; bytes past the array's end are zero.
function addressWord(bytes: Uint8Array, at: number): number {
  return ((bytes[at] ?? 0) | ((bytes[at + 1] ?? 0) << 8) | ((bytes[at + 2] ?? 0) << 16) | ((bytes[at + 3] ?? 0) << 24)) >>> 0;
}

/**
 * The words a tuple is hashed as, defined on bytes so the hash is the same whatever the host's
 * byte order: words 0-3 the source address read as little-endian 32-bit words (IPv4: word 0,
 * words 1-3 zero), 4-7 the destination likewise, 8 `sport | dport << 16`, 9 `family | proto << 8`.
 * @param out receives the FLOW_HASH_WORDS words (reused by callers that hash many tuples).
 */
export function flowHashWords(tuple: FlowTuple, out: Uint32Array = new Uint32Array(FLOW_HASH_WORDS)): Uint32Array {
  for (let w = 0; w < 4; w++) {
    out[w] = addressWord(tuple.src, w * 4);
    out[4 + w] = addressWord(tuple.dst, w * 4);
  }
  out[8] = ((tuple.sport & 0xffff) | ((tuple.dport & 0xffff) << 16)) >>> 0;
  out[9] = (tuple.family | ((tuple.proto & 0xff) << 8)) >>> 0;
  return out;
}

// flowHash()'s words: hashing allocates nothing.
const scratch = new Uint32Array(FLOW_HASH_WORDS);

/**
 * `ep_flow_hash()`: the hash of a new flow's whole tuple (family, protocol, addresses, ports),
 * jhash2 of flowHashWords() with FLOW_HASH_SEED. Its slot in a Maglev table of `m` slots is
 * `flowHash(t) % m` (maglevSlot()).
 * @returns an unsigned 32-bit integer; never throws.
 */
export function flowHash(tuple: FlowTuple): number {
  return jhash2(flowHashWords(tuple, scratch), FLOW_HASH_WORDS, FLOW_HASH_SEED);
}

const NO_ADDRESS = new Uint8Array(0);

/**
 * `ep_client_hash()`: the hash under client-IP session affinity, where every flow of one client
 * address goes to the same backend: flowHash() of the tuple with only family and source kept
 * (protocol, destination and ports zero).
 * @returns an unsigned 32-bit integer; never throws.
 */
export function clientHash(family: 4 | 6, src: Uint8Array): number {
  return flowHash({ family, proto: 0, src, dst: NO_ADDRESS, sport: 0, dport: 0 });
}

/**
 * The Maglev slot of a flow hash in a table of `m` slots (`hash % m`, as ep_hash.h's
 * `ep_maglev_slot()`); m is at most 131,071, so the modulo bias is under 2^-15.
 */
export function maglevSlot(hash: number, m: number): number {
  return (hash >>> 0) % m;
}
