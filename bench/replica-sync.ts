// What sharing fleet state between controller replicas costs (issue 15): two ReplicaFleetSync
// instances (the controller's own class, each with its own NATS connection, registry and stores)
// on a real nats-server, in this one process. Replica A owns N nodes (hello, two rule counters and
// one interface each); every round adds counters to all of them and marks them changed (as an
// agent's counter report does), and the round ends when replica B holds the new totals of every
// node. Prints CPU per node entry (A's encode and publish plus B's decode and merge: one process,
// so the two are not split), bytes per entry on the wire, and one JSON line. Asserts nothing.
//
//   npx tsc --build && node --import=tsx bench/replica-sync.ts [--nodes 10000] [--rounds 10] [--quick]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { NatsServer } from '@edgeplane/intent-log';
import { AgentHello, FLEET_STATUS_SUBJECT_PREFIX, REPLICAS_BUCKET, type CounterReport } from '@edgeplane/proto';
import { CounterStore, NodeRegistry, ReplicaFleetSync, ServiceHealthStore } from '@edgeplane/controller';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
};
const quick = process.argv.includes('--quick');
const N = Number(arg('--nodes') ?? 10_000);
const ROUNDS = Number(arg('--rounds') ?? (quick ? 5 : 20));

const dir = mkdtempSync(join(tmpdir(), 'bench-replica-sync-'));
const nats = await NatsServer.start({ dataDir: join(dir, 'nats') });
const opened: { close(): Promise<void> }[] = [];
try {
  const replica = async (id: string): Promise<{ registry: NodeRegistry; counters: CounterStore; sync: ReplicaFleetSync }> => {
    const nc = await connect({ servers: nats.url });
    opened.push(nc);
    const kv = await new Kvm(nc).create(REPLICAS_BUCKET, { history: 1, ttl: 60_000 });
    const registry = new NodeRegistry({ load: async () => [], save: async () => undefined });
    const counters = new CounterStore();
    // Snapshots are the same encoding once per node every 5 s; left out of the rounds here.
    const sync = new ReplicaFleetSync(nc, kv, { registry, counters, health: new ServiceHealthStore() }, { controllerId: id, snapshotMs: 3_600_000, onError: (m, e) => process.stderr.write(`${id}: ${m}: ${(e as Error).message}\n`) });
    await sync.start();
    opened.push({ close: () => sync.close() });
    return { registry, counters, sync };
  };
  const a = await replica('a');
  const b = await replica('b');
  const report = (packets: bigint): CounterReport => ({
    startTime: undefined,
    loadBalancer: undefined, shadow: undefined,
    endTime: undefined,
    appliedRevision: 5n,
    rules: [1, 2].map((priority) => ({ rule: { policy: 'web', priority }, ruleName: `r${priority}`, packets, bytes: packets * 100n, rateLimitedPackets: 0n })),
    interfaces: [{ interface: 'eth0', passedPackets: packets, droppedPackets: 1n, passedBytes: packets * 100n, droppedBytes: 100n, defaultActionPackets: 0n, nonIpPackets: 0n, malformedPackets: 0n }],
    conntrack: [], blocklists: [],
  });
  const names = Array.from({ length: N }, (_, i) => `sim-${i}`);
  for (const name of names) {
    a.registry.hello(AgentHello.fromPartial({ nodeName: name, labels: { role: 'edge', site: `s${name.length % 10}` }, info: { agentVersion: '0.1.0', kernelRelease: '6.18', hostname: name, datapath: 'memory' }, receivedRevision: 5n, appliedRevision: 5n }), 's');
    a.sync.changed(name);
  }
  const until = async (pred: () => boolean): Promise<void> => {
    while (!pred()) await new Promise((r) => setTimeout(r, 5));
  };
  await until(() => names.every((n) => b.registry.get(n) !== undefined));
  // Bytes on the replicas' subject, counted by a third connection.
  const spy = await connect({ servers: nats.url });
  opened.push(spy);
  let bytes = 0;
  spy.subscribe(`${FLEET_STATUS_SUBJECT_PREFIX}.*`, { callback: (_e, m) => void (bytes += m.data.length) });
  await spy.flush();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let r = 1; r <= ROUNDS; r++) {
    for (const name of names) {
      a.counters.add(name, report(1n));
      a.sync.changed(name, false);
    }
    const want = BigInt(r);
    await until(() => b.counters.nodeRules(names[N - 1]!)[0]?.packets === want && b.counters.nodeRules(names[0]!)[0]?.packets === want);
  }
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await spy.flush();
  const entries = N * ROUNDS;
  const usPerEntry = (cpu.user + cpu.system) / entries;
  const result = { bench: 'replica-sync', nodes: N, rounds: ROUNDS, entries, cpuUsPerEntry: Math.round(usPerEntry * 10) / 10, bytesPerEntry: Math.round(bytes / entries), wallMsPerRound: Math.round(wallMs / ROUNDS) };
  process.stdout.write(`| figure | ${N.toLocaleString('en')} nodes x ${ROUNDS} rounds |\n| --- | --- |\n| CPU per node entry (send + receive, one process) | ${result.cpuUsPerEntry} µs |\n| bytes per node entry on the wire | ${result.bytesPerEntry} |\n| wall per round (all nodes changed) | ${result.wallMsPerRound} ms |\n`);
  process.stdout.write(JSON.stringify(result) + '\n');
} finally {
  for (const o of opened.reverse()) await o.close().catch(() => undefined);
  await nats.close();
  rmSync(dir, { recursive: true, force: true });
}
