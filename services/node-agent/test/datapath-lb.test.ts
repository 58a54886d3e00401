// L4 load balancing in the kernel (bpf/LB.md, layout 4): BPF_PROG_TEST_RUN of the programs
// EbpfDatapath loaded, on frames from packet.ts. The new flow's backend is LbReference's (the
// oracle computed from the same bytes the agent wrote), the rewritten frames carry valid
// checksums (verified here, not by the kernel), replies leave with the VIP as their source, the
// connection table pins each flow to its backend across applies, and the sweeper removes reverse
// entries whose service entry is gone. No interfaces: every test has a datapath of its own.
import { mkdirSync } from 'node:fs';
import test from 'ava';
import { ForwardingMode, formatAddress, parseAddress, Protocol, SessionAffinity, type Service } from '@edgeplane/proto';
import { BpfMap, encode } from 'libbpf-ts';
import { ctKeyOfFlow } from '../src/datapath/conntrack-key.js';
import { flowHash } from '../src/datapath/flow-hash.js';
import type { ApplyResult } from '../src/datapath/datapath.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { CapacityError } from '../src/datapath/errors.js';
import { LbReference } from '../src/datapath/lb-reference.js';
import { layoutLbTables } from '../src/datapath/lb-tables.js';
import { tcpFlags } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { compileServices, type BackendRouteView, type LbSpec } from '../src/datapath/service-compile.js';
import { epCtEntry, epCtKey } from '../src/datapath/table-codecs.js';
import { mountBpffs, prng, seedFromEnv, TC_ACT_OK, XDP_DROP, XDP_PASS } from './datapath-helpers.js';
import { checksumAt, checksumProblems, frameOf, headers, sum16, type Headers } from './lb-frames.js';
import { service } from './lb-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());
let next = 0;
const freshRoot = (): string => {
  const dir = `${bpffs.path}/lb${next++}`;
  mkdirSync(dir);
  return dir;
};
const open = async (t: { teardown(fn: () => void): void }): Promise<EbpfDatapath> => {
  // Small load-balancing maps: the tests need a few services, not an edge node's default.
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot(), lbCapacity: { services: 64, slots: 64 * 1024, backends: 1024 } });
  t.teardown(() => datapath.close());
  return datapath;
};

