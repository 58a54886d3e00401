// A service's Maglev lookup table (issue 14): which backend each of a table's M slots sends new
// flows to. Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
// NSDI 2016, section 3.4 (https://www.usenix.org/conference/nsdi16/technical-sessions/presentation/eisenbud).
// Pure: no kernel. The datapath picks slot `flowHash % M` (flow-hash.ts, bpf/include/ep_hash.h);
// bpf/LB.md has the table layout it would read.
import { formatAddress, MAGLEV_MIN_SLOTS_PER_BACKEND, MAGLEV_TABLE_SIZES, parseAddress } from '@edgeplane/proto';
import { MaglevInputError } from './errors.js';
import { jhash2 } from './flow-hash.js';

/** A backend as the table builder sees it. */
export interface MaglevBackend {
  /** The backend's canonical identity, from backendKey() (e.g. `10.0.0.1:8080`, `[2001:db8::1]:80`). */
  readonly key: string;
  /**
   * Relative share of the slots, an integer 0..2^32-1; 0 (draining, or unhealthy on this node)
   * takes none. A proto `Backend` without a weight means 1: the caller resolves that.
   */
  readonly weight: number;
}

/** jhash2 seed of a backend's offset (ASCII "MGLO"). Part of the compatibility rule below. */
export const MAGLEV_OFFSET_SEED = 0x4d474c4f;
/** jhash2 seed of a backend's skip (ASCII "MGLS"). Part of the compatibility rule below. */
export const MAGLEV_SKIP_SEED = 0x4d474c53;

/** Characters of a backend key at most: `[` + 39 (IPv6 text) + `]:` + 5 (port) is 47. */
export const MAX_BACKEND_KEY_LENGTH = 64;

// Bits of a backend's rank in a heap key (buildMaglevTable): ranks are below the largest size /
// MAGLEV_MIN_SLOTS_PER_BACKEND (1,310: 11 bits), rounds at most the largest size + 2 (18 bits).
const LARGEST_SIZE = Math.max(...MAGLEV_TABLE_SIZES);
const RANK_BITS = Math.ceil(Math.log2(Math.floor(LARGEST_SIZE / MAGLEV_MIN_SLOTS_PER_BACKEND) + 1));
const RANK_MASK = (1 << RANK_BITS) - 1;
if ((LARGEST_SIZE + 3) * 2 ** RANK_BITS >= 2 ** 31) throw new Error(`maglev: heap keys of table size ${LARGEST_SIZE} overflow 31 bits`);

/** A weight at most: the weighted fill's arithmetic is exact up to 2^32 - 1 (proto's uint32). */
const MAX_WEIGHT = 0xffffffff;

// A free slot while filling: the table is filled as an Int32Array (small integers stay
// integers in V8; 0xffffffff in a Uint32Array reads as a double) and returned as a Uint32Array
// view of the same memory.
const EMPTY = -1;

/**
 * The canonical identity of a backend, the Maglev table's key for it: `a.b.c.d:port` for IPv4,
 * `[rfc5952]:port` for IPv6 (any spelling of the address gives one key), so every node derives
 * the same key from the same spec. A proto `Backend` port 0 means the service's port: the
 * caller resolves that first.
 * @throws MaglevInputError when `address` is not an IPv4 or IPv6 address or `port` not 1..65535.
 */
export function backendKey(address: string, port: number): string {
  const bytes = address.length <= 45 ? parseAddress(address) : undefined;
  if (bytes === undefined) throw new MaglevInputError('address', `${JSON.stringify(address.slice(0, 64))} is not an IPv4 or IPv6 address`);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new MaglevInputError('port', `${port} is not a port (1-65535)`);
  return bytes.length === 4 ? `${formatAddress(4, bytes)}:${port}` : `[${formatAddress(6, bytes)}]:${port}`;
}

// A key's bytes as jhash2 words: 4 characters per little-endian word, zero-padded, then the
// length in characters (so keys that differ only by trailing NULs could not collide). Keys are
// printable ASCII, one byte per character. @returns the word count written to `out`.
function keyWords(key: string, out: Uint32Array): number {
  const words = (key.length + 3) >> 2;
  out.fill(0, 0, words);
  for (let i = 0; i < key.length; i++) out[i >> 2] = ((out[i >> 2] as number) | (key.charCodeAt(i) << ((i & 3) * 8))) >>> 0;
  out[words] = key.length;
  return words + 1;
}

const scratchWords = new Uint32Array((MAX_BACKEND_KEY_LENGTH >> 2) + 1);

// A backend key: 1..MAX_BACKEND_KEY_LENGTH printable ASCII characters (what backendKey() builds).
function validKey(key: unknown): key is string {
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_BACKEND_KEY_LENGTH) return false;
  for (let i = 0; i < key.length; i++) {
    const code = key.charCodeAt(i);
    if (code < 0x21 || code > 0x7e) return false;
  }
  return true;
}

