// ICMP errors about load-balanced flows in the kernel (bpf/LB.md, "ICMP errors";
// include/ep_nat_icmp.h): BPF_PROG_TEST_RUN of the programs EbpfDatapath loaded. An error about a
// flow's packet as the NATed side saw it leaves quoting the packet as its sender sent it, byte for
// byte: each expected frame is built here from that packet (lb-frames.ts) with every checksum
// computed afresh, and the kernel's output must equal it, besides having valid checksums. IPv4
// (frag-needed, port unreachable, time exceeded) and IPv6 (packet too big, port unreachable, time
// exceeded), TCP and UDP, quotes of 8 bytes of L4 header, 8 bytes of payload and the whole packet;
// NAT and full NAT (whose errors change both sides of the quote).
import { mkdirSync } from 'node:fs';
import test from 'ava';
import { ForwardingMode, parseAddress, Protocol, Service } from '@edgeplane/proto';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { tcpFlags, type FrameSpec } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { compileServices, type BackendRouteView } from '../src/datapath/service-compile.js';
import { mountBpffs, TC_ACT_OK, XDP_PASS } from './datapath-helpers.js';
import { checksumProblems, frameOf, headers, icmpChecksumProblems, icmpErrorFrame, quotedFrame, quoteOf, type IcmpError } from './lb-frames.js';
import { service } from './lb-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());
let next = 0;
const open = async (t: { teardown(fn: () => void): void }): Promise<EbpfDatapath> => {
  const pinRoot = `${bpffs.path}/icmp${next++}`;
  mkdirSync(pinRoot);
  const datapath = await EbpfDatapath.open({ pinRoot, lbCapacity: { services: 16, slots: 16 * 1024, backends: 64 } });
  t.teardown(() => datapath.close());
  return datapath;
};

const allowAll: RuleSetSpec = { rules: [], defaultAction: 'allow' };
const UDP = Protocol.PROTOCOL_UDP;
// One backend per service, on another port than the VIP's: every quoted address and port changes.
const services: Service[] = [
  service('web4', { vip: '192.0.2.10', port: 443, backends: [{ address: '10.0.0.1', port: 8443 }] }),
  service('dns4', { vip: '192.0.2.10', protocol: UDP, port: 53, backends: [{ address: '10.0.1.1', port: 5353 }] }),
  service('web6', { vip: '2001:db8::10', port: 443, backends: [{ address: '2001:db8:1::1', port: 8443 }] }),
  service('dns6', { vip: '2001:db8::10', protocol: UDP, port: 53, backends: [{ address: '2001:db8:1::a', port: 5353 }] }),
];

interface Case {
  name: string;
  family: 4 | 6;
  protocol: 'tcp' | 'udp';
  client: string;
  vip: string;
  port: number;
  backend: string;
  bport: number;
  /** A router between the node and the backend, and one on the client's side. */
  router: string;
  clientRouter: string;
  /** Types and codes: too big (frag-needed / packet too big), port unreachable, time exceeded. */
  tooBig: { type: number; code: number };
  unreachable: { type: number; code: number };
  exceeded: { type: number; code: number };
}

const v4 = { family: 4, client: '198.51.100.7', vip: '192.0.2.10', router: '10.0.255.1', clientRouter: '198.51.100.1', tooBig: { type: 3, code: 4 }, unreachable: { type: 3, code: 3 }, exceeded: { type: 11, code: 0 } } as const;
const v6 = { family: 6, client: '2001:db8:f::7', vip: '2001:db8::10', router: '2001:db8:1::ff', clientRouter: '2001:db8:f::1', tooBig: { type: 2, code: 0 }, unreachable: { type: 1, code: 4 }, exceeded: { type: 3, code: 0 } } as const;
const cases: Case[] = [
  { name: 'TCP over IPv4', ...v4, protocol: 'tcp', port: 443, backend: '10.0.0.1', bport: 8443 },
  { name: 'UDP over IPv4', ...v4, protocol: 'udp', port: 53, backend: '10.0.1.1', bport: 5353 },
  { name: 'TCP over IPv6', ...v6, protocol: 'tcp', port: 443, backend: '2001:db8:1::1', bport: 8443 },
  { name: 'UDP over IPv6', ...v6, protocol: 'udp', port: 53, backend: '2001:db8:1::a', bport: 5353 },
];

