import test from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Action, LogEntry, Policy, Protocol, Service, keyIdOf, signLogEntry, signSnapshot, type SignedLogEntry } from '@edgeplane/proto';
import { ChainError, ConflictError, GapError, IntentChain, IntentLog, NatsServer } from '../src/index.js';
import { natsServerFixture } from '../../../test/support/nats.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);
const nats = natsServerFixture(test, 'intent-log-test', { connect: { maxReconnectAttempts: -1, reconnectTimeWait: 100 } });

function policy(name: string, revision: bigint): Policy {
  return Policy.fromPartial({ metadata: { name, resourceVersion: revision }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }] } });
}

function service(name: string, port: number): Service {
  return Service.fromPartial({ metadata: { name }, spec: { vip: '2001:db8::1', protocol: Protocol.PROTOCOL_UDP, port, backends: [{ address: '2001:db8::2' }] } });
}

interface TestChange {
  upserts?: Policy[];
  deletes?: string[];
  serviceUpserts?: Service[];
  serviceDeletes?: string[];
}

function next(chain: IntentChain, change: TestChange): SignedLogEntry {
  const revision = chain.revision + 1n;
  return signLogEntry(LogEntry.fromPartial({ revision, previousHash: Buffer.from(chain.lastHash), change }), privateKey);
}

let streamNo = 0;
/** Names of a stream of its own (the tests of this file run concurrently on one server). */
function nextNames(): { stream: string; subject: string; liveSubject: string; snapshotBucket: string } {
  streamNo++;
  return { stream: `T${streamNo}`, subject: `t${streamNo}.log`, liveSubject: `t${streamNo}.live`, snapshotBucket: `TS${streamNo}` };
}

async function freshLog(names = nextNames()): Promise<IntentLog> {
  return IntentLog.open(nats.nc, { create: true, ...names });
}

test('intent log - revisions are stream sequences and a stale writer gets a conflict', async (t) => {
  const log = await freshLog();
  const chain = new IntentChain(trusted);
  const e1 = next(chain, { upserts: [policy('a', 1n)] });
  t.is(await log.append(e1, 0n), 1n);
  chain.append(e1);
  const e2 = next(chain, { upserts: [policy('b', 2n)] });
  t.is(await log.append(e2, 1n), 2n);
  // A second writer still at revision 1 cannot append: the log would fork.
  await t.throwsAsync(log.append(e2, 1n), { instanceOf: ConflictError });
  t.deepEqual(await log.bounds(), { first: 1n, last: 2n });
});

test('intent log - read returns entries in order and a chain rebuilt from them verifies', async (t) => {
  const log = await freshLog();
  const writer = new IntentChain(trusted);
  for (let i = 1; i <= 20; i++) {
    const e = next(writer, i % 5 === 0 ? { deletes: [`p${i - 1}`] } : { upserts: [policy(`p${i}`, BigInt(i))] });
    await log.append(e, writer.revision);
    writer.append(e);
  }
  const reader = new IntentChain(trusted);
  const seen: bigint[] = [];
  for await (const { revision, signed } of log.read(1n, 20n)) {
    seen.push(revision);
    reader.append(signed);
  }
  t.deepEqual(seen, Array.from({ length: 20 }, (_, i) => BigInt(i + 1)));
  t.is(reader.revision, 20n);
  t.deepEqual([...reader.policies.keys()].sort(), [...writer.policies.keys()].sort());
  t.deepEqual(reader.lastHash, writer.lastHash);
});

test('intent log - live subscribers receive what the stream stores', async (t) => {
  const log = await freshLog();
  const got: bigint[] = [];
  const live = new IntentChain(trusted);
  const sequences: bigint[] = [];
  const sub = log.subscribe(
    (signed, seq) => {
      sequences.push(seq);
      got.push(live.append(signed).entry.revision);
    },
    (err) => t.fail(err.message),
  );
  t.teardown(() => sub.unsubscribe());
  const chain = new IntentChain(trusted);
  for (let i = 0; i < 5; i++) {
    const e = next(chain, { upserts: [policy('x', BigInt(i + 1))] });
    await log.append(e, chain.revision);
    chain.append(e);
  }
  await nats.nc.flush();
  for (let i = 0; i < 50 && got.length < 5; i++) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(got, [1n, 2n, 3n, 4n, 5n]);
  t.deepEqual(sequences, got, 'each live entry carries the sequence it is stored at');
});

test('intent log - a publish the stream rejects never reaches live subscribers', async (t) => {
  const log = await freshLog();
  const received: bigint[] = [];
  const sub = log.subscribe((_signed, seq) => received.push(seq), (err) => t.fail(err.message));
  t.teardown(() => sub.unsubscribe());
  const chain = new IntentChain(trusted);
  const e1 = next(chain, { upserts: [policy('a', 1n)] });
  await log.append(e1, 0n);
  // A second writer that has not seen revision 1 signs its own revision 1: rejected.
  const rival = next(new IntentChain(trusted), { upserts: [policy('rival', 1n)] });
  await t.throwsAsync(log.append(rival, 0n), { instanceOf: ConflictError });
  await nats.nc.flush();
  await new Promise((r) => setTimeout(r, 200));
  t.deepEqual(received, [1n]);
});

