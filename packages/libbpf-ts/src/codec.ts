// Fixed-size encoders between JS values and map key/value bytes. Integers are little-endian
// (host order on x86-64, what a BPF program sees when it reads a __u32); the *be codecs are for
// fields kept in network order (ports, addresses), as a program compares them to packet bytes.

/** Encodes values of type T into exactly `size` bytes and back. */
export interface Codec<T> {
  /** Bytes one value occupies. */
  readonly size: number;
  /** C alignment of the value, used by struct() to place fields as clang does. */
  readonly align: number;
  /** Writes `value` into `into[0..size)`. */
  encode(value: T, into: Uint8Array): void;
  /** Reads a value from `bytes[0..size)`. */
  decode(bytes: Uint8Array): T;
}

/** The value type of a codec. */
export type CodecValue<C> = C extends Codec<infer T> ? T : never;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function integer(size: 1 | 2 | 4, littleEndian: boolean): Codec<number> {
  return {
    size,
    align: size,
    encode(value, into) {
      const v = view(into);
      if (size === 1) v.setUint8(0, value);
      else if (size === 2) v.setUint16(0, value, littleEndian);
      else v.setUint32(0, value, littleEndian);
    },
    decode(bytes) {
      const v = view(bytes);
      if (size === 1) return v.getUint8(0);
      if (size === 2) return v.getUint16(0, littleEndian);
      return v.getUint32(0, littleEndian);
    },
  };
}

/** __u8 as a number. */
export const u8: Codec<number> = integer(1, true);
/** __u16 in host (little-endian) order, as a number. */
export const u16: Codec<number> = integer(2, true);
/** __u32 in host (little-endian) order, as a number. */
export const u32: Codec<number> = integer(4, true);
/** __be16 (network order), as a number in host terms (a port: 53 is 53). */
export const u16be: Codec<number> = integer(2, false);
/** __be32 (network order), as a number in host terms. */
export const u32be: Codec<number> = integer(4, false);

/** __u64 in host (little-endian) order, as a bigint. */
export const u64: Codec<bigint> = {
  size: 8,
  align: 8,
  encode(value, into) {
    view(into).setBigUint64(0, value, true);
  },
  decode(bytes) {
    return view(bytes).getBigUint64(0, true);
  },
};

/** A fixed-length byte array (`__u8 x[length]`); encode rejects other lengths. */
export function bytes(length: number): Codec<Uint8Array> {
  return {
    size: length,
    align: 1,
    encode(value, into) {
      if (value.length !== length) throw new RangeError(`bytes(${length}) codec: got ${value.length} bytes`);
      into.set(value);
    },
    decode(source) {
      return source.slice(0, length);
    },
  };
}

/** A fixed-length array of `element` (`T x[length]`), as a JS array. */
export function array<T>(element: Codec<T>, length: number): Codec<T[]> {
  return {
    size: element.size * length,
    align: element.align,
    encode(value, into) {
      if (value.length !== length) throw new RangeError(`array codec of ${length}: got ${value.length} elements`);
      value.forEach((item, i) => element.encode(item, into.subarray(i * element.size, (i + 1) * element.size)));
    },
    decode(source) {
      return Array.from({ length }, (_, i) => element.decode(source.subarray(i * element.size, (i + 1) * element.size)));
    },
  };
}

/** Where one field of a struct() codec sits: what a test compares with the object's BTF. */
export interface StructField {
  readonly name: string;
  /** Byte offset from the start of the struct. */
  readonly offset: number;
  /** Bytes the field occupies (its codec's size). */
  readonly size: number;
}

/** A struct() codec, which also tells where each field sits. */
export interface StructCodec<T> extends Codec<T> {
  /** The fields in declaration order, with their offsets and sizes. */
  readonly fields: readonly StructField[];
}

/**
 * A C struct of the given fields, in the object's key order, each aligned to its codec's
 * alignment and the whole padded to the largest one, as clang lays out a non-packed struct.
 * Padding bytes are written as zero (hash map keys compare padding too).
 * @returns a codec whose `fields` list each field's offset and size.
 */
export function struct<F extends Record<string, Codec<unknown>>>(fields: F): StructCodec<{ [K in keyof F]: CodecValue<F[K]> }> {
  const layout: { name: string; codec: Codec<unknown>; offset: number }[] = [];
  let offset = 0;
  let align = 1;
  for (const [name, codec] of Object.entries(fields)) {
    offset = Math.ceil(offset / codec.align) * codec.align;
    layout.push({ name, codec, offset });
    offset += codec.size;
    align = Math.max(align, codec.align);
  }
  const size = Math.ceil(offset / align) * align;
  return {
    size,
    align,
    fields: layout.map(({ name, codec, offset }) => ({ name, offset, size: codec.size })),
    encode(value, into) {
      into.fill(0, 0, size);
      for (const field of layout) field.codec.encode(value[field.name], into.subarray(field.offset, field.offset + field.codec.size));
    },
    decode(source) {
      const out: Record<string, unknown> = {};
      for (const field of layout) out[field.name] = field.codec.decode(source.subarray(field.offset, field.offset + field.codec.size));
      return out as { [K in keyof F]: CodecValue<F[K]> };
    },
  };
}

/** Encodes one value into a new buffer of exactly `codec.size` bytes. */
export function encode<T>(codec: Codec<T>, value: T): Uint8Array {
  const out = new Uint8Array(codec.size);
  codec.encode(value, out);
  return out;
}

/**
 * The keys first, first + 1, ..., first + count - 1 of an array map, packed as u32s (the `u32`
 * codec's byte order) for setBatchPacked() and setPerCpuBatchPacked(): one buffer for a range
 * of slots instead of a buffer per key. `into` (at least count * 4 bytes) is written instead of
 * a new buffer; the result is a view of exactly count * 4 bytes.
 */
export function u32KeyRange(first: number, count: number, into?: Uint8Array): Uint8Array {
  const out = into === undefined ? new Uint8Array(count * 4) : into.subarray(0, count * 4);
  if (out.length !== count * 4) throw new RangeError(`u32KeyRange: ${count} keys do not fit in ${into?.length} bytes`);
  const v = view(out);
  for (let i = 0; i < count; i++) v.setUint32(i * 4, first + i, true);
  return out;
}
