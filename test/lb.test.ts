// L4 load balancing end to end (issue 14, "Tests"), everything real: nats-server and the
// controller (mutual TLS), the agent process enrolled in the rig's node namespace enforcing
// Services through its eBPF datapath (Maglev and DNAT at the uplink's XDP hook, reverse NAT at
// its TC egress), real TCP from the client namespace to backends in their own namespaces
// (test/support/lb-rig.ts). Services are written through IntentService.ApplyService and waited
// for as applied on the node. The two-node test is test/lb-two-nodes.test.ts. Path MTU discovery
// through a VIP: the ICMP errors the node sends about a client's too-large packets reach the
// client translated (bpf/LB.md, "ICMP errors").
import test from 'ava';
import { until, type TestControlPlane } from './support/control-plane.js';
import { LbRig } from './support/lb-rig.js';
import { applyServiceOn, closeLbAgents, lbOutput, referenceBackends, rigService, startLbAgents, VIP_PORT } from './support/lb-service.js';

const NODE = 'lb-e2e-1';
let cp: TestControlPlane | undefined;
let rig: LbRig | undefined;

test.before(async () => {
  rig = LbRig.create({ backends: 6 });
  cp = await startLbAgents(rig, [NODE]);
});

test.after.always(() => closeLbAgents(rig, cp));

const output = (): string => lbOutput(rig, cp);

/** The agent's and controller's output and the node's link counters (veth XDP drops, ...), for a failure's message. */
function diagnostics(): string {
  const r = theRig();
  const stats = [r.uplink.node, ...r.backends.map((b) => b.nodeLink)].map((dev) => {
    try {
      return `${dev}: ${r.exec(r.node, 'ethtool', ['-S', dev]).replace(/\s+/g, ' ')}`;
    } catch (e) {
      return `${dev}: ${String(e)}`;
    }
  });
  return [...stats, r.exec(r.node, 'nstat', ['-az', 'TcpExtListenDrops', 'IpExtInNoRoutes', 'IpOutNoRoutes']), output()].join('\n');
}

function theRig(): LbRig {
  if (!rig) throw new Error('no rig');
  return rig;
}

const apply = (service: Parameters<typeof applyServiceOn>[1]): Promise<bigint> => applyServiceOn(cp!, service, [NODE], output);

for (const family of [4, 6] as const) {
  test.serial(`lb e2e - new connections to an IPv${family} VIP reach the backends by weight, each the one LbReference picks for its tuple`, async (t) => {
    const r = theRig();
    const weights = new Map([[0, 1], [1, 2], [2, 3]]);
    const service = rigService(r, `shares${family}`, 0, family, weights);
    await apply(service);
    const count = 600;
    const flows = await r.flows(LbRig.vip(0, family), VIP_PORT, count);
    t.is(flows.length, count);
    t.deepEqual(flows.filter((f) => f.failure !== undefined), [], 'every connection reached a backend');
    // The exact check: each connection's backend is the one the datapath's oracle gives its tuple.
    const expected = referenceBackends(r, service);
    const client = family === 4 ? LbRig.CLIENT_V4 : LbRig.CLIENT_V6;
    const wrong = flows.filter((f) => f.backend !== expected(client, f.sport));
    t.deepEqual(wrong.slice(0, 10), [], `${wrong.length} of ${count} connections reached another backend than LbReference's`);
    // The statistical check: shares near 1/6, 2/6, 3/6 (the Maglev table is within a few per cent
    // of the weights; 0.08 is over 3 standard deviations of 600 draws).
    const reached: Record<string, number> = {};
    for (const f of flows) if (f.backend) reached[f.backend] = (reached[f.backend] ?? 0) + 1;
    t.deepEqual(Object.keys(reached).sort(), ['b0', 'b1', 'b2'], JSON.stringify(reached));
    for (const [i, w] of weights) t.true(Math.abs((reached[`b${i}`] ?? 0) / count - w / 6) < 0.08, `b${i} (weight ${w}): ${JSON.stringify(reached)}`);
  });
}

test.serial('lb e2e - a killed backend: new flows avoid it within two health intervals, established flows to the others are untouched', async (t) => {
  const r = theRig();
  const intervalS = 1;
  const service = rigService(r, 'health', 1, 4, new Map([[0, 1], [1, 1], [2, 1]]), { healthIntervalS: intervalS });
  await apply(service);
  const vip = LbRig.vip(1);
  await until('every backend reached', async () => {
    const flows = await r.flows(vip, VIP_PORT, 60);
    return new Set(flows.map((f) => f.backend)).size === 3 && flows.every((f) => f.backend);
  }, 20_000, diagnostics);
  const holder = await r.hold(vip, VIP_PORT, 90, { intervalMs: 200, stallMs: 5_000 });
  let report;
  let avoidedMs = Number.NaN;
  try {
    t.deepEqual(Object.keys(holder.backends).sort(), ['b0', 'b1', 'b2'], JSON.stringify(holder.backends));
    const killed = Date.now();
    await r.killBackend(1);
    // The condition, waited for with a bound (not measured against one): a batch of new flows
    // that all reach the live backends. Two intervals, and room for a loaded machine.
    const batches: string[] = [];
    await until('new flows avoid the killed backend', async () => {
      const flows = await r.flows(vip, VIP_PORT, 60);
      const tally: Record<string, number> = {};
      for (const f of flows) tally[f.backend ?? f.failure ?? '?'] = (tally[f.backend ?? f.failure ?? '?'] ?? 0) + 1;
      batches.push(`${Date.now() - killed} ms ${JSON.stringify(tally)}`);
      return flows.every((f) => f.backend !== undefined && f.backend !== 'b1');
    }, 2 * intervalS * 1000 + 15_000, output);
    avoidedMs = Date.now() - killed;
    t.log(`new flows avoided the killed backend after ${avoidedMs} ms (health interval ${intervalS * 1000} ms); batches: ${batches.join('; ')}`);
    const after = await r.flows(vip, VIP_PORT, 120);
    t.deepEqual(after.filter((f) => f.failure !== undefined || f.backend === 'b1'), []);
    t.deepEqual([...new Set(after.map((f) => f.backend))].sort(), ['b0', 'b2']);
  } finally {
    report = await holder.stop();
    await r.restartBackend(1);
  }
  // Exactly the killed backend's connections broke; every other one echoed to the end.
  t.deepEqual(report.broken.filter((b) => b.backend !== 'b1'), [], `${report.connections} connections`);
  t.is(report.broken.length, holder.backends.b1 ?? 0, JSON.stringify(report.broken));
  // Restarted, it passes its probe and takes new flows again (the health check re-applies both ways).
  await until('the restarted backend serves again', async () => (await r.flows(vip, VIP_PORT, 60)).some((f) => f.backend === 'b1'), 20_000, output);
});

