import test, { type ExecutionContext } from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { Action, LogEntry, LogHead, Policy, Protocol, Rollout, RolloutKind, RolloutState, Service, encodeSignedLogEntry, keyIdOf, rolloutKey, signLogEntry, signLogHead, signSnapshot, type LogEntry as Entry, type SignedLogEntry } from '@edgeplane/proto';
import { ChainFollower, IntentChain, IntentLog, type ChainFollowerOptions, type StoredMessage } from '../src/index.js';
import { natsServerFixture } from '../../../test/support/nats.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);
const rogue = generateKeyPairSync('ed25519');
const nats = natsServerFixture(test, 'chain-follower-test');
let jsm: JetStreamManager;

nats.atStart(async () => {
  jsm = await jetstreamManager(nats.nc);
});

function policy(name: string, port: number): Policy {
  return Policy.fromPartial({ metadata: { name }, spec: { rules: [{ priority: 1, destinationPorts: [{ first: port }], action: Action.ACTION_DENY }] } });
}

function service(name: string, port: number): Service {
  return Service.fromPartial({ metadata: { name }, spec: { vip: '192.0.2.1', protocol: Protocol.PROTOCOL_TCP, port, backends: [{ address: '10.0.0.1' }] } });
}

/** A writer as the controller is one: appends at the stream's position + 1, linking to the newest valid entry. */
class Writer {
  chain = new IntentChain(trusted);
  position = 0n;
  signed: SignedLogEntry[] = [];
  constructor(
    readonly log: IntentLog,
    readonly tag: string,
  ) {}

  sign(n: number, createTime = new Date()): SignedLogEntry {
    const revision = this.position + 1n;
    return signLogEntry(LogEntry.fromPartial({ revision, previousHash: Buffer.from(this.chain.lastHash), createTime, change: { upserts: [policy(`${this.tag}-${n % 3}`, n)], ...this.serviceChange(n) } }), privateKey);
  }

  /** Entry n upserts service s0 or s1 by turns; every fourth deletes the other one instead. */
  serviceChange(n: number): { serviceUpserts: Service[]; serviceDeletes: string[] } {
    if (n % 4 === 3) return { serviceUpserts: [], serviceDeletes: [`${this.tag}-s${(n + 1) % 2}`] };
    return { serviceUpserts: [service(`${this.tag}-s${n % 2}`, n)], serviceDeletes: [] };
  }

  async write(count: number, createTime?: () => Date): Promise<void> {
    for (let i = 0; i < count; i++) {
      const e = this.sign(Number(this.position) + 1, createTime?.());
      const at = await this.log.append(e, this.position);
      this.chain.append(e, at);
      this.position = at;
      this.signed.push(e);
    }
  }

  /** Stores a message that is not a valid entry (it occupies a sequence). */
  async junk(bytes: Uint8Array): Promise<void> {
    const ack = await jetstream(nats.nc).publish(this.log.subject, bytes, { expect: { lastSequence: Number(this.position) } });
    this.position = BigInt(ack.seq);
  }
}

let streamNo = 0;
interface Fixture {
  names: { stream: string; subject: string; liveSubject: string; snapshotBucket: string };
  log: IntentLog;
  writer: Writer;
  /** Turns live delivery to followers off or on: entries stored meanwhile are missed live. */
  live(on: boolean): Promise<void>;
  /** Deletes the stream and creates it again, empty: a log rewound by storage loss. */
  recreate(): Promise<void>;
  follower(options?: Partial<ChainFollowerOptions>): { follower: ChainFollower; events: string[]; advanced: bigint[] };
  publishLive(bytes: Uint8Array, seq: string): Promise<void>;
}

