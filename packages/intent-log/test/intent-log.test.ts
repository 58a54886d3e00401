import test from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
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
async function freshLog(): Promise<IntentLog> {
  streamNo++;
  return IntentLog.open(nats.nc, { create: true, stream: `T${streamNo}`, subject: `t${streamNo}.log`, liveSubject: `t${streamNo}.live`, snapshotBucket: `TS${streamNo}` });
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