const allowAll: RuleSetSpec = { rules: [], defaultAction: 'allow' };
const UDP = Protocol.PROTOCOL_UDP;
const services: Service[] = [
  service('web4', { vip: '192.0.2.10', port: 443, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', port: 8443, weight: 3 }, { address: '10.0.0.3' }] }),
  service('dns4', { vip: '192.0.2.10', protocol: UDP, port: 53, backends: [{ address: '10.0.1.1' }, { address: '10.0.1.2', port: 5353 }] }),
  service('web6', { vip: '2001:db8::10', port: 443, backends: [{ address: '2001:db8:1::1' }, { address: '2001:db8:1::2', port: 8443 }] }),
  service('dns6', {
    vip: '2001:db8::10',
    protocol: UDP,
    port: 53,
    sessionAffinity: SessionAffinity.SESSION_AFFINITY_CLIENT_IP,
    backends: [{ address: '2001:db8:1::a' }, { address: '2001:db8:1::b' }, { address: '2001:db8:1::c' }],
  }),
];
const compile = (list: Service[]): LbSpec => compileServices(list, { labels: {} });
const referenceOf = (datapath: EbpfDatapath, spec: LbSpec, result: ApplyResult): LbReference => new LbReference(layoutLbTables(spec, datapath.lbCapacity, result.generation === 0 ? 0 : 1));

const tuple = (h: { family: 4 | 6; proto: number; src: string; dst: string; sport: number; dport: number }) => ({
  family: h.family,
  proto: h.proto,
  src: parseAddress(h.src) as Uint8Array,
  dst: parseAddress(h.dst) as Uint8Array,
  sport: h.sport,
  dport: h.dport,
});

/** A client's packet to VIP:port through edge_xdp: the verdict and the frame that left. */
function toVip(datapath: EbpfDatapath, client: string, sport: number, vip: string, port: number, protocol: 'tcp' | 'udp', flags: number = tcpFlags.syn, udpZero = false): { retval: number; out: Headers; frame: Uint8Array } {
  const frame = frameOf({ src: client, dst: vip, protocol, srcPort: sport, dstPort: port, tcpFlags: flags }, udpZero);
  const result = datapath.xdpProgram.testRun({ data: frame });
  return { retval: result.retval, out: headers(result.data), frame: result.data };
}

/** A backend's reply to the client through edge_tc_egress: the verdict and the frame that left. */
function reply(datapath: EbpfDatapath, backend: string, bport: number, client: string, cport: number, protocol: 'tcp' | 'udp', flags: number = tcpFlags.syn | tcpFlags.ack): { retval: number; out: Headers; frame: Uint8Array } {
  const frame = frameOf({ src: backend, dst: client, protocol, srcPort: bport, dstPort: cport, tcpFlags: flags });
  const result = datapath.tcEgressProgram.testRun({ data: frame });
  return { retval: result.retval, out: headers(result.data), frame: result.data };
}

const cases = [
  { name: 'TCP over IPv4', client: '198.51.100.7', vip: '192.0.2.10', port: 443, protocol: 'tcp' },
  { name: 'UDP over IPv4', client: '198.51.100.7', vip: '192.0.2.10', port: 53, protocol: 'udp' },
  { name: 'TCP over IPv6', client: '2001:db8:f::7', vip: '2001:db8::10', port: 443, protocol: 'tcp' },
  { name: 'UDP over IPv6', client: '2001:db8:f::7', vip: '2001:db8::10', port: 53, protocol: 'udp' },
] as const;

test('lb datapath - a new flow to a VIP leaves DNATed to LbReference\'s backend with valid checksums; its reply leaves from the VIP', async (t) => {
  const datapath = await open(t);
  const spec = compile(services);
  const result = await datapath.apply(allowAll, spec);
  t.is(result.services, 4);
  const reference = referenceOf(datapath, spec, result);
  for (const c of cases) {
    const sport = 40000 + c.port;
    const sent = toVip(datapath, c.client, sport, c.vip, c.port, c.protocol);
    const want = reference.select(tuple({ family: c.client.includes(':') ? 6 : 4, proto: c.protocol === 'tcp' ? 6 : 17, src: c.client, dst: c.vip, sport, dport: c.port }));
    if (want.kind !== 'backend') return t.fail(`${c.name}: the reference selects no backend`);
    t.is(sent.retval, XDP_PASS, c.name);
    t.deepEqual([sent.out.src, sent.out.sport, sent.out.dst, sent.out.dport], [c.client, sport, want.address, want.port], `${c.name}: DNAT to the reference's backend`);
    t.deepEqual(checksumProblems(sent.frame), [], `${c.name}: checksums after DNAT`);
    // The reply, backend -> client, leaves the uplink as VIP -> client.
    const back = reply(datapath, want.address, want.port, c.client, sport, c.protocol);
    t.is(back.retval, TC_ACT_OK);
    t.deepEqual([back.out.src, back.out.sport, back.out.dst, back.out.dport], [c.vip, c.port, c.client, sport], `${c.name}: reverse NAT`);
    t.deepEqual(checksumProblems(back.frame), [], `${c.name}: checksums after reverse NAT`);
    // The flow's next original packet still goes to the backend, now from ep_ct.
    const again = toVip(datapath, c.client, sport, c.vip, c.port, c.protocol, tcpFlags.ack);
    t.deepEqual([again.out.dst, again.out.dport], [want.address, want.port], `${c.name}: established flow`);
    t.deepEqual(checksumProblems(again.frame), [], `${c.name}: checksums of the established flow`);
  }
  // One listed connection per flow, promoted by its reply, with its backend; the reverse entries are counted apart.
  const listed = datapath.listConnections({}, 100);
  t.is(listed.length, 4);
  for (const entry of listed) {
    t.is(entry.table, 'established');
    t.truthy(entry.backend, `${entry.src}:${entry.sport} -> ${entry.dst}:${entry.dport} shows its backend`);
    t.true(entry.flags.includes('seen_reply'));
  }
  t.deepEqual(datapath.readConntrackOccupancy(), { established: 4, new: 0, reverseNat: 4 });
  const lb = datapath.readCounters().lb;
  t.is(lb?.selected.packets, 4);
  t.is(lb?.reverseNat.packets, 4);
});

test('lb datapath - an IPv4 UDP datagram without a checksum keeps none; the uplink\'s TC ingress (xdp-mode tc) DNATs as XDP does', async (t) => {
  const datapath = await open(t);
  const spec = compile(services);
  const reference = referenceOf(datapath, spec, await datapath.apply(allowAll, spec));
  const sent = toVip(datapath, '198.51.100.9', 5000, '192.0.2.10', 53, 'udp', 0, true);
  t.is(new DataView(sent.frame.buffer).getUint16(checksumAt(sent.frame)), 0);
  t.deepEqual(checksumProblems(sent.frame), []);
  for (const c of cases) {
    const sport = 41000 + c.port;
    const frame = frameOf({ src: c.client, dst: c.vip, protocol: c.protocol, srcPort: sport, dstPort: c.port });
    const result = datapath.tcProgram.testRun({ data: frame });
    const want = reference.select(tuple({ ...headers(frame) }));
    if (want.kind !== 'backend') return t.fail(`${c.name}: no backend`);
    t.is(result.retval, TC_ACT_OK);
    const out = headers(result.data);
    t.deepEqual([out.dst, out.dport], [want.address, want.port], c.name);
    t.deepEqual(checksumProblems(result.data), [], c.name);
  }
});

test('lb datapath - over thousands of random tuples the kernel picks LbReference\'s backend', async (t) => {
  const datapath = await open(t);
  const spec = compile(services);
  const reference = referenceOf(datapath, spec, await datapath.apply(allowAll, spec));
  const seed = seedFromEnv();
  const rng = prng(seed);
  let checked = 0;
  for (let i = 0; i < 3000; i++) {
    const c = cases[Math.floor(rng() * cases.length)] as (typeof cases)[number];
    const host = 1 + Math.floor(rng() * 250);
    const client = c.client.includes(':') ? `2001:db8:f::${(host * 257).toString(16)}` : `198.51.${100 + (host & 3)}.${host}`;
    const sport = 1024 + Math.floor(rng() * 64000);
    const sent = toVip(datapath, client, sport, c.vip, c.port, c.protocol);
    const want = reference.select(tuple({ family: c.client.includes(':') ? 6 : 4, proto: c.protocol === 'tcp' ? 6 : 17, src: client, dst: c.vip, sport, dport: c.port }));
    if (want.kind !== 'backend' || sent.out.dst !== want.address || sent.out.dport !== want.port) {
      return t.fail(`seed ${seed}: ${c.name} ${client}:${sport} went to ${sent.out.dst}:${sent.out.dport}, the reference says ${JSON.stringify(want)}`);
    }
    checked++;
  }
  t.is(checked, 3000);
});

test('lb datapath - an apply that removes, drains and adds backends keeps every established flow on its backend; new flows follow the new table', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compile(services));
  const flows = new Map<number, string>();
  for (let sport = 30000; sport < 30064; sport++) {
    const sent = toVip(datapath, '198.51.100.20', sport, '192.0.2.10', 443, 'tcp');
    flows.set(sport, `${sent.out.dst}:${sent.out.dport}`);
    reply(datapath, sent.out.dst, sent.out.dport, '198.51.100.20', sport, 'tcp');
  }
  t.true(new Set(flows.values()).size === 3, 'the flows spread over all three backends');
  // 10.0.0.1 removed, 10.0.0.2 drained, 10.0.0.4 added.
  const changed = [service('web4', { vip: '192.0.2.10', port: 443, backends: [{ address: '10.0.0.2', port: 8443, weight: 0 }, { address: '10.0.0.3' }, { address: '10.0.0.4' }] }), ...services.slice(1)];
  const spec = compile(changed);
  const result = await datapath.apply(allowAll, spec);
  t.is(result.mode, 'installed');
  for (const [sport, backend] of flows) {
    const sent = toVip(datapath, '198.51.100.20', sport, '192.0.2.10', 443, 'tcp', tcpFlags.ack);
    t.is(`${sent.out.dst}:${sent.out.dport}`, backend, `established flow from port ${sport}`);
  }
  const reference = referenceOf(datapath, spec, result);
  const seen = new Set<string>();
  for (let sport = 50000; sport < 50064; sport++) {
    const sent = toVip(datapath, '198.51.100.20', sport, '192.0.2.10', 443, 'tcp');
    const want = reference.select(tuple({ family: 4, proto: 6, src: '198.51.100.20', dst: '192.0.2.10', sport, dport: 443 }));
    if (want.kind !== 'backend') return t.fail('no backend');
    t.is(`${sent.out.dst}:${sent.out.dport}`, `${want.address}:${want.port}`);
    seen.add(sent.out.dst);
  }
  t.deepEqual([...seen].sort(), ['10.0.0.3', '10.0.0.4']);
});

