// The controller's own cost per change and per heartbeat at fleet sizes the fleet bench cannot
// simulate on this machine (issue 15), in one process: the controller's AgentSessions,
// NodeRegistry and CounterStore, N agent streams in memory (no gRPC, no agents: the reports are
// made once, up front), one WatchNodes-like watcher that encodes every event it is told (as a
// stream would), and a registry backend that counts writes. Each change: every node ACKs the new
// revision; measured from the first report to the watcher having heard every node.
// --rollout: a staged rollout is running whose wave is every node (the controller's own
// RolloutManager, listening to the registry as in main.ts; it does not advance: not leader).
// --writes-due: emulates, on a NodeRegistry that still has the option (commits before issue 15's
// batching), a change that comes 30 s or more after each node's last write (persistSeenEveryMs 0);
// the current registry has no such option and ignores it.
//
//   npx tsc --build && node --import=tsx bench/registry-acks.ts [--nodes 1000,10000] [--changes 5] [--rollout] [--writes-due]
import { performance } from 'node:perf_hooks';
import { FleetServiceService, Rollout, RolloutState, RevisionOutcome, type ConnectRequest, type ConnectResponse } from '@edgeplane/proto';
import { AgentSessions, CounterStore, NodeRegistry, RolloutManager, type AgentStream, type IntentStore } from '@edgeplane/controller';

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
const SIZES = (opt('--nodes') ?? '1000,10000').split(',').map(Number);
const CHANGES = Number(opt('--changes') ?? 5);
const ROLLOUT = argv.includes('--rollout');
const WRITES_DUE = argv.includes('--writes-due');
const serializeEvent = FleetServiceService.watchNodes.responseSerialize;

/** One agent stream in memory: messages pushed by the bench. */
function memoryStream(): { stream: AgentStream; push(m: ConnectRequest): void; end(): void } {
  // Messages pushed before serve listens wait in `early`.
  const early: ConnectRequest[] = [];
  let deliver = (m: ConnectRequest): void => void early.push(m);
  let ended: () => void = () => undefined;
  const stream: AgentStream = {
    listen: (message, end) => {
      deliver = message;
      ended = end;
      for (const m of early.splice(0)) message(m);
    },
    send: (_m: ConnectResponse) => undefined,
    end: () => undefined,
  };
  return { stream, push: (m) => deliver(m), end: () => ended() };
}

const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

async function until(pred: () => boolean): Promise<void> {
  while (!pred()) await new Promise((r) => setImmediate(r));
}