/** How much of the L4 segment an error quotes: the 8 bytes RFC 792 asks for, 8 bytes of payload (a TCP header whole, its segment cut), all of it. */
const quotes = [{ name: '8 bytes', l4: 8 }, { name: 'header + 8', l4: undefined as number | undefined, payload: 8 }, { name: 'whole', l4: undefined as number | undefined }];
const quoteLength = (c: Case, q: (typeof quotes)[number]): number | undefined => (q.payload === undefined ? q.l4 : (c.protocol === 'tcp' ? 20 : 8) + q.payload);

const PAYLOAD = 1200;
/** The client's packet as it sent it (to the VIP) and the backend's reply as the backend sent it. */
const clientPacket = (c: Case, sport: number, flags: number = tcpFlags.ack): FrameSpec => ({ src: c.client, dst: c.vip, protocol: c.protocol, srcPort: sport, dstPort: c.port, tcpFlags: flags, payloadLength: PAYLOAD });
const backendReply = (c: Case, sport: number): FrameSpec => ({ src: c.backend, dst: c.client, protocol: c.protocol, srcPort: c.bport, dstPort: sport, tcpFlags: tcpFlags.ack, payloadLength: PAYLOAD });

/** Opens the flow from `sport` (the client's SYN through XDP, the backend's SYN-ACK through TC egress): the packets as they left the node. */
function openFlow(datapath: EbpfDatapath, c: Case, sport: number): { toBackend: Uint8Array; toClient: Uint8Array } {
  const syn = datapath.xdpProgram.testRun({ data: frameOf(clientPacket(c, sport, tcpFlags.syn)) });
  const dnat = headers(syn.data);
  if (syn.retval !== XDP_PASS || dnat.dst !== c.backend || dnat.dport !== c.bport) throw new Error(`${c.name}: the flow from ${sport} went to ${dnat.dst}:${dnat.dport}`);
  const back = datapath.tcEgressProgram.testRun({ data: frameOf({ ...backendReply(c, sport), tcpFlags: tcpFlags.syn | tcpFlags.ack }) });
  if (headers(back.data).src !== c.vip) throw new Error(`${c.name}: the reply from ${sport} was not reverse-NATed`);
  // The packets an error will quote: a full-sized one each way, as the node forwarded them.
  const toBackend = datapath.xdpProgram.testRun({ data: frameOf(clientPacket(c, sport)) }).data;
  const toClient = datapath.tcEgressProgram.testRun({ data: frameOf(backendReply(c, sport)) }).data;
  if (checksumProblems(toBackend).length + checksumProblems(toClient).length > 0) throw new Error(`${c.name}: NAT left bad checksums`);
  return { toBackend, toClient };
}

/** The kernel's output for `error` equals `expected` byte for byte, with valid checksums (its quote's L4 checksum verified when it is whole). */
function assertTranslated(t: { deepEqual(a: unknown, b: unknown, m?: string): void }, out: Uint8Array, expected: Uint8Array, whole: boolean, what: string): void {
  t.deepEqual(icmpChecksumProblems(out), [], `${what}: ICMP, outer and quoted IP header checksums`);
  if (whole) t.deepEqual(checksumProblems(quotedFrame(out)), [], `${what}: the whole quoted packet's checksums`);
  const h = headers(out);
  const q = headers(quotedFrame(out));
  const e = headers(expected);
  const eq = headers(quotedFrame(expected));
  t.deepEqual([h.src, h.dst, q.src, q.sport, q.dst, q.dport], [e.src, e.dst, eq.src, eq.sport, eq.dst, eq.dport], `${what}: addresses and ports`);
  t.deepEqual(Buffer.from(out).toString('hex'), Buffer.from(expected).toString('hex'), `${what}: the exact bytes`);
}

