// The forwarding modes of a Service end to end (issue 14; bpf/LB.md, "Forwarding modes"), with the
// real controller and the real agent in the rig's node namespace (test/support/lb-rig.ts) and real
// TCP from the client namespace:
// - DSR: each backend takes IP-in-IP (decapsulated at its link by bpf/fixtures/ipip_decap.bpf.c,
//   since this kernel has no ipip/ip6tnl device) and serves the VIP from its loopback, on the
//   VIP only: a connection that arrived NATed instead of encapsulated would find no listener.
//   It answers the client straight from the VIP (through the node's forwarding, not its NAT).
// - Full NAT: a backend beyond the client, reached through the uplink itself (one-armed, as a
//   LoxiLB or Katran node sits), whose only route is to the node's uplink address: it cannot
//   answer the client at all, only the node, which turns the reply back to the VIP's.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';
import { ApplyServiceRequest, ForwardingMode, Protocol, Service } from '@edgeplane/proto';
import type { TestControlPlane } from './support/control-plane.js';
import { LbRig } from './support/lb-rig.js';
import { TRAFFIC } from './support/netns-process.js';
import { applyServiceOn, closeLbAgents, lbOutput, startLbAgents } from './support/lb-service.js';
import { until } from './support/control-plane.js';
import { call } from './support/grpc.js';
import { sh } from './support/topology.js';

const NODE = 'lb-modes-1';
const DECAP = join(import.meta.dirname, '..', 'bpf', 'build', 'fixtures', 'ipip_decap.bpf.o');
const XDP_PASS = join(import.meta.dirname, '..', 'bpf', 'build', 'fixtures', 'xdp_pass.bpf.o');
/** DSR: the VIP's port, which the backends serve on their VIP (a DSR backend takes the VIP's port). */
const DSR_PORT = 9090;
/** Full NAT: the backend beyond the client, on a link of the client namespace's. */
const REMOTE_V4 = '10.99.0.1';
const REMOTE_V6 = 'fd00:99::1';
const REMOTE_PORT = 8080;

let cp: TestControlPlane | undefined;
let rig: LbRig | undefined;
let remote: string | undefined;

test.before(async () => {
  rig = LbRig.create({ backends: 3 });
  const r = rig;
  // IPv4 packets the node sends itself through its uplink's XDP (DSR's outer header, full NAT's
  // source) carry one of its own addresses as their source: the stack takes them only with
  // accept_local on the uplink, and DSR's (the node's address on a backend link) not under strict
  // reverse-path filtering. The agent sets both (bpf/LB.md, "What the node needs"): the node
  // starts with neither. (The full-NAT test turns strict reverse-path filtering on.)
  if (nodeSetting(r, 'accept_local') !== '0') throw new Error('the node starts with accept_local set');
  // DSR backends: the decapsulation at their link, the VIPs on their loopback.
  for (const b of r.backends) {
    for (const [vip, len] of [[LbRig.vip(0, 4), 32], [LbRig.vip(0, 6), 128]] as const) sh('ip', ['-n', b.ns, 'addr', 'add', `${vip}/${len}`, 'dev', 'lo']);
    r.exec(b.ns, 'sysctl', ['-qw', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0', 'net.ipv4.conf.b-eth.rp_filter=0']);
    sh('ip', ['netns', 'exec', b.ns, 'tc', 'qdisc', 'add', 'dev', 'b-eth', 'clsact']);
    sh('ip', ['netns', 'exec', b.ns, 'tc', 'filter', 'add', 'dev', 'b-eth', 'ingress', 'bpf', 'direct-action', 'obj', DECAP, 'sec', 'tc']);
  }
  // Full NAT: the remote backend behind the client namespace, which forwards; the node routes it
  // through the client; the backend routes only the node's uplink addresses, nothing else.
  remote = r.topology.namespace('lbr');
  r.topology.veth({ ns: r.client, name: 'c-r', ipv6: true, addresses: ['10.99.0.254/24', 'fd00:99::fe/64'] }, { ns: remote, name: 'r-eth', ipv6: true, addresses: [`${REMOTE_V4}/24`, `${REMOTE_V6}/64`] });
  r.exec(r.client, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
  sh('ip', ['-n', r.node, 'route', 'add', '10.99.0.0/24', 'via', LbRig.CLIENT_V4, 'dev', r.uplink.node]);
  sh('ip', ['-n', r.node, '-6', 'route', 'add', 'fd00:99::/64', 'via', LbRig.CLIENT_V6, 'dev', r.uplink.node]);
  sh('ip', ['-n', remote, 'route', 'add', `${LbRig.NODE_V4}/32`, 'via', '10.99.0.254']);
  sh('ip', ['-n', remote, '-6', 'route', 'add', `${LbRig.NODE_V6}/128`, 'via', 'fd00:99::fe']);
  for (const [ns, dev] of [[r.client, 'c-r'], [remote, 'r-eth']] as const) r.exec(ns, 'ethtool', ['-K', dev, 'tx', 'off']);
  // The node's XDP sends full-NAT frames back out of its uplink (XDP_TX); a veth delivers such
  // frames to its peer only when the peer runs NAPI, which an XDP program there turns on (a NIC
  // needs nothing of the kind).
  sh('ip', ['netns', 'exec', r.client, 'ip', 'link', 'set', 'dev', r.uplink.client, 'xdpdrv', 'obj', XDP_PASS, 'sec', 'xdp']);
  cp = await startLbAgents(r, [NODE]);
  for (const b of r.backends) {
    await r.spawn(b.ns, 'python3', [TRAFFIC, 'serve-on', LbRig.vip(0, 4), b.name, String(DSR_PORT)], { ready: true });
    await r.spawn(b.ns, 'python3', [TRAFFIC, 'serve-on', LbRig.vip(0, 6), b.name, String(DSR_PORT)], { ready: true });
  }
  await r.spawn(remote, 'python3', [TRAFFIC, 'serve', 'remote', String(REMOTE_PORT)], { ready: true });
});

test.after.always(() => closeLbAgents(rig, cp));

const output = (): string => lbOutput(rig, cp);

/** net.ipv4.conf.<uplink>.<name> in the node's namespace. */
function nodeSetting(r: LbRig, name: string): string {
  return r.exec(r.node, 'sysctl', ['-n', `net.ipv4.conf.${r.uplink.node}.${name}`]).trim();
}

function theRig(): LbRig {
  if (!rig) throw new Error('no rig');
  return rig;
}

function modeService(name: string, vip: string, port: number, mode: ForwardingMode, backends: { address: string; port: number }[]): Service {
  return Service.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: { role: 'edge' } }, vip, protocol: Protocol.PROTOCOL_TCP, port, forwardingMode: mode, backends },
  });
}

