/**
 * The Maglev lookup-table sizes a service may use. Maglev's table size must be prime (each
 * backend's permutation `(offset + j * skip) mod M` then visits every slot), and at least 100 x
 * the backends for an imbalance near 1 % (Eisenbud et al., "Maglev", NSDI 2016, section 3.4).
 * The list roughly doubles, as Cilium's does, so the smallest fitting size wastes at most half;
 * its top bounds one service's table in the datapath (131,071 slots x 4 bytes = 512 KiB).
 */
export const MAGLEV_TABLE_SIZES: readonly number[] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];

/** Lookup-table slots per backend at least (the paper's 100). */
export const MAGLEV_MIN_SLOTS_PER_BACKEND = 100;

/**
 * The smallest supported table size for `backends` backends (ServiceSpec.maglev_table_size 0),
 * or undefined when there are too many backends for the largest size.
 */
export function defaultMaglevTableSize(backends: number): number | undefined {
  const need = Math.max(1, backends) * MAGLEV_MIN_SLOTS_PER_BACKEND;
  return MAGLEV_TABLE_SIZES.find((m) => m >= need);
}