test('lb icmp - an error towards the client about client -> backend leaves the uplink quoting client -> VIP, from the VIP when the backend sent it', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compileServices(services, { labels: {} }));
  let sport = 40000;
  for (const c of cases) {
    for (const q of quotes) {
      const flow = openFlow(datapath, c, ++sport);
      const length = quoteLength(c, q);
      // As the client sent it: what the translated error must quote.
      const sent = frameOf(clientPacket(c, sport));
      const errors: { what: string; error: IcmpError; src: string }[] = [
        // A router between node and backend (or the node's own stack forwarding to a smaller MTU).
        { what: 'too big from a router', error: { src: c.router, dst: c.client, ...c.tooBig, rest: 1280, quote: quoteOf(flow.toBackend, length) }, src: c.router },
        // The backend itself: the outer source becomes the VIP.
        { what: 'port unreachable from the backend', error: { src: c.backend, dst: c.client, ...c.unreachable, quote: quoteOf(flow.toBackend, length) }, src: c.vip },
        { what: 'time exceeded from a router', error: { src: c.router, dst: c.client, ...c.exceeded, quote: quoteOf(flow.toBackend, length) }, src: c.router },
      ];
      for (const { what, error, src } of errors) {
        const label = `${c.name}, ${what}, quote ${q.name}`;
        const out = datapath.tcEgressProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(out.retval, TC_ACT_OK, label);
        assertTranslated(t, out.data, icmpErrorFrame({ ...error, src, quote: quoteOf(sent, length) }), length === undefined, `${label} (uplink egress)`);
        // A backend behind the uplink: its error comes in through the policy hook, XDP or TC.
        const xdp = datapath.xdpProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(xdp.retval, XDP_PASS, label);
        assertTranslated(t, xdp.data, icmpErrorFrame({ ...error, src, quote: quoteOf(sent, length) }), length === undefined, `${label} (uplink XDP)`);
        const tc = datapath.tcProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(tc.retval, TC_ACT_OK, label);
        assertTranslated(t, tc.data, icmpErrorFrame({ ...error, src, quote: quoteOf(sent, length) }), length === undefined, `${label} (uplink TC ingress)`);
      }
    }
  }
});

test('lb icmp - an error towards the VIP about a reply (VIP -> client) goes to the backend quoting backend -> client, at uplink XDP and TC ingress', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compileServices(services, { labels: {} }));
  const relatedBefore = datapath.readCounters().conntrack.related.packets;
  let sport = 41000;
  let errors = 0;
  for (const c of cases) {
    for (const q of quotes) {
      const flow = openFlow(datapath, c, ++sport);
      const length = quoteLength(c, q);
      const sent = frameOf(backendReply(c, sport));
      for (const [what, kind] of [['too big', c.tooBig], ['time exceeded', c.exceeded], ['port unreachable', c.unreachable]] as const) {
        // A router on the client's side quotes the reply as it left the node (VIP -> client) and writes to the VIP.
        const error: IcmpError = { src: c.clientRouter, dst: c.vip, ...kind, rest: what === 'too big' ? 1280 : 0, quote: quoteOf(flow.toClient, length) };
        const expected = icmpErrorFrame({ ...error, dst: c.backend, quote: quoteOf(sent, length) });
        const label = `${c.name}, ${what}, quote ${q.name}`;
        const xdp = datapath.xdpProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(xdp.retval, XDP_PASS, label);
        assertTranslated(t, xdp.data, expected, length === undefined, `${label} (uplink XDP)`);
        const tc = datapath.tcProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(tc.retval, TC_ACT_OK, label);
        assertTranslated(t, tc.data, expected, length === undefined, `${label} (uplink TC ingress)`);
        errors += 2;
      }
    }
  }
  // Each passed as related to its flow (CONNTRACK.md step 4), as before.
  t.is(datapath.readCounters().conntrack.related.packets - relatedBefore, errors);
});