test.serial('lb e2e - 100 backend adds, removes and drains during long-lived connections break none of them', async (t) => {
  const r = theRig();
  const vip = LbRig.vip(2);
  // 1,000 connections as the issue asks: opening them, the 100 applies (each waited for on the
  // node) and the final round take 16-25 s here on 2 shared cores, within the suite's budget.
  const connections = 1_000;
  const members = new Map([[0, 1], [1, 1], [2, 1], [3, 1]]);
  const service = (): ReturnType<typeof rigService> => rigService(r, 'churn', 2, 4, members);
  await apply(service());
  const holder = await r.hold(vip, VIP_PORT, connections, { intervalMs: 500, stallMs: 5_000 }).catch((e: unknown) => {
    throw new Error(`${String(e)}\n${diagnostics()}`);
  });
  let report;
  const done: string[] = [];
  try {
    t.deepEqual(Object.keys(holder.backends).sort(), ['b0', 'b1', 'b2', 'b3'], JSON.stringify(holder.backends));
    for (let event = 0; event < 100; event++) {
      const positive = [...members].filter(([, w]) => w > 0).map(([i]) => i);
      const drained = [...members].filter(([, w]) => w === 0).map(([i]) => i);
      const kind = ['add', 'drain', 'remove'][event % 3]!;
      if (kind === 'add') {
        const free = r.backends.map((b) => b.index).find((i) => !members.has(i));
        if (free === undefined) members.set(drained[0] ?? positive[0]!, 2);
        else members.set(free, 1 + (event % 4));
      } else if (kind === 'drain' && positive.length > 1) {
        members.set(positive[0]!, 0);
      } else if (drained.length > 0) {
        members.delete(drained[0]!);
      } else if (positive.length > 1) {
        members.delete(positive[0]!);
      }
      await apply(service());
      done.push(`${kind}:${JSON.stringify([...members])}`);
    }
    // The last change is in force: new flows reach exactly the backends of positive weight.
    const flows = await r.flows(vip, VIP_PORT, 120);
    const want = [...members].filter(([, w]) => w > 0).map(([i]) => `b${i}`).sort();
    t.deepEqual(flows.filter((f) => f.failure !== undefined), []);
    t.true(flows.every((f) => want.includes(f.backend!)), `${JSON.stringify(flows.map((f) => f.backend))} within ${want.join(',')}`);
  } finally {
    report = await holder.stop();
  }
  t.is(done.length, 100);
  t.is(report.connections, connections);
  t.deepEqual(report.broken.slice(0, 20), [], `${report.broken.length} of ${connections} broke`);
  t.true(report.roundTrips >= connections * report.rounds, `every connection echoed every round (${report.roundTrips} round trips in ${report.rounds} rounds)`);
});

for (const family of [4, 6] as const) {
  test.serial(`lb e2e - path MTU discovery through an IPv${family} VIP: large segments to a backend behind a 1280-byte hop get through once the translated ${family === 4 ? 'frag-needed' : 'packet-too-big'} reaches the client`, async (t) => {
    const r = theRig();
    const backend = r.backends[5]!;
    await apply(rigService(r, `pmtu${family}`, 3, family, new Map([[5, 1]])));
    // The node's route to the backend has an MTU of 1280 (a smaller hop between node and backend):
    // the client's full-sized segments through the VIP, DNATed to the backend, are too big there,
    // and the node's stack answers with an ICMP error quoting client -> backend, which leaves
    // through the uplink's TC egress. The backend's own link and its replies keep 1500 bytes, so
    // it advertises an MSS of 1,440 or 1,460 and only path MTU discovery can make the client send less.
    const route = family === 4 ? ['-4', 'route', 'replace', `${backend.v4}/32`, 'dev', backend.nodeLink] : ['-6', 'route', 'replace', `${backend.v6}/128`, 'dev', backend.nodeLink];
    r.exec(r.node, 'ip', [...route, 'mtu', '1280']);
    try {
      const bytes = 1 << 20;
      const report = await r.bulk(LbRig.vip(3, family), VIP_PORT, bytes, 30_000);
      t.log(JSON.stringify(report));
      t.is(report.backend, backend.name);
      t.is(report.failure, undefined, `${JSON.stringify(report)}\n${diagnostics()}`);
      t.is(report.echoed, bytes);
      // The client's socket learned the hop's MTU for the VIP it is connected to.
      t.true((report.pathMtu ?? Infinity) <= 1280, JSON.stringify(report));
    } finally {
      r.exec(r.node, 'ip', route);
    }
  });
}
