// Shadow classification on the real kernel (issue 18; bpf/README.md, "Shadow classification"):
// a candidate rule set beside the enforced one, with real packets through two network namespaces
// joined by a veth pair, the node's side (B) holding the XDP program. The enforced verdict
// decides (B's IP layer counts what got past XDP); the candidate's verdicts are only counted:
// per rule, the packets both classified, would-be drops and allows, and samples of the flows.
import { spawn } from 'node:child_process';
import { mkdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { BpfMap, u32, encode } from 'libbpf-ts';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { RuleSetError } from '../src/datapath/errors.js';
import type { Counter, DatapathCounters, ShadowCounters } from '../src/datapath/datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import { DEFAULT_RULE_ID, type RuleSetSpec, type RuleSpec } from '../src/datapath/rule-set.js';
import { MAX_SHADOW_SAMPLES } from '@edgeplane/proto';
import { MAX_SHADOW_NAME_BYTES, SHADOW_RING_SAMPLES } from '../src/datapath/shadow-tables.js';
import { mountBpffs, XDP_DROP, XDP_PASS, QuietVethPair } from './datapath-helpers.js';

const pair = new QuietVethPair('eps', '10.203.0');
const { nsA, nsB, vethB, addrA, addrB } = pair;
const bpffs = mountBpffs();
/** Frame length of the test's UDP datagrams: Ethernet 14 + IPv4 20 + UDP 8 + 32 bytes. */
const FRAME = 74;
/** The datapath object with other programs and the same maps (bpf/fixtures/edgeplane_variant.bpf.c). */
const variantObject = fileURLToPath(new URL('../../../bpf/build/fixtures/edgeplane_variant.bpf.o', import.meta.url));

const inNs = (ns: string, ...args: string[]): string => pair.inNs(ns, ...args);

test.before(() => pair.create());

test.after.always(() => {
  pair.remove();
  bpffs.unmount();
});

let next = 0;
// One pin root per test, so the tests' datapaths do not adopt each other.
const freshRoot = (): string => {
  const dir = join(bpffs.path, `shadow${next++}`);
  mkdirSync(dir);
  return dir;
};

// Ip InReceives of a namespace: datagrams that got past XDP.
const ipInReceives = (ns: string): number => {
  const lines = inNs(ns, 'cat', '/proc/net/snmp').split('\n').filter((line) => line.startsWith('Ip:'));
  const names = (lines[0] ?? '').split(/\s+/);
  const values = (lines[1] ?? '').split(/\s+/);
  return Number(values[names.indexOf('InReceives')]);
};
// `count` UDP datagrams of 32 bytes from A to B:port for each [port, count].
const sendUdp = (traffic: readonly (readonly [number, number])[]): void => {
  const sends = traffic.map(([port, count]) => `for i in range(${count}): s.sendto(b'x'*32,('${addrB}',${port}))`).join('\n');
  inNs(nsA, 'python3', '-c', `import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n${sends}`);
};
// B's uplink gets the XDP program of the datapath pinned at `pinRoot` (replacing the previous test's).
const attachUplink = (pinRoot: string): void => {
  inNs(nsB, process.execPath, '--import=tsx', join(import.meta.dirname, 'datapath-netns-attach.ts'), 'attach', pinRoot, vethB, 'uplink');
};

const udp = (ruleId: number, port: number, action: RuleSpec['action']): RuleSpec => ({
  id: ruleId,
  srcCidrs: ['10.203.0.0/24'],
  dstCidrs: [`${addrB}/32`],
  protocol: 'udp',
  dstPorts: [{ from: port, to: port }],
  action,
});
// Enforced: 5001 and 5003 allowed, 5002 denied, the rest allowed.
const enforced: RuleSetSpec = { rules: [udp(1, 5001, 'allow'), udp(2, 5002, 'deny'), udp(3, 5003, 'allow')], defaultAction: 'allow' };
// The candidate denies 5001 (which the enforced set allows) and allows 5002 (which it denies).
const candidate: RuleSetSpec = { rules: [udp(11, 5001, 'deny'), udp(12, 5002, 'allow'), udp(13, 5003, 'allow')], defaultAction: 'allow' };

const packets = (counter: Counter | undefined): number => counter?.packets ?? 0;
const shadowOf = (datapath: EbpfDatapath): ShadowCounters => {
  const shadow = datapath.readShadow();
  if (shadow === null) throw new Error('no shadow candidate installed');
  return shadow;
};

async function openAttached(): Promise<{ datapath: EbpfDatapath; pinRoot: string }> {
  const pinRoot = freshRoot();
  const datapath = await EbpfDatapath.open({ pinRoot });
  await datapath.apply(enforced);
  attachUplink(pinRoot);
  return { datapath, pinRoot };
}

test.serial('shadow - a candidate denying a port the enforced set allows: real packets pass, wouldDrop counts them, a sample names the flow and both rules', async (t) => {
  const { datapath } = await openAttached();
  t.teardown(() => datapath.close());
  await datapath.setShadow(candidate, 'rev:7');
  const n = 20;
  const received = ipInReceives(nsB);
  const counted = datapath.readCounters();
  sendUdp([[5001, n]]);
  t.is(ipInReceives(nsB) - received, n, 'every packet reached B: the enforced verdict decides');
  t.is(packets(datapath.readCounters().rules.get(1)) - packets(counted.rules.get(1)), n, 'the enforced rule counted them');
  const shadow = shadowOf(datapath);
  t.is(shadow.candidate, 'rev:7');
  t.deepEqual(shadow.wouldDrop, { packets: n, bytes: n * FRAME });
  t.deepEqual(shadow.wouldAllow, { packets: 0, bytes: 0 });
  t.deepEqual(shadow.classified, { packets: n, bytes: n * FRAME });
  t.deepEqual(shadow.rules.get(11), { packets: n, bytes: n * FRAME }, "the candidate's deny rule counted what it would have dropped");
  t.deepEqual([...shadow.rules.keys()], [11, 12, 13], 'every rule of the candidate, in order');
  t.deepEqual(shadow.defaultAction, { packets: 0, bytes: 0 });
  t.is(shadow.samples.length, n);
  for (const sample of shadow.samples) {
    t.deepEqual(sample, { family: 4, proto: 17, src: addrA, dst: addrB, port: 5001, verdict: 'wouldDrop', enforcedRuleId: 1, candidateRuleId: 11 });
  }
});

test.serial('shadow - every reading taken while packets are counted is of one moment: with all traffic differing, classified equals wouldDrop', async (t) => {
  const { datapath } = await openAttached();
  t.teardown(() => datapath.close());
  await datapath.setShadow(candidate, 'rev:8');
  // A flood to the port the candidate would deny, from another process (the other core), for 3 s.
  const flood = spawn('ip', ['netns', 'exec', nsA, 'python3', '-c', `import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nend=time.time()+3\nwhile time.time()<end:\n  for i in range(100): s.sendto(b'x'*32,('${addrB}',5001))`], { stdio: 'ignore' });
  t.teardown(() => flood.kill());
  const done = new Promise<void>((resolve) => flood.once('exit', () => resolve()));
  let running = true;
  void done.then(() => (running = false));
  let readings = 0;
  let moving = 0;
  let last = 0;
  const torn: string[] = [];
  while (running) {
    const shadow = shadowOf(datapath);
    readings++;
    if (shadow.classified.packets !== last) moving++;
    last = shadow.classified.packets;
    if (shadow.wouldDrop.packets !== shadow.classified.packets || shadow.wouldAllow.packets !== 0) torn.push(`${shadow.classified.packets} classified, ${shadow.wouldDrop.packets} wouldDrop, ${shadow.wouldAllow.packets} wouldAllow`);
    await new Promise((resolve) => setImmediate(resolve));
  }
  t.true(moving > 100, `the counts moved between readings (${moving} of ${readings})`);
  t.deepEqual(torn.slice(0, 5), [], `${torn.length} of ${readings} readings were torn`);
  t.true(last > 0);
});

test.serial('shadow - a candidate allowing a port the enforced set denies: real packets drop, wouldAllow counts them', async (t) => {
  const { datapath } = await openAttached();
  t.teardown(() => datapath.close());
  await datapath.setShadow(candidate, 'rev:8');
  const n = 15;
  const received = ipInReceives(nsB);
  sendUdp([[5002, n]]);
  t.is(ipInReceives(nsB) - received, 0, 'none reached B: the enforced deny decides');
  const shadow = shadowOf(datapath);
  t.deepEqual(shadow.wouldAllow, { packets: n, bytes: n * FRAME });
  t.deepEqual(shadow.wouldDrop, { packets: 0, bytes: 0 });
  t.is(packets(shadow.rules.get(12)), n);
  t.is(shadow.samples.length, n);
  t.deepEqual(shadow.samples.at(-1), { family: 4, proto: 17, src: addrA, dst: addrB, port: 5002, verdict: 'wouldAllow', enforcedRuleId: 2, candidateRuleId: 12 });
  // Agreeing verdicts are classified and counted, never sampled.
  sendUdp([[5003, 4]]);
  const after = shadowOf(datapath);
  t.is(packets(after.classified), n + 4);
  t.is(packets(after.rules.get(13)), 4);
  t.is(after.samples.length, n);
});

test.serial("shadow - the candidate's rule counters equal the enforced counters of the same rule set once it is applied, for the same traffic", async (t) => {
  const { datapath } = await openAttached();
  t.teardown(() => datapath.close());
  await datapath.setShadow(candidate, 'rev:9');
  // Every rule, and the default action (port 6000), with its own count.
  const traffic = [
    [5001, 5],
    [5002, 7],
    [5003, 3],
    [6000, 4],
  ] as const;
  sendUdp(traffic);
  const shadow = shadowOf(datapath);
  t.is(packets(shadow.classified), 19);
  // The promotion: the candidate becomes the enforced rule set (the candidate stays installed).
  t.is((await datapath.apply(candidate)).mode, 'installed');
  const before = datapath.readCounters();
  sendUdp(traffic);
  const after = datapath.readCounters();
  const delta = (pick: (c: DatapathCounters) => Counter | undefined): Counter => ({
    packets: packets(pick(after)) - packets(pick(before)),
    bytes: (pick(after)?.bytes ?? 0) - (pick(before)?.bytes ?? 0),
  });
  for (const ruleId of [11, 12, 13]) t.deepEqual(delta((c) => c.rules.get(ruleId)), shadow.rules.get(ruleId), `rule ${ruleId}`);
  t.deepEqual(delta((c) => c.defaultAction), shadow.defaultAction, 'the default action');
  t.deepEqual(shadow.defaultAction, { packets: 4, bytes: 4 * FRAME });
  // Enforced and candidate now agree: nothing more would differ, while the candidate keeps counting.
  const promoted = shadowOf(datapath);
  t.deepEqual(promoted.wouldDrop, shadow.wouldDrop);
  t.deepEqual(promoted.wouldAllow, shadow.wouldAllow);
  t.is(packets(promoted.classified), 2 * 19);
  t.is(packets(promoted.rules.get(11)), 2 * 5);
  await datapath.setShadow(null);
  t.is(datapath.readShadow(), null);
});

test.serial('shadow - without a candidate the shadow counters stay untouched; setShadow(null) stops counting', async (t) => {
  const { datapath, pinRoot } = await openAttached();
  t.teardown(() => datapath.close());
  const stats = BpfMap.openPinned(join(pinRoot, 'ep_shadow_stats'));
  const counters = BpfMap.openPinned(join(pinRoot, 'ep_shadow_counters'));
  t.teardown(() => {
    stats.close();
    counters.close();
  });
  // Summed over CPUs: AGREED, WOULD_DROP, WOULD_ALLOW, SAMPLED; then the candidate's slots 0..3.
  const raw = (map: BpfMap, slots: number): string =>
    Array.from({ length: slots }, (_, slot) => (map.getPerCpu(encode(u32, slot)) ?? []).reduce((sum, value) => sum + Buffer.from(value).readBigUInt64LE(0), 0n)).join(',');
  t.is(datapath.readShadow(), null);
  sendUdp([
    [5001, 5],
    [5002, 5],
  ]);
  t.is(raw(stats, 4), '0,0,0,0', 'no candidate: nothing counted');
  t.is(raw(counters, 4), '0,0,0,0');

  await datapath.setShadow(candidate, 'rev:10');
  sendUdp([
    [5001, 5],
    [5003, 2],
  ]);
  t.is(raw(stats, 4), '2,5,0,5', 'each packet in one stat: 2 agreed on, 5 would drop (and sampled)');
  await datapath.setShadow(null);
  t.is(datapath.readShadow(), null);
  sendUdp([
    [5001, 5],
    [5002, 5],
  ]);
  t.is(raw(stats, 4), '2,5,0,5', 'removed: nothing more counted');
  t.is(raw(counters, 4), '0,5,0,2');
  // A new candidate starts from zero.
  await datapath.setShadow(candidate, 'rev:11');
  const fresh = shadowOf(datapath);
  t.is(fresh.candidate, 'rev:11');
  t.deepEqual([packets(fresh.classified), packets(fresh.wouldDrop), fresh.samples.length, packets(fresh.rules.get(11))], [0, 0, 0, 0]);
});

test.serial('shadow - a candidate survives closing and reopening the datapath on the same pins (agent restart)', async (t) => {
  const { datapath: first, pinRoot } = await openAttached();
  await first.setShadow(candidate, 'rev:12');
  sendUdp([[5001, 6]]);
  const before = shadowOf(first);
  first.close();
  first.close();
  // While no agent runs, the pinned programs go on shadowing.
  sendUdp([[5002, 3]]);
  const second = await EbpfDatapath.open({ pinRoot });
  t.teardown(() => second.close());
  t.true(second.adopted);
  const after = shadowOf(second);
  t.is(after.candidate, 'rev:12');
  t.deepEqual([...after.rules.keys()], [11, 12, 13]);
  t.is(packets(after.wouldDrop), packets(before.wouldDrop));
  t.is(packets(after.wouldDrop), 6);
  t.is(packets(after.wouldAllow), 3);
  t.is(packets(after.classified), 9);
  t.is(after.samples.length, 9);
  t.deepEqual(after.samples.slice(0, 6), before.samples);
  t.deepEqual(
    after.samples.slice(6).map((s) => [s.port, s.verdict, s.enforcedRuleId, s.candidateRuleId]),
    Array(3).fill([5002, 'wouldAllow', 2, 12]),
  );
});

// ---- Without interfaces (BPF_PROG_TEST_RUN): both hooks, both families, rate limits, bounds. ----

test('shadow - a candidate pinned before the union maps existed counts right after the upgrade that creates them', async (t) => {
  const pinRoot = freshRoot();
  const frame = (port: number): Uint8Array => buildFrame({ src: '10.203.0.1', dst: addrB, protocol: 'udp', dstPort: port });
  const first = await EbpfDatapath.open({ pinRoot });
  await first.apply(enforced);
  first.close();
  // An agent restarted since its last apply knows no enforced rule set: the union is the
  // candidate alone, as the tables an older object pinned for a candidate were.
  const second = await EbpfDatapath.open({ pinRoot });
  await second.setShadow(candidate, 'rev:older');
  t.is(second.shadowWalk(), 'two');
  second.close();
  // The older object had neither map: the next open installs them, empty.
  for (const name of ['ep_shadow_slots', 'ep_shadow_member']) unlinkSync(join(pinRoot, name));
  const third = await EbpfDatapath.open({ pinRoot });
  t.teardown(() => third.close());
  t.false(third.adopted);
  for (const port of [5001, 5001, 5002, 5003]) third.xdpProgram.testRun({ data: frame(port) });
  const shadow = shadowOf(third);
  t.is(shadow.candidate, 'rev:older');
  t.deepEqual([...shadow.rules].map(([id, counter]) => [id, packets(counter)]), [[11, 2], [12, 1], [13, 1]]);
  t.is(packets(shadow.wouldDrop), 2);
  t.is(packets(shadow.wouldAllow), 1);
  t.is(third.shadowWalk(), 'two');
});

test('shadow - a candidate whose packets older programs counted as CLASSIFIED and a verdict is counted afresh, once per packet, by the programs that replace them', async (t) => {
  const pinRoot = freshRoot();
  const frame = (port: number): Uint8Array => buildFrame({ src: '10.203.0.1', dst: addrB, protocol: 'udp', dstPort: port });
  const FRAME_LEN = frame(5001).length;
  const send = (datapath: EbpfDatapath, ports: readonly number[]): void => {
    for (const port of ports) datapath.xdpProgram.testRun({ data: frame(port) });
  };
  const first = await EbpfDatapath.open({ pinRoot });
  await first.apply(enforced);
  await first.setShadow(candidate, 'rev:mixed');
  send(first, [5001, 5001, 5002, 5003]);
  t.like(shadowOf(first), { classified: { packets: 4 }, wouldDrop: { packets: 2 }, wouldAllow: { packets: 1 } });
  first.close();
  // What an agent of the older programs left: its record without EP_SHADOW_F_ONCE, and slot 0
  // counting every packet classified (4), not only the one both sets agreed on.
  const cfg = BpfMap.openPinned(join(pinRoot, 'ep_shadow'));
  const stats = BpfMap.openPinned(join(pinRoot, 'ep_shadow_stats'));
  t.teardown(() => {
    cfg.close();
    stats.close();
  });
  const record = cfg.get(encode(u32, 0))!;
  const flags = new DataView(record.buffer, record.byteOffset).getUint32(0, true);
  t.is(flags, 0x3, 'this agent records EP_SHADOW_F_ON and EP_SHADOW_F_ONCE');
  new DataView(record.buffer, record.byteOffset).setUint32(0, 0x1, true);
  cfg.set(encode(u32, 0), record);
  const perCpu = stats.getPerCpu(encode(u32, 0))!;
  const counted = (packets: number): Uint8Array => {
    const value = new Uint8Array(perCpu[0]!.length);
    new DataView(value.buffer).setBigUint64(0, BigInt(packets), true);
    new DataView(value.buffer).setBigUint64(8, BigInt(packets * FRAME_LEN), true);
    return value;
  };
  stats.setPerCpu(encode(u32, 0), perCpu.map((_, cpu) => counted(cpu === 0 ? 4 : 0)));
  const older = await EbpfDatapath.open({ pinRoot });
  t.true(older.adopted, 'the same programs: adopted');
  t.like(shadowOf(older), { classified: { packets: 4 }, wouldDrop: { packets: 2 } }, 'read as the older programs counted');
  older.close();
  // Other programs (a fix in BPF code): the candidate stays, its share is counted from the switch on.
  const replaced = await EbpfDatapath.open({ pinRoot, objectPath: variantObject });
  t.teardown(() => replaced.close());
  t.false(replaced.adopted);
  const restarted = shadowOf(replaced);
  t.is(restarted.candidate, 'rev:mixed');
  t.like(restarted, { classified: { packets: 0 }, wouldDrop: { packets: 0 }, wouldAllow: { packets: 0 } });
  t.is(packets(restarted.rules.get(11)), 2, "the candidate's rule counters are kept");
  send(replaced, [5001, 5003, 5003]);
  t.like(shadowOf(replaced), { classified: { packets: 3, bytes: 3 * FRAME_LEN }, wouldDrop: { packets: 1 }, wouldAllow: { packets: 0 } });
  replaced.close();
  // Recounted once: the programs after these keep the counts.
  const again = await EbpfDatapath.open({ pinRoot });
  t.teardown(() => again.close());
  t.false(again.adopted);
  t.like(shadowOf(again), { classified: { packets: 3 }, wouldDrop: { packets: 1 } });
});

test('shadow - IPv6 at TC and XDP, the ring keeps the newest samples of every CPU, oldest first', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply({ rules: [{ id: 1, srcCidrs: ['2001:db8::/32'], dstCidrs: [], protocol: 'tcp', dstPorts: [], action: 'allow' }], defaultAction: 'deny' });
  await datapath.setShadow({ rules: [{ id: 5, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 443, to: 443 }], action: 'allow' }], defaultAction: 'deny' });
  const frame = (port: number): Uint8Array => buildFrame({ src: '2001:db8::1', dst: '2001:db8::2', protocol: 'tcp', dstPort: port, tcpFlags: 0x02 });
  // 443: both allow. Other ports: the enforced rule allows, the candidate's default denies.
  t.is(datapath.tcProgram.testRun({ data: frame(443) }).retval, 0);
  const total = SHADOW_RING_SAMPLES + 10;
  for (let i = 0; i < total; i++) t.is(datapath.xdpProgram.testRun({ data: frame(1000 + i) }).retval, XDP_PASS);
  const shadow = shadowOf(datapath);
  t.regex(shadow.candidate, /^[0-9a-f]{64}$/, 'unnamed: the hex of its fingerprint');
  t.is(packets(shadow.classified), total + 1);
  t.is(packets(shadow.wouldDrop), total);
  t.is(packets(shadow.rules.get(5)), 1);
  t.is(packets(shadow.defaultAction), total);
  // The ring wrapped (more packets than its slots); the datapath returns the proto's bound.
  t.is(shadow.samples.length, MAX_SHADOW_SAMPLES);
  t.deepEqual(
    shadow.samples.map((s) => s.port),
    Array.from({ length: MAX_SHADOW_SAMPLES }, (_, i) => 1000 + total - MAX_SHADOW_SAMPLES + i),
    'the newest, oldest first',
  );
  t.like(shadow.samples[0], { family: 6, proto: 6, src: '2001:db8::1', dst: '2001:db8::2', verdict: 'wouldDrop', enforcedRuleId: 1, candidateRuleId: DEFAULT_RULE_ID });
});