test('lb icmp - errors that are not about the NATed side of a load-balanced flow pass unchanged; an IPv4 UDP quote without a checksum keeps none', async (t) => {
  const datapath = await open(t);
  await datapath.apply({ rules: [{ id: 1, srcCidrs: [], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: 7000, to: 7000 }], action: 'allow', track: true }], defaultAction: 'allow' }, compileServices(services, { labels: {} }));
  const c4 = cases[1]!;
  const flow = openFlow(datapath, c4, 42001);
  const unchanged = (program: 'xdp' | 'tc' | 'egress', error: IcmpError, what: string): void => {
    const frame = icmpErrorFrame(error);
    const run = { xdp: datapath.xdpProgram, tc: datapath.tcProgram, egress: datapath.tcEgressProgram }[program].testRun({ data: frame });
    t.deepEqual(Buffer.from(run.data).toString('hex'), Buffer.from(frame).toString('hex'), `${what} (${program})`);
  };
  // The client's packet before DNAT (client -> VIP) is the service entry's original direction: nothing to translate.
  const toVip = frameOf(clientPacket(c4, 42001));
  for (const program of ['xdp', 'tc', 'egress'] as const) unchanged(program, { src: c4.router, dst: c4.client, ...c4.tooBig, rest: 1280, quote: quoteOf(toVip, 8) }, 'a quote of client -> VIP');
  // The backend's reply before reverse NAT (backend -> client) is the reverse entry's reply direction.
  for (const program of ['xdp', 'tc', 'egress'] as const) unchanged(program, { src: c4.clientRouter, dst: c4.backend, ...c4.exceeded, quote: quoteOf(frameOf(backendReply(c4, 42001)), 8) }, 'a quote of backend -> client');
  // A tracked flow that is not load-balanced, and a flow the node does not know.
  const plain = datapath.xdpProgram.testRun({ data: frameOf({ src: c4.client, dst: '192.0.2.99', protocol: 'udp', srcPort: 42002, dstPort: 7000 }) });
  t.is(plain.retval, XDP_PASS);
  const plainOut = frameOf({ src: '192.0.2.99', dst: c4.client, protocol: 'udp', srcPort: 7000, dstPort: 42002 });
  for (const program of ['xdp', 'tc', 'egress'] as const) unchanged(program, { src: c4.clientRouter, dst: '192.0.2.99', ...c4.unreachable, quote: quoteOf(plainOut, 8) }, 'a flow without NAT');
  for (const program of ['xdp', 'tc', 'egress'] as const) unchanged(program, { src: c4.router, dst: c4.client, ...c4.unreachable, quote: quoteOf(frameOf({ src: c4.client, dst: '10.9.9.9', protocol: 'udp', srcPort: 1, dstPort: 2 }), 8) }, 'an unknown flow');
  t.truthy(flow.toBackend);

  // An IPv4 UDP datagram without a checksum (0): its quote keeps 0 while the rest is translated.
  const bare = datapath.xdpProgram.testRun({ data: frameOf(clientPacket(c4, 42003, 0), true) });
  t.is(headers(bare.data).dst, c4.backend);
  t.is(new DataView(bare.data.buffer, bare.data.byteOffset).getUint16(headers(bare.data).l4 + 6), 0, 'DNAT kept the zero checksum');
  datapath.tcEgressProgram.testRun({ data: frameOf(backendReply(c4, 42003), true) });
  const error: IcmpError = { src: c4.router, dst: c4.client, ...c4.tooBig, rest: 1280, quote: quoteOf(bare.data) };
  const out = datapath.tcEgressProgram.testRun({ data: icmpErrorFrame(error) });
  assertTranslated(t, out.data, icmpErrorFrame({ ...error, quote: quoteOf(frameOf(clientPacket(c4, 42003, 0), true)) }), true, 'UDP without a checksum');
});

