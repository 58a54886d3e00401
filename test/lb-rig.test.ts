// The load-balancing rig (test/support/lb-rig.ts) tested with the load balancers it will be
// compared with (test/support/lb-peers.ts) in its node namespace: real TCP and UDP from the client
// namespace through a VIP the node does not own to backend namespaces that answer with their name.
// These prove the rig (and the peers bench/lb.ts measures) before edgeplane's datapath stands in
// the same place. The IPVS tests need a kernel with IP_VS; where it is missing (CONFIG_IP_VS unset)
// they are skipped, and the reason is in the title.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import test from 'ava';
import { LbRig } from './support/lb-rig.js';
import { IpvsPeer, IptablesPeer, type LbPeer, type RigService } from './support/lb-peers.js';
import { sh } from './support/topology.js';

const PORT = 80;
const BACKEND_PORT = 8080;
/** Backends the services start with; the rig has one more, for the "add" tests. */
const SERVING = 4;

let rig: LbRig | undefined;
test.before(async () => {
  rig = LbRig.create({ backends: SERVING + 1 });
  await rig.startBackends([BACKEND_PORT]);
});
test.after.always(() => {
  active?.remove();
  rig?.remove();
});
const theRig = (): LbRig => {
  if (rig === undefined) throw new Error('the rig was not built');
  return rig;
};

/** VIP 0 (IPv4 and IPv6), TCP and UDP, to `backends` (indices) of the rig, weight 1 unless given. */
function services(backends: number[], weights: Record<number, number> = {}): RigService[] {
  const r = theRig();
  const of = (fam: 4 | 6) =>
    backends.map((i) => {
      const b = r.backends[i]!;
      return { address: fam === 4 ? b.v4 : b.v6, port: BACKEND_PORT, weight: weights[i] ?? 1 };
    });
  return (['tcp', 'udp'] as const).flatMap((protocol) => [
    { vip: LbRig.vip(0, 4), port: PORT, protocol, backends: of(4) },
    { vip: LbRig.vip(0, 6), port: PORT, protocol, backends: of(6) },
  ]);
}
const all = Array.from({ length: SERVING }, (_, i) => i);
const names = (indices: number[]): string[] => indices.map((i) => `b${i}`).sort();

test.serial('lb rig - checksum offload is off on every veth and a receiver drops a datagram with a wrong checksum', (t) => {
  const r = theRig();
  for (const [ns, dev] of r.veths()) {
    const features = r.exec(ns, 'ethtool', ['-k', dev]);
    t.regex(features, /^tx-checksumming: off/m, `${dev} in ${ns}`);
  }
  const b0 = r.backends[0]!;
  const before = r.udpCounters(b0.ns);
  r.sendBadChecksum(b0.v4, 9);
  const after = r.udpCounters(b0.ns);
  t.is((after.InCsumErrors ?? 0) - (before.InCsumErrors ?? 0), 1, 'counted as a checksum error');
  t.is((after.NoPorts ?? 0) - (before.NoPorts ?? 0), 0, 'never delivered (no socket on port 9 would have counted NoPorts)');
});

test.serial('lb rig - without a load balancer the node forwards to backends and owns no VIP', async (t) => {
  const r = theRig();
  const direct = await r.connect(r.backends[1]!.v4, BACKEND_PORT, 3);
  t.deepEqual(direct.reached, { b1: 3 });
  const direct6 = await r.connect(r.backends[2]!.v6, BACKEND_PORT, 3, 'udp');
  t.deepEqual(direct6.reached, { b2: 3 });
  const vip = await r.connect(LbRig.vip(0), PORT, 3);
  t.is(vip.failed, 3);
});

const ipvsMissing = ((): string | undefined => {
  if (existsSync('/proc/net/ip_vs')) return undefined;
  spawnSync('modprobe', ['ip_vs'], { stdio: 'ignore' });
  return existsSync('/proc/net/ip_vs') ? undefined : 'this kernel has no IP_VS (CONFIG_IP_VS unset, no module)';
})();

/** The peer in force in the node namespace: activating one removes the other's rules first (iptables DNAT at PREROUTING would take IPVS's packets). */
let active: LbPeer | undefined;
function activate(p: LbPeer): LbPeer {
  if (active !== p) {
    active?.remove();
    active = p;
  }
  return p;
}

const peers: { make: (ns: string) => LbPeer; missing?: string }[] = [{ make: (ns) => new IptablesPeer(ns) }, { make: (ns) => new IpvsPeer(ns), missing: ipvsMissing }];