test('shadow - a rate_limit rule counts as its action: the candidate takes no tokens and differs from no allow', async (t) => {
  const pinRoot = freshRoot();
  const datapath = await EbpfDatapath.open({ pinRoot });
  t.teardown(() => datapath.close());
  const limited: RuleSpec = { id: 21, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'udp', dstPorts: [], action: 'rate_limit', rateLimit: { pps: 1, burst: 2 } };
  const { rateLimit: _limit, ...unlimited } = limited;
  await datapath.apply({ rules: [{ ...unlimited, id: 20, action: 'allow' }], defaultAction: 'deny' });
  await datapath.setShadow({ rules: [limited], defaultAction: 'deny' });
  const frame = buildFrame({ src: '10.0.0.1', dst: '10.9.9.9', protocol: 'udp', dstPort: 53 });
  for (let i = 0; i < 5; i++) t.is(datapath.xdpProgram.testRun({ data: frame }).retval, XDP_PASS);
  const shadow = shadowOf(datapath);
  t.is(packets(shadow.rules.get(21)), 5);
  t.deepEqual([packets(shadow.wouldDrop), packets(shadow.wouldAllow)], [0, 0]);
  const buckets = BpfMap.openPinned(join(pinRoot, 'ep_buckets'));
  t.teardown(() => buckets.close());
  t.is([...buckets.keys()].length, 0, 'no token bucket made for the candidate');
  // Enforcing the limit, the candidate allowing: a drop by the bucket is not a verdict of the rule set.
  await datapath.apply({ rules: [limited], defaultAction: 'deny' });
  await datapath.setShadow({ rules: [{ ...unlimited, action: 'allow' }], defaultAction: 'deny' });
  const verdicts = Array.from({ length: 4 }, () => datapath.xdpProgram.testRun({ data: frame }).retval);
  t.deepEqual(verdicts, [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP], 'the enforced bucket decides');
  t.deepEqual([packets(shadowOf(datapath).wouldDrop), packets(shadowOf(datapath).wouldAllow)], [0, 0]);
});