// ---- Full NAT (LB.md, "ICMP errors"): both sides of the quote change ----------------------------

/** The node's address towards every backend (what the agent's route lookup gives). */
const NODE4 = '10.0.255.254';
const NODE6 = '2001:db8:1::fffe';
const nodeOf = (c: Case): string => (c.family === 4 ? NODE4 : NODE6);
const routes: BackendRouteView = (address) => ({ source: parseAddress(address.includes(':') ? NODE6 : NODE4) as Uint8Array, mtu: 1500 });
/** The services above in full-NAT mode: one backend each, so every flow's backend is known. */
const fullNat = services.map((s) => Service.fromPartial({ ...s, spec: { ...s.spec, forwardingMode: ForwardingMode.FORWARDING_MODE_FULLNAT } }));

/**
 * Opens a full-NAT flow from `sport` (the client's SYN and the backend's SYN-ACK through XDP) and
 * returns the node's port and the packets an error will quote, as the node forwarded them: a
 * full-sized one each way (node:nport -> backend, VIP -> client).
 */
function openFullNat(datapath: EbpfDatapath, c: Case, sport: number): { nport: number; toBackend: Uint8Array; toClient: Uint8Array } {
  const syn = headers(datapath.xdpProgram.testRun({ data: frameOf(clientPacket(c, sport, tcpFlags.syn)) }).data);
  if (syn.src !== nodeOf(c) || syn.dst !== c.backend || syn.dport !== c.bport) throw new Error(`${c.name}: the flow from ${sport} left as ${syn.src}:${syn.sport} -> ${syn.dst}:${syn.dport}`);
  const nport = syn.sport;
  const fromBackend = (flags: number): FrameSpec => ({ src: c.backend, dst: nodeOf(c), protocol: c.protocol, srcPort: c.bport, dstPort: nport, tcpFlags: flags, payloadLength: PAYLOAD });
  const back = headers(datapath.xdpProgram.testRun({ data: frameOf({ ...fromBackend(tcpFlags.syn | tcpFlags.ack), payloadLength: 0 }) }).data);
  if (back.src !== c.vip || back.dst !== c.client) throw new Error(`${c.name}: the reply to ${nport} was not turned back`);
  const toBackend = datapath.xdpProgram.testRun({ data: frameOf(clientPacket(c, sport)) }).data;
  const toClient = datapath.xdpProgram.testRun({ data: frameOf(fromBackend(tcpFlags.ack)) }).data;
  if (checksumProblems(toBackend).length + checksumProblems(toClient).length > 0) throw new Error(`${c.name}: full NAT left bad checksums`);
  return { nport, toBackend, toClient };
}

test('lb icmp - full NAT: an error towards the node about node -> backend reaches the client quoting client -> VIP, at uplink XDP and TC ingress', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compileServices(fullNat, { labels: {}, routes }));
  let sport = 43000;
  for (const c of cases) {
    for (const q of quotes) {
      const flow = openFullNat(datapath, c, ++sport);
      const length = quoteLength(c, q);
      const sent = frameOf(clientPacket(c, sport));
      const errors: { what: string; error: IcmpError; src: string }[] = [
        { what: 'too big from a router', error: { src: c.router, dst: nodeOf(c), ...c.tooBig, rest: 1280, quote: quoteOf(flow.toBackend, length) }, src: c.router },
        // The backend itself: the outer source becomes the VIP.
        { what: 'port unreachable from the backend', error: { src: c.backend, dst: nodeOf(c), ...c.unreachable, quote: quoteOf(flow.toBackend, length) }, src: c.vip },
        { what: 'time exceeded from a router', error: { src: c.router, dst: nodeOf(c), ...c.exceeded, quote: quoteOf(flow.toBackend, length) }, src: c.router },
      ];
      for (const { what, error, src } of errors) {
        const label = `${c.name}, ${what}, quote ${q.name}`;
        // The outer destination, the node, becomes the client with the quoted source.
        const expected = icmpErrorFrame({ ...error, src, dst: c.client, quote: quoteOf(sent, length) });
        const xdp = datapath.xdpProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(xdp.retval, XDP_PASS, label);
        assertTranslated(t, xdp.data, expected, length === undefined, `${label} (uplink XDP)`);
        const tc = datapath.tcProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(tc.retval, TC_ACT_OK, label);
        assertTranslated(t, tc.data, expected, length === undefined, `${label} (uplink TC ingress)`);
      }
    }
  }
});

