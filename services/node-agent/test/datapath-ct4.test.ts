// ep_ct4, the IPv4 flow table (layout 6; bpf/CONNTRACK.md "The IPv4 table"), on the real kernel:
// what the differential test's generated sequences do not set up. Lines are written from here as
// another CPU or an earlier flow would have left them (through ct4-table.ts's placement), then
// the programs run through BPF_PROG_TEST_RUN: another CPU's busy tag on the flow's window, a DEAD
// line before a flow, a window of other flows (live, then expired), the occupancy count.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { BpfMap, encode } from 'libbpf-ts';
import { ctKeyOfFlow, type CtKey } from '../src/datapath/conntrack-key.js';
import { ct4Place, CT4_DEAD, CT4_PROBES } from '../src/datapath/ct4-table.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { buildFrame, tcpFlags } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { epCt4Slot, NO_CT_NAT } from '../src/datapath/table-codecs.js';
import { KernelCt4, u32Key } from './ct4-helpers.js';
import { mountBpffs, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());
let roots = 0;

/** ep_ct4 of 64 slots: small enough to fill a window by hand, large enough that windows differ. */
const SLOTS = 64;
const SERVER = '192.0.2.1';
const { syn } = tcpFlags;
/** New TCP to the server's port 80 is admitted and tracked; the rest is denied. */
const stateful: RuleSetSpec = {
  rules: [{ id: 1, srcCidrs: [], dstCidrs: [`${SERVER}/32`], protocol: 'tcp', dstPorts: [{ from: 80, to: 80 }], action: 'allow', track: true }],
  defaultAction: 'deny',
};
const client = (i: number): string => `10.1.${(i >> 8) & 255}.${i & 255}`;
const synFrom = (i: number, sport = 40_000): Uint8Array => buildFrame({ src: client(i), dst: SERVER, protocol: 'tcp', srcPort: sport, dstPort: 80, tcpFlags: syn, payloadLength: 0 });
/** The table key of client i's flow to the server (side a is the client: 10.x sorts before 192.x). */
const keyOf = (i: number, sport = 40_000): CtKey => {
  const pad = (a: string): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(a.split('.').map(Number));
    return out;
  };
  return ctKeyOfFlow({ family: 4, proto: 6, sport, dport: 80, src: pad(client(i)), dst: pad(SERVER) }).key;
};

async function open(t: ExecutionContext): Promise<{ datapath: EbpfDatapath; ct4: KernelCt4; ct: BpfMap; ctCount: () => number }> {
  const pinRoot = join(bpffs.path, `dp${roots++}`);
  mkdirSync(pinRoot);
  const datapath = await EbpfDatapath.open({ pinRoot, ct4Slots: SLOTS });
  t.teardown(() => datapath.close());
  await datapath.apply(stateful);
  const ct4 = KernelCt4.open(pinRoot);
  const ct = BpfMap.openPinned(join(pinRoot, 'ep_ct'));
  t.teardown(() => {
    ct4.close();
    ct.close();
  });
  const ctCount = (): number => [...ct.getBatches(256)].reduce((n, chunk) => n + chunk.count, 0);
  return { datapath, ct4, ct, ctCount };
}

/** A live line of flow `key` (a table key) at slot `index`, as a created flow's. */
function writeFlow(ct4: KernelCt4, index: number, key: CtKey, expiresNs: bigint): void {
  const now = process.hrtime.bigint();
  ct4.write(index, key, { expiresNs, createdNs: now, packets: [1n, 0n], bytes: [54n, 0n], ruleId: 1, epoch: 1, state: 1, flags: 0, pad0: 0, pad1: 0, nat: NO_CT_NAT });
}

/** Sets the tag of slot `index`, the rest of the line as it is. */
function setTag(ct4: KernelCt4, index: number, tag: number): void {
  const line = epCt4Slot.decode(ct4.lines.get(u32Key(index)) as Uint8Array);
  ct4.lines.set(u32Key(index), encode(epCt4Slot, { ...line, tag: tag >>> 0 }));
}