async function fixture(t: ExecutionContext): Promise<Fixture> {
  streamNo++;
  const names = { stream: `F${streamNo}`, subject: `f${streamNo}.log`, liveSubject: `f${streamNo}.live`, snapshotBucket: `FS${streamNo}` };
  const log = await IntentLog.open(nats.nc, { create: true, ...names });
  let dropping = false;
  const subscribe = log.subscribe.bind(log);
  log.subscribe = (onEntry, onError) => subscribe((signed, seq) => (dropping ? undefined : onEntry(signed, seq)), onError);
  const followers: ChainFollower[] = [];
  t.teardown(() => followers.forEach((f) => f.close()));
  const f: Fixture = {
    names,
    log,
    writer: new Writer(log, 'a'),
    async live(on) {
      // nats-server 2.9 cannot change a stream's republish, so live loss happens here: the
      // follower's subscription drops what arrives while live is off.
      await settle();
      dropping = !on;
    },
    async recreate() {
      await jsm.streams.delete(names.stream);
      await IntentLog.open(nats.nc, { create: true, ...names });
    },
    follower(options = {}) {
      const events: string[] = [];
      const advanced: bigint[] = [];
      const follower = new ChainFollower(log, {
        trusted,
        lagRetryMs: 50,
        ...options,
        events: {
          advanced: (revision) => advanced.push(revision),
          rejected: (reason) => events.push(`rejected ${reason}`),
          resynced: (from, to) => events.push(`resynced ${from}->${to}`),
          diverged: (held) => events.push(`diverged at ${held}`),
          error: (message, err) => events.push(`error ${message}: ${(err as Error)?.message}`),
        },
      });
      followers.push(follower);
      return { follower, events, advanced };
    },
    async publishLive(bytes, seq) {
      const h = headers();
      h.set('Nats-Sequence', seq);
      nats.nc.publish(names.liveSubject, bytes, { headers: h });
      await nats.nc.flush();
    },
  };
  return f;
}

