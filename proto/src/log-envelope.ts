import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { HistoryReset, LogEntry, LogHead, SignedLogEntry, type SignedLogHead, type SignedHistoryReset, type SignedSnapshot, Snapshot } from '../gen/edgeplane/v1/log.js';
import { BinaryReader } from '@bufbuild/protobuf/wire';
import { SignatureError } from './errors.js';
import { compactEntryRules, compactSnapshotRules } from './compact.js';

/** The previous-hash of revision 1: 32 zero bytes. */
export const GENESIS_HASH: Uint8Array = new Uint8Array(32);

/** Public keys an agent trusts, by key id (see {@link keyIdOf}). */
export type TrustedKeys = ReadonlyMap<string, KeyObject>;

/**
 * Returns the raw 32-byte Ed25519 public key of `key` (a public or private KeyObject).
 * @throws TypeError if the key is not Ed25519.
 */
export function rawPublicKey(key: KeyObject): Uint8Array {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== 'ed25519') throw new TypeError(`expected an ed25519 key, got ${pub.asymmetricKeyType}`);
  const jwk = pub.export({ format: 'jwk' });
  return new Uint8Array(Buffer.from(jwk.x ?? '', 'base64url'));
}

/**
 * Returns a public KeyObject for a raw 32-byte Ed25519 key.
 * @throws TypeError if raw is not 32 bytes.
 */
export function publicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new TypeError(`an ed25519 public key is 32 bytes, got ${raw.length}`);
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

/** Returns a private KeyObject from PKCS#8 PEM text (as written by the controller). */
export function privateKeyFromPem(pem: string): KeyObject {
  return createPrivateKey(pem);
}

/** Returns the key id of a public key: hex of the first 8 bytes of SHA-256 of the raw key. */
export function keyIdOf(key: KeyObject | Uint8Array): string {
  const raw = key instanceof Uint8Array ? key : rawPublicKey(key);
  return createHash('sha256').update(raw).digest().subarray(0, 8).toString('hex');
}

/** Returns SHA-256 of the bytes. */
export function sha256(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(bytes).digest());
}

/** The first log format (SignedLogEntry.format 0 or 1): whole policies only. */
export const LOG_FORMAT_WHOLE = 1;
/** Log format 2: entries may carry Change.policy_patches. */
export const LOG_FORMAT_PATCHES = 2;
/** Log format 3: entries may carry LogEntry.blocklist_change (prefix lists and blocks). */
export const LOG_FORMAT_BLOCKLIST = 3;
/** The newest log format this code reads and writes; followers refuse entries of a newer one. */
export const LOG_FORMAT_NEWEST = LOG_FORMAT_BLOCKLIST;

/**
 * What the signature of an entry of `format` covers: the entry bytes (format 0 and 1), or from
 * format 2 on a prefix naming the format, then the entry bytes. An agent that predates a format
 * verifies the bare bytes, which fails: it skips the entry (alarmed, as any unverifiable
 * message) and never applies a change whose new fields it would ignore.
 */
function signedBytes(entry: Uint8Array, format: number): Uint8Array {
  if (format <= LOG_FORMAT_WHOLE) return entry;
  return Buffer.concat([Buffer.from(`edgeplane.v1.LogEntry format ${format}\n`), entry]);
}

/**
 * Encodes and signs an entry. The signature and the chain hash cover the encoded bytes
 * exactly as stored, so nobody ever re-encodes an entry to check it. `format`: the log format
 * the entry needs (LOG_FORMAT_PATCHES when it carries policy patches); default the first.
 */
export function signLogEntry(entry: LogEntry, privateKey: KeyObject, format: number = LOG_FORMAT_WHOLE): SignedLogEntry {
  const bytes = LogEntry.encode(entry).finish();
  return {
    entry: Buffer.from(bytes),
    signature: sign(null, signedBytes(bytes, format), privateKey),
    keyId: keyIdOf(privateKey),
    format: format <= LOG_FORMAT_WHOLE ? 0 : format,
  };
}

/** Returns the chain hash of a signed entry: SHA-256 of its entry bytes. */
export function logEntryHash(signed: SignedLogEntry): Uint8Array {
  return sha256(signed.entry);
}

/** Envelopes remembered as verified, per key (see {@link verifiedBefore}). */
const VERIFIED_KEPT = 8;
/** Larger signed messages are verified every time (a copy of each is what is remembered). */
const VERIFIED_MAX_BYTES = 64 * 1024;

/** A signed message that verified, and (for the newest log entry and the newest large one only) what it opened to. */
interface Verified {
  message: Buffer;
  signature: Buffer;
  /** The entry {@link openLogEntry} decoded from the message: kept on the newest record only. */
  opened?: LogEntry;
}

/**
 * The newest signed messages that verified, with their signatures, by the key object that
 * verified them (copies: a caller changing its buffer afterwards changes nothing here).
 * Ed25519 verification is a pure function of key, message and signature, so the same three
 * verify again: a process that follows one log many times over (the fleet benchmark runs
 * hundreds of agents per process) verifies each entry and each log head once, not once per
 * follower. Anything else (another key object, one byte of message or signature different) is
 * verified. Weak by key: nothing is kept alive for it.
 */