/**
 * A backend's permutation of the slots (the paper's offset and skip): it prefers slots
 * `(offset + j * skip) mod m`, j = 0, 1, ..., which visits every slot since m is prime and
 * 1 <= skip < m. offset = jhash2(key words, MAGLEV_OFFSET_SEED) mod m, skip =
 * jhash2(key words, MAGLEV_SKIP_SEED) mod (m - 1) + 1: two seeds of lookup3's hashword, whose
 * outputs for different seeds are independent for practical purposes (Katran and Cilium use two
 * seeds of MurmurHash3 the same way).
 * @returns offset and skip.
 * @throws MaglevInputError when `key` is not 1..64 printable ASCII characters.
 */
export function maglevPermutation(key: string, m: number): { offset: number; skip: number } {
  if (!validKey(key)) throw new MaglevInputError('key', `must be 1-${MAX_BACKEND_KEY_LENGTH} printable ASCII characters (backendKey())`);
  const length = keyWords(key, scratchWords);
  return { offset: jhash2(scratchWords, length, MAGLEV_OFFSET_SEED) % m, skip: (jhash2(scratchWords, length, MAGLEV_SKIP_SEED) % (m - 1)) + 1 };
}

// ceil(a / b) for integers a < 2^53, b >= 1: the float quotient may round across an integer, so
// correct it by one exact multiplication.
function ceilDiv(a: number, b: number): number {
  const q = Math.floor(a / b);
  return q * b < a ? q + 1 : q;
}

/**
 * Builds a service's Maglev lookup table: entry s is the index, into `backends` as given, of the
 * backend that new flows hashing to slot s go to.
 *
 * **Population** (the paper's section 3.4): backends are ordered by key (so the table, read as
 * keys, does not depend on the order of `backends`: two nodes with one spec build one table);
 * they take turns, and a turn claims the backend's next preferred slot (maglevPermutation()) not
 * yet taken, until all m slots are taken. Every turn claims exactly one slot. Cost: m turns plus
 * the skipped taken slots, O(m log m) typical as in the paper, O(log n) per turn for the order of
 * turns (a heap), and no allocation per slot.
 *
 * **Weights** decide how often a backend takes a turn. Cilium (pkg/maglev, after Envoy's weighted
 * Maglev) walks a cursor over the backends and lets one take the turn when a float counter says
 * it is behind its share; Katran (MaglevHashV2) runs rounds in which every backend adds its
 * weight to an integer credit and takes a turn when the credit reaches the largest weight, then
 * pays that much. This uses Katran's credit rule (integers only, no float state to reproduce on
 * every node, and with equal weights exactly the paper's round robin) with two changes: credits
 * start full, so every backend of positive weight takes a turn in round 1 and always gets a slot
 * (Katran's may get none when its weight is far below the largest); and the turns are drawn
 * from a heap keyed by (round of the next turn, rank by key), so a backend's k-th turn comes in
 * round 1 + ceil((k - 1) * maxWeight / weight) and the cost does not grow with weight skew (a
 * round-by-round loop visits every backend each round: O(rounds x n)). Weight 0 takes no turn
 * and no slot; draining a backend builds the same table as removing it.
 *
 * **Shares.** A backend of weight w among n positive weights summing to W gets c slots with
 * |c - m w / W| < n w / W + 1 (the table fills in some round R; each backend has had R - 1 full
 * rounds of credit, give or take one turn). With m >= 100 n that is within 1 % of its share plus
 * 1 % of an equal share; with equal weights every backend gets floor(m / n) or ceil(m / n).
 *
 * **Compatibility rule.** The table is part of the datapath contract between nodes and across
 * versions: nodes must agree, and a table that changes on upgrade moves flows the connection
 * table does not pin. The key format (backendKey()), the key words, jhash2, the two seeds, the
 * order by key (UTF-16 code units, here bytes), the turn rule and the table sizes may change only
 * as a new, versioned algorithm; maglev.test.ts pins a table and permutations ("golden").
 *
 * @param backends distinct keys (validKey: 1..64 printable ASCII characters), integer weights
 *   0..2^32-1; at most m / MAGLEV_MIN_SLOTS_PER_BACKEND of them.
 * @param m the table size, one of MAGLEV_TABLE_SIZES (all prime).
 * @returns a new Uint32Array of m indices into `backends`, owned by the caller; an empty array
 *   (length 0) when no backend has a positive weight: "no backend", which the datapath drops.
 * @throws MaglevInputError on a size not in MAGLEV_TABLE_SIZES, too many backends for it, a bad
 *   key or weight, or a key given twice; nothing is built.
 */