test('lb datapath - a new connection on the tuple of a closed load-balanced flow (port reuse) is scheduled anew by the live table', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compile(services));
  // A connection refused by its backend (its RST closes the flow), from a port the client will reuse.
  const first = toVip(datapath, '198.51.100.21', 40001, '192.0.2.10', 443, 'tcp');
  const gone = first.out.dst;
  reply(datapath, gone, first.out.dport, '198.51.100.21', 40001, 'tcp', tcpFlags.rst | tcpFlags.ack);
  // That backend leaves the service (as a failed health check takes it out).
  const changed = [service('web4', { vip: '192.0.2.10', port: 443, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', port: 8443, weight: 3 }, { address: '10.0.0.3' }].filter((b) => b.address !== gone) }), ...services.slice(1)];
  const spec = compile(changed);
  const result = await datapath.apply(allowAll, spec);
  const want = referenceOf(datapath, spec, result).select(tuple({ family: 4, proto: 6, src: '198.51.100.21', dst: '192.0.2.10', sport: 40001, dport: 443 }));
  if (want.kind !== 'backend') return t.fail('no backend');
  // The client's next SYN from the same port is a new connection: it goes where the table says now.
  const again = toVip(datapath, '198.51.100.21', 40001, '192.0.2.10', 443, 'tcp');
  t.is(again.retval, XDP_PASS);
  t.is(`${again.out.dst}:${again.out.dport}`, `${want.address}:${want.port}`);
  t.not(again.out.dst, gone);
  // And it is that flow from now on: its reply leaves from the VIP, its next packet follows it.
  const back = reply(datapath, again.out.dst, again.out.dport, '198.51.100.21', 40001, 'tcp');
  t.deepEqual([back.out.src, back.out.sport], ['192.0.2.10', 443]);
  const ack = toVip(datapath, '198.51.100.21', 40001, '192.0.2.10', 443, 'tcp', tcpFlags.ack);
  t.deepEqual([ack.out.dst, ack.out.dport], [again.out.dst, again.out.dport]);
  // A flow that is not closed keeps its backend whatever the table says (the test above); a
  // retransmitted SYN of a live one too.
  const live = toVip(datapath, '198.51.100.22', 40002, '192.0.2.10', 443, 'tcp');
  await datapath.apply(allowAll, compile([service('web4', { vip: '192.0.2.10', port: 443, backends: [{ address: '10.0.0.9' }] }), ...services.slice(1)]));
  const retransmit = toVip(datapath, '198.51.100.22', 40002, '192.0.2.10', 443, 'tcp');
  t.deepEqual([retransmit.out.dst, retransmit.out.dport], [live.out.dst, live.out.dport]);
});

test('lb datapath - a new flow to another VIP that reaches a backend by the client port of a closed flow there is reverse-NATed from its own VIP', async (t) => {
  const datapath = await open(t);
  // A flow to web4 from port 40011, answered (its entries move to ep_ct), then reset by the client.
  await datapath.apply(allowAll, compile(services));
  const opened = toVip(datapath, '198.51.100.23', 40011, '192.0.2.10', 443, 'tcp');
  reply(datapath, opened.out.dst, opened.out.dport, '198.51.100.23', 40011, 'tcp');
  toVip(datapath, '198.51.100.23', 40011, '192.0.2.10', 443, 'tcp', tcpFlags.rst);
  // Another service with that backend alone: the client's next connection, from the same port to
  // this VIP, reaches the backend on the same client:port <-> backend:port as the closed flow did.
  const other = service('alt4', { vip: '192.0.2.11', port: 443, backends: [{ address: opened.out.dst, port: opened.out.dport }] });
  await datapath.apply(allowAll, compile([...services, other]));
  const sent = toVip(datapath, '198.51.100.23', 40011, '192.0.2.11', 443, 'tcp');
  t.deepEqual([sent.out.dst, sent.out.dport], [opened.out.dst, opened.out.dport]);
  // Its SYN-ACK must leave from 192.0.2.11 (the client's socket), not from the closed flow's VIP.
  const back = reply(datapath, opened.out.dst, opened.out.dport, '198.51.100.23', 40011, 'tcp');
  t.deepEqual([back.out.src, back.out.sport], ['192.0.2.11', 443]);
});

test('lb datapath - a service with every backend drained drops new flows (LB_NO_BACKEND) while its established flows pass', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compile(services));
  const before = toVip(datapath, '198.51.100.30', 33333, '192.0.2.10', 443, 'tcp');
  t.is(before.retval, XDP_PASS);
  const drained = [service('web4', { vip: '192.0.2.10', port: 443, backends: [{ address: '10.0.0.1', weight: 0 }, { address: '10.0.0.2', port: 8443, weight: 0 }, { address: '10.0.0.3', weight: 0 }] }), ...services.slice(1)];
  await datapath.apply(allowAll, compile(drained));
  const fresh = toVip(datapath, '198.51.100.30', 44444, '192.0.2.10', 443, 'tcp');
  t.is(fresh.retval, XDP_DROP);
  t.is(datapath.readCounters().lb?.noBackend.packets, 1);
  const established = toVip(datapath, '198.51.100.30', 33333, '192.0.2.10', 443, 'tcp', tcpFlags.ack);
  t.is(established.retval, XDP_PASS);
  t.deepEqual([established.out.dst, established.out.dport], [before.out.dst, before.out.dport]);
  // Other services of the same generation are unaffected.
  t.is(toVip(datapath, '198.51.100.30', 44444, '192.0.2.10', 53, 'udp').retval, XDP_PASS);
});