const verified = new WeakMap<KeyObject, Verified[]>();

/** Whether a record is of exactly this message and signature. */
const isRecordOf = (v: Verified, message: Uint8Array, signature: Uint8Array): boolean => v.signature.equals(signature) && v.message.equals(message);

/** The record of `key` having verified exactly this message and signature, if it is kept (the large entry's included). */
function verifiedBefore(key: KeyObject, message: Uint8Array, signature: Uint8Array): Verified | undefined {
  if (message.byteLength > VERIFIED_MAX_BYTES) return largeOpened?.key === key && isRecordOf(largeOpened.record, message, signature) ? largeOpened.record : undefined;
  return verified.get(key)?.find((v) => isRecordOf(v, message, signature));
}

/** Keeps a record of `key` having verified the message (not a larger one than VERIFIED_MAX_BYTES). */
function rememberVerified(key: KeyObject, message: Uint8Array, signature: Uint8Array): Verified | undefined {
  if (message.byteLength > VERIFIED_MAX_BYTES) return undefined;
  let kept = verified.get(key);
  if (kept === undefined) verified.set(key, (kept = []));
  if (kept.length >= VERIFIED_KEPT) kept.shift();
  const record: Verified = { message: Buffer.from(message), signature: Buffer.from(signature) };
  kept.push(record);
  return record;
}

/**
 * Checks the signature (once per key, message and signature while the record is kept).
 * @returns the record kept for it (undefined when the message is too large to keep).
 */
function verifyEnvelope(what: string, keyId: string, bytes: Uint8Array, signature: Uint8Array, trusted: TrustedKeys): Verified | undefined {
  const key = trusted.get(keyId);
  if (!key) throw new SignatureError(`verify ${what}: key ${JSON.stringify(keyId)} is not trusted`);
  const before = verifiedBefore(key, bytes, signature);
  if (before !== undefined) return before;
  let ok = false;
  try {
    ok = verify(null, bytes, key, signature);
  } catch (cause) {
    throw new SignatureError(`verify ${what}: malformed signature`, { cause });
  }
  if (!ok) throw new SignatureError(`verify ${what}: signature does not match key ${keyId}`);
  return rememberVerified(key, bytes, signature);
}

/**
 * The newest entry {@link openLogEntry} decoded and kept on its record: an entry is kept on one
 * record at a time, so a process holds at most one decoded entry for this (a real agent's chain
 * holds its policies anyway).
 */
let keptOpened: Verified | undefined;

/** Entries up to this many bytes signed, too large for the verified records, are kept one at a time (largeOpened). */
const LARGE_OPENED_MAX_BYTES = 8 * 1024 * 1024;

/**
 * The newest entry opened from a message larger than VERIFIED_MAX_BYTES (at most
 * LARGE_OPENED_MAX_BYTES), with the key object, message (a copy) and signature that verified it:
 * the followers of one process share a large entry too (a 10,000-prefix list's creation, which
 * they would otherwise each decode and hold a copy of). One at a time: a real agent keeps at most
 * one such copy (a 65,536-rule policy's entry: 1.4 MiB), its policies its chain's anyway.
 */
let largeOpened: { key: KeyObject; record: Verified } | undefined;

/** Verifies `bytes` as {@link verifyEnvelope} does, then decodes them with `codec`. @throws SignatureError */
function openEnvelope<T>(what: string, type: string, codec: { decode(bytes: Uint8Array): T }, keyId: string, bytes: Uint8Array, signature: Uint8Array, trusted: TrustedKeys): T {
  verifyEnvelope(what, keyId, bytes, signature, trusted);
  try {
    return codec.decode(bytes);
  } catch (cause) {
    throw new SignatureError(`decode ${what}: signed bytes are not a ${type}`, { cause });
  }
}

/**
 * Verifies a signed entry against the trusted keys (its signature covers its format) and
 * decodes it. The newest entry opened is kept (and the newest larger than VERIFIED_MAX_BYTES,
 * up to LARGE_OPENED_MAX_BYTES): opening the same signed bytes again with the same key object
 * returns the same object, without verifying them again, so the followers
 * of one process (the fleet benchmark's hundreds of agents) decode it once and the memos keyed
 * by its objects (validation, digests) hit. Callers never modify what this returns, as a
 * chain's policies are never modified.
 * @throws SignatureError if the format is newer than LOG_FORMAT_NEWEST, the key is unknown, the
 * signature is wrong, the bytes do not decode, a format 1 entry carries policy patches or an
 * entry before format 3 a blocklist change.
 */
