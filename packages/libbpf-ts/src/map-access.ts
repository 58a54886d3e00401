// The byte-level contract of a map that TypedMap (and tests' in-memory fakes) build on.

/** bpf_map_update_elem flags: BPF_ANY, BPF_NOEXIST (create only), BPF_EXIST (update only). */
export type UpdateFlag = 'any' | 'noexist' | 'exist';

/** Outcome of a batch write. */
export interface BatchResult {
  /** Elements written. */
  readonly count: number;
  /** True if one bpf_map_update_batch call wrote them. */
  readonly batched: boolean;
  /** Why the elements were written one by one instead, when they were. */
  readonly fallbackReason?: string;
}

/** Raw byte access to a map, as BpfMap provides it. */
export interface ByteMap {
  readonly name: string;
  readonly keySize: number;
  readonly valueSize: number;
  get(key: Uint8Array): Uint8Array | undefined;
  set(key: Uint8Array, value: Uint8Array, flags?: UpdateFlag): void;
  delete(key: Uint8Array): boolean;
  setBatch(keys: readonly Uint8Array[], values: readonly Uint8Array[], flags?: UpdateFlag): BatchResult;
  keys(): Iterable<Uint8Array>;
  entries(): Iterable<[Uint8Array, Uint8Array]>;
}