test('lb datapath - a policy deny on the VIP drops before any entry is made', async (t) => {
  const datapath = await open(t);
  const deny: RuleSetSpec = { rules: [{ id: 1, srcCidrs: [], dstCidrs: ['192.0.2.10/32'], protocol: 'tcp', dstPorts: [{ from: 443, to: 443 }], action: 'deny' }], defaultAction: 'allow' };
  await datapath.apply(deny, compile(services));
  const sent = toVip(datapath, '198.51.100.40', 40404, '192.0.2.10', 443, 'tcp');
  t.is(sent.retval, XDP_DROP);
  t.deepEqual([sent.out.dst, sent.out.dport], ['192.0.2.10', 443], 'not rewritten');
  t.deepEqual(datapath.readConntrackOccupancy(), { established: 0, new: 0, reverseNat: 0 });
  t.is(datapath.readCounters().lb?.selected.packets, 0);
  t.is(toVip(datapath, '198.51.100.40', 40404, '192.0.2.10', 53, 'udp').retval, XDP_PASS, 'the UDP service on the same VIP is allowed');
});

test('lb datapath - the sweeper deletes a reverse entry whose service entry is gone, never one whose service entry lives; a reply without one is not rewritten', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compile(services));
  const kept = toVip(datapath, '198.51.100.50', 10001, '192.0.2.10', 443, 'tcp');
  const orphan = toVip(datapath, '198.51.100.50', 10002, '192.0.2.10', 443, 'tcp');
  const third = toVip(datapath, '198.51.100.50', 10003, '192.0.2.10', 53, 'udp');
  t.is(datapath.readConntrackOccupancy().reverseNat, 3);
  t.is(datapath.sweepConntrack(1000), 0, 'nothing expired, every service entry lives');
  t.is(datapath.readConntrackOccupancy().reverseNat, 3);
  // Delete a flow's service entry (key client <-> VIP, either port order), as an expiry would:
  // in ep_ct, where it was created below the direct mark, or ep_ct_new.
  const tables = ['ep_ct', 'ep_ct_new'].map((name) => BpfMap.openPinned(`${datapath.pinRoot}/${name}`));
  t.teardown(() => tables.forEach((table) => table.close()));
  const dropService = (clientPort: number): void => {
    for (const table of tables) {
      for (const [key, value] of [...table.entries()]) {
        const view = new DataView(key.buffer, key.byteOffset);
        const ports = [view.getUint16(4, true), view.getUint16(6, true)];
        if ((epCtEntry.decode(value).nat.flags & 1) !== 0 && ports.includes(clientPort)) table.delete(key);
      }
    }
  };
  dropService(10002);
  t.is(datapath.sweepConntrack(1000), 1, 'one orphan deleted by the sweeper');
  t.is(datapath.readConntrackOccupancy().reverseNat, 2);
  dropService(10003);
  // The third flow's reply finds its reverse entry without a service entry: deleted, not rewritten.
  const back = reply(datapath, third.out.dst, third.out.dport, '198.51.100.50', 10003, 'udp');
  t.deepEqual([back.out.src, back.out.sport], [third.out.dst, third.out.dport]);
  t.is(datapath.readConntrackOccupancy().reverseNat, 1);
  t.is(datapath.readCounters().lb?.orphaned.packets, 2);
  // The first flow still has both entries and its reply is rewritten.
  const kept1 = reply(datapath, kept.out.dst, kept.out.dport, '198.51.100.50', 10001, 'tcp');
  t.deepEqual([kept1.out.src, kept1.out.sport], ['192.0.2.10', 443]);
  t.not(orphan.out.dst, '192.0.2.10');
});

