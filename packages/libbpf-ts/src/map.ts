// BpfMap: a live BPF map behind a file descriptor, with raw byte access. Keys and values are
// checked against the map's sizes before they reach the kernel, which reads exactly that many
// bytes from the pointers it is given.
import { check } from './check.js';
import { errnoError, LibbpfError, NotFoundError, NotSupportedError } from './errors.js';
import type { Codec } from './codec.js';
import type { BatchResult, ByteMap, UpdateFlag } from './map-access.js';
import * as native from './native.js';
import { unpinPath } from './pin.js';
import { TypedMap } from './typed-map.js';

const PAGE_SIZE = native.pageSize();

const ENOENT = 2;
const EBADF = 9;
const EINVAL = 22;
const ENOSPC = 28;

const updateFlags: Record<UpdateFlag, bigint> = { any: 0n, noexist: 1n, exist: 2n };

let invalidate: (map: BpfMap) => void;

/** Marks a map borrowed from a BpfObject unusable; the object calls it when it closes. */
export function invalidateBorrowedMap(map: BpfMap): void {
  invalidate(map);
}

const perCpuTypes = new Set(['percpu_hash', 'percpu_array', 'lru_percpu_hash', 'percpu_cgroup_storage']);

/** Options of BpfMap.create(). */
export interface MapCreateOptions {
  /** libbpf's map type name ('hash', 'array', 'lpm_trie', 'array_of_maps'...) or enum value. */
  type: string | number;
  /** Object name shown by bpftool (the kernel keeps 15 characters). */
  name?: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** BPF_F_* flags (BPF_F_NO_PREALLOC = 1 is required for 'lpm_trie'). */
  flags?: number;
  /** For 'array_of_maps'/'hash_of_maps': a map whose shape every inner map must have. */
  innerMap?: BpfMap;
}

/** What a BpfMap needs to know about itself. */
export interface MapDescription {
  readonly name: string;
  readonly type: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly flags: number;
}

/** Buffers {@link BpfMap.getBatches} reads through when a caller keeps them across walks (empty ones are fine: a walk sizes them). */
export interface BatchBuffers {
  keys: Uint8Array;
  values: Uint8Array;
}

/**
 * A live BPF map. Obtain one from BpfObject.map(), BpfMap.create(), BpfMap.openPinned() or
 * BpfMap.fromId(). A map from a BpfObject borrows the object's fd: its close() does nothing and
 * it stays usable until the object closes. Any other BpfMap owns its fd; close() releases it
 * (the kernel frees the map once no fd, pin or program refers to it). Closing never unpins.
 */
export class BpfMap implements ByteMap {
  readonly name: string;
  /** libbpf's map type name ('hash', 'percpu_array'...). */
  readonly type: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  /** BPF_F_* flags. */
  readonly flags: number;
  #fd: number;
  #owned: boolean;
  #closed = false;
  #id: number | undefined;

  /** Wraps `fd`; `owned` says whether close() closes it. Prefer the static factories. */
  constructor(fd: number, description: MapDescription, owned: boolean) {
    this.#fd = fd;
    this.#owned = owned;
    this.name = description.name;
    this.type = description.type;
    this.keySize = description.keySize;
    this.valueSize = description.valueSize;
    this.maxEntries = description.maxEntries;
    this.flags = description.flags;
  }

  /**
   * Creates a map with bpf_map_create().
   * @returns a BpfMap owning its fd.
   * @throws LibbpfError (EINVAL for an impossible shape, EPERM without CAP_BPF), NotSupportedError.
   */
  static create(options: MapCreateOptions): BpfMap {
    const type = typeof options.type === 'number' ? options.type : mapTypeValue(options.type);
    const typeName = native.enumName(native.mapTypeNames, type);
    const name = options.name ?? '';
    const operation = `map create name=${name} type=${typeName}`;
    const fd = check(operation, () =>
      native.createMap(type, name === '' ? null : name, options.keySize, options.valueSize, options.maxEntries, options.flags ?? 0, options.innerMap?.fd ?? 0),
    );
    return new BpfMap(fd, { name, type: typeName, keySize: options.keySize, valueSize: options.valueSize, maxEntries: options.maxEntries, flags: options.flags ?? 0 }, true);
  }

