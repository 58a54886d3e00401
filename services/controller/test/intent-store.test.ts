import test, { type ExecutionContext } from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { keyIdOf, Policy, type Change } from '@edgeplane/proto';
import { ChainFollower, IntentLog } from '@edgeplane/intent-log';
import { IntentStore } from '../src/intent-store.js';
import { natsServerFixture } from '../../../test/support/nats.js';
import { samplePolicy } from './helpers.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);
const nats = natsServerFixture(test, 'intent-store-test');

let streamNo = 0;
async function freshLog(): Promise<{ names: { stream: string; subject: string; liveSubject: string; snapshotBucket: string }; log: IntentLog }> {
  streamNo++;
  const names = { stream: `S${streamNo}`, subject: `s${streamNo}.log`, liveSubject: `s${streamNo}.live`, snapshotBucket: `SS${streamNo}` };
  return { names, log: await IntentLog.open(nats.nc, { create: true, ...names }) };
}

async function store(t: ExecutionContext, log: IntentLog, id = 'c1', extra: { snapshotEvery?: number; retainEntries?: number; patchRatio?: number } = {}): Promise<{ store: IntentStore; warnings: string[]; errors: string[] }> {
  const warnings: string[] = [];
  const errors: string[] = [];
  const s = new IntentStore(log, {
    controllerId: id,
    signingKey: privateKey,
    trusted,
    onError: (m, err) => errors.push(`${m}: ${(err as Error)?.message}`),
    onWarning: (m, f) => warnings.push(`${m} ${JSON.stringify(f)}`),
    ...extra,
  });
  t.teardown(() => s.close());
  await s.start();
  return { store: s, warnings, errors };
}

const upsert = (name: string, rules = 1): Change => ({ upserts: [samplePolicy(name, {}, rules)], deletes: [], rollouts: [], serviceUpserts: [], serviceDeletes: [], policyPatches: [] });

async function until(what: string, pred: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('intent store - writes take consecutive revisions and listeners hear each entry once, in order', async (t) => {
  const { log } = await freshLog();
  const { store: s } = await store(t, log);
  const heard: [bigint, string[]][] = [];
  s.onChange((revision, changes) => heard.push([revision, changes.map((c) => `${c.type} ${c.policy.metadata?.name}`)]));
  const results = await Promise.all(['a', 'b', 'c'].map((n) => s.write(() => upsert(n))));
  t.deepEqual(results.map((r) => r?.revision), [1n, 2n, 3n]);
  await s.write(() => ({ upserts: [], deletes: ['b'], rollouts: [], serviceUpserts: [], serviceDeletes: [], policyPatches: [] }));
  t.deepEqual(heard, [
    [1n, ['added a']],
    [2n, ['added b']],
    [3n, ['added c']],
    [4n, ['deleted b']],
  ]);
  t.is(results[1]?.entry.change?.upserts[0]?.metadata?.resourceVersion, 2n);
  t.is(await s.write(() => undefined), undefined, 'build returning undefined writes nothing');
  t.is(s.chain.revision, 4n);
});

test('intent store - two stores on one stream: conflicts are retried, each sees the other', async (t) => {
  const { log } = await freshLog();
  const { store: a } = await store(t, log, 'a');
  const { store: b } = await store(t, log, 'b');
  const writes = Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).write(() => upsert(`p${i}`)));
  const revisions = (await Promise.all(writes)).map((r) => r!.revision);
  t.is(new Set(revisions).size, 20);
  await a.catchUp();
  await b.catchUp();
  t.is(a.chain.revision, 20n);
  t.deepEqual(a.chain.lastHash, b.chain.lastHash);
  t.is(a.chain.policies.size, 20);
});

test('intent store - a junk message stored on the log subject is skipped; the store keeps writing and followers agree', async (t) => {
  const { names, log } = await freshLog();
  const { store: s, warnings } = await store(t, log);
  await s.write(() => upsert('before'));
  await jetstream(nats.nc).publish(names.subject, new Uint8Array([9, 9, 9]));
  const after = await s.write(() => upsert('after'));
  t.is(after?.revision, 3n, 'the entry goes at the next stream sequence, after the junk');
  t.is(s.chain.revision, 3n);
  t.true(warnings.some((w) => w.includes('does not verify')), warnings.join('\n'));
  const follower = new ChainFollower(log, { trusted });
  t.teardown(() => follower.close());
  await follower.start();
  t.deepEqual(follower.chain.lastHash, s.chain.lastHash);
  t.deepEqual([...follower.chain.policies.keys()].sort(), ['after', 'before']);
  // A restarted store rebuilds the same state across the junk.
  const { store: again } = await store(t, log, 'c2');
  t.deepEqual(again.chain.lastHash, s.chain.lastHash);
  t.is((await again.write(() => upsert('third')))?.revision, 4n);
});

test('intent store - a rewound log is rebuilt from what is stored, and the store writes after it', async (t) => {
  const { names, log } = await freshLog();
  const { store: s, warnings } = await store(t, log);
  for (const n of ['a', 'b', 'c', 'd']) await s.write(() => upsert(n));
  // Storage loss: the stream comes back with only its first two entries.
  const kept = [];
  for await (const e of log.read(1n, 2n)) kept.push(e.signed);
  await (await jetstreamManager(nats.nc)).streams.delete(names.stream);
  const rewound = await IntentLog.open(nats.nc, { create: true, ...names });
  for (const [i, e] of kept.entries()) await rewound.append(e, BigInt(i));
  const next = await s.write(() => upsert('e'));
  t.is(next?.revision, 3n);
  t.deepEqual([...s.chain.policies.keys()].sort(), ['a', 'b', 'e']);
  t.is(s.followerStats.resyncs, 1);
  t.true(warnings.some((w) => w.includes('rebuilt')), warnings.join('\n'));
});

