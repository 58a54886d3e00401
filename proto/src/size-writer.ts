import { protoInt64 } from '@bufbuild/protobuf';
import { BinaryWriter } from '@bufbuild/protobuf/wire';

/** Bytes of `value` as an unsigned varint (value a uint32). */
function varint32Size(value: number): number {
  let size = 1;
  for (let v = value >>> 0; v > 0x7f; v >>>= 7) size++;
  return size;
}

/** Bytes of the 64-bit varint whose two's complement halves are `lo` and `hi`. */
function varint64Size(lo: number, hi: number): number {
  if (hi === 0) return varint32Size(lo);
  // Bits above the low 32: 35 bits take 5 bytes, then one byte per 7 bits more.
  let size = 5;
  for (let v = hi >>> 3; v > 0; v >>>= 7) size++;
  return size;
}

// The checks BinaryWriter makes before writing a 32-bit number (@bufbuild/protobuf
// wire/binary-encoding.js, assertInt32/assertUInt32/assertFloat32, which it does not export):
// whatever it refuses is refused here with the same message.
function assertInt32(arg: unknown): number {
  const n = typeof arg === 'string' ? Number(arg) : arg;
  if (typeof n !== 'number') throw new Error(`invalid int32: ${typeof arg}`);
  if (!Number.isInteger(n) || n > 0x7fffffff || n < -0x80000000) throw new Error(`invalid int32: ${n}`);
  return n;
}

function assertUInt32(arg: unknown): number {
  const n = typeof arg === 'string' ? Number(arg) : arg;
  if (typeof n !== 'number') throw new Error(`invalid uint32: ${typeof arg}`);
  if (!Number.isInteger(n) || n > 0xffffffff || n < 0) throw new Error(`invalid uint32: ${n}`);
  return n;
}

function assertFloat32(arg: unknown): void {
  let n = arg;
  if (typeof arg === 'string') {
    n = Number(arg);
    if (Number.isNaN(n) && arg !== 'NaN') throw new Error(`invalid float32: ${arg}`);
  } else if (typeof arg !== 'number') throw new Error(`invalid float32: ${typeof arg}`);
  // Too large for a float32 (it rounds to infinity); NaN and infinity are valid.
  if (!Number.isFinite(Math.fround(n as number)) && Number.isFinite(n)) throw new Error(`invalid float32: ${String(n)}`);
}

/** The writer {@link SizeWriter.measure} counts with (encode is synchronous: one at a time). */
let reused: SizeWriter | undefined;

/**
 * A BinaryWriter that counts the bytes instead of writing them: after
 * `Message.encode(message, writer)`, `writer.size` is `Message.encode(message).finish().length`.
 * The generated codec walks the message as it does to encode it (so the layout is described
 * once, by the generated code), with no buffer built and no text encoded; values the writer
 * would refuse are refused alike. finish() throws: there are no bytes. A writer counts one
 * message (or use {@link SizeWriter.measure}).
 */
export class SizeWriter extends BinaryWriter {
  /** Bytes counted so far (outside any open fork: a fork's bytes count when it is joined). */
  size = 0;
  #forks: number[] = [];

  /**
   * Returns the bytes `codec.encode(message)` writes, counted by one writer kept for it.
   * @throws Error as `encode` does, for a value it cannot encode (a uint32 that is not one).
   */
  static measure<T>(codec: { encode(message: T, writer: SizeWriter): unknown }, message: T): number {
    const writer = (reused ??= new SizeWriter());
    writer.size = 0;
    writer.#forks.length = 0;
    codec.encode(message, writer);
    return writer.size;
  }

  override finish(): Uint8Array<ArrayBuffer> {
    throw new Error('a SizeWriter counts bytes and has none to finish');
  }

  override fork(): this {
    this.#forks.push(this.size);
    this.size = 0;
    return this;
  }

  override join(): this {
    const outer = this.#forks.pop();
    if (outer === undefined) throw new Error('invalid state, fork stack empty');
    this.size = outer + varint32Size(this.size) + this.size;
    return this;
  }

  override tag(fieldNo: number, type: number): this {
    return this.uint32(((fieldNo << 3) | type) >>> 0);
  }

  override raw(chunk: Uint8Array): this {
    this.size += chunk.length;
    return this;
  }

  override uint32(value: number): this {
    this.size += varint32Size(assertUInt32(value));
    return this;
  }

  override int32(value: number): this {
    const n = assertInt32(value);
    // A negative int32 is sign-extended to 64 bits: ten bytes.
    this.size += n >= 0 ? varint32Size(n) : 10;
    return this;
  }

  override bool(_value: boolean): this {
    this.size += 1;
    return this;
  }

  override bytes(value: Uint8Array): this {
    this.size += varint32Size(value.byteLength) + value.byteLength;
    return this;
  }

  override string(value: string): this {
    const text = typeof value === 'string' ? value : String(value);
    // ASCII is one byte a character; anything else is measured as UTF-8 (lone surrogates as
    // U+FFFD, three bytes, as TextEncoder writes them).
    let n = text.length;
    for (let i = 0; i < text.length; i++) {
      if (text.charCodeAt(i) > 0x7f) {
        n = Buffer.byteLength(text, 'utf8');
        break;
      }
    }
    this.size += varint32Size(n) + n;
    return this;
  }

  override float(value: number): this {
    assertFloat32(value);
    this.size += 4;
    return this;
  }

  override double(_value: number): this {
    this.size += 8;
    return this;
  }

  override fixed32(value: number): this {
    assertUInt32(value);
    this.size += 4;
    return this;
  }

  override sfixed32(value: number): this {
    assertInt32(value);
    this.size += 4;
    return this;
  }

  override sint32(value: number): this {
    const n = assertInt32(value);
    this.size += varint32Size(((n << 1) ^ (n >> 31)) >>> 0);
    return this;
  }

  override sfixed64(value: string | number | bigint): this {
    protoInt64.enc(value);
    this.size += 8;
    return this;
  }

  override fixed64(value: string | number | bigint): this {
    protoInt64.uEnc(value);
    this.size += 8;
    return this;
  }

  override int64(value: string | number | bigint): this {
    const { lo, hi } = protoInt64.enc(value);
    this.size += varint64Size(lo, hi);
    return this;
  }

  override sint64(value: string | number | bigint): this {
    const { lo, hi } = protoInt64.enc(value);
    const sign = hi >> 31;
    this.size += varint64Size((lo << 1) ^ sign, ((hi << 1) | (lo >>> 31)) ^ sign);
    return this;
  }

  override uint64(value: string | number | bigint): this {
    const { lo, hi } = protoInt64.uEnc(value);
    this.size += varint64Size(lo, hi);
    return this;
  }
}