test('lb datapath - the generation fingerprint covers the services: same pair unchanged, a service change installed, the previous pair switched back', async (t) => {
  const datapath = await open(t);
  const first = await datapath.apply(allowAll, compile(services));
  t.is(first.mode, 'installed');
  t.is((await datapath.apply(allowAll, compile(services))).mode, 'unchanged');
  const fewer = await datapath.apply(allowAll, compile(services.slice(0, 2)));
  t.is(fewer.mode, 'installed');
  t.is(fewer.services, 2);
  // The IPv6 VIP is no service any more: its stale VIP entry was deleted from the new generation.
  const v6 = toVip(datapath, '2001:db8:f::99', 999, '2001:db8::10', 443, 'tcp');
  t.deepEqual([v6.out.dst, v6.out.dport], ['2001:db8::10', 443]);
  const back = await datapath.apply(allowAll, compile(services));
  t.is(back.mode, 'switched');
  t.is(back.generation, first.generation);
  const none = await datapath.apply(allowAll);
  t.is(none.services, 0);
  t.is(toVip(datapath, '198.51.100.60', 999, '192.0.2.10', 443, 'tcp').out.dst, '192.0.2.10', 'without services nothing is rewritten');
});

test('lb datapath - services beyond the loaded capacity are a CapacityError before anything is touched', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot(), lbCapacity: { services: 2, slots: 64 * 1024, backends: 1024 } });
  t.teardown(() => datapath.close());
  t.deepEqual(datapath.lbCapacity, { services: 2, slots: 64 * 1024, backends: 1024 });
  const first = await datapath.apply(allowAll, compile(services.slice(0, 2)));
  const error = await t.throwsAsync(datapath.apply(allowAll, compile(services)), { instanceOf: CapacityError });
  t.regex(error?.message ?? '', /lb-services/);
  t.is(datapath.generation, first.generation, 'the live generation stays');
  t.is((await datapath.apply(allowAll, compile(services.slice(0, 2)))).mode, 'unchanged');
});

// ---- Forwarding modes (bpf/LB.md, "Forwarding modes"; layout 5) --------------------------------

const XDP_TX = 3;
/** The node's address towards every backend in these tests (what the agent's route lookup gives), and the route's MTU. */
const NODE4 = '10.0.255.254';
const NODE6 = '2001:db8:1::fffe';
const routes: BackendRouteView = (address) => ({ source: parseAddress(address.includes(':') ? NODE6 : NODE4) as Uint8Array, mtu: 1500 });
const DSR = ForwardingMode.FORWARDING_MODE_DSR;
const FULLNAT = ForwardingMode.FORWARDING_MODE_FULLNAT;
const modeServices: Service[] = [
  service('dsr4', { vip: '192.0.2.20', port: 80, forwardingMode: DSR, backends: [{ address: '10.0.2.1' }, { address: '10.0.2.2' }, { address: '10.0.2.3', port: 80 }] }),
  service('dsr6', { vip: '2001:db8::20', port: 80, forwardingMode: DSR, backends: [{ address: '2001:db8:1::21' }, { address: '2001:db8:1::22' }] }),
  service('full4', { vip: '192.0.2.30', port: 80, forwardingMode: FULLNAT, backends: [{ address: '10.0.3.1', port: 8080 }, { address: '10.0.3.2', port: 8080 }] }),
  service('full4b', { vip: '192.0.2.31', port: 80, forwardingMode: FULLNAT, backends: [{ address: '10.0.3.1', port: 8080 }] }),
  service('full6', { vip: '2001:db8::30', protocol: UDP, port: 53, forwardingMode: FULLNAT, backends: [{ address: '2001:db8:1::31', port: 5353 }, { address: '2001:db8:1::32', port: 5353 }] }),
];
const compileModes = (list: Service[], view: BackendRouteView | undefined = routes): LbSpec => compileServices(list, { labels: {}, ...(view ? { routes: view } : {}) });

/** The frame's IPv4 header checksum recomputed (after a test changed a field). */
function fixIpv4Checksum(frame: Uint8Array): void {
  const view = new DataView(frame.buffer, frame.byteOffset);
  view.setUint16(24, 0);
  view.setUint16(24, ~sum16(frame.subarray(14, 34)) & 0xffff);
}

/** An encapsulated frame taken apart: the outer header's fields and the inner packet's bytes. */
function decapsulate(frame: Uint8Array): { family: 4 | 6; proto: number; src: string; dst: string; ttl: number; length: number; df: boolean; headerSumOk: boolean; inner: Uint8Array } {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (view.getUint16(12) === 0x0800) {
    const outer = frame.subarray(14, 34);
    return { family: 4, proto: outer[9] as number, src: formatAddress(4, outer.subarray(12, 16)), dst: formatAddress(4, outer.subarray(16, 20)), ttl: outer[8] as number, length: view.getUint16(16), df: ((outer[6] as number) & 0x40) !== 0, headerSumOk: sum16(outer) === 0xffff && outer[0] === 0x45, inner: frame.subarray(34) };
  }
  const outer = frame.subarray(14, 54);
  return { family: 6, proto: outer[6] as number, src: formatAddress(6, outer.subarray(8, 24)), dst: formatAddress(6, outer.subarray(24, 40)), ttl: outer[7] as number, length: view.getUint16(18) + 40, df: true, headerSumOk: (outer[0] as number) >> 4 === 6, inner: frame.subarray(54) };
}