test('intent store - snapshot and compaction: a new store starts from the snapshot', async (t) => {
  const { log } = await freshLog();
  const { store: s } = await store(t, log, 'c1', { snapshotEvery: 0, retainEntries: 2 });
  for (let i = 0; i < 8; i++) await s.write(() => upsert(`p${i % 3}`, i + 1));
  t.is(await s.snapshotNow(), 8n);
  t.deepEqual(await log.bounds(), { first: 7n, last: 8n });
  await s.write(() => upsert('late'));
  const { store: fresh } = await store(t, log, 'c2');
  t.is(fresh.chain.revision, 9n);
  t.deepEqual(fresh.chain.lastHash, s.chain.lastHash);
  t.is(fresh.chain.policies.get('p1')?.spec?.rules.length, 8);
  await t.throwsAsync(async () => {
    for await (const _ of fresh.history(1n, 9n)) void _;
  }, { message: /compacted/ });
});

test('intent store - entries written by another store arrive live, without a catch-up per entry', async (t) => {
  const { log } = await freshLog();
  const { store: writer } = await store(t, log, 'w');
  const { store: reader } = await store(t, log, 'r');
  const before = reader.followerStats.catchUps;
  for (let i = 0; i < 10; i++) await writer.write(() => upsert(`x${i}`));
  await until('the reader at 10', () => reader.chain.revision === 10n);
  t.is(reader.followerStats.catchUps, before);
  t.is(reader.followerStats.liveApplied, 10);
});

test('intent store - close twice is safe; a write after close is refused', async (t) => {
  const { log } = await freshLog();
  const { store: s } = await store(t, log);
  await s.close();
  await s.close();
  await t.throwsAsync(s.write(() => upsert('x')), { message: /shutting down/ });
});

test('intent store - key rotation while a follower runs: no rejection, no resync; a fresh follower trusting only the first key verifies a later snapshot', async (t) => {
  const { log } = await freshLog();
  const { store: s } = await store(t, log, 'c1', { snapshotEvery: 0, retainEntries: 1 });
  const follower = new ChainFollower(log, { trusted });
  t.teardown(() => follower.close());
  await follower.start();
  await s.write(() => upsert('before'));
  const next = generateKeyPairSync('ed25519');
  const rotated = await s.rotateKey(next.privateKey);
  const after = await s.write(() => upsert('after'));
  t.is(after?.revision, rotated + 1n);
  await until('the follower past the rotation', () => follower.chain.revision === after!.revision);
  t.is(follower.stats.rejected, 0);
  t.is(follower.stats.resyncs, 0);
  t.is(follower.stats.catchUps, 1);
  t.true(follower.chain.trusted.has(keyIdOf(next.publicKey)));
  const stored = [];
  for await (const m of log.messages(after!.revision, after!.revision)) stored.push(m.signed?.keyId);
  t.deepEqual(stored, [keyIdOf(next.publicKey)], 'entries after the rotation are signed by the new key');
  // Snapshot (signed by the new key) and compaction: a follower configured with the first key only.
  await s.snapshotNow();
  await s.write(() => upsert('later'));
  const fresh = new ChainFollower(log, { trusted });
  t.teardown(() => fresh.close());
  await fresh.start();
  t.deepEqual(fresh.chain.lastHash, s.chain.lastHash);
  t.is(fresh.stats.rejected, 0);
});

test('intent store - a one-rule change of a large policy is written as a format 2 patch; another replica, and one writing whole policies, hold the same policy', async (t) => {
  const { log } = await freshLog();
  const { store: s, errors } = await store(t, log);
  const first = await s.write(() => upsert('big', 2000));
  t.is(first?.entry.change?.upserts.length, 1, 'a new policy has no base: whole');
  const changed = samplePolicy('big', {}, 2000);
  changed.spec!.rules[1234] = { ...changed.spec!.rules[1234]!, destinationPorts: [{ first: 9, last: 0 }] };
  const second = await s.write(() => ({ ...upsert('big'), upserts: [changed] }));
  t.deepEqual([second?.entry.change?.upserts.length, second?.entry.change?.policyPatches.length], [0, 1]);
  t.is(second?.policies[0]?.metadata?.resourceVersion, 2n);
  const stored = (await collect(log.messages(2n, 2n)))[0]!;
  t.is(stored.signed!.format, 2);
  t.true(stored.signed!.entry.length < 1024, `the entry is ${stored.signed!.entry.length} bytes`);
  const expected = Buffer.from(Policy.encode(second!.policies[0]!).finish());
  t.deepEqual(Buffer.from(Policy.encode(s.chain.policies.get('big')!).finish()), expected);
  const { store: replica } = await store(t, log, 'c2', { patchRatio: 0 });
  await until('the replica to read the patch', () => replica.chain.revision === 2n);
  t.deepEqual(Buffer.from(Policy.encode(replica.chain.policies.get('big')!).finish()), expected);
  // patchRatio 0: this replica writes whole policies.
  changed.spec!.rules[5] = { ...changed.spec!.rules[5]!, destinationPorts: [{ first: 10, last: 0 }] };
  const third = await replica.write(() => ({ ...upsert('big'), upserts: [changed] }));
  t.deepEqual([third?.entry.change?.upserts.length, third?.entry.change?.policyPatches.length], [1, 0]);
  t.deepEqual(errors, []);
});

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}