  /**
   * Opens the map pinned at `path` (bpf_obj_get).
   * @returns a BpfMap owning a new fd; the pin stays.
   * @throws NotFoundError if nothing is pinned there; LibbpfError if it is not a map.
   */
  static openPinned(path: string): BpfMap {
    const fd = check(`map open pinned path=${path}`, () => native.objGet(path));
    return BpfMap.#fromFd(fd, `map open pinned path=${path}`);
  }

  /**
   * Opens the map with kernel id `id` (bpf_map_get_fd_by_id).
   * @returns a BpfMap owning a new fd.
   * @throws NotFoundError if no map has that id.
   */
  static fromId(id: number): BpfMap {
    const fd = check(`map open id=${id}`, () => native.mapFdById(id));
    return BpfMap.#fromFd(fd, `map open id=${id}`);
  }

  static #fromFd(fd: number, operation: string): BpfMap {
    const info = native.mapInfo(fd);
    if (typeof info === 'number') {
      native.close(fd);
      throw errnoError(operation, info);
    }
    const map = new BpfMap(
      fd,
      { name: info.name, type: native.enumName(native.mapTypeNames, info.type), keySize: info.key_size, valueSize: info.value_size, maxEntries: info.max_entries, flags: info.map_flags },
      true,
    );
    map.#id = info.id;
    return map;
  }

  /** The file descriptor. @throws LibbpfError EBADF once closed. */
  get fd(): number {
    if (this.#closed) throw new LibbpfError(`map fd name=${this.name}`, EBADF, { details: ['the map was closed'] });
    return this.#fd;
  }

  /** The kernel's id for this map (stable across processes, unlike the fd). */
  get id(): number {
    if (this.#id === undefined) {
      const info = native.mapInfo(this.fd);
      if (typeof info === 'number') throw errnoError(`map info name=${this.name}`, info);
      this.#id = info.id;
    }
    return this.#id;
  }

  /** True for per-CPU map types, whose values are read with getPerCpu(). */
  get perCpu(): boolean {
    return perCpuTypes.has(this.type);
  }

  /**
   * Looks up `key`.
   * @returns a copy of the value, or undefined if the key is absent. For map-in-map types the value
   * is the inner map's id (u32).
   * @throws RangeError for a key of the wrong size; LibbpfError for a per-CPU map (use getPerCpu).
   */
  get(key: Uint8Array): Uint8Array | undefined {
    this.#notPerCpu('get');
    return this.#lookup(key, this.valueSize);
  }

  /**
   * Writes `value` at `key`. `flags`: 'any' (default), 'noexist' (fail with EEXIST if present),
   * 'exist' (fail with NotFoundError if absent).
   * @throws RangeError for wrong sizes; LibbpfError (E2BIG when full, EEXIST...).
   */
  set(key: Uint8Array, value: Uint8Array, flags: UpdateFlag = 'any'): void {
    this.#notPerCpu('set');
    this.#checkSize('key', key, this.keySize);
    this.#checkSize('value', value, this.valueSize);
    check(`map update name=${this.name}`, () => native.mapUpdate(this.fd, key, value, updateFlags[flags]));
  }

  /**
   * Deletes `key`.
   * @returns true if it was present, false if not.
   * @throws LibbpfError (EINVAL for array maps, whose elements cannot be deleted).
   */
  delete(key: Uint8Array): boolean {
    this.#checkSize('key', key, this.keySize);
    const ret = native.mapDelete(this.fd, key);
    if (ret === -ENOENT) return false;
    if (ret < 0) throw errnoError(`map delete name=${this.name}`, ret);
    return true;
  }

  /**
   * Writes keys[i] -> values[i] for every i with one bpf_map_update_batch call. Map types without
   * batch support (map-in-map, devmap, ...) and kernels without it get one update per element;
   * the result says so and why.
   * @throws RangeError for mismatched lengths or sizes; LibbpfError if an update fails.
   */
  setBatch(keys: readonly Uint8Array[], values: readonly Uint8Array[], flags: UpdateFlag = 'any'): BatchResult {
    this.#notPerCpu('setBatch');
    if (keys.length !== values.length) throw new RangeError(`map ${this.name} setBatch: ${keys.length} keys but ${values.length} values`);
    if (keys.length === 0) return { count: 0, batched: true };
    const allValues = new Uint8Array(values.length * this.valueSize);
    values.forEach((value, i) => {
      this.#checkSize('value', value, this.valueSize);
      allValues.set(value, i * this.valueSize);
    });
    return this.#updateBatch(this.#packKeys(keys), allValues, keys.length, flags, (i) => this.set(keys[i] as Uint8Array, values[i] as Uint8Array, flags));
  }

  /**
   * setBatch() for keys and values already packed back to back (keySize and valueSize bytes
   * each), as large tables are built: one bpf_map_update_batch call for all of them, with no
   * array per element; without batch support, one update per element, and the result says why.
   * The buffers stay the caller's.
   * @throws RangeError when the buffers are not whole elements of the same count; LibbpfError
   * if an update fails.
   */
  setBatchPacked(keys: Uint8Array, values: Uint8Array, flags: UpdateFlag = 'any'): BatchResult {
    this.#notPerCpu('setBatchPacked');
    const count = keys.length / this.keySize;
    if (!Number.isInteger(count) || values.length !== count * this.valueSize) {
      throw new RangeError(`map ${this.name} setBatchPacked: ${keys.length} key bytes and ${values.length} value bytes are not whole elements of ${this.keySize} and ${this.valueSize} bytes`);
    }
    if (count === 0) return { count: 0, batched: true };
    const key = (i: number): Uint8Array => keys.subarray(i * this.keySize, (i + 1) * this.keySize);
    const value = (i: number): Uint8Array => values.subarray(i * this.valueSize, (i + 1) * this.valueSize);
    return this.#updateBatch(keys, values, count, flags, (i) => this.set(key(i), value(i), flags));
  }

  /**
   * The per-CPU form of setBatch(): values[i] holds one value per possible CPU, or a single value
   * that every CPU gets, for keys[i]. One bpf_map_update_batch call (per-CPU arrays and hashes
   * support it); without batch support, one update per element, and the result says why.
   * @throws RangeError for mismatched lengths or sizes; LibbpfError for a map that is not
   * per-CPU or if an update fails.
   */
  setPerCpuBatch(keys: readonly Uint8Array[], values: readonly (readonly Uint8Array[])[], flags: UpdateFlag = 'any'): BatchResult {
    const { cpus, stride } = this.#perCpuLayout('setPerCpuBatch');
    if (keys.length !== values.length) throw new RangeError(`map ${this.name} setPerCpuBatch: ${keys.length} keys but ${values.length} values`);
    if (keys.length === 0) return { count: 0, batched: true };
    // Each element's value is cpus * round_up(value_size, 8) bytes (bpf_map_value_size() in kernel/bpf/syscall.c).
    const elementBytes = cpus * stride;
    const allValues = new Uint8Array(values.length * elementBytes);
    values.forEach((perCpu, i) => {
      if (perCpu.length !== cpus && perCpu.length !== 1) throw new RangeError(`map ${this.name} setPerCpuBatch: ${perCpu.length} values for ${cpus} possible CPUs at element ${i}`);
      for (let cpu = 0; cpu < cpus; cpu++) {
        const value = (perCpu.length === 1 ? perCpu[0] : perCpu[cpu]) as Uint8Array;
        this.#checkSize('value', value, this.valueSize);
        allValues.set(value, i * elementBytes + cpu * stride);
      }
    });
    return this.setPerCpuBatchPacked(this.#packKeys(keys), allValues, flags);
  }

  /**
   * setPerCpuBatch() for keys and values already packed back to back: keySize bytes per key, and
   * per element one value per possible CPU, each padded to `stride` bytes (perCpuLayout()), as
   * getPerCpuBatchPacked() reads them. One bpf_map_update_batch call, no array per element (a
   * whole rule set's counter slots are zeroed this way); without batch support, one update per
   * element, and the result says why. The buffers stay the caller's.
   * @throws RangeError when the buffers are not whole elements of the same count; LibbpfError
   * for a map that is not per-CPU or if an update fails.
   */
  setPerCpuBatchPacked(keys: Uint8Array, values: Uint8Array, flags: UpdateFlag = 'any'): BatchResult {
    const { cpus, stride } = this.#perCpuLayout('setPerCpuBatchPacked');
    const elementBytes = cpus * stride;
    const count = keys.length / this.keySize;
    if (!Number.isInteger(count) || values.length !== count * elementBytes) {
      throw new RangeError(`map ${this.name} setPerCpuBatchPacked: ${keys.length} key bytes and ${values.length} value bytes are not whole elements of ${this.keySize} and ${cpus} x ${stride} bytes`);
    }
    if (count === 0) return { count: 0, batched: true };
    const one = (i: number): void => {
      const key = keys.subarray(i * this.keySize, (i + 1) * this.keySize);
      const perCpu = Array.from({ length: cpus }, (_, cpu) => values.subarray(i * elementBytes + cpu * stride, i * elementBytes + cpu * stride + this.valueSize));
      this.setPerCpu(key, perCpu, flags);
    };
    return this.#updateBatch(keys, values, count, flags, one);
  }

  /**
   * Reads up to `count` elements with bpf_map_lookup_batch, in the map's iteration order, starting
   * after key `after` (array maps: the index before the first one wanted) or from the first
   * element. Stops early at the end of the map, and for hashes (read a bucket at a time) where
   * the next bucket would not fit in `count`.
   * @returns the keys and values read, as views into buffers the caller owns.
   * @throws LibbpfError for a per-CPU map (use getPerCpuBatch); NotSupportedError for map types
   * without batch lookup (lpm_trie, map-in-map, ...).
   */
  getBatch(count: number, after?: Uint8Array): { keys: Uint8Array[]; values: Uint8Array[] } {
    this.#notPerCpu('getBatch');
    const { keys, values, read } = this.#lookupBatch('getBatch', count, after, this.valueSize);
    return {
      keys: Array.from({ length: read }, (_, i) => keys.subarray(i * this.keySize, (i + 1) * this.keySize)),
      values: Array.from({ length: read }, (_, i) => values.subarray(i * this.valueSize, (i + 1) * this.valueSize)),
    };
  }

  /**
   * The per-CPU form of getBatch(): each element's value is one Uint8Array per possible CPU.
   * @returns the keys and values read, as views into buffers the caller owns.
   * @throws LibbpfError for a map that is not per-CPU; NotSupportedError without batch lookup.
   */
  getPerCpuBatch(count: number, after?: Uint8Array): { keys: Uint8Array[]; values: Uint8Array[][] } {
    const { cpus, stride } = this.#perCpuLayout('getPerCpuBatch');
    const elementBytes = cpus * stride;
    const { keys, values, read } = this.#lookupBatch('getPerCpuBatch', count, after, elementBytes);
    return {
      keys: Array.from({ length: read }, (_, i) => keys.subarray(i * this.keySize, (i + 1) * this.keySize)),
      values: Array.from({ length: read }, (_, i) =>
        Array.from({ length: cpus }, (_, cpu) => values.subarray(i * elementBytes + cpu * stride, i * elementBytes + cpu * stride + this.valueSize)),
      ),
    };
  }

  /**
   * getPerCpuBatch() without per-element objects: the buffers as the kernel filled them. Element
   * i's key is keys[i * keySize ..]; its value on CPU c is values[i * cpus * stride + c * stride ..]
   * (valueSize bytes; the kernel pads each CPU's value to `stride`, a multiple of 8). For large
   * reads (a counter per rule, every few seconds) this is the copy and nothing else.
   * @param into buffers to read into instead of new ones (at least count * keySize and
   *   count * cpus * stride bytes, from perCpuLayout()): a caller that reads often
   *   reuses them, and leaves no garbage for the collector to find (a large buffer dropped by an
   *   idle process stays resident until a collection happens to come).
   * @returns `count` elements read and the layout, in buffers the caller owns (views into `into`).
   * @throws LibbpfError for a map that is not per-CPU; NotSupportedError without batch lookup;
   *   RangeError for `into` buffers too small.
   */
  getPerCpuBatchPacked(count: number, after?: Uint8Array, into?: { keys: Uint8Array; values: Uint8Array }): { count: number; cpus: number; stride: number; keys: Uint8Array; values: Uint8Array } {
    const { cpus, stride } = this.#perCpuLayout('getPerCpuBatchPacked');
    const { keys, values, read } = this.#lookupBatch('getPerCpuBatchPacked', count, after, cpus * stride, into);
    return { count: read, cpus, stride, keys: keys.subarray(0, read * this.keySize), values: values.subarray(0, read * cpus * stride) };
  }

  /**
   * Reads the whole map with bpf_map_lookup_batch, `chunk` elements per syscall, yielding each
   * chunk as it is read (memory stays at one chunk, whatever the map's size). A chunk is packed:
   * element i is keys[i * keySize ..] -> values[i * valueSize ..], `count` of them, with no
   * per-element objects, so a million-element walk costs the copies and little else. Elements
   * added or deleted meanwhile may or may not be seen; a hash is read a bucket at a time (a
   * bucket larger than `chunk` is read with a larger buffer).
   * @param into buffers the caller keeps for its walks: every chunk is read into them (each
   *   yielded chunk is then valid until the next one is asked for), and a walk that needs larger
   *   ones replaces them there. A walk every few seconds then leaves no garbage: buffers dropped
   *   by an idle process stay resident until a collection happens to come (an agent's
   *   connection-table reads left ~2.4 MiB per table pair per read).
   * @returns a generator of chunks, each in buffers the caller owns (new ones per chunk without `into`).
   * @throws LibbpfError for a per-CPU map; NotSupportedError for map types without batch lookup.
   */
  *getBatches(chunk = 4096, into?: BatchBuffers): Generator<{ count: number; keys: Uint8Array; values: Uint8Array }> {
    this.#notPerCpu('getBatches');
    if (!Number.isInteger(chunk) || chunk < 1) throw new RangeError(`map ${this.name} getBatches: chunk must be a positive integer, got ${chunk}`);
    const cursorSize = Math.max(this.keySize, 8);
    let cursor: Uint8Array | null = null;
    let size = chunk;
    for (;;) {
      let keys: Uint8Array;
      let values: Uint8Array;
      if (into === undefined) {
        keys = new Uint8Array(size * this.keySize);
        values = new Uint8Array(size * this.valueSize);
      } else {
        if (into.keys.length < size * this.keySize) into.keys = new Uint8Array(size * this.keySize);
        if (into.values.length < size * this.valueSize) into.values = new Uint8Array(size * this.valueSize);
        keys = into.keys;
        values = into.values;
      }
      const out = new Uint8Array(cursorSize);
      native.clearMessages();
      const { ret, done } = native.lookupBatch(this.fd, cursor, out, keys, values, size);
      if (ret < 0 && ret !== -ENOENT) {
        // ENOSPC with nothing read: the next hash bucket holds more than `size` elements.
        if (ret === -ENOSPC && done === 0 && size < this.maxEntries) {
          size *= 2;
          continue;
        }
        throw errnoError(`map lookup batch name=${this.name}`, ret, { details: native.takeMessages() });
      }
      if (done > 0) yield { count: done, keys: keys.subarray(0, done * this.keySize), values: values.subarray(0, done * this.valueSize) };
      if (ret === -ENOENT || done === 0) return;
      cursor = out;
    }
  }

  /**
   * Iterates the keys with bpf_map_get_next_key. Keys added or deleted meanwhile may or may not be
   * seen; a hash map restarts from its first key if the current one is deleted.
   * @returns fresh copies of each key.
   */
  *keys(): Generator<Uint8Array> {
    let previous: Uint8Array | null = null;
    for (;;) {
      const next = new Uint8Array(this.keySize);
      const ret = native.mapNextKey(this.fd, previous, next);
      if (ret === -ENOENT) return;
      if (ret < 0) throw errnoError(`map next key name=${this.name}`, ret);
      yield next;
      previous = next;
    }
  }

  /**
   * Iterates [key, value] pairs; keys deleted during the walk are skipped. Per-CPU maps yield
   * nothing here: iterate keys() and call getPerCpu().
   */
  *entries(): Generator<[Uint8Array, Uint8Array]> {
    this.#notPerCpu('entries');
    for (const key of this.keys()) {
      const value = this.#lookup(key, this.valueSize);
      if (value !== undefined) yield [key, value];
    }
  }

  /**
   * Looks up `key` in a per-CPU map.
   * @returns one value per possible CPU (libbpf_num_possible_cpus()), or undefined if absent.
   */
  getPerCpu(key: Uint8Array): Uint8Array[] | undefined {
    const { cpus, stride } = this.#perCpuLayout('getPerCpu');
    const all = this.#lookup(key, cpus * stride);
    if (all === undefined) return undefined;
    return Array.from({ length: cpus }, (_, cpu) => all.slice(cpu * stride, cpu * stride + this.valueSize));
  }

  /**
   * Writes a per-CPU value: `values` has one value per possible CPU, or a single value that every
   * CPU gets.
   */
  setPerCpu(key: Uint8Array, values: readonly Uint8Array[], flags: UpdateFlag = 'any'): void {
    const { cpus, stride } = this.#perCpuLayout('setPerCpu');
    if (values.length !== cpus && values.length !== 1) throw new RangeError(`map ${this.name} setPerCpu: ${values.length} values for ${cpus} possible CPUs`);
    this.#checkSize('key', key, this.keySize);
    // The kernel copies round_up(value_size, 8) bytes per CPU (kernel/bpf/syscall.c).
    const all = new Uint8Array(cpus * stride);
    for (let cpu = 0; cpu < cpus; cpu++) {
      const value = values.length === 1 ? values[0] : values[cpu];
      this.#checkSize('value', value as Uint8Array, this.valueSize);
      all.set(value as Uint8Array, cpu * stride);
    }
    check(`map update name=${this.name}`, () => native.mapUpdate(this.fd, key, all, updateFlags[flags]));
  }

  /**
   * In a map-in-map ('array_of_maps', 'hash_of_maps'), points `key` at `inner`: the value written
   * is inner's fd, the kernel stores a reference to the map itself. One write switches atomically.
   * @throws LibbpfError EINVAL if inner's shape differs from the declared inner map.
   */
  setInnerMap(key: Uint8Array, inner: BpfMap, flags: UpdateFlag = 'any'): void {
    this.#checkSize('key', key, this.keySize);
    const value = new Uint8Array(4);
    new DataView(value.buffer).setUint32(0, inner.fd, true);
    check(`map set inner name=${this.name} inner=${inner.name}`, () => native.mapUpdate(this.fd, key, value, updateFlags[flags]));
  }

  /**
   * In a map-in-map, the inner map `key` points at, opened by its id (the value the kernel
   * returns for such a key): the caller owns it and closes it. undefined when `key` holds none.
   */
  getInnerMap(key: Uint8Array): BpfMap | undefined {
    const id = this.get(key);
    return id === undefined ? undefined : BpfMap.fromId(new DataView(id.buffer, id.byteOffset, 4).getUint32(0, true));
  }

  /**
   * Runs `use` with this array's values mapped into the process (mmap of a map created with
   * BPF_F_MMAPABLE): element i's value at byte i * valueSize (rounded up to 8), shared with the
   * programs that read it, so a write is seen at once, without a syscall. The mapping is removed
   * when `use` returns or throws: the bytes must not be kept past it (reading them then would
   * fault). An 8-byte aligned `Atomics.store` into a BigUint64Array over them is one store.
   * @returns what `use` returns.
   * @throws LibbpfError from mmap (EINVAL for a map that is not a mmapable array).
   */
  withMapped<T>(use: (values: Uint8Array) => T): T {
    const length = Math.ceil((Math.ceil(this.valueSize / 8) * 8 * this.maxEntries) / PAGE_SIZE) * PAGE_SIZE;
    const address = native.mapShared(this.fd, length);
    if (typeof address === 'number') throw errnoError(`map mmap name=${this.name} length=${length}`, address);
    try {
      return use(new Uint8Array(native.viewNative(address, length)));
    } finally {
      native.unmap(address, length);
    }
  }

  /**
   * Typed view of this map through codecs; the view borrows this map.
   * @throws RangeError if a codec's size differs from the map's key or value size.
   */
  typed<K, V>(keyCodec: Codec<K>, valueCodec: Codec<V>): TypedMap<K, V> {
    return new TypedMap(this, keyCodec, valueCodec);
  }

  /**
   * Pins the map at `path` on a bpffs (bpf_obj_pin); the pin keeps the map alive after every fd
   * is closed. @throws LibbpfError (EEXIST if the path exists, EPERM off bpffs).
   */
  pin(path: string): void {
    check(`map pin name=${this.name} path=${path}`, () => native.objPin(this.fd, path));
  }

  /** Removes the pin at `path` (unlink). @throws NotFoundError if there is none. */
  unpin(path: string): void {
    unpinPath(`map unpin name=${this.name} path=${path}`, path);
  }

  /** Releases the fd if this map owns it; idempotent. Never unpins or detaches. */
  close(): void {
    if (!this.#owned || this.#closed) return;
    this.#closed = true;
    native.close(this.#fd);
  }

  /** For `await using`: close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  static {
    invalidate = (map) => {
      map.#closed = true;
    };
  }

  #packKeys(keys: readonly Uint8Array[]): Uint8Array {
    const all = new Uint8Array(keys.length * this.keySize);
    keys.forEach((key, i) => {
      this.#checkSize('key', key, this.keySize);
      all.set(key, i * this.keySize);
    });
    return all;
  }

  #updateBatch(keys: Uint8Array, values: Uint8Array, count: number, flags: UpdateFlag, one: (i: number) => void): BatchResult {
    native.clearMessages();
    const { ret, done } = native.updateBatch(this.fd, keys, values, count, updateFlags[flags]);
    if (ret >= 0) return { count: done, batched: true };
    const error = errnoError(`map update batch name=${this.name}`, ret, { details: native.takeMessages() });
    // ENOTSUPP: the map type has no batch operations (EINVAL on kernels without batch at all).
    // Both are refused before any element is written, so the fallback starts from the first.
    if (!(error instanceof NotSupportedError) && error.errno !== EINVAL) throw error;
    for (let i = 0; i < count; i++) one(i);
    return { count, batched: false, fallbackReason: `bpf_map_update_batch on a ${this.type} map: ${error.code}; wrote the elements one by one` };
  }

  #lookupBatch(what: string, count: number, after: Uint8Array | undefined, elementBytes: number, into?: { keys: Uint8Array; values: Uint8Array }): { keys: Uint8Array; values: Uint8Array; read: number } {
    if (!Number.isInteger(count) || count < 0) throw new RangeError(`map ${this.name} ${what}: count must be a non-negative integer, got ${count}`);
    if (after !== undefined) this.#checkSize('key', after, this.keySize);
    if (into !== undefined && (into.keys.byteLength < count * this.keySize || into.values.byteLength < count * elementBytes)) {
      throw new RangeError(`map ${this.name} ${what}: buffers of ${into.keys.byteLength} and ${into.values.byteLength} bytes cannot hold ${count} elements (${count * this.keySize} and ${count * elementBytes} bytes)`);
    }
    const keys = into?.keys ?? new Uint8Array(count * this.keySize);
    const values = into?.values ?? new Uint8Array(count * elementBytes);
    // The batch cursor is the previous key for array-like maps and a u32 bucket for hashes
    // (kernel/bpf/syscall.c generic_map_lookup_batch, kernel/bpf/hashtab.c).
    const cursorSize = Math.max(this.keySize, 8);
    let cursor: Uint8Array | null = null;
    if (after !== undefined) {
      cursor = new Uint8Array(cursorSize);
      cursor.set(after);
    }
    let read = 0;
    while (read < count) {
      const out = new Uint8Array(cursorSize);
      native.clearMessages();
      const { ret, done } = native.lookupBatch(this.fd, cursor, out, keys.subarray(read * this.keySize), values.subarray(read * elementBytes), count - read);
      read += done;
      if (ret === -ENOENT) break;
      // A hash is read a whole bucket at a time: ENOSPC once the next bucket does not fit in
      // what is left of `count`. Return what was read; an empty read means count is too small.
      if (ret === -ENOSPC && read > 0) break;
      if (ret < 0) throw errnoError(`map lookup batch name=${this.name}`, ret, { details: native.takeMessages() });
      if (done === 0) break;
      cursor = out;
    }
    return { keys, values, read };
  }

  #lookup(key: Uint8Array, size: number): Uint8Array | undefined {
    this.#checkSize('key', key, this.keySize);
    const value = new Uint8Array(size);
    const ret = native.mapLookup(this.fd, key, value);
    if (ret === -ENOENT) return undefined;
    if (ret < 0) throw errnoError(`map lookup name=${this.name}`, ret);
    return value;
  }

  /**
   * How a per-CPU map's values are laid out in a batch read: `cpus` values per element (the
   * possible CPUs), each padded to `stride` bytes.
   * @throws LibbpfError for a map that is not per-CPU.
   */
  perCpuLayout(): { cpus: number; stride: number } {
    return this.#perCpuLayout('perCpuLayout');
  }

  #perCpuLayout(what: string): { cpus: number; stride: number } {
    if (!this.perCpu) throw new LibbpfError(`map ${what} name=${this.name}`, EINVAL, { details: [`${this.type} is not a per-CPU map type`] });
    const cpus = native.numPossibleCpus();
    if (cpus < 0) throw errnoError('libbpf_num_possible_cpus', cpus);
    return { cpus, stride: Math.ceil(this.valueSize / 8) * 8 };
  }

  #notPerCpu(what: string): void {
    if (this.perCpu) throw new LibbpfError(`map ${what} name=${this.name}`, EINVAL, { details: [`${this.type} holds one value per CPU: use getPerCpu/setPerCpu`] });
  }

  #checkSize(what: 'key' | 'value', bytes: Uint8Array, size: number): void {
    if (bytes.length !== size) throw new RangeError(`map ${this.name}: ${what} is ${bytes.length} bytes, the map's ${what} size is ${size}`);
  }
}

function mapTypeValue(name: string): number {
  for (const [value, typeName] of native.mapTypeNames) if (typeName === name) return value;
  throw new NotFoundError(`map type name=${name}`, ENOENT, { details: [`known map types: ${[...native.mapTypeNames.values()].join(', ')}`] });
}