test('lb datapath - DSR: a flow to the VIP leaves IP-in-IP to LbReference\'s backend from the node\'s address, inner packet untouched; replies crossing the node pass as they are', async (t) => {
  const datapath = await open(t);
  const spec = compileModes(modeServices);
  const reference = referenceOf(datapath, spec, await datapath.apply(allowAll, spec));
  for (const c of [
    { client: '198.51.100.7', vip: '192.0.2.20', node: NODE4, hook: 'xdp' },
    { client: '2001:db8:f::7', vip: '2001:db8::20', node: NODE6, hook: 'xdp' },
    { client: '198.51.100.8', vip: '192.0.2.20', node: NODE4, hook: 'tc' },
    { client: '2001:db8:f::8', vip: '2001:db8::20', node: NODE6, hook: 'tc' },
  ] as const) {
    const name = `${c.client} via ${c.hook}`;
    const family = c.client.includes(':') ? 6 : 4;
    const sport = 42000;
    const want = reference.select(tuple({ family, proto: 6, src: c.client, dst: c.vip, sport, dport: 80 }));
    if (want.kind !== 'backend') return t.fail(`${name}: the reference selects no backend`);
    t.is(want.port, 80, 'a DSR backend takes the VIP\'s port');
    for (const flags of [tcpFlags.syn, tcpFlags.ack, tcpFlags.ack | tcpFlags.psh]) {
      const frame = frameOf({ src: c.client, dst: c.vip, protocol: 'tcp', srcPort: sport, dstPort: 80, tcpFlags: flags, payloadLength: 100 });
      const result = c.hook === 'xdp' ? datapath.xdpProgram.testRun({ data: frame }) : datapath.tcProgram.testRun({ data: frame });
      t.is(result.retval, c.hook === 'xdp' ? XDP_PASS : TC_ACT_OK, name);
      const out = decapsulate(result.data);
      t.is(result.data.length, frame.length + (family === 4 ? 20 : 40), `${name}: one outer header more`);
      t.deepEqual(result.data.subarray(0, 14), frame.subarray(0, 14), `${name}: the Ethernet header stays`);
      t.deepEqual([out.family, out.proto, out.src, out.dst, out.ttl], [family, family === 4 ? 4 : 41, c.node, want.address, 64], `${name}: outer header`);
      t.true(out.headerSumOk, `${name}: outer IPv4 header checksum`);
      t.is(out.length, frame.length - 14 + (family === 4 ? 20 : 40), `${name}: outer length`);
      t.deepEqual(out.inner, frame.subarray(14), `${name}: the inner packet is the client's, byte for byte`);
    }
    // The backend answers from the VIP; a reply that crosses the node's uplink egress is left alone.
    const answer = frameOf({ src: c.vip, dst: c.client, protocol: 'tcp', srcPort: 80, dstPort: sport, tcpFlags: tcpFlags.syn | tcpFlags.ack });
    const back = datapath.tcEgressProgram.testRun({ data: answer });
    t.is(back.retval, TC_ACT_OK);
    t.deepEqual(back.data, answer, `${name}: the reply is not rewritten`);
  }
  const lb = datapath.readCounters().lb;
  t.is(lb?.selected.packets, 4);
  t.is(lb?.encapsulated.packets, 12);
  t.is(lb?.reverseNat.packets, 0);
  // A DSR flow has its service entry only (no reverse entry), which the reply promoted.
  t.deepEqual(datapath.readConntrackOccupancy(), { established: 4, new: 0, reverseNat: 0 });
  t.deepEqual(datapath.listConnections({}, 100).filter((c) => c.backend === undefined), [], 'each DSR flow is listed with its backend');
  // A backend change keeps the flow on its backend (it is pinned like any load-balanced flow).
  const moved = compileModes([service('dsr4', { vip: '192.0.2.20', port: 80, forwardingMode: DSR, backends: [{ address: '10.0.2.9' }] }), ...modeServices.slice(1)]);
  await datapath.apply(allowAll, moved);
  const pinned = decapsulate(toVip(datapath, '198.51.100.7', 42000, '192.0.2.20', 80, 'tcp', tcpFlags.ack).frame);
  const first = reference.select(tuple({ family: 4, proto: 6, src: '198.51.100.7', dst: '192.0.2.20', sport: 42000, dport: 80 }));
  t.is(pinned.dst, first.kind === 'backend' ? first.address : '?');
  t.is(decapsulate(toVip(datapath, '198.51.100.7', 42001, '192.0.2.20', 80, 'tcp').frame).dst, '10.0.2.9', 'a new flow follows the new table');
});

