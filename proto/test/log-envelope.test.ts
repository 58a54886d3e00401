import test from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import {
  Action,
  GENESIS_HASH,
  LogEntry,
  LogHead,
  Policy,
  Protocol,
  SignatureError,
  SignedLogEntry,
  type SignedLogHead,
  type TrustedKeys,
  decodeSignedLogEntry,
  encodeSignedLogEntry,
  keyIdOf,
  logEntryHash,
  openLogEntry,
  openLogHead,
  publicKeyFromRaw,
  rawPublicKey,
  signLogEntry,
  signLogHead,
} from '@edgeplane/proto';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);

function entry(revision: bigint, previousHash: Uint8Array): LogEntry {
  return LogEntry.fromPartial({
    revision,
    previousHash: Buffer.from(previousHash),
    createTime: new Date('2026-11-25T12:00:00Z'),
    controllerId: 'ctl-1',
    traceContext: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', tracestate: '' },
    change: {
      upserts: [
        Policy.fromPartial({
          metadata: { name: 'deny-v6', resourceVersion: revision },
          spec: { rules: [{ priority: 1, sourceCidrs: ['2001:db8::/48'], protocol: Protocol.PROTOCOL_ICMPV6, action: Action.ACTION_DENY }] },
        }),
      ],
      deletes: ['old-policy'],
    },
  });
}

test('log envelope - sign, encode, decode and open returns the same entry', (t) => {
  const e = entry(9_007_199_254_740_993n, GENESIS_HASH);
  const signed = signLogEntry(e, privateKey);
  t.is(signed.keyId, keyIdOf(publicKey));
  t.is(signed.keyId.length, 16);
  const wire = encodeSignedLogEntry(signed);
  const back = decodeSignedLogEntry(wire);
  t.deepEqual(openLogEntry(back, trusted), e);
  t.is(openLogEntry(back, trusted).revision, 9_007_199_254_740_993n);
});

test('log envelope - a hash chain links entries by the signed bytes', (t) => {
  const first = signLogEntry(entry(1n, GENESIS_HASH), privateKey);
  const second = signLogEntry(entry(2n, logEntryHash(first)), privateKey);
  const opened = openLogEntry(decodeSignedLogEntry(encodeSignedLogEntry(second)), trusted);
  t.deepEqual(new Uint8Array(opened.previousHash), logEntryHash(first));
  t.notDeepEqual(logEntryHash(first), logEntryHash(second));
  t.is(logEntryHash(first).length, 32);
});

test('log envelope - a flipped byte, a foreign key or an unknown key id is rejected', (t) => {
  const signed = signLogEntry(entry(3n, GENESIS_HASH), privateKey);

  const tampered = SignedLogEntry.fromPartial({ ...signed, entry: Buffer.from(signed.entry) });
  tampered.entry[tampered.entry.length - 1]! ^= 0x01;
  t.throws(() => openLogEntry(tampered, trusted), { instanceOf: SignatureError, message: /signature does not match/ });

  const other = generateKeyPairSync('ed25519');
  const forged = { ...signLogEntry(entry(3n, GENESIS_HASH), other.privateKey), keyId: signed.keyId };
  t.throws(() => openLogEntry(forged, trusted), { instanceOf: SignatureError });

  const unknown = signLogEntry(entry(3n, GENESIS_HASH), other.privateKey);
  t.throws(() => openLogEntry(unknown, trusted), { instanceOf: SignatureError, message: /not trusted/ });
});

test('log envelope - garbage on the wire is a SignatureError, not a crash', (t) => {
  t.throws(() => decodeSignedLogEntry(new Uint8Array([0xff, 0xff, 0xff])), { instanceOf: SignatureError });
  t.throws(() => decodeSignedLogEntry(new Uint8Array(0)), { instanceOf: SignatureError });
});

test('log envelope - raw public keys round-trip and keep their id', (t) => {
  const raw = rawPublicKey(privateKey);
  t.is(raw.length, 32);
  t.is(keyIdOf(publicKeyFromRaw(raw)), keyIdOf(publicKey));
  t.throws(() => publicKeyFromRaw(new Uint8Array(31)), { instanceOf: TypeError });
});

