// The direct mark of the connection table (bpf/CONNTRACK.md, "The direct mark") on the real
// kernel: the programs run through BPF_PROG_TEST_RUN on real maps, and the tables are read back.
// Below half of ep_ct's capacity a new flow's entry is created in ep_ct (no move at its first
// reply); at the mark, in ep_ct_new; a flood of flows that never get a reply fills ep_ct only up
// to the mark, and the room above it stays for flows that get one. The count is the kernel's
// (bpf_map_sum_elem_count), so entries the agent writes and deletes count too. The flows are
// IPv6: an IPv4 TCP/UDP flow goes to ep_ct4 first (layout 6), and reaches ep_ct only when its
// window there is full (conntrack-differential.test.ts runs that path).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { BpfMap, TypedMap, type CodecValue } from 'libbpf-ts';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { buildFrame, tcpFlags } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { epCtEntry, epCtKey } from '../src/datapath/table-codecs.js';
import { ctDirectMark } from '../src/datapath/conntrack-model.js';
import { mountBpffs, TC_ACT_OK, XDP_DROP, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());
let roots = 0;

/** ep_ct of 16 entries: its mark is 8. */
const CT_ENTRIES = 16;
const MARK = ctDirectMark(CT_ENTRIES);
const SERVER = '2001:db8::1';
const { syn, ack } = tcpFlags;

/** New TCP to the server's port 80 is admitted and tracked; the rest (replies without an entry too) is denied. */
const stateful: RuleSetSpec = {
  rules: [{ id: 1, srcCidrs: [], dstCidrs: [`${SERVER}/128`], protocol: 'tcp', dstPorts: [{ from: 80, to: 80 }], action: 'allow', track: true }],
  defaultAction: 'deny',
  trackEgress: true,
};

const client = (i: number): string => `2001:db8:1::${i.toString(16)}`;
const toServer = (i: number, flags: number): Uint8Array => buildFrame({ src: client(i), dst: SERVER, protocol: 'tcp', srcPort: 20_000 + (i % 40_000), dstPort: 80, tcpFlags: flags, payloadLength: 0 });
const fromServer = (i: number, flags: number): Uint8Array => buildFrame({ src: SERVER, dst: client(i), protocol: 'tcp', srcPort: 80, dstPort: 20_000 + (i % 40_000), tcpFlags: flags, payloadLength: 0 });

type Entry = CodecValue<typeof epCtEntry>;

async function open(t: { teardown(fn: () => void): void }): Promise<{ datapath: EbpfDatapath; ct: TypedMap<CodecValue<typeof epCtKey>, Entry>; count: () => { ct: number; ctNew: number } }> {
  const pinRoot = join(bpffs.path, `dp${roots++}`);
  mkdirSync(pinRoot);
  const datapath = await EbpfDatapath.open({ pinRoot, ctEntries: CT_ENTRIES, ctNewEntries: 4096 });
  t.teardown(() => datapath.close());
  await datapath.apply(stateful);
  const maps = { ct: BpfMap.openPinned(join(pinRoot, 'ep_ct')), ctNew: BpfMap.openPinned(join(pinRoot, 'ep_ct_new')) };
  t.teardown(() => {
    maps.ct.close();
    maps.ctNew.close();
  });
  const size = (map: BpfMap): number => [...map.getBatches(256)].reduce((n, chunk) => n + chunk.count, 0);
  return { datapath, ct: new TypedMap(maps.ct, epCtKey, epCtEntry), count: () => ({ ct: size(maps.ct), ctNew: size(maps.ctNew) }) };
}

test('conntrack mark - below half of ep_ct new flows are created there, at the mark in ep_ct_new; deleted entries make room again', async (t) => {
  const { datapath, ct, count } = await open(t);
  t.is(MARK, 8);
  for (let i = 0; i < MARK; i++) t.is(datapath.xdpProgram.testRun({ data: toServer(i, syn) }).retval, XDP_PASS);
  t.deepEqual(count(), { ct: MARK, ctNew: 0 }, 'below the mark: straight into ep_ct');
  // At the mark: ep_ct_new, from the policy hook and from uplink egress alike.
  for (let i = MARK; i < MARK + 3; i++) t.is(datapath.xdpProgram.testRun({ data: toServer(i, syn) }).retval, XDP_PASS);
  t.is(datapath.tcEgressProgram.testRun({ data: buildFrame({ src: SERVER, dst: '2001:db8:2::9', protocol: 'udp', srcPort: 5353, dstPort: 53 }) }).retval, TC_ACT_OK);
  t.deepEqual(count(), { ct: MARK, ctNew: 4 }, 'at the mark: ep_ct_new');
  // A flow created in ep_ct needs no move at its first reply; one in ep_ct_new moves.
  t.is(datapath.tcEgressProgram.testRun({ data: fromServer(0, syn | ack) }).retval, TC_ACT_OK);
  t.is(datapath.tcEgressProgram.testRun({ data: fromServer(MARK, syn | ack) }).retval, TC_ACT_OK);
  t.deepEqual(count(), { ct: MARK + 1, ctNew: 3 });
  const c = datapath.readCounters().conntrack;
  t.deepEqual([c.created.packets, c.promoted.packets, c.insertFailed.packets], [MARK + 4, 1, 0]);

  // Entries the sweeper deletes leave the count: two expired ones make room for two new flows.
  const keys = [...ct.entries()].filter(([, e]) => e.state === 1 /* SYN_SENT */).slice(0, 3).map(([k]) => k);
  for (const key of keys) ct.set(key, { ...(ct.get(key) as Entry), expiresNs: 1n });
  t.is(datapath.sweepConntrack(1000), 3);
  t.deepEqual(count(), { ct: MARK - 2, ctNew: 3 });
  for (let i = 100; i < 103; i++) datapath.xdpProgram.testRun({ data: toServer(i, syn) });
  t.deepEqual(count(), { ct: MARK, ctNew: 4 }, 'two below the mark again, the third at it');
});

