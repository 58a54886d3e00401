// Where each rule id is in an array of distinct ids (a rule set's, in slot order): the ids in
// ascending order beside their positions, searched by halves. 8 bytes per id where a Map of id to
// position took ~28 (~1.75 MiB at 65,536 rules, for every rule set an agent keeps).

/** The position of each id of an array of distinct uint32 ids. Immutable. */
export class IdIndex {
  /** The ids, ascending. */
  readonly #ids: Uint32Array;
  /** #positions[i]: where #ids[i] is in the array indexed. */
  readonly #positions: Uint32Array;

  /** @param ids distinct integers in 0..2^32-1 (copied: later changes to `ids` are not seen). */
  constructor(ids: ArrayLike<number>) {
    const positions = new Uint32Array(ids.length);
    for (let i = 0; i < ids.length; i++) positions[i] = i;
    positions.sort((a, b) => (ids[a] as number) - (ids[b] as number));
    const sorted = new Uint32Array(ids.length);
    for (let i = 0; i < positions.length; i++) sorted[i] = ids[positions[i] as number] as number;
    this.#ids = sorted;
    this.#positions = positions;
  }

  /** @returns where `id` is, or undefined when the array does not hold it. */
  positionOf(id: number): number | undefined {
    const at = lowerBound(this.#ids, id);
    return this.#ids[at] === id ? this.#positions[at] : undefined;
  }
}

/** @returns the first index of the ascending `values` not below `value` (values.length when none is). */
export function lowerBound(values: ArrayLike<number>, value: number): number {
  let lo = 0;
  let hi = values.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((values[mid] as number) < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
