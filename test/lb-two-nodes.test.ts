// L4 load balancing end to end on two nodes (issue 14, "Tests": two nodes with the same Service
// choose the same backend for the same flow). The rig has two node namespaces, each with the
// real agent enforcing through its eBPF datapath, each linked to the client and to every backend
// (test/support/lb-rig.ts, `nodes: 2`); one Service selects both. The same flows (client address
// and source port) are sent through node 1, then, with node 1's uplink down so nothing else can
// carry them, through node 2.
import test from 'ava';
import type { TestControlPlane } from './support/control-plane.js';
import { LbRig } from './support/lb-rig.js';
import { applyServiceOn, closeLbAgents, lbOutput, referenceBackends, rigService, startLbAgents, VIP_PORT } from './support/lb-service.js';

const NODES = ['lb-e2e-a', 'lb-e2e-b'];
let cp: TestControlPlane | undefined;
let rig: LbRig | undefined;

test.before(async () => {
  rig = LbRig.create({ backends: 4, nodes: 2 });
  cp = await startLbAgents(rig, NODES);
});

test.after.always(() => closeLbAgents(rig, cp));

const output = (): string => lbOutput(rig, cp);

test.serial('lb e2e two nodes - the same flow sent through either node reaches the same backend, IPv4 and IPv6', async (t) => {
  const r = rig!;
  const weights = new Map([[0, 1], [1, 2], [2, 1], [3, 3]]);
  const services = ([4, 6] as const).map((family) => rigService(r, `both${family}`, 0, family, weights));
  for (const s of services) await applyServiceOn(cp!, s, NODES, output);
  const flows = 200;
  const through: Record<string, string | undefined>[][] = [[], []];
  for (const k of [0, 1]) {
    r.via(k);
    if (k === 1) r.exec(r.nodes[0]!, 'ip', ['link', 'set', r.uplink.node, 'down']);
    for (const [f, family] of ([4, 6] as const).entries()) {
      // The same source ports on both passes: each closed with a reset, so a port is free again at once.
      const report = await r.flows(LbRig.vip(0, family), VIP_PORT, flows, 20_000 + 1_000 * f);
      t.deepEqual(report.filter((x) => x.failure !== undefined), [], `node ${k + 1}, IPv${family}: every connection reached a backend`);
      through[k]![f] = Object.fromEntries(report.map((x) => [x.sport, x.backend]));
    }
  }
  for (const [f, family] of ([4, 6] as const).entries()) {
    const a = through[0]![f]!;
    const b = through[1]![f]!;
    t.is(Object.keys(a).length, flows);
    const differ = Object.keys(a).filter((sport) => a[sport] !== b[sport]);
    t.deepEqual(differ.slice(0, 10), [], `IPv${family}: ${differ.length} of ${flows} flows reached different backends on the two nodes`);
    t.deepEqual([...new Set(Object.values(a))].sort(), ['b0', 'b1', 'b2', 'b3'], `IPv${family}: the flows spread over every backend`);
    // And both agree with the oracle (so neither node is merely consistent with itself).
    const expected = referenceBackends(r, services[f]!);
    const client = family === 4 ? LbRig.CLIENT_V4 : LbRig.CLIENT_V6;
    t.deepEqual(Object.keys(a).filter((sport) => a[sport] !== expected(client, Number(sport))).slice(0, 10), []);
  }
});