test('intent chain - gaps, forks and duplicates are told apart', (t) => {
  const chain = new IntentChain(trusted);
  const e1 = next(chain, { upserts: [policy('a', 1n)] });
  chain.append(e1);
  t.false(chain.append(e1).applied, 'a duplicate changes nothing');
  const fork = new IntentChain(trusted);
  const other = next(fork, { upserts: [policy('z', 1n)] });
  t.throws(() => chain.append(other), { instanceOf: ChainError }, 'a different entry at the same revision is a fork');
  const e2 = next(chain, { upserts: [policy('b', 2n)] });
  chain.append(e2);
  const e3 = next(chain, { upserts: [policy('c', 3n)] });
  const skipping = new IntentChain(trusted);
  skipping.append(e1);
  t.throws(() => skipping.append(e3), { instanceOf: GapError });
  // An entry whose previous hash is not ours (a rewound log rewritten differently).
  const rewound = signLogEntry(LogEntry.fromPartial({ revision: 3n, previousHash: Buffer.alloc(32, 7) }), privateKey);
  t.throws(() => chain.append(rewound), { instanceOf: ChainError });
});

test('intent log - snapshot plus the entries after it rebuilds the same state; compaction keeps revisions', async (t) => {
  const log = await freshLog();
  const writer = new IntentChain(trusted);
  const write = async (change: TestChange): Promise<void> => {
    const e = next(writer, change);
    await log.append(e, writer.revision);
    writer.append(e);
  };
  for (let i = 1; i <= 10; i++) await write({ upserts: [policy(`p${i % 4}`, BigInt(i))], serviceUpserts: [service(`s${i % 3}`, i)] });
  await write({ serviceDeletes: ['s0'] });
  await log.writeSnapshot(signSnapshot(writer.snapshot(), privateKey));
  await log.compact(12n);
  for (let i = 12; i <= 13; i++) await write({ upserts: [policy(`q${i}`, BigInt(i))], serviceUpserts: [service('s2', i)] });
  t.deepEqual(await log.bounds(), { first: 12n, last: 13n });

  const reader = new IntentChain(trusted);
  const snap = await log.readSnapshot();
  t.truthy(snap);
  reader.restore(snap!);
  t.is(reader.revision, 11n);
  t.deepEqual([...reader.services.keys()], ['s1', 's2'], 'the snapshot carries the services, the deleted one gone');
  for await (const { signed } of log.read(12n, 13n)) reader.append(signed);
  t.is(reader.revision, 13n);
  t.deepEqual([...reader.policies.keys()].sort(), [...writer.policies.keys()].sort());
  t.deepEqual([...reader.services].map(([n, s]) => [n, s.spec?.port]).sort(), [
    ['s1', 10],
    ['s2', 13],
  ]);
});

test('intent chain - services are upserted and deleted in their own namespace, and round-trip through a snapshot', (t) => {
  const chain = new IntentChain(trusted);
  chain.append(next(chain, { upserts: [policy('web', 1n)], serviceUpserts: [service('web', 80), service('dns', 53)] }));
  chain.append(next(chain, { serviceUpserts: [service('web', 8080)] }));
  chain.append(next(chain, { serviceDeletes: ['dns', 'missing'] }));
  t.deepEqual([...chain.services.keys()], ['web']);
  t.is(chain.services.get('web')?.spec?.port, 8080);
  t.true(chain.policies.has('web'), 'a policy and a service may share a name');
  chain.append(next(chain, { deletes: ['web'] }));
  t.true(chain.services.has('web'), 'deleting the policy leaves the service');

  const snapshot = chain.snapshot();
  t.deepEqual(snapshot.services.map((s) => s.metadata?.name), ['web']);
  const copy = new IntentChain(trusted);
  copy.restore(signSnapshot(snapshot, privateKey));
  t.deepEqual([...copy.services.keys()], ['web']);
  t.is(copy.services.get('web')?.spec?.port, 8080);
  copy.append(next(copy, { serviceDeletes: ['web'] }));
  t.is(copy.services.size, 0);
});

test('intent log - entries survive kill -9 of nats-server', async (t) => {
  // Its own server: killing the shared one would fail the tests running beside this one.
  const d = mkdtempSync(join(tmpdir(), 'nats-kill-'));
  const server = await NatsServer.start({ dataDir: d });
  const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  t.teardown(async () => {
    await nc.close();
    await server.close();
    rmSync(d, { recursive: true, force: true });
  });
  const log = await IntentLog.open(nc, { create: true });
  const chain = new IntentChain(trusted);
  for (let i = 1; i <= 5; i++) {
    const e = next(chain, { upserts: [policy(`k${i}`, BigInt(i))] });
    await log.append(e, chain.revision);
    chain.append(e);
  }
  await server.kill('SIGKILL');
  await server.restart();
  // The client reconnects by itself; reads succeed once JetStream has recovered the stream.
  let bounds;
  for (let i = 0; i < 100; i++) {
    try {
      bounds = await log.bounds();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  t.deepEqual(bounds, { first: 1n, last: 5n });
  const reader = new IntentChain(trusted);
  for await (const { signed } of log.read(1n, 5n)) reader.append(signed);
  t.deepEqual(reader.lastHash, chain.lastHash);
});

test('nats server - close twice is safe', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'nats-close-'));
  const s = await NatsServer.start({ dataDir: d });
  t.truthy(s.pid);
  await s.close();
  await s.close();
  t.is(s.pid, undefined);
  rmSync(d, { recursive: true, force: true });
});

