// TypedMap: a BpfMap seen through a key codec and a value codec.
import type { Codec } from './codec.js';
import type { BatchResult, ByteMap, UpdateFlag } from './map-access.js';

/**
 * A typed view of a BpfMap (any ByteMap). It borrows the map: it holds no fd of its own and is usable exactly
 * as long as the map is. Per-CPU maps are not supported here; use BpfMap.getPerCpu.
 */
export class TypedMap<K, V> {
  readonly map: ByteMap;
  readonly #key: Codec<K>;
  readonly #value: Codec<V>;

  /** @throws RangeError if a codec's size differs from the map's key or value size. */
  constructor(map: ByteMap, key: Codec<K>, value: Codec<V>) {
    if (key.size !== map.keySize) throw new RangeError(`map ${map.name}: key codec is ${key.size} bytes, the map's key size is ${map.keySize}`);
    if (value.size !== map.valueSize) throw new RangeError(`map ${map.name}: value codec is ${value.size} bytes, the map's value size is ${map.valueSize}`);
    this.map = map;
    this.#key = key;
    this.#value = value;
  }

  /** @returns the decoded value at `key`, or undefined if absent. */
  get(key: K): V | undefined {
    const bytes = this.map.get(this.#encodeKey(key));
    return bytes === undefined ? undefined : this.#value.decode(bytes);
  }

  /** Writes `value` at `key` (see BpfMap.set for flags and errors). */
  set(key: K, value: V, flags: UpdateFlag = 'any'): void {
    this.map.set(this.#encodeKey(key), this.#encodeValue(value), flags);
  }

  /** @returns true if `key` was present and is now deleted. */
  delete(key: K): boolean {
    return this.map.delete(this.#encodeKey(key));
  }

  /** Writes every [key, value] pair in one batch where the map type allows (see BpfMap.setBatch). */
  setBatch(entries: Iterable<readonly [K, V]>, flags: UpdateFlag = 'any'): BatchResult {
    const keys: Uint8Array[] = [];
    const values: Uint8Array[] = [];
    for (const [key, value] of entries) {
      keys.push(this.#encodeKey(key));
      values.push(this.#encodeValue(value));
    }
    return this.map.setBatch(keys, values, flags);
  }

  /** Iterates decoded keys. */
  *keys(): Generator<K> {
    for (const key of this.map.keys()) yield this.#key.decode(key);
  }

  /** Iterates decoded [key, value] pairs. */
  *entries(): Generator<[K, V]> {
    for (const [key, value] of this.map.entries()) yield [this.#key.decode(key), this.#value.decode(value)];
  }

  #encodeKey(key: K): Uint8Array {
    const bytes = new Uint8Array(this.#key.size);
    this.#key.encode(key, bytes);
    return bytes;
  }

  #encodeValue(value: V): Uint8Array {
    const bytes = new Uint8Array(this.#value.size);
    this.#value.encode(value, bytes);
    return bytes;
  }
}