test('ct4 - a flow whose tag another CPU holds busy in its window is being created there: the SYN passes and nothing is created, not even in ep_ct', async (t) => {
  const { datapath, ct4, ctCount } = await open(t);
  const key = keyOf(1);
  const { home, busy } = ct4Place(key, SLOTS);
  // Another CPU has claimed the flow's home slot and is writing its line.
  setTag(ct4, home, busy);
  const created = datapath.readCounters().conntrack.created.packets;
  t.is(datapath.xdpProgram.testRun({ data: synFrom(1) }).retval, XDP_PASS);
  t.is(datapath.readCounters().conntrack.created.packets, created, 'no entry created');
  t.is(ctCount(), 0, 'no second entry in ep_ct');
  t.deepEqual(ct4.read(), [], 'no live line');
  // Once that CPU publishes the line, the flow's next packet finds it.
  writeFlow(ct4, home, key, process.hrtime.bigint() + 60_000_000_000n);
  t.is(datapath.xdpProgram.testRun({ data: synFrom(1) }).retval, XDP_PASS);
  t.is(ct4.find(key)?.entry.packets[0], 2n, 'the retransmitted SYN counted on the published line');
  t.is(datapath.readCounters().conntrack.created.packets, created);
});

test('ct4 - a DEAD line before a flow is walked past: the flow is found; the next new flow of that window takes the DEAD slot', async (t) => {
  const { datapath, ct4 } = await open(t);
  const key = keyOf(2);
  const { home } = ct4Place(key, SLOTS);
  // The flow sits one past its home, behind a line that was deleted.
  setTag(ct4, home, CT4_DEAD);
  writeFlow(ct4, (home + 1) & (SLOTS - 1), key, process.hrtime.bigint() + 60_000_000_000n);
  const established = datapath.readCounters().conntrack.established.packets;
  t.is(datapath.xdpProgram.testRun({ data: synFrom(2) }).retval, XDP_PASS);
  t.is(datapath.readCounters().conntrack.established.packets, established + 1, 'found past the DEAD line');
  t.is(ct4.find(key)?.index, (home + 1) & (SLOTS - 1));
  // Another flow whose window starts at the same slot takes the DEAD one, the first free.
  let other = 3;
  while (ct4Place(keyOf(other), SLOTS).home !== home) other++;
  t.is(datapath.xdpProgram.testRun({ data: synFrom(other) }).retval, XDP_PASS);
  t.is(ct4.find(keyOf(other))?.index, home);
  t.is(datapath.readConntrackOccupancy().established, 2);
});

test('ct4 - a window of eight live flows sends a new flow to ep_ct; once one expires, the next new flow takes its slot and the expiry is counted', async (t) => {
  const { datapath, ct4, ctCount } = await open(t);
  const key = keyOf(4);
  const { home } = ct4Place(key, SLOTS);
  const later = process.hrtime.bigint() + 60_000_000_000n;
  // Eight other flows (other source ports: keys that are not this one) fill the window.
  for (let i = 0; i < CT4_PROBES; i++) writeFlow(ct4, (home + i) & (SLOTS - 1), keyOf(900, 1000 + i), later);
  t.is(datapath.xdpProgram.testRun({ data: synFrom(4) }).retval, XDP_PASS);
  t.is(ct4.find(key), undefined, 'not in ep_ct4');
  t.is(ctCount(), 1, 'in ep_ct, as before layout 6');
  // The window's third line expires: the next flow of this window (another source port of
  // client 4 with the same home) takes it.
  writeFlow(ct4, (home + 2) & (SLOTS - 1), keyOf(900, 1002), 1n);
  let sport = 40_001;
  while (ct4Place(keyOf(4, sport), SLOTS).home !== home) sport++;
  const expired = datapath.readCounters().conntrack.expired.packets;
  t.is(datapath.xdpProgram.testRun({ data: synFrom(4, sport) }).retval, XDP_PASS);
  t.is(ct4.find(keyOf(4, sport))?.index, (home + 2) & (SLOTS - 1));
  t.is(datapath.readCounters().conntrack.expired.packets, expired + 1);
  t.is(ct4.find(keyOf(900, 1002)), undefined, 'the expired flow is gone');
  // Occupancy: seven of the window's flows and the new one in ep_ct4, one in ep_ct.
  t.is(datapath.readConntrackOccupancy().established, CT4_PROBES + 1);
  t.is(datapath.conntrackCapacity.established, SLOTS + 262_144);
  // The sweeper makes an expired line DEAD (counted), and the count drops.
  writeFlow(ct4, (home + 5) & (SLOTS - 1), keyOf(900, 1005), 1n);
  t.is(datapath.sweepConntrack(1000), 1);
  t.is(epCt4Slot.decode(ct4.lines.get(u32Key((home + 5) & (SLOTS - 1))) as Uint8Array).tag, CT4_DEAD);
  t.is(datapath.readConntrackOccupancy().established, CT4_PROBES);
});