/**
 * Records the JetStream API subjects about `stream` requested while `fn` runs (a plain subscriber
 * sees requests too). Only that stream's: the other tests of this file run at the same time on the
 * same server (a CI run saw another test's purge and direct get here).
 */
async function apiCalls(stream: string, fn: () => Promise<unknown>): Promise<string[]> {
  const spy = await connect({ servers: nats.server.url });
  const seen: string[] = [];
  // $JS.API.<DIRECT|STREAM|CONSUMER>.<verb>.<stream>, with or without more tokens after it.
  const subs = [`$JS.API.*.*.${stream}`, `$JS.API.*.*.${stream}.>`].map((subject) => spy.subscribe(subject, { callback: (_err, m) => void seen.push(m.subject) }));
  await spy.flush();
  try {
    await fn();
    await nats.nc.flush();
    await spy.flush();
  } finally {
    for (const sub of subs) sub.unsubscribe();
    await spy.close();
  }
  return seen;
}

test('intent log - bounds and short reads use direct gets only (no JetStream API queue, no consumer); long reads a consumer', async (t) => {
  const names = nextNames();
  const log = await freshLog(names);
  const writer = new IntentChain(trusted);
  for (let i = 1; i <= 80; i++) {
    const e = next(writer, { upserts: [policy(`p${i % 7}`, BigInt(i))] });
    await log.append(e, writer.revision);
    writer.append(e);
  }
  let bounds;
  const boundsCalls = await apiCalls(names.stream, async () => (bounds = await log.bounds()));
  t.deepEqual(bounds, { first: 1n, last: 80n });
  t.true(boundsCalls.length > 0 && boundsCalls.every((s) => s.startsWith('$JS.API.DIRECT.GET.')), boundsCalls.join(' '));

  const short: bigint[] = [];
  const shortCalls = await apiCalls(names.stream, async () => {
    for await (const m of log.read(70n, 80n)) short.push(m.revision);
  });
  t.deepEqual(short, Array.from({ length: 11 }, (_, i) => BigInt(70 + i)));
  t.true(shortCalls.every((s) => s.startsWith('$JS.API.DIRECT.GET.')), shortCalls.join(' '));
  t.is(shortCalls.length, 11, 'one direct get per entry');

  const long: bigint[] = [];
  const longCalls = await apiCalls(names.stream, async () => {
    for await (const m of log.read(1n, 80n)) long.push(m.revision);
  });
  t.is(long.length, 80);
  t.true(longCalls.some((s) => s.startsWith('$JS.API.CONSUMER.CREATE.')), longCalls.join(' '));

  // Compacted sequences are skipped by a direct read as by a consumer: the reader sees the gap.
  await log.writeSnapshot(signSnapshot(writer.snapshot(), privateKey));
  await log.compact(76n);
  t.deepEqual(await log.bounds(), { first: 76n, last: 80n });
  const afterCompaction: bigint[] = [];
  for await (const m of log.read(72n, 80n)) afterCompaction.push(m.revision);
  t.deepEqual(afterCompaction, [76n, 77n, 78n, 79n, 80n]);
  // A read past the end stops at the last entry.
  const pastEnd: bigint[] = [];
  for await (const m of log.read(79n, 90n)) pastEnd.push(m.revision);
  t.deepEqual(pastEnd, [79n, 80n]);
});

test('intent log - a stream that does not allow direct gets is read through stream info and a consumer', async (t) => {
  const names = nextNames();
  const jsm = await jetstreamManager(nats.nc);
  await jsm.streams.add({ name: names.stream, subjects: [names.subject], allow_direct: false, deny_delete: true, republish: { src: names.subject, dest: names.liveSubject } });
  const log = await IntentLog.open(nats.nc, { create: true, ...names });
  t.deepEqual(await log.bounds(), { first: 0n, last: 0n });
  const writer = new IntentChain(trusted);
  for (let i = 1; i <= 3; i++) {
    const e = next(writer, { upserts: [policy(`p${i}`, BigInt(i))] });
    await log.append(e, writer.revision);
    writer.append(e);
  }
  let bounds;
  const calls = await apiCalls(names.stream, async () => (bounds = await log.bounds()));
  t.deepEqual(bounds, { first: 1n, last: 3n });
  t.true(calls.some((s) => s.startsWith('$JS.API.STREAM.INFO.')), calls.join(' '));
  t.false(calls.some((s) => s.startsWith('$JS.API.DIRECT.GET.')), calls.join(' '));
  const seen: bigint[] = [];
  for await (const m of log.read(2n, 3n)) seen.push(m.revision);
  t.deepEqual(seen, [2n, 3n]);
});