test('shadow - bad input changes nothing: an invalid rule or an overlong name is refused and the candidate stays', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(enforced);
  await datapath.setShadow(candidate, 'rev:13');
  const error = await t.throwsAsync(datapath.setShadow({ rules: [{ ...udp(31, 5001, 'deny'), srcCidrs: ['10.0.0.300/8'] }], defaultAction: 'allow' }, 'rev:14'), { instanceOf: RuleSetError });
  t.regex(error?.field ?? '', /^rules\[0\]/);
  const long = await t.throwsAsync(datapath.setShadow(candidate, 'x'.repeat(MAX_SHADOW_NAME_BYTES + 1)), { instanceOf: RuleSetError });
  t.is(long?.field, 'candidate');
  await datapath.setShadow(candidate, 'é'.repeat(MAX_SHADOW_NAME_BYTES / 2));
  t.is(shadowOf(datapath).candidate, 'é'.repeat(MAX_SHADOW_NAME_BYTES / 2), 'a name of exactly the bound, in UTF-8');
  await t.throwsAsync(datapath.setShadow(candidate, 'é'.repeat(MAX_SHADOW_NAME_BYTES / 2) + 'x'), { instanceOf: RuleSetError });
  t.is(shadowOf(datapath).candidate, 'é'.repeat(MAX_SHADOW_NAME_BYTES / 2), 'the refused call left the candidate as it was');
  t.is(datapath.xdpProgram.testRun({ data: buildFrame({ src: addrA, dst: addrB, protocol: 'udp', dstPort: 5001 }) }).retval, XDP_PASS);
  t.is(packets(shadowOf(datapath).wouldDrop), 1, 'and it still shadows');
});