export function buildMaglevTable(backends: readonly MaglevBackend[], m: number): Uint32Array {
  if (!MAGLEV_TABLE_SIZES.includes(m)) throw new MaglevInputError('m', `${m} is not a supported table size (${MAGLEV_TABLE_SIZES.join(', ')})`);
  const n = backends.length;
  if (n * MAGLEV_MIN_SLOTS_PER_BACKEND > m) {
    throw new MaglevInputError('backends', `${n} backends for ${m} slots; at least ${MAGLEV_MIN_SLOTS_PER_BACKEND} slots per backend`);
  }
  let maxWeight = 0;
  for (let i = 0; i < n; i++) {
    const backend = backends[i] as MaglevBackend;
    if (!validKey(backend.key)) throw new MaglevInputError(`backends[${i}].key`, `must be 1-${MAX_BACKEND_KEY_LENGTH} printable ASCII characters (backendKey())`);
    const weight = backend.weight;
    if (!Number.isInteger(weight) || weight < 0 || weight > MAX_WEIGHT) throw new MaglevInputError(`backends[${i}].weight`, `${weight} is not an integer 0-${MAX_WEIGHT}`);
    if (weight > maxWeight) maxWeight = weight;
  }
  const byKey = Array.from({ length: n }, (_, i) => i).sort((x, y) => {
    const a = (backends[x] as MaglevBackend).key;
    const b = (backends[y] as MaglevBackend).key;
    return a < b ? -1 : a > b ? 1 : 0;
  });
  for (let r = 1; r < n; r++) {
    const index = byKey[r] as number;
    if ((backends[index] as MaglevBackend).key === (backends[byKey[r - 1] as number] as MaglevBackend).key) {
      throw new MaglevInputError(`backends[${index}].key`, `${backends[index]?.key} is given twice`);
    }
  }
  if (maxWeight === 0) return new Uint32Array(0);

  // The backends that take turns, in key order (rank j): their input index, weight and place in
  // their permutation.
  const ranked = byKey.filter((i) => (backends[i] as MaglevBackend).weight > 0);
  const p = ranked.length;
  const index = Uint32Array.from(ranked);
  const weight = new Float64Array(p);
  const position = new Uint32Array(p);
  const skip = new Uint32Array(p);
  const turns = new Uint32Array(p);
  let equal = true;
  for (let j = 0; j < p; j++) {
    const backend = backends[index[j] as number] as MaglevBackend;
    const permutation = maglevPermutation(backend.key, m);
    position[j] = permutation.offset;
    skip[j] = permutation.skip;
    weight[j] = backend.weight;
    if (backend.weight !== maxWeight) equal = false;
  }

  const table = new Int32Array(m).fill(EMPTY);
  const result = new Uint32Array(table.buffer);
  // Backend j's turn: its next preferred slot not yet taken.
  const turn = (j: number): void => {
    const step = skip[j] as number;
    let slot = position[j] as number;
    while (table[slot] !== EMPTY) {
      slot += step;
      slot = slot >= m ? slot - m : slot;
    }
    table[slot] = index[j] as number;
    slot += step;
    position[j] = slot >= m ? slot - m : slot;
  };

  if (equal) {
    // Every backend takes a turn every round, in key order: the paper's loop.
    for (let filled = 0; ; ) {
      for (let j = 0; j < p; j++) {
        turn(j);
        if (++filled === m) return result;
      }
    }
  }

  // A min-heap of turn keys `round << RANK_BITS | rank` (a rank is below m / 100). The table
  // fills by round m (the heaviest backend takes a turn every round), so a round past m + 1 is
  // capped there and never drawn; keys stay below (m + 3) << RANK_BITS < 2^31. All backends
  // start in round 1: keys in rank order, already a heap.
  const heap = new Int32Array(p);
  for (let j = 0; j < p; j++) heap[j] = (1 << RANK_BITS) | j;
  const cap = m + 2;
  for (let filled = 0; filled < m; filled++) {
    const top = heap[0] as number;
    const j = top & RANK_MASK;
    turn(j);
    const taken = (turns[j] as number) + 1;
    turns[j] = taken;
    const round = Math.min(cap, 1 + ceilDiv(taken * maxWeight, weight[j] as number));
    // Replace the top with the backend's next turn and sift it down.
    const key = (round << RANK_BITS) | j;
    let at = 0;
    for (;;) {
      const left = 2 * at + 1;
      if (left >= p) break;
      const right = left + 1;
      const child = right < p && (heap[right] as number) < (heap[left] as number) ? right : left;
      if ((heap[child] as number) >= key) break;
      heap[at] = heap[child] as number;
      at = child;
    }
    heap[at] = key;
  }
  return result;
}