test('lb icmp - full NAT: an error towards the VIP about a reply (VIP -> client) reaches the backend quoting backend -> node, from the node when the client sent it', async (t) => {
  const datapath = await open(t);
  await datapath.apply(allowAll, compileServices(fullNat, { labels: {}, routes }));
  let sport = 44000;
  for (const c of cases) {
    for (const q of quotes) {
      const flow = openFullNat(datapath, c, ++sport);
      const length = quoteLength(c, q);
      // As the backend sent it: to the node's address and port.
      const sent = frameOf({ src: c.backend, dst: nodeOf(c), protocol: c.protocol, srcPort: c.bport, dstPort: flow.nport, tcpFlags: tcpFlags.ack, payloadLength: PAYLOAD });
      for (const [what, kind, from] of [['too big from a router', c.tooBig, c.clientRouter], ['time exceeded from a router', c.exceeded, c.clientRouter], ['port unreachable from the client', c.unreachable, c.client]] as const) {
        const error: IcmpError = { src: from, dst: c.vip, ...kind, rest: kind === c.tooBig ? 1280 : 0, quote: quoteOf(flow.toClient, length) };
        // The client's own error names it as its source: that becomes the node, as the quote's destination does.
        const expected = icmpErrorFrame({ ...error, src: from === c.client ? nodeOf(c) : from, dst: c.backend, quote: quoteOf(sent, length) });
        const label = `${c.name}, ${what}, quote ${q.name}`;
        const xdp = datapath.xdpProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(xdp.retval, XDP_PASS, label);
        assertTranslated(t, xdp.data, expected, length === undefined, `${label} (uplink XDP)`);
        const tc = datapath.tcProgram.testRun({ data: icmpErrorFrame(error) });
        t.is(tc.retval, TC_ACT_OK, label);
        assertTranslated(t, tc.data, expected, length === undefined, `${label} (uplink TC ingress)`);
      }
    }
  }
  // Errors about the other directions of a full-NAT flow pass unchanged: client -> VIP (the
  // service entry's original direction), backend -> node (the reverse entry's reply direction).
  const c = cases[0]!;
  const flow = openFullNat(datapath, c, ++sport);
  for (const error of [
    { src: c.router, dst: c.client, ...c.tooBig, rest: 1280, quote: quoteOf(frameOf(clientPacket(c, sport)), 8) },
    { src: c.clientRouter, dst: c.backend, ...c.exceeded, quote: quoteOf(frameOf({ src: c.backend, dst: NODE4, protocol: 'tcp', srcPort: c.bport, dstPort: flow.nport, tcpFlags: tcpFlags.ack }), 8) },
  ] satisfies IcmpError[]) {
    const frame = icmpErrorFrame(error);
    for (const run of [datapath.xdpProgram.testRun({ data: frame }), datapath.tcProgram.testRun({ data: frame }), datapath.tcEgressProgram.testRun({ data: frame })]) {
      t.deepEqual(Buffer.from(run.data).toString('hex'), Buffer.from(frame).toString('hex'));
    }
  }
});