test('conntrack mark - a SYN flood fills ep_ct only to the mark: replies move flows into the room above it, established flows keep passing', async (t) => {
  const { datapath, count } = await open(t);
  // An established flow first (SYN, SYN+ACK, ACK), created below the mark.
  datapath.xdpProgram.testRun({ data: toServer(0, syn) });
  datapath.tcEgressProgram.testRun({ data: fromServer(0, syn | ack) });
  t.is(datapath.xdpProgram.testRun({ data: toServer(0, ack) }).retval, XDP_PASS);
  // The flood: 2,000 SYNs, each a new flow that never gets a reply.
  const FLOOD = 2000;
  for (let i = 1; i <= FLOOD; i++) datapath.xdpProgram.testRun({ data: toServer(i, syn) });
  t.deepEqual(count(), { ct: MARK, ctNew: FLOOD - (MARK - 1) }, 'the flood took ep_ct up to the mark, no further');
  // The room above the mark is for flows that see a reply: flooded flows that get one move there
  // until ep_ct is full; then the move fails (INSERT_FAILED) and the flow works from ep_ct_new.
  const answered = [FLOOD, FLOOD - 1, FLOOD - 2, FLOOD - 3, FLOOD - 4, FLOOD - 5, FLOOD - 6, FLOOD - 7, FLOOD - 8];
  for (const i of answered) t.is(datapath.tcEgressProgram.testRun({ data: fromServer(i, syn | ack) }).retval, TC_ACT_OK);
  t.is(count().ct, CT_ENTRIES, 'every room above the mark went to a flow with a reply');
  const c = datapath.readCounters().conntrack;
  t.deepEqual([c.promoted.packets, c.insertFailed.packets], [CT_ENTRIES - MARK, 1]);
  // Packets from the server side pass only by an entry (the default denies them): the answered
  // flows' (the one that could not move included), the established flow's; not an unsolicited one.
  for (const i of [0, ...answered]) t.is(datapath.xdpProgram.testRun({ data: fromServer(i, ack) }).retval, XDP_PASS, `flow ${i} passes by its entry`);
  t.is(datapath.xdpProgram.testRun({ data: fromServer(FLOOD + 1, syn | ack) }).retval, XDP_DROP);
});

test('conntrack mark - an entry in ep_ct_new is found while ep_ct is below the mark: its lookup is skipped only when ep_ct_new is empty', async (t) => {
  const { datapath, ct, count } = await open(t);
  for (let i = 0; i <= MARK; i++) datapath.xdpProgram.testRun({ data: toServer(i, syn) });
  t.deepEqual(count(), { ct: MARK, ctNew: 1 });
  // ep_ct below the mark again, flow MARK still in ep_ct_new.
  for (const [key] of [...ct.entries()].slice(0, 2)) ct.delete(key);
  t.deepEqual(count(), { ct: MARK - 2, ctNew: 1 });
  // The server's answer passes only by its entry (the default denies it): found in ep_ct_new, moved.
  t.is(datapath.xdpProgram.testRun({ data: fromServer(MARK, syn | ack) }).retval, XDP_PASS);
  t.deepEqual(count(), { ct: MARK - 1, ctNew: 0 });
  t.is(datapath.readCounters().conntrack.promoted.packets, 1);
  // ep_ct_new empty: the flow passes by its entry in ep_ct, an unsolicited answer is denied.
  t.is(datapath.xdpProgram.testRun({ data: fromServer(MARK, ack) }).retval, XDP_PASS);
  t.is(datapath.xdpProgram.testRun({ data: fromServer(MARK + 1, syn | ack) }).retval, XDP_DROP);
});