test('lb datapath - DSR: a packet too big once encapsulated is answered with ICMP frag-needed / packet-too-big from the VIP at XDP and dropped at TC; IPv4 without DF is encapsulated without DF', async (t) => {
  const datapath = await open(t);
  const spec = compileModes(modeServices);
  await datapath.apply(allowAll, spec);
  for (const c of [
    { client: '198.51.100.9', vip: '192.0.2.20' },
    { client: '2001:db8:f::9', vip: '2001:db8::20' },
  ] as const) {
    const family = c.client.includes(':') ? 6 : 4;
    const overhead = family === 4 ? 20 : 40;
    // 1,500 bytes of IP: fits the route's MTU bare, not encapsulated. A packet that fits once encapsulated passes.
    const big = frameOf({ src: c.client, dst: c.vip, protocol: 'tcp', srcPort: 43000, dstPort: 80, tcpFlags: tcpFlags.ack, payloadLength: 1500 - (family === 4 ? 40 : 60) });
    const fits = frameOf({ src: c.client, dst: c.vip, protocol: 'tcp', srcPort: 43000, dstPort: 80, tcpFlags: tcpFlags.ack, payloadLength: 1500 - overhead - (family === 4 ? 40 : 60) });
    if (family === 4) {
      for (const f of [big, fits]) {
        f[20] = 0x40; // DF
        fixIpv4Checksum(f);
      }
    }
    t.is(datapath.xdpProgram.testRun({ data: fits }).retval, XDP_PASS);
    const result = datapath.xdpProgram.testRun({ data: big });
    t.is(result.retval, XDP_TX, `IPv${family}: sent back`);
    const out = result.data;
    t.deepEqual([out.subarray(0, 6), out.subarray(6, 12)], [big.subarray(6, 12), big.subarray(0, 6)], 'Ethernet addresses swapped');
    const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    if (family === 4) {
      const ip = out.subarray(14, 34);
      t.deepEqual([ip[9], formatAddress(4, ip.subarray(12, 16)), formatAddress(4, ip.subarray(16, 20))], [1, c.vip, c.client]);
      t.is(sum16(ip), 0xffff, 'IPv4 header checksum');
      t.is(view.getUint16(16), out.length - 14, 'IPv4 total length');
      const icmp = out.subarray(34);
      t.deepEqual([icmp[0], icmp[1], view.getUint16(34 + 6)], [3, 4, 1500 - 20], 'frag-needed with the MTU left inside the tunnel');
      t.is(sum16(icmp), 0xffff, 'ICMP checksum');
      t.deepEqual(icmp.subarray(8), big.subarray(14, 14 + 48), 'it quotes the packet\'s header and the start of its payload');
    } else {
      const ip = out.subarray(14, 54);
      t.deepEqual([ip[6], formatAddress(6, ip.subarray(8, 24)), formatAddress(6, ip.subarray(24, 40))], [58, c.vip, c.client]);
      const icmp = out.subarray(54);
      t.is(view.getUint16(18), icmp.length, 'IPv6 payload length');
      t.deepEqual([icmp[0], icmp[1], view.getUint32(54 + 4)], [2, 0, 1500 - 40], 'packet-too-big with the MTU left inside the tunnel');
      const pseudo = new Uint8Array(40);
      pseudo.set(ip.subarray(8, 40), 0);
      new DataView(pseudo.buffer).setUint32(32, icmp.length);
      pseudo[39] = 58;
      t.is(sum16(icmp, sum16(pseudo)), 0xffff, 'ICMPv6 checksum');
      t.deepEqual(icmp.subarray(8), big.subarray(14, 14 + 48));
    }
    t.is(datapath.tcProgram.testRun({ data: big }).retval, 2, `IPv${family}: TC drops it (TC_ACT_SHOT)`);
  }
  // IPv4 without DF: encapsulated (without DF); the stack fragments the outer packet.
  const loose = frameOf({ src: '198.51.100.10', dst: '192.0.2.20', protocol: 'tcp', srcPort: 43001, dstPort: 80, payloadLength: 1460 });
  const sent = datapath.xdpProgram.testRun({ data: loose });
  t.is(sent.retval, XDP_PASS);
  t.false(decapsulate(sent.data).df);
  t.is(datapath.readCounters().lb?.tooBig.packets, 4);
});

test('lb datapath - DSR and full NAT towards a backend without a resolved route drop its new flows (LB_NO_BACKEND)', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compileModes(modeServices, () => undefined));
  t.is(toVip(datapath, '198.51.100.11', 44000, '192.0.2.20', 80, 'tcp').retval, XDP_DROP);
  t.is(toVip(datapath, '198.51.100.11', 44000, '192.0.2.30', 80, 'tcp').retval, XDP_DROP);
  t.is(datapath.readCounters().lb?.noBackend.packets, 2);
  t.deepEqual(datapath.readConntrackOccupancy(), { established: 0, new: 0, reverseNat: 0 });
});

/** The source ports a new full-NAT flow probes, in order (ep_lb_snat_alloc: 1024 + (h + i * 7919) mod 31,744). */
const snatProbes = (h: { family: 4 | 6; proto: number; src: string; dst: string; sport: number; dport: number }): number[] =>
  Array.from({ length: 8 }, (_, i) => 1024 + Number((BigInt(flowHash(tuple(h))) + BigInt(i * 7919)) % 31744n));