export function openLogEntry(signed: SignedLogEntry, trusted: TrustedKeys): LogEntry {
  const format = signed.format ?? 0;
  if (format > LOG_FORMAT_NEWEST) throw new SignatureError(`verify log entry: log format ${format} is newer than this follower's (${LOG_FORMAT_NEWEST})`);
  const bytes = signedBytes(signed.entry, format);
  const record = verifyEnvelope('log entry', signed.keyId, bytes, signed.signature, trusted);
  // The same signed bytes opened before (another follower in this process): the same entry.
  if (record?.opened !== undefined) return record.opened;
  let entry: LogEntry;
  try {
    entry = LogEntry.decode(signed.entry);
  } catch (cause) {
    throw new SignatureError('decode log entry: signed bytes are not a LogEntry', { cause });
  }
  if (format < LOG_FORMAT_PATCHES && (entry.change?.policyPatches.length ?? 0) > 0) throw new SignatureError(`decode log entry: a format ${format} entry carries policy patches`);
  if (format < LOG_FORMAT_BLOCKLIST && entry.blocklistChange !== undefined) throw new SignatureError(`decode log entry: a format ${format} entry carries a blocklist change`);
  compactEntryRules(entry);
  if (record !== undefined) {
    if (keptOpened !== undefined) keptOpened.opened = undefined;
    record.opened = entry;
    keptOpened = record;
  } else if (bytes.byteLength <= LARGE_OPENED_MAX_BYTES) {
    largeOpened = { key: trusted.get(signed.keyId)!, record: { message: Buffer.from(bytes), signature: Buffer.from(signed.signature), opened: entry } };
  }
  return entry;
}

/** Encodes the envelope as it travels on NATS. */
export function encodeSignedLogEntry(signed: SignedLogEntry): Uint8Array {
  return SignedLogEntry.encode(signed).finish();
}

/**
 * Decodes an envelope received from NATS (without verifying it: see {@link openLogEntry}).
 * @throws SignatureError if the bytes are not an envelope.
 */
export function decodeSignedLogEntry(bytes: Uint8Array): SignedLogEntry {
  try {
    const signed = SignedLogEntry.decode(bytes);
    if (signed.entry.length === 0 || signed.signature.length === 0) throw new Error('empty entry or signature');
    return signed;
  } catch (cause) {
    throw new SignatureError('decode signed log entry', { cause });
  }
}

/** Encodes and signs a snapshot. */
export function signSnapshot(snapshot: Snapshot, privateKey: KeyObject): SignedSnapshot {
  const bytes = Snapshot.encode(snapshot).finish();
  return { snapshot: Buffer.from(bytes), signature: sign(null, bytes, privateKey), keyId: keyIdOf(privateKey) };
}

/**
 * Verifies a signed snapshot and decodes it.
 * @throws SignatureError as {@link openLogEntry}.
 */
export function openSnapshot(signed: SignedSnapshot, trusted: TrustedKeys): Snapshot {
  const snapshot = openEnvelope('snapshot', 'Snapshot', Snapshot, signed.keyId, signed.snapshot, signed.signature, trusted);
  compactSnapshotRules(snapshot);
  return snapshot;
}

/** Encodes and signs a history reset with an operator's reset key (the CLI does this). */
export function signHistoryReset(reset: HistoryReset, privateKey: KeyObject): SignedHistoryReset {
  const bytes = HistoryReset.encode(reset).finish();
  return { reset: Buffer.from(bytes), signature: sign(null, bytes, privateKey), keyId: keyIdOf(privateKey) };
}

/**
 * Verifies a signed history reset against the trusted reset keys and decodes it.
 * @throws SignatureError as {@link openLogEntry}.
 */
export function openHistoryReset(signed: SignedHistoryReset, trusted: TrustedKeys): HistoryReset {
  return openEnvelope('history reset', 'HistoryReset', HistoryReset, signed.keyId, signed.reset, signed.signature, trusted);
}

/** Encodes and signs a log head (the controller's heartbeat). */
export function signLogHead(head: LogHead, privateKey: KeyObject): SignedLogHead {
  const bytes = LogHead.encode(head).finish();
  return { head: Buffer.from(bytes), signature: sign(null, bytes, privateKey), keyId: keyIdOf(privateKey) };
}

/**
 * Verifies a signed log head against the trusted log keys and decodes it.
 * @throws SignatureError as {@link openLogEntry}.
 */
export function openLogHead(signed: SignedLogHead, trusted: TrustedKeys): LogHead {
  return openEnvelope('log head', 'LogHead', LogHead, signed.keyId, signed.head, signed.signature, trusted);
}

/**
 * The revision and key rotations of a serialized Snapshot (fields 1 and 7), read without decoding
 * the rest: a follower needs them to know which keys to verify the snapshot with, before it
 * decodes the whole (a snapshot with a million-prefix list is then decoded once, not twice).
 * Linear in the bytes; other fields are skipped, not decoded.
 * @returns a Snapshot holding only those two fields (empty when the bytes do not parse).
 */
export function readSnapshotKeyRotations(bytes: Uint8Array): Snapshot {
  const out = Snapshot.fromPartial({});
  try {
    const reader = new BinaryReader(bytes);
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      if (tag === 8) out.revision = reader.uint64() as bigint;
      else if (tag === ((7 << 3) | 2)) out.keyRotations.push(SignedLogEntry.decode(reader, reader.uint32()));
      else reader.skip(tag & 7);
    }
  } catch {
    return Snapshot.fromPartial({});
  }
  return out;
}