test('log envelope - a head verified before is accepted again only with the same key, bytes and signature: a forged head at the same revision is refused', (t) => {
  const hash = Buffer.alloc(32, 7);
  const head = signLogHead({ fleetId: 'f', revision: 5n, hash, time: new Date('2026-12-02T07:00:00Z'), controllerId: 'c' }, privateKey);
  t.is(openLogHead(head, trusted).revision, 5n);
  t.is(openLogHead(head, trusted).revision, 5n, 'the same head again');
  const later = LogHead.encode({ fleetId: 'f', revision: 5n, hash, time: new Date('2026-12-02T07:00:05Z'), controllerId: 'c' }).finish();
  const other = LogHead.encode({ fleetId: 'f', revision: 5n, hash: Buffer.alloc(32, 8), time: new Date('2026-12-02T07:00:00Z'), controllerId: 'c' }).finish();
  const rogue = generateKeyPairSync('ed25519');
  const forgeries: [string, SignedLogHead, TrustedKeys?][] = [
    // What a skip by (revision, hash) would let through: a fresher time nobody signed.
    ['same revision and hash, a later time, the old signature', { ...head, head: Buffer.from(later) }],
    ['same revision and hash, a later time, signed by another key under the trusted id', { ...signLogHead(LogHead.decode(later), rogue.privateKey), keyId: head.keyId }],
    ['same revision, another hash, the old signature', { ...head, head: Buffer.from(other) }],
    ['same bytes, another head\'s valid signature', { ...head, signature: signLogHead(LogHead.decode(other), privateKey).signature }],
    ['same bytes, a flipped signature bit', { ...head, signature: Buffer.from(Buffer.from(head.signature).map((b, i) => (i === 0 ? b ^ 1 : b))) }],
    ['same bytes and signature, another key trusted under the id', head, new Map([[head.keyId, rogue.publicKey]])],
  ];
  for (const [what, forged, keys] of forgeries) t.throws(() => openLogHead(forged, keys ?? trusted), { instanceOf: SignatureError }, what);
  // What was remembered is a copy: the caller's buffer changed afterwards is verified as it is now.
  const next = signLogHead({ fleetId: 'f', revision: 6n, hash, time: new Date('2026-12-02T07:00:10Z'), controllerId: 'c' }, privateKey);
  const mine = { ...next, head: Buffer.from(next.head) };
  t.is(openLogHead(mine, trusted).revision, 6n);
  mine.head[mine.head.length - 1]! ^= 0x01;
  t.throws(() => openLogHead(mine, trusted), { instanceOf: SignatureError });
  t.is(openLogHead(head, trusted).revision, 5n, 'the genuine head still opens');
});

test('log envelope - an entry verified before is verified again when one byte differs', (t) => {
  const signed = signLogEntry(entry(11n, GENESIS_HASH), privateKey);
  t.is(openLogEntry(signed, trusted).revision, 11n);
  const tampered = SignedLogEntry.fromPartial({ ...signed, entry: Buffer.from(signed.entry) });
  tampered.entry[tampered.entry.length - 1]! ^= 0x01;
  t.throws(() => openLogEntry(tampered, trusted), { instanceOf: SignatureError, message: /signature does not match/ });
  t.throws(() => openLogEntry({ ...signed, format: 2 }, trusted), { instanceOf: SignatureError }, 'the same bytes under another format are other signed bytes');
  t.is(openLogEntry(signed, trusted).revision, 11n);
});

test('log envelope - the newest entry opened is shared: the same signed bytes open to the same object, any other bytes decode afresh', (t) => {
  const signed = signLogEntry(entry(21n, GENESIS_HASH), privateKey);
  // Two followers' copies of the message (each NATS delivery is its own buffer).
  const a = openLogEntry(decodeSignedLogEntry(encodeSignedLogEntry(signed)), trusted);
  const b = openLogEntry(decodeSignedLogEntry(encodeSignedLogEntry(signed)), trusted);
  t.is(a, b, 'one decode for both');
  t.is(a.change!.upserts[0], b.change!.upserts[0]);
  // Only with the same key object: another process's (or another follower's own) key decodes afresh.
  const sameKeyAgain = new Map([[keyIdOf(publicKey), publicKeyFromRaw(rawPublicKey(publicKey))]]);
  const c = openLogEntry(signed, sameKeyAgain);
  t.not(c, a);
  t.deepEqual(c, a);
  // A newer entry takes the place: the older one decodes afresh (one kept at a time), equal to what it was.
  const next = signLogEntry(entry(22n, logEntryHash(signed)), privateKey);
  const n1 = openLogEntry(next, trusted);
  t.is(openLogEntry(next, trusted), n1);
  const again = openLogEntry(signed, trusted);
  t.not(again, a);
  t.deepEqual(again, a);
  // A tampered copy is never answered from the kept entry.
  const tampered = SignedLogEntry.fromPartial({ ...signed, entry: Buffer.from(signed.entry) });
  tampered.entry[tampered.entry.length - 1]! ^= 0x01;
  t.throws(() => openLogEntry(tampered, trusted), { instanceOf: SignatureError });
});

test('log envelope - an entry larger than the verified records is shared too, one at a time; a tampered copy is still refused', (t) => {
  const big = (revision: bigint): LogEntry => {
    const e = entry(revision, GENESIS_HASH);
    e.change!.upserts[0]!.spec!.rules = Array.from({ length: 3000 }, (_, i) => ({ ...e.change!.upserts[0]!.spec!.rules[0]!, priority: i + 1, name: `rule-${i}` }));
    return e;
  };
  const signed = signLogEntry(big(31n), privateKey);
  t.true(signed.entry.length > 64 * 1024);
  const a = openLogEntry(decodeSignedLogEntry(encodeSignedLogEntry(signed)), trusted);
  const b = openLogEntry(decodeSignedLogEntry(encodeSignedLogEntry(signed)), trusted);
  t.is(a, b);
  const tampered = SignedLogEntry.fromPartial({ ...signed, entry: Buffer.from(signed.entry) });
  tampered.entry[tampered.entry.length - 1]! ^= 0x01;
  t.throws(() => openLogEntry(tampered, trusted), { instanceOf: SignatureError, message: /signature does not match/ });
  t.not(openLogEntry(signed, new Map([[keyIdOf(publicKey), publicKeyFromRaw(rawPublicKey(publicKey))]])), a, 'another key object verifies and decodes afresh');
  const next = signLogEntry(big(32n), privateKey);
  t.is(openLogEntry(next, trusted), openLogEntry(next, trusted));
  const again = openLogEntry(signed, trusted);
  t.not(again, a, 'one large entry kept at a time');
  t.deepEqual(again, a);
});