for (const family of [4, 6] as const) {
  test.serial(`lb modes e2e - DSR over IPv${family}: connections to the VIP reach every backend encapsulated and are answered from the VIP`, async (t) => {
    const r = theRig();
    const vip = LbRig.vip(0, family);
    // Backend port 0: the VIP's (a DSR backend cannot have another).
    await applyServiceOn(cp!, modeService(`dsr${family}`, vip, DSR_PORT, ForwardingMode.FORWARDING_MODE_DSR, r.backends.map((b) => ({ address: family === 4 ? b.v4 : b.v6, port: 0 }))), [NODE], output);
    const report = await r.connect(vip, DSR_PORT, 60);
    t.is(report.failed, 0, `${JSON.stringify(report)}\n${output()}`);
    t.deepEqual(Object.keys(report.reached).sort(), r.backends.map((b) => b.name), JSON.stringify(report.reached));
    // The replies went straight from the backends: the node rewrote none of them.
    const held = await r.hold(vip, DSR_PORT, 20, { intervalMs: 100, stallMs: 3_000 });
    const result = await held.stop();
    t.deepEqual(result.broken, []);
    t.true(result.roundTrips >= 20, JSON.stringify(result));
    // The node's load-balancer counters reach the controller: its node view and the service's
    // (describe service). A counter report read while the 60 connections above were still being
    // made already counts encapsulated packets (one CI run saw selected 58): the wait is for the
    // report after them.
    await until('encapsulated packets reported', async () => ((await call(cp!.api.fleet, cp!.api.fleet.getNode, { name: NODE })).loadBalancer?.encapsulated ?? 0n) > 0n, 30_000, output);
    const serviceHealth = async () => (await call(cp!.api.fleet, cp!.api.fleet.getServiceHealth, { names: [`dsr${family}`] })).services[0];
    await until('every connection counted in the service view', async () => ((await serviceHealth())?.loadBalancer?.selected ?? 0n) >= 60n, 30_000, output);
    const health = await serviceHealth();
    t.true((health?.loadBalancer?.selected ?? 0n) >= 60n, JSON.stringify(health?.loadBalancer, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)));
    t.true((health?.loadBalancer?.encapsulated ?? 0n) > 0n);
  });

  test.serial(`lb modes e2e - full NAT over IPv${family}: a backend with no route to the client is reached, its replies turned back through the node`, async (t) => {
    const r = theRig();
    const vip = LbRig.vip(1, family);
    const backend = family === 4 ? REMOTE_V4 : REMOTE_V6;
    // Without full NAT the backend could not answer: it has no route to the client.
    t.throws(() => execFileSync('ip', ['netns', 'exec', remote!, 'ip', family === 4 ? '-4' : '-6', 'route', 'get', family === 4 ? LbRig.CLIENT_V4 : LbRig.CLIENT_V6], { stdio: 'pipe' }));
    // Strict reverse-path filtering on the node, as many distributions set it: the turned-back
    // reply's source is the VIP, which the stack would drop as a martian. The node's XDP sends
    // both directions back out of the uplink itself (ep_xdp_fib_tx), so the stack never sees them.
    if (family === 4) r.exec(r.node, 'sysctl', ['-qw', 'net.ipv4.conf.all.rp_filter=1']);
    try {
      await applyServiceOn(cp!, modeService(`full${family}`, vip, 80, ForwardingMode.FORWARDING_MODE_FULLNAT, [{ address: backend, port: REMOTE_PORT }]), [NODE], output);
      const report = await r.connect(vip, 80, 60);
      t.is(report.failed, 0, `${JSON.stringify(report)}\n${output()}`);
      t.deepEqual(report.reached, { remote: 60 });
      const held = await r.hold(vip, 80, 20, { intervalMs: 100, stallMs: 3_000 });
      const result = await held.stop();
      t.deepEqual(result.broken, []);
      t.true(result.roundTrips >= 20, JSON.stringify(result));
    } finally {
      if (family === 4) r.exec(r.node, 'sysctl', ['-qw', 'net.ipv4.conf.all.rp_filter=0', `net.ipv4.conf.${r.uplink.node}.rp_filter=0`]);
    }
  });
}