async function until(what: string, pred: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Waits until every message published so far on the connection has been routed to subscribers. */
async function settle(): Promise<void> {
  await nats.nc.flush();
  await new Promise((r) => setTimeout(r, 100));
}

const sameState = (t: ExecutionContext, follower: ChainFollower, chain: IntentChain): void => {
  t.is(follower.chain.revision, chain.revision);
  t.deepEqual(follower.chain.lastHash, chain.lastHash);
  t.deepEqual([...follower.chain.policies.keys()].sort(), [...chain.policies.keys()].sort());
  const services = (c: IntentChain) => [...c.services].map(([name, s]) => [name, s.spec?.port]).sort();
  t.deepEqual(services(follower.chain), services(chain));
};

interface Case {
  title: string;
  run(t: ExecutionContext, f: Fixture): Promise<void>;
}

const cases: Case[] = [
  {
    title: 'live entries in order are applied directly, without reading the stream',
    async run(t, f) {
      await f.writer.write(2);
      const { follower, advanced } = f.follower();
      await follower.start();
      t.is(follower.stats.catchUps, 1, 'one read at start');
      await f.writer.write(5);
      await until('revision 7', () => follower.chain.revision === 7n);
      sameState(t, follower, f.writer.chain);
      t.is(follower.stats.catchUps, 1);
      t.is(follower.stats.liveApplied, 5);
      t.deepEqual(advanced, [2n, 3n, 4n, 5n, 6n, 7n], 'one advance for the catch-up, one per live entry');
    },
  },
  {
    title: 'a gap - entries missed live are read from the stream once',
    async run(t, f) {
      const { follower } = f.follower();
      await f.writer.write(2);
      await follower.start();
      await f.live(false);
      await f.writer.write(3);
      await f.live(true);
      await f.writer.write(1);
      await until('revision 6', () => follower.chain.revision === 6n);
      sameState(t, follower, f.writer.chain);
      t.is(follower.stats.catchUps, 2, 'start, then one for the gap');
    },
  },
  {
    title: 'a duplicate - an entry delivered again changes nothing; an older one makes one bounds check',
    async run(t, f) {
      const { follower, advanced } = f.follower();
      await f.writer.write(3);
      await follower.start();
      await f.publishLive(encodeSignedLogEntry(f.writer.signed[2]!), '3');
      await f.publishLive(encodeSignedLogEntry(f.writer.signed[0]!), '1');
      await settle();
      t.is(follower.stats.duplicates, 2);
      await until('the rewind check', () => follower.stats.catchUps === 2);
      await f.publishLive(encodeSignedLogEntry(f.writer.signed[0]!), '1');
      await settle();
      t.is(follower.stats.catchUps, 2, 'one bounds check for an old entry stored anew, then none for rewindCheckMs');
      t.deepEqual(advanced, [3n]);
      sameState(t, follower, f.writer.chain);
    },
  },
  {
    title: 'a fork (policy rebuild) - the stream rewritten with another history is adopted, once',
    async run(t, f) {
      const { follower, events } = f.follower();
      await f.writer.write(3);
      await follower.start();
      await f.recreate();
      const other = new Writer(f.log, 'b');
      await other.write(5);
      await until('the other history', () => follower.chain.revision === 5n && follower.chain.policies.has('b-1'));
      sameState(t, follower, other.chain);
      t.is(follower.stats.resyncs, 1);
      t.true(events.some((e) => e.startsWith('resynced 3->5')), events.join('\n'));
    },
  },
  {
    title: 'a fork (policy refuse) - the held chain stays and the divergence is reported once',
    async run(t, f) {
      const { follower, events, advanced } = f.follower({ onDivergence: 'refuse' });
      await f.writer.write(3);
      await follower.start();
      const held = f.writer.chain;
      await f.recreate();
      const other = new Writer(f.log, 'b');
      await other.write(5);
      await until('the refusal', () => follower.divergence !== undefined);
      await settle();
      sameState(t, follower, held);
      t.is(follower.stats.resyncs, 0);
      t.deepEqual(events.filter((e) => e.startsWith('diverged')), ['diverged at 3']);
      t.deepEqual(advanced, [3n]);
    },
  },
  {
    title: 'a rewind (policy rebuild) - the stream purged and rewritten shorter is adopted on the next catch-up',
    async run(t, f) {
      const { follower } = f.follower();
      await f.writer.write(5);
      await follower.start();
      await f.recreate();
      const older = new Writer(f.log, 'a');
      for (const e of f.writer.signed.slice(0, 3)) {
        await f.log.append(e, older.position);
        older.chain.append(e);
        older.position++;
      }
      await follower.catchUp();
      sameState(t, follower, older.chain);
      t.is(follower.stats.resyncs, 1);
    },
  },
  {
    title: 'a rewind (policy refuse) - an older valid history is refused and the newer chain kept',
    async run(t, f) {
      const { follower, events } = f.follower({ onDivergence: 'refuse' });
      await f.writer.write(5);
      await follower.start();
      await f.recreate();
      let position = 0n;
      for (const e of f.writer.signed.slice(0, 3)) position = await f.log.append(e, position);
      await follower.catchUp();
      t.is(follower.chain.revision, 5n);
      sameState(t, follower, f.writer.chain);
      t.regex(follower.divergence ?? '', /ends at 3/);
      t.true(events.includes('diverged at 5'));
    },
  },
  {
    title: 'compaction - a follower behind the purged entries restores the snapshot and reads the rest',
    async run(t, f) {
      const { follower } = f.follower();
      await f.writer.write(2);
      await follower.start();
      await f.live(false);
      await f.writer.write(8);
      await f.log.writeSnapshot(signSnapshot(f.writer.chain.snapshot(), privateKey));
      await f.log.compact(9n);
      await f.live(true);
      await f.writer.write(2);
      await until('revision 12', () => follower.chain.revision === 12n);
      sameState(t, follower, f.writer.chain);
      // The snapshot (revision 10) held a-s0 and a-s1; entry 11 deleted a-s0 and 12 wrote it again.
      t.deepEqual([...follower.chain.services.keys()].sort(), ['a-s0', 'a-s1']);
      t.is(follower.chain.services.get('a-s1')?.spec?.port, 9, 'a-s1 came from the snapshot (entry 9): no entry the follower read wrote it');
      t.is(follower.stats.resyncs, 0);
    },
  },
  {
    title: 'compaction during a catch-up - the read that finds entries purged under it starts again from the snapshot',
    async run(t, f) {
      const { follower, events } = f.follower({ onDivergence: 'refuse' });
      await f.writer.write(2);
      await follower.start();
      await f.live(false);
      await f.writer.write(8);
      await f.log.writeSnapshot(signSnapshot(f.writer.chain.snapshot(), privateKey));
      // Purge right after the follower read the bounds (which still say first = 1).
      const bounds = f.log.bounds.bind(f.log);
      let purged = false;
      f.log.bounds = async () => {
        const b = await bounds();
        if (!purged) {
          purged = true;
          await f.log.compact(9n);
        }
        return b;
      };
      await follower.catchUp();
      sameState(t, follower, f.writer.chain);
      t.is(follower.divergence, undefined, events.join('\n'));
      t.is(follower.stats.resyncs, 0);
    },
  },
  {
    title: 'live entries arriving during a catch-up are applied after it, not read again',
    async run(t, f) {
      const { follower } = f.follower();
      await f.writer.write(1);
      await follower.start();
      await f.live(false);
      await f.writer.write(3);
      await f.live(true);
      const gate = pauseReads(f.log);
      await f.writer.write(1); // live 5: a gap, the catch-up starts and pauses
      await gate.reached;
      await f.writer.write(3); // 6..8 arrive live while the catch-up holds the lock
      await settle();
      t.is(follower.chain.revision, 1n, 'nothing appended to the chain under the catch-up');
      gate.release();
      await until('revision 8', () => follower.chain.revision === 8n);
      sameState(t, follower, f.writer.chain);
      t.is(follower.stats.catchUps, 2, 'start and the gap: the entries kept meanwhile needed no read');
    },
  },
  {
    title: 'live entries arriving during a resync are applied to the rebuilt chain afterwards',
    async run(t, f) {
      const { follower } = f.follower();
      await f.writer.write(3);
      await follower.start();
      await f.recreate();
      const other = new Writer(f.log, 'b');
      await f.live(false);
      await other.write(3);
      await f.live(true);
      const gate = pauseReads(f.log);
      await other.write(1); // live 4 links elsewhere: a fork; the resync starts and pauses
      await gate.reached;
      await other.write(3); // 5..7 live during the resync
      await settle();
      t.is(follower.chain.revision, 3n);
      t.true(follower.chain.policies.has('a-1'), 'the old chain is untouched until replaced');
      gate.release();
      await until('revision 7', () => follower.chain.revision === 7n);
      sameState(t, follower, other.chain);
      t.is(follower.stats.resyncs, 1);
    },
  },
  {
    title: 'a node clock 10 s ahead - every live entry looks 10 s old and is still applied directly',
    async run(t, f) {
      const { follower } = f.follower();
      await follower.start();
      await f.writer.write(5, () => new Date(Date.now() - 10_000));
      await f.writer.write(5, () => new Date(Date.now() + 3_600_000));
      await until('revision 10', () => follower.chain.revision === 10n);
      t.is(follower.stats.catchUps, 1, 'no catch-up beyond the one at start');
      t.is(follower.stats.liveApplied, 10);
    },
  },
  {
    title: 'a backlog delivered late after an outage is applied entry by entry with no catch-up',
    async run(t, f) {
      const { follower } = f.follower();
      await follower.start();
      const old = new Date(Date.now() - 3_600_000);
      await f.writer.write(20, () => old);
      await until('revision 20', () => follower.chain.revision === 20n);
      t.is(follower.stats.catchUps, 1);
    },
  },
  {
    title: 'unverifiable messages - junk stored, junk live, forged entries and huge sequences are skipped and counted, never fatal',
    async run(t, f) {
      const { follower, events } = f.follower();
      await f.writer.write(2);
      await f.writer.junk(new Uint8Array([1, 2, 3]));
      await f.writer.write(1);
      await follower.start();
      t.is(follower.chain.revision, 4n, 'the entry after the junk links to the one before it');
      t.is(follower.position, 4n);
      const forged = signLogEntry(LogEntry.fromPartial({ revision: 999_999_999n, previousHash: Buffer.alloc(32), change: { deletes: ['a-1'] } }), rogue.privateKey);
      await f.publishLive(encodeSignedLogEntry(forged), '999999999');
      await f.publishLive(new Uint8Array([0xff, 0xff]), '5');
      await f.publishLive(encodeSignedLogEntry(f.writer.signed[0]!), '99999999999999999999999999999999');
      await f.publishLive(encodeSignedLogEntry(f.writer.sign(5)), '7');
      await f.writer.junk(Buffer.from('not an entry'));
      await f.writer.write(2);
      await until('revision 7', () => follower.chain.revision === 7n);
      sameState(t, follower, f.writer.chain);
      t.is(follower.stats.catchUps, 1, 'entry 6 links past the junk at 5 and is applied directly; forged sequences trigger no read');
      t.true(follower.stats.rejected >= 5, events.join('\n'));
      t.false(events.some((e) => e.startsWith('error') || e.startsWith('resynced')), events.join('\n'));
    },
  },
];

/** Makes the next read of the log stop after its first message until released. */
function pauseReads(log: IntentLog): { reached: Promise<void>; release(): void } {
  const original = log.messages.bind(log);
  let release!: () => void;
  let reached!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const gate = { reached: new Promise<void>((r) => (reached = r)), release: () => release() };
  log.messages = async function* (from: bigint, to: bigint): AsyncGenerator<StoredMessage> {
    log.messages = original;
    reached();
    await released;
    yield* original(from, to);
  };
  return gate;
}

for (const c of cases) test.serial(`chain follower - ${c.title}`, async (t) => c.run(t, await fixture(t)));

test('chain follower - close twice is safe and stops live delivery', async (t) => {
  const f = await fixture(t);
  const { follower } = f.follower();
  await follower.start();
  follower.close();
  follower.close();
  await f.writer.write(1);
  await settle();
  t.is(follower.chain.revision, 0n);
});

test('chain follower - entries are announced with what they changed', async (t) => {
  const f = await fixture(t);
  const seen: [bigint, Entry[], number][] = [];
  const follower = new ChainFollower(f.log, { trusted, events: { advanced: (r, entries, changes) => seen.push([r, entries, changes.length]) } });
  t.teardown(() => follower.close());
  await f.writer.write(2);
  await follower.start();
  await f.writer.write(1);
  await until('revision 3', () => follower.chain.revision === 3n);
  t.deepEqual(
    seen.map(([r, e, n]) => [r, e.map((x) => x.revision), n]),
    [
      [2n, [1n, 2n], 2],
      [3n, [3n], 1],
    ],
  );
});

test('intent chain - rollout records are keyed by kind: a policy and a service of one name keep theirs apart, each goes with its resource, a snapshot keeps both', (t) => {
  const chain = new IntentChain(trusted);
  const append = (change: Partial<NonNullable<Entry['change']>>): void => {
    const revision = chain.revision + 1n;
    chain.append(signLogEntry(LogEntry.fromPartial({ revision, previousHash: Buffer.from(chain.lastHash), change }), privateKey), revision);
  };
  const record = (kind: RolloutKind, waveNodes: string[]) => Rollout.fromPartial({ name: 'twin', kind, state: RolloutState.ROLLOUT_STATE_PROGRESSING, waveNodes });
  append({ upserts: [policy('twin', 1)], serviceUpserts: [service('twin', 80)], rollouts: [record(RolloutKind.ROLLOUT_KIND_POLICY, ['n1']), record(RolloutKind.ROLLOUT_KIND_SERVICE, ['n2'])] });
  t.deepEqual([...chain.rollouts].map(([k, r]) => [k, r.waveNodes]), [['twin', ['n1']], ['service/twin', ['n2']]]);
  t.is(chain.rollouts.get(rolloutKey(RolloutKind.ROLLOUT_KIND_SERVICE, 'twin'))?.kind, RolloutKind.ROLLOUT_KIND_SERVICE);

  // Restored from a snapshot: the same keys.
  const copy = new IntentChain(trusted);
  copy.load(chain.snapshot());
  t.deepEqual([...copy.rollouts.keys()].sort(), ['service/twin', 'twin']);

  // Deleting the service takes its record only; a revert that deletes the service it created keeps the final record.
  append({ serviceDeletes: ['twin'] });
  t.deepEqual([...chain.rollouts.keys()], ['twin']);
  append({ serviceUpserts: [service('twin', 80)], rollouts: [record(RolloutKind.ROLLOUT_KIND_SERVICE, ['n2'])] });
  append({ serviceDeletes: ['twin'], rollouts: [Rollout.fromPartial({ ...record(RolloutKind.ROLLOUT_KIND_SERVICE, ['n2']), state: RolloutState.ROLLOUT_STATE_ABORTED })] });
  t.is(chain.rollouts.get('service/twin')?.state, RolloutState.ROLLOUT_STATE_ABORTED);
  t.false(chain.services.has('twin'));
  // Deleting the policy takes its record only.
  append({ deletes: ['twin'] });
  t.deepEqual([...chain.rollouts.keys()], ['service/twin']);
});

test('chain follower - log heads: followers in one process take a genuine head; a forged head at the same revision (a later time unsigned, another key under the id, another hash) is refused by each and freshens none', async (t) => {
  const f = await fixture(t);
  await f.writer.write(1);
  // Two followers of one log in one process, as the fleet benchmark runs its agents.
  const seen = [0, 1].map(() => ({ stale: 0, fresh: 0, rejected: [] as string[] }));
  const followers = seen.map((s) => new ChainFollower(f.log, { trusted, staleAfterMs: 400, events: { stale: () => s.stale++, fresh: () => s.fresh++, rejected: (reason) => s.rejected.push(reason) } }));
  t.teardown(() => followers.forEach((x) => x.close()));
  await Promise.all(followers.map((x) => x.start()));
  await until('both stale', () => seen.every((s) => s.stale === 1));
  const hash = Buffer.from(f.writer.chain.lastHash);
  const genuine = signLogHead({ fleetId: '', revision: 1n, hash, time: new Date(), controllerId: 'c' }, privateKey);
  f.log.publishHead(genuine);
  await until('both fresh', () => seen.every((s) => s.fresh === 1));
  await until('both stale again', () => seen.every((s) => s.stale === 2));
  const later = { fleetId: '', revision: 1n, hash, time: new Date(Date.now() + 60_000), controllerId: 'c' };
  f.log.publishHead({ ...genuine, head: Buffer.from(LogHead.encode(later).finish()) });
  f.log.publishHead({ ...signLogHead(later, rogue.privateKey), keyId: genuine.keyId });
  f.log.publishHead({ ...genuine, head: Buffer.from(LogHead.encode({ ...later, hash: Buffer.alloc(32, 9) }).finish()) });
  await until('three rejections each', () => seen.every((s) => s.rejected.length === 3));
  t.true(seen.every((s) => s.fresh === 1 && s.stale === 2), 'no forged head freshened a follower');
  t.true(seen.every((s) => s.rejected.every((r) => /signature does not match/.test(r))), JSON.stringify(seen.map((s) => s.rejected)));
  // The genuine head of that time is taken.
  f.log.publishHead(signLogHead(later, privateKey));
  await until('both fresh again', () => seen.every((s) => s.fresh === 2));
  t.true(seen.every((s) => s.rejected.length === 3));
});
