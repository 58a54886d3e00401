import test from 'ava';
import { BpfMap, encode, loadObject, loadObjectSpec, u16, u32, u64, VerifierError, type BpfObject } from '../src/index.js';
import { buildFixtures, type Fixtures } from './helpers/fixtures.js';

const XDP_ABORTED = 0;
const XDP_DROP = 1;
const XDP_PASS = 2;

let fixtures: Fixtures;
let obj: BpfObject;
test.before(async () => {
  fixtures = await buildFixtures();
  obj = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
});
test.after.always(async () => {
  obj?.close();
  await fixtures?.remove();
});

/** Ethernet + IPv4 + UDP to `port`, with a payload. */
function udpPacket(port: number): Uint8Array {
  const packet = new Uint8Array(14 + 20 + 8 + 16);
  const view = new DataView(packet.buffer);
  view.setUint16(12, 0x0800); // ETH_P_IP
  packet[14] = 0x45; // version 4, ihl 5
  view.setUint16(16, 20 + 8 + 16); // total length
  packet[22] = 64; // ttl
  packet[23] = 17; // IPPROTO_UDP
  packet.set([10, 0, 0, 2], 26);
  packet.set([10, 0, 0, 1], 30);
  view.setUint16(34, 40000); // source port
  view.setUint16(36, port);
  view.setUint16(38, 8 + 16);
  return packet;
}

test.serial('Program.testRun - returns the verdict and the packet; the map decides the verdict', (t) => {
  const program = obj.program('xdp_drop_udp');
  t.like(program, { name: 'xdp_drop_udp', type: 'xdp' });
  const packet = udpPacket(4789);
  const passed = program.testRun({ data: packet });
  t.is(passed.retval, XDP_PASS);
  t.deepEqual(passed.data, packet);
  obj.map('drop_port').set(encode(u32, 0), encode(u16, 4789));
  t.is(program.testRun({ data: packet }).retval, XDP_DROP);
  t.is(program.testRun({ data: udpPacket(53) }).retval, XDP_PASS);
  obj.map('drop_port').set(encode(u32, 0), encode(u16, 0));
});

test('Program.verifiedInsns - what the verifier processed: 2 for a program of 2 instructions, more for one that branches', (t) => {
  t.is(obj.program('xdp_pass').verifiedInsns, 2); // r0 = XDP_PASS; exit
  t.true(obj.program('xdp_drop_udp').verifiedInsns > 20);
});

test.serial('Program.testRun - repeat runs it n times and reports the per-run duration', (t) => {
  const counters = obj.map('counters');
  const sum = (): bigint => (counters.getPerCpu(encode(u32, 1)) ?? []).reduce((total, v) => total + new DataView(v.buffer).getBigUint64(0, true), 0n);
  const before = sum();
  const result = obj.program('xdp_drop_udp').testRun({ data: udpPacket(53), repeat: 1000 });
  t.is(result.retval, XDP_PASS);
  t.is(sum() - before, 1000n);
  t.true(result.durationNs > 0);
  t.true(result.durationNs < 1_000_000, `${result.durationNs} ns per run is an average, not a total`);
});

test('Program.testRun - a too small output buffer is ENOSPC; errors name the program', (t) => {
  const error = t.throws(() => obj.program('xdp_pass').testRun({ data: udpPacket(1), dataSizeOut: 10 }));
  t.is((error as { code?: string }).code, 'ENOSPC');
  t.regex(error?.message ?? '', /^program test run name=xdp_pass: ENOSPC/);
});

test('Program.testRun - runs sched_cls programs on an skb built from the data', async (t) => {
  await using tc = await loadObject(await loadObjectSpec(fixtures.path('tc-count')));
  t.is(tc.program('tc_drop').testRun({ data: udpPacket(1) }).retval, 2 /* TC_ACT_SHOT */);
  t.is(tc.program('tc_count_ingress').testRun({ data: udpPacket(1), repeat: 5 }).retval, 0 /* TC_ACT_OK */);
  t.deepEqual(tc.map('tc_counts').get(encode(u32, 0)), encode(u64, 5n));
});

test('loadObject - a verifier rejection is VerifierError with the log naming the problem', async (t) => {
  const spec = await loadObjectSpec(fixtures.path('verifier-reject'));
  const error = await t.throwsAsync(loadObject(spec), { instanceOf: VerifierError });
  t.is(error?.program, 'xdp_unchecked');
  t.is(error?.code, 'EACCES');
  t.regex(error?.operation ?? '', /^load object path=.*verifier-reject\.bpf\.o program=xdp_unchecked$/);
  t.regex(error?.log ?? '', /invalid access to packet/);
  t.regex(error?.message ?? '', /invalid access to packet/);
  t.regex(error?.message ?? '', /libbpf: prog 'xdp_unchecked': failed to load/);
});

test('loadObject - logLevel 1 with a small logSize still reports the verifier error', async (t) => {
  const spec = await loadObjectSpec(fixtures.path('verifier-reject'));
  const error = await t.throwsAsync(loadObject(spec, { logLevel: 1, logSize: 64 * 1024 }), { instanceOf: VerifierError });
  t.regex(error?.log ?? '', /R1 offset is outside of the packet|invalid access to packet/);
});

test('BpfMap.setInnerMap - switches the inner map a program reads, atomically', async (t) => {
  await using mim = await loadObject(await loadObjectSpec(fixtures.path('map-in-map')));
  const outer = mim.map('verdicts');
  const program = mim.program('xdp_inner_verdict');
  t.is(program.testRun({ data: udpPacket(1) }).retval, XDP_ABORTED); // slot empty
  const drop = BpfMap.create({ type: 'array', name: 'drop', keySize: 4, valueSize: 4, maxEntries: 1 });
  const pass = BpfMap.create({ type: 'array', name: 'pass', keySize: 4, valueSize: 4, maxEntries: 1 });
  t.teardown(() => {
    drop.close();
    pass.close();
  });
  drop.set(encode(u32, 0), encode(u32, XDP_DROP));
  pass.set(encode(u32, 0), encode(u32, XDP_PASS));
  outer.setInnerMap(encode(u32, 0), drop);
  t.is(program.testRun({ data: udpPacket(1) }).retval, XDP_DROP);
  outer.setInnerMap(encode(u32, 0), pass);
  t.is(program.testRun({ data: udpPacket(1) }).retval, XDP_PASS);
  // Reading a map-in-map slot from user space yields the inner map's id.
  t.deepEqual(outer.get(encode(u32, 0)), encode(u32, pass.id));
  // An inner map of another shape is refused.
  const wrong = BpfMap.create({ type: 'hash', name: 'wrong', keySize: 4, valueSize: 4, maxEntries: 1 });
  t.teardown(() => wrong.close());
  const error = t.throws(() => outer.setInnerMap(encode(u32, 1), wrong));
  t.is((error as { code?: string }).code, 'EINVAL');
  t.regex(error?.message ?? '', /^map set inner name=verdicts inner=wrong: EINVAL/);
});

test('BpfMap.create - innerMap builds a map-in-map from user space', (t) => {
  const template = BpfMap.create({ type: 'array', keySize: 4, valueSize: 4, maxEntries: 1 });
  const outer = BpfMap.create({ type: 'hash_of_maps', name: 'tables', keySize: 4, valueSize: 4, maxEntries: 4, innerMap: template });
  t.teardown(() => {
    outer.close();
    template.close();
  });
  outer.setInnerMap(encode(u32, 7), template);
  t.deepEqual(outer.get(encode(u32, 7)), encode(u32, template.id));
});