test.serial('lb modes e2e - full NAT to a backend behind a workload interface is refused by the node with a clear reason, and the revision in force stays', async (t) => {
  const r = theRig();
  const before = (await cp!.nodeStatus(NODE))?.appliedRevision ?? 0n;
  const { revision } = await call(cp!.api.intent, cp!.api.intent.applyService, ApplyServiceRequest.fromPartial({ service: modeService('fullw', LbRig.vip(2, 4), 80, ForwardingMode.FORWARDING_MODE_FULLNAT, [{ address: r.backends[0]!.v4, port: 8080 }]) }));
  await until(`revision ${revision} refused`, async () => ((await cp!.nodeStatus(NODE))?.lastErrorRevision ?? 0n) >= revision, 20_000, output);
  const status = await cp!.nodeStatus(NODE);
  t.regex(status?.lastError ?? '', new RegExp(`service fullw: full-NAT backend ${r.backends[0]!.v4.replaceAll('.', '\\.')} is routed through ${r.backends[0]!.nodeLink}, not an uplink`));
  t.is(status?.appliedRevision, before);
  // Gone again, so later revisions apply.
  const { revision: deleted } = await call(cp!.api.intent, cp!.api.intent.deleteService, { name: 'fullw', validateOnly: false, allowMissing: false });
  await until(`revision ${deleted} applied`, async () => ((await cp!.nodeStatus(NODE))?.appliedRevision ?? 0n) >= deleted, 20_000, output);
});

test.serial('lb modes e2e - the agent sets accept_local on the uplink for IPv4 DSR / full NAT, and restores it when the last such service goes', async (t) => {
  const r = theRig();
  // The IPv4 services of the tests above are applied (whichever ran): the settings are the agent's.
  await applyServiceOn(cp!, modeService('dsr4', LbRig.vip(0, 4), DSR_PORT, ForwardingMode.FORWARDING_MODE_DSR, r.backends.map((b) => ({ address: b.v4, port: 0 }))), [NODE], output);
  t.is(nodeSetting(r, 'accept_local'), '1');
  t.is(nodeSetting(r, 'rp_filter'), '0', 'off is left off');
  // IPv6 services need nothing: with only those left, the values found are back.
  let revision = 0n;
  for (const name of ['dsr4', 'full4']) {
    const res = await call(cp!.api.intent, cp!.api.intent.deleteService, { name, validateOnly: false, allowMissing: true });
    revision = res.revision > revision ? res.revision : revision;
  }
  await until(`revision ${revision} applied`, async () => ((await cp!.nodeStatus(NODE))?.appliedRevision ?? 0n) >= revision, 20_000, output);
  t.is(nodeSetting(r, 'accept_local'), '0');
  t.is(nodeSetting(r, 'rp_filter'), '0');
});
