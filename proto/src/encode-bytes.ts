// One reused BinaryWriter for every message the process encodes: a generated codec's
// `X.encode(m).finish()` makes a writer whose buffer starts at 128 bytes and doubles as it fills,
// a new buffer and view each time, and finish() copies the bytes out again. With one writer the
// buffer is already as large as the messages before it, and finish() copies once. The generated
// gRPC serializers call encodeBuffer (scripts/gen-proto-index.mjs points them here), so every
// message a server or client sends is encoded this way; hot hand-written encodes call it too.
// bench/proto-encode.ts: a node's WatchNodes event 3.7 -> 2.4 us, an agent's ACK 2.4 -> 1.1, a
// replica's node state 6.4 -> 3.7 (BENCHMARKS.md, "One protobuf writer per process").
import { BinaryWriter } from '@bufbuild/protobuf/wire';

/** What a generated message codec offers to encode with. */
export interface MessageEncoder<T> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
}

/**
 * After a message larger than this (a large log entry or snapshot) the writer is dropped, so the
 * process does not hold the largest message it ever encoded: what it keeps is at most twice this.
 */
export const REUSED_WRITER_MAX_BYTES = 64 * 1024;

// Generated codecs encode synchronously and nest only through the writer they are given, so one
// module-level writer is never in use twice at once.
let writer = new BinaryWriter();

/**
 * `codec.encode(message).finish()`, with one writer reused across calls: the same bytes, in a
 * Uint8Array of their own (a copy: later calls never change it). A message the codec refuses
 * (a value out of its type's range) throws as encode does and leaves the writer as new.
 */
export function encodeBytes<T>(codec: MessageEncoder<T>, message: T): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = codec.encode(message, writer).finish();
  } catch (err) {
    // A refused value leaves forks open and the position part-way: start over.
    writer = new BinaryWriter();
    throw err;
  }
  if (bytes.length > REUSED_WRITER_MAX_BYTES) writer = new BinaryWriter();
  return bytes;
}

/** {@link encodeBytes} as a Buffer over the same bytes (no copy): what grpc-js serializers return. */
export function encodeBuffer<T>(codec: MessageEncoder<T>, message: T): Buffer {
  const bytes = encodeBytes(codec, message);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