test('lb datapath - full NAT: the flow leaves DNATed to LbReference\'s backend and SNATed to the node\'s address and an allocated port; replies to that port leave from the VIP to the client', async (t) => {
  const datapath = await open(t);
  const spec = compileModes(modeServices);
  const reference = referenceOf(datapath, spec, await datapath.apply(allowAll, spec));
  for (const c of [
    { client: '198.51.100.12', vip: '192.0.2.30', port: 80, protocol: 'tcp', node: NODE4 },
    { client: '2001:db8:f::12', vip: '2001:db8::30', port: 53, protocol: 'udp', node: NODE6 },
  ] as const) {
    const family = c.client.includes(':') ? 6 : 4;
    const proto = c.protocol === 'tcp' ? 6 : 17;
    const sport = 45000;
    const h = { family, proto, src: c.client, dst: c.vip, sport, dport: c.port } as const;
    const want = reference.select(tuple(h));
    if (want.kind !== 'backend') return t.fail('no backend');
    const sent = toVip(datapath, c.client, sport, c.vip, c.port, c.protocol);
    t.is(sent.retval, XDP_PASS);
    const nport = snatProbes(h)[0];
    t.deepEqual([sent.out.src, sent.out.sport, sent.out.dst, sent.out.dport], [c.node, nport, want.address, want.port], `IPv${family}: DNAT and SNAT`);
    t.deepEqual(checksumProblems(sent.frame), [], `IPv${family}: checksums after full NAT`);
    // The backend answers the node's address and port; the uplink's policy hook turns it back.
    const answer = frameOf({ src: want.address, dst: c.node, protocol: c.protocol, srcPort: want.port, dstPort: nport, tcpFlags: tcpFlags.syn | tcpFlags.ack });
    const back = datapath.xdpProgram.testRun({ data: answer });
    t.is(back.retval, XDP_PASS);
    const out = headers(back.data);
    t.deepEqual([out.src, out.sport, out.dst, out.dport], [c.vip, c.port, c.client, sport], `IPv${family}: reply from the VIP to the client`);
    t.deepEqual(checksumProblems(back.data), [], `IPv${family}: checksums after the reverse translation`);
    // The established flow keeps its backend and its port; the TC ingress hook translates alike.
    const again = datapath.tcProgram.testRun({ data: frameOf({ src: c.client, dst: c.vip, protocol: c.protocol, srcPort: sport, dstPort: c.port, tcpFlags: tcpFlags.ack }) });
    const o2 = headers(again.data);
    t.deepEqual([o2.src, o2.sport, o2.dst, o2.dport], [c.node, nport, want.address, want.port]);
    t.deepEqual(checksumProblems(again.data), []);
    // The SNATed packet leaving through the uplink (a backend behind it) passes its egress unchanged.
    const leaving = datapath.tcEgressProgram.testRun({ data: again.data });
    t.deepEqual(leaving.data, again.data);
  }
  // Two live flows from one client port through two VIPs to one backend port: two node ports (LB.md).
  const a = toVip(datapath, '198.51.100.13', 46000, '192.0.2.30', 80, 'tcp');
  const b = toVip(datapath, '198.51.100.13', 46000, '192.0.2.31', 80, 'tcp');
  const viaA = reference.select(tuple({ family: 4, proto: 6, src: '198.51.100.13', dst: '192.0.2.30', sport: 46000, dport: 80 }));
  if (viaA.kind !== 'backend') return t.fail('no backend');
  if (viaA.address === '10.0.3.1') {
    t.deepEqual([a.out.dst, a.out.dport], [b.out.dst, b.out.dport], 'both reach 10.0.3.1:8080');
    t.not(a.out.sport, b.out.sport, 'from two node ports');
  }
  for (const [sent, vip] of [[a, '192.0.2.30'], [b, '192.0.2.31']] as const) {
    const back = datapath.xdpProgram.testRun({ data: frameOf({ src: sent.out.dst, dst: NODE4, protocol: 'tcp', srcPort: sent.out.dport, dstPort: sent.out.sport, tcpFlags: tcpFlags.syn | tcpFlags.ack }) });
    t.deepEqual([headers(back.data).src, headers(back.data).dst, headers(back.data).dport], [vip, '198.51.100.13', 46000], `the reply of the flow through ${vip} leaves from it`);
  }
  const lb = datapath.readCounters().lb;
  t.is(lb?.reverseNat.packets, 4);
  t.is(lb?.snatFailed.packets, 0);
  // The sweeper finds each full-NAT reverse entry's service entry through the client it carries
  // (its key names the node, not the client): none is an orphan while its flow lives.
  const occupancy = datapath.readConntrackOccupancy();
  t.is(occupancy.reverseNat, 4);
  t.is(datapath.sweepConntrack(1000), 0);
  t.deepEqual(datapath.readConntrackOccupancy(), occupancy);
});

test('lb datapath - full NAT: a source port whose tuple is taken is skipped; with all 8 probes taken the new flow is dropped and counted', async (t) => {
  const datapath = await open(t);
  const spec = compileModes(modeServices);
  const reference = referenceOf(datapath, spec, await datapath.apply(allowAll, spec));
  const ct = BpfMap.openPinned(`${datapath.pinRoot}/ep_ct`);
  t.teardown(() => ct.close());
  // Occupy node:port <-> backend:8080 in ep_ct (as another flow would) for the flow's first probes.
  const occupy = (backend: string, bport: number, port: number): void => {
    const { key } = ctKeyOfFlow({ family: 4, proto: 6, src: parseAddress(NODE4) as Uint8Array, sport: port, dst: parseAddress(backend) as Uint8Array, dport: bport });
    const padded = (a: Uint8Array): Uint8Array => Uint8Array.from({ length: 16 }, (_, i) => a[i] ?? 0);
    ct.set(encode(epCtKey, { family: key.family, proto: key.proto, pad: 0, sport: key.sport, dport: key.dport, src: padded(key.src), dst: padded(key.dst) }), new Uint8Array(epCtEntry.size));
  };
  const h1 = { family: 4, proto: 6, src: '198.51.100.14', dst: '192.0.2.30', sport: 47000, dport: 80 } as const;
  const want = reference.select(tuple(h1));
  if (want.kind !== 'backend') return t.fail('no backend');
  const probes = snatProbes(h1);
  for (const port of probes.slice(0, 3)) occupy(want.address, want.port, port);
  const sent = toVip(datapath, h1.src, h1.sport, h1.dst, h1.dport, 'tcp');
  t.is(sent.retval, XDP_PASS);
  t.is(sent.out.sport, probes[3] as number, 'the fourth probe, the first free one');
  // Every probe of another flow taken: dropped, counted, no entry made.
  const h2 = { ...h1, sport: 47001 };
  const want2 = reference.select(tuple(h2));
  if (want2.kind !== 'backend') return t.fail('no backend');
  for (const port of snatProbes(h2)) occupy(want2.address, want2.port, port);
  const before = datapath.readConntrackOccupancy();
  t.is(toVip(datapath, h2.src, h2.sport, h2.dst, h2.dport, 'tcp').retval, XDP_DROP);
  t.is(datapath.readCounters().lb?.snatFailed.packets, 1);
  t.deepEqual(datapath.readConntrackOccupancy(), before);
});