async function run(n: number): Promise<Record<string, number>> {
  let writes = 0;
  const registry = new NodeRegistry({ load: async () => [], save: async () => void writes++ }, (WRITES_DUE ? { persistSeenEveryMs: 0 } : {}) as ConstructorParameters<typeof NodeRegistry>[1]);
  const counters = new CounterStore();
  const sessions = new AgentSessions(registry, counters, {
    controllerId: 'bench',
    keys: [],
    settings: { counterInterval: undefined, heartbeatInterval: { seconds: 5n, nanos: 0 }, logStream: '', logSubject: '' },
    currentRevision: () => 1n,
    idleTimeoutMs: 3_600_000,
  });
  let events = 0;
  let calls = 0;
  let bytes = 0;
  const heard = new Map<string, bigint>();
  registry.watch((e) => {
    calls++;
    events++;
    // What the WatchNodes stream's serializer does with it (grpc-js calls it on write).
    bytes += serializeEvent(e).length;
    heard.set(e.node!.name, e.node!.status!.lastOutcomeRevision);
  });
  const streams = Array.from({ length: n }, (_, i) => {
    const s = memoryStream();
    const name = `node-${i}`;
    s.push({ message: { $case: 'hello', hello: { nodeName: name, labels: { fleet: 'bench', zone: `z${i % 8}` }, info: undefined, interfaces: [], receivedRevision: 1n, appliedRevision: 1n, sessionId: 's', conditions: [], appliedUnknown: false, lastReport: undefined } } });
    void sessions.serve(s.stream);
    return { name, ...s };
  });
  await until(() => registry.list().filter((x) => x.status?.connected).length === n);
  await registry.flush();
  let rollouts: RolloutManager | undefined;
  if (ROLLOUT) {
    const rollout = Rollout.fromPartial({ name: 'p', state: RolloutState.ROLLOUT_STATE_PROGRESSING, changeRevision: 2n, resourceVersion: 2n, waveNodes: streams.map((s) => s.name) });
    const store = { chain: { rollouts: new Map([['policy/p', rollout]]) }, onChange: () => undefined } as unknown as IntentStore;
    rollouts = new RolloutManager(store, registry, counters, { isLeader: () => false, tickMs: 3_600_000 });
    rollouts.start();
    rollouts.watch(() => undefined);
  }
  const out: Record<string, number> = { nodes: n };
  const perChange: number[] = [];
  const wall: number[] = [];
  let writesPerChange = 0;
  let eventsPerChange = 0;
  for (let c = 0; c < CHANGES; c++) {
    const revision = BigInt(c + 2);
    const reports = streams.map((): ConnectRequest => ({ message: { $case: 'report', report: { revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, reason: '', appliedRevision: revision, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false } } }));
    const w0 = writes;
    const e0 = events;
    const t0 = performance.now();
    const c0 = cpuMs();
    for (let i = 0; i < n; i++) streams[i]!.push(reports[i]!);
    await until(() => streams.every((s) => heard.get(s.name) === revision));
    perChange.push(cpuMs() - c0);
    wall.push(performance.now() - t0);
    await registry.flush();
    writesPerChange += (writes - w0) / CHANGES;
    eventsPerChange += (events - e0) / CHANGES;
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  out.cpuPerChangeMs = median(perChange);
  out.cpuPerAckUs = (median(perChange) / n) * 1000;
  out.wallPerChangeMs = median(wall);
  out.writesPerChange = writesPerChange;
  out.watcherEventsPerChange = eventsPerChange;
  // Heartbeats: every node sends one (as every 5 s in production).
  const hb: ConnectRequest = { message: { $case: 'heartbeat', heartbeat: { sequence: 1n, time: new Date() } } };
  const w0 = writes;
  const e0 = events;
  const h0 = cpuMs();
  for (let round = 0; round < 3; round++) {
    for (const s of streams) s.push(hb);
    await new Promise((r) => setTimeout(r, 100));
  }
  out.cpuPerHeartbeatUs = ((cpuMs() - h0) / (3 * n)) * 1000;
  out.writesPerHeartbeatRound = (writes - w0) / 3;
  out.watcherEventsPerHeartbeatRound = (events - e0) / 3;
  out.heapMiB = Math.round(process.memoryUsage().heapUsed / 2 ** 20);
  void calls;
  void bytes;
  rollouts?.close();
  for (const s of streams) s.end();
  sessions.closeAll();
  await registry.flush();
  return out;
}

console.log(`[registry-acks] rollout ${ROLLOUT}, writes due ${WRITES_DUE}, ${CHANGES} changes`);
const results = [];
for (const n of SIZES) {
  const r = await run(n);
  results.push(r);
  console.log(`[registry-acks] ${JSON.stringify(r)}`);
}
console.log('| nodes | controller CPU per change (median) | per ACK | writes per change | watcher events per change | CPU per heartbeat | writes / events per heartbeat round |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const r of results) {
  console.log(`| ${r.nodes} | ${r.cpuPerChangeMs!.toFixed(0)} ms | ${r.cpuPerAckUs!.toFixed(1)} µs | ${r.writesPerChange} | ${r.watcherEventsPerChange} | ${r.cpuPerHeartbeatUs!.toFixed(1)} µs | ${r.writesPerHeartbeatRound} / ${r.watcherEventsPerHeartbeatRound} |`);
}
console.log(JSON.stringify({ bench: 'registry-acks', rollout: ROLLOUT, writesDue: WRITES_DUE, changes: CHANGES, results }));
process.exit(0);