for (const { make, missing } of peers) {
  const name = make('-').name;
  const run = missing === undefined ? test.serial : test.serial.skip;
  const suffix = missing === undefined ? '' : ` (skipped: ${missing})`;
  let peer: LbPeer | undefined;
  const thePeer = (): LbPeer => activate((peer ??= make(theRig().node)));

  run(`${name} - connections to a VIP reach every backend, IPv4 and IPv6, TCP and UDP${suffix}`, async (t) => {
    const r = theRig();
    await thePeer().apply(services(all));
    for (const [vip, protocol] of [[LbRig.vip(0, 4), 'tcp'], [LbRig.vip(0, 6), 'tcp'], [LbRig.vip(0, 4), 'udp'], [LbRig.vip(0, 6), 'udp']] as const) {
      const report = await r.connect(vip, PORT, 120, protocol);
      t.is(report.failed, 0, `${protocol} ${vip}: ${JSON.stringify(report.failures)}`);
      t.deepEqual(Object.keys(report.reached).sort(), names(all), `${protocol} ${vip}: ${JSON.stringify(report.reached)}`);
    }
  });

  run(`${name} - a killed backend fails its share until the service drops it; restarted and added back it serves again${suffix}`, async (t) => {
    const r = theRig();
    await thePeer().apply(services(all));
    await r.killBackend(1);
    try {
      const while1Dead = await r.connect(LbRig.vip(0), PORT, 120);
      t.true(while1Dead.failed > 0, `the rig reports the connections that met the dead backend: ${JSON.stringify(while1Dead)}`);
      t.false('b1' in while1Dead.reached);
      await thePeer().apply(services([0, 2, 3]));
      const without1 = await r.connect(LbRig.vip(0), PORT, 120);
      t.is(without1.failed, 0, JSON.stringify(without1.failures));
      t.deepEqual(Object.keys(without1.reached).sort(), names([0, 2, 3]));
    } finally {
      await r.restartBackend(1);
    }
    await thePeer().apply(services(all));
    const again = await r.connect(LbRig.vip(0), PORT, 120);
    t.is(again.failed, 0);
    t.deepEqual(Object.keys(again.reached).sort(), names(all));
  });

  run(`${name} - long-lived connections survive a backend add and a drain${suffix}`, async (t) => {
    const r = theRig();
    await thePeer().apply(services(all));
    const holders = [await r.hold(LbRig.vip(0, 4), PORT, 40, { intervalMs: 100, stallMs: 5_000 }), await r.hold(LbRig.vip(0, 6), PORT, 40, { intervalMs: 100, stallMs: 5_000 })];
    try {
      for (const h of holders) t.deepEqual(Object.keys(h.backends).sort(), names(all), JSON.stringify(h.backends));
      // Add backend 4: new connections reach it (so the change is in force) while the old ones echo on.
      await thePeer().apply(services([...all, SERVING]));
      const added = await r.connect(LbRig.vip(0), PORT, 120);
      t.true((added.reached[`b${SERVING}`] ?? 0) > 0, JSON.stringify(added.reached));
      // Drain backend 0 (weight 0): it takes no new connections, and keeps the ones it has.
      await thePeer().apply(services([...all, SERVING], { 0: 0 }));
      const drained = await r.connect(LbRig.vip(0), PORT, 120);
      t.false('b0' in drained.reached, JSON.stringify(drained.reached));
    } finally {
      const reports = await Promise.all(holders.map((h) => h.stop()));
      for (const report of reports) {
        t.deepEqual(report.broken, [], `${report.connections} connections`);
        t.true(report.roundTrips >= report.connections, `every connection echoed (${report.roundTrips} round trips in ${report.rounds} rounds)`);
      }
    }
  });
}

test.serial('lb rig - a holder reports exactly the long-lived connections of a backend that was killed', async (t) => {
  const r = theRig();
  await activate(new IptablesPeer(r.node)).apply(services(all));
  const holder = await r.hold(LbRig.vip(0), PORT, 40, { intervalMs: 100, stallMs: 5_000 });
  const victims = holder.backends.b2 ?? 0;
  let report;
  try {
    await r.killBackend(2);
  } finally {
    report = await holder.stop();
    await r.restartBackend(2);
  }
  t.true(victims > 0, JSON.stringify(holder.backends));
  t.is(report.broken.length, victims, JSON.stringify(report.broken));
  for (const b of report.broken) {
    t.is(b.backend, 'b2');
    t.true(['eof', 'reset'].includes(b.reason), b.reason);
  }
});

test.serial('lb rig - remove() ends its processes and deletes its namespaces, twice without harm', async (t) => {
  const small = LbRig.create({ backends: 1 });
  let namespaces: string[] = [];
  try {
    await small.startBackends([BACKEND_PORT]);
    namespaces = [small.client, small.node, small.backends[0]!.ns];
    const server = small.spawn(small.backends[0]!.ns, 'sleep', ['600']);
    const { child } = await server;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    small.remove();
    await exited;
    t.not(child.exitCode ?? child.signalCode, null);
  } finally {
    small.remove();
  }
  const left = sh('ip', ['netns', 'list']);
  for (const ns of namespaces) t.false(left.includes(ns), `${ns} is gone`);
});
