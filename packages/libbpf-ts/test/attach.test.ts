// XDP and TC on a real veth: the host end stays in the root namespace (this process attaches to
// it), traffic comes from the peer end inside a namespace the test creates and always removes.
import test from 'ava';
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import {
  attachTc,
  attachTcx,
  attachXdp,
  clearTcx,
  destroyTcHook,
  detachTc,
  detachTcx,
  detachTcxId,
  detachXdp,
  encode,
  ifindex,
  interfaces,
  LibbpfError,
  loadObject,
  loadObjectSpec,
  NotFoundError,
  Program,
  queryTc,
  queryTcx,
  queryXdp,
  tcxSupported,
  u16,
  u32,
  u64,
  type BpfObject,
} from '../src/index.js';
import { buildFixtures, type Fixtures } from './helpers/fixtures.js';
import { createVethPair, type VethPair } from './helpers/netns.js';

let fixtures: Fixtures;
let veth: VethPair;
let xdp: BpfObject;
let tc: BpfObject;

test.before(async () => {
  fixtures = await buildFixtures();
  veth = await createVethPair();
  xdp = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
  tc = await loadObject(await loadObjectSpec(fixtures.path('tc-count')));
});

test.after.always(async () => {
  if (veth !== undefined) {
    // Deleting the veth removes its XDP program and clsact qdisc with it.
    await veth.remove();
  }
  xdp?.close();
  tc?.close();
  await fixtures?.remove();
});

/** A UDP socket on the host address counting what arrives. */
async function receiver(address: string): Promise<{ socket: Socket; port: number; received: () => number }> {
  const socket = createSocket('udp4');
  let count = 0;
  socket.on('message', () => count++);
  socket.bind(0, address);
  await once(socket, 'listening');
  return { socket, port: socket.address().port, received: () => count };
}

const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 200));

function counter(slot: number): bigint {
  return (xdp.map('counters').getPerCpu(encode(u32, slot)) ?? []).reduce((sum, v) => sum + u64.decode(v), 0n);
}

test('ifindex - resolves names in this namespace, NotFoundError otherwise', (t) => {
  t.is(ifindex('lo'), 1);
  t.is(ifindex(veth.host), veth.hostIfindex);
  t.throws(() => ifindex(veth.peer), { instanceOf: NotFoundError, message: new RegExp(`ifindex name=${veth.peer}: ENODEV`) });
});

test.serial('attachXdp - native XDP drops UDP to the configured port, and only that', async (t) => {
  const dropped = await receiver(veth.hostAddress);
  const allowed = await receiver(veth.hostAddress);
  t.teardown(() => {
    dropped.socket.close();
    allowed.socket.close();
  });
  xdp.map('drop_port').set(encode(u32, 0), encode(u16, dropped.port));
  const program = xdp.program('xdp_drop_udp');
  const attachment = attachXdp(program, veth.hostIfindex, { mode: 'native' });
  t.deepEqual(attachment, { ifindex: veth.hostIfindex, mode: 'native', progId: program.id });
  t.deepEqual(queryXdp(veth.hostIfindex), { progId: program.id, mode: 'native', nativeProgId: program.id });

  const droppedBefore = counter(0);
  const statsBefore = await veth.hostStats();
  await veth.sendUdp(dropped.port, 20);
  await veth.sendUdp(allowed.port, 10);
  await settle();
  const statsAfter = await veth.hostStats();

  t.is(dropped.received(), 0);
  t.is(allowed.received(), 10);
  t.is(counter(0) - droppedBefore, 20n);
  // The kernel's interface counters show all 30 datagrams reached the host end (ARP may add
  // some); only the 10 allowed reached a socket, so XDP dropped the rest between the two. veth
  // counts an XDP_DROP as received, not in rx_dropped (its xdp_drops are only in ethtool -S).
  t.log(`host ${veth.host} rx packets +${statsAfter.rxPackets - statsBefore.rxPackets}, rx dropped +${statsAfter.rxDropped - statsBefore.rxDropped}`);
  t.true(statsAfter.rxPackets - statsBefore.rxPackets >= 30);

  // Closing a Program fd we opened does not detach: attachments live in the kernel.
  const byId = Program.fromId(program.id);
  byId.close();
  t.is(queryXdp(veth.hostIfindex)?.progId, program.id);

  t.true(detachXdp(veth.hostIfindex));
  t.is(queryXdp(veth.hostIfindex), undefined);
  t.false(detachXdp(veth.hostIfindex));
  await veth.sendUdp(dropped.port, 5);
  await settle();
  t.is(dropped.received(), 5);
  xdp.map('drop_port').set(encode(u32, 0), encode(u16, 0));
});

test.serial('attachXdp - replace swaps with the right old program, fails with a wrong one or none', (t) => {
  const dropper = xdp.program('xdp_drop_udp');
  const passer = xdp.program('xdp_pass');
  attachXdp(passer, veth.hostIfindex, { mode: 'generic' });
  t.deepEqual(queryXdp(veth.hostIfindex), { progId: passer.id, mode: 'generic', genericProgId: passer.id });

  const busy = t.throws(() => attachXdp(dropper, veth.hostIfindex, { mode: 'generic' }), { instanceOf: LibbpfError });
  t.is(busy?.code, 'EBUSY');
  t.is(busy?.operation, `attach xdp ifindex=${veth.hostIfindex} program=xdp_drop_udp mode=generic`);

  const wrong = t.throws(() => attachXdp(dropper, veth.hostIfindex, { mode: 'generic', replace: dropper }), { instanceOf: LibbpfError });
  t.is(wrong?.code, 'EEXIST');
  t.is(queryXdp(veth.hostIfindex)?.progId, passer.id);

  // 'auto' with replace follows the mode the current program runs in (generic here).
  t.like(attachXdp(dropper, veth.hostIfindex, { mode: 'auto', replace: passer }), { mode: 'generic', progId: dropper.id });
  t.is(queryXdp(veth.hostIfindex)?.progId, dropper.id);
  t.like(attachXdp(passer, veth.hostIfindex, { mode: 'generic', replace: dropper.fd }), { progId: passer.id });

  const notExpected = t.throws(() => detachXdp(veth.hostIfindex, { expected: dropper }), { instanceOf: LibbpfError });
  t.is(notExpected?.code, 'EEXIST');
  t.true(detachXdp(veth.hostIfindex, { expected: passer }));
  t.is(queryXdp(veth.hostIfindex), undefined);

  t.like(attachXdp(passer, veth.hostIfindex, { mode: 'auto' }), { mode: 'native' });
  t.true(detachXdp(veth.hostIfindex, { mode: 'native' }));
});

test.serial('attachXdp - the attachment outlives the BpfObject that loaded it', async (t) => {
  const own = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
  const id = own.program('xdp_pass').id;
  attachXdp(own.program('xdp_pass'), veth.hostIfindex, { mode: 'native' });
  own.close();
  own.close();
  t.is(queryXdp(veth.hostIfindex)?.progId, id);
  const adopted = Program.fromId(id);
  t.teardown(() => adopted.close());
  t.is(adopted.name, 'xdp_pass');
  t.true(detachXdp(veth.hostIfindex, { expected: adopted }));
});

test.serial('attachTc - ingress and egress filters count, replace swaps, query and detach', async (t) => {
  const ingress = tc.program('tc_count_ingress');
  const egress = tc.program('tc_count_egress');
  const counts = tc.map('tc_counts').typed(u32, u64);
  const inAttach = attachTc(ingress, veth.hostIfindex, { direction: 'ingress' });
  t.deepEqual(inAttach, { ifindex: veth.hostIfindex, direction: 'ingress', handle: 1, priority: 1, progId: ingress.id });
  const outAttach = attachTc(egress, veth.hostIfindex, { direction: 'egress', handle: 2, priority: 10 });
  t.like(outAttach, { handle: 2, priority: 10, progId: egress.id });
  t.is(queryTc(veth.hostIfindex, { direction: 'ingress', handle: 1, priority: 1 }), ingress.id);
  t.is(queryTc(veth.hostIfindex, { direction: 'egress', handle: 2, priority: 10 }), egress.id);
  t.is(queryTc(veth.hostIfindex, { direction: 'egress', handle: 1, priority: 1 }), undefined);

  const inBefore = counts.get(0) ?? 0n;
  const outBefore = counts.get(1) ?? 0n;
  const sink = await receiver(veth.hostAddress);
  t.teardown(() => sink.socket.close());
  await veth.sendUdp(sink.port, 5);
  await veth.exec('ping', ['-c', '2', '-i', '0.2', '-W', '1', veth.hostAddress]);
  await settle();
  t.is(sink.received(), 5);
  t.true((counts.get(0) ?? 0n) - inBefore >= 7n, 'ingress counted the datagrams and pings');
  t.true((counts.get(1) ?? 0n) - outBefore >= 2n, 'egress counted the ping replies');

  // Without replace an occupied (handle, priority) is EEXIST; with it the filter is swapped.
  const exists = t.throws(() => attachTc(tc.program('tc_drop'), veth.hostIfindex, { direction: 'ingress' }), { instanceOf: LibbpfError });
  t.is(exists?.code, 'EEXIST');
  t.regex(exists?.operation ?? '', /^attach tc ifindex=\d+ direction=ingress program=tc_drop handle=1 priority=1$/);
  attachTc(tc.program('tc_drop'), veth.hostIfindex, { direction: 'ingress', replace: true });
  t.is(queryTc(veth.hostIfindex, { direction: 'ingress', handle: 1, priority: 1 }), tc.program('tc_drop').id);
  await veth.sendUdp(sink.port, 5);
  await settle();
  t.is(sink.received(), 5, 'tc_drop dropped the second batch at ingress');

  detachTc(veth.hostIfindex, { direction: 'ingress', handle: 1, priority: 1 });
  t.is(queryTc(veth.hostIfindex, { direction: 'ingress', handle: 1, priority: 1 }), undefined);
  t.throws(() => detachTc(veth.hostIfindex, { direction: 'ingress', handle: 1, priority: 1 }), { instanceOf: NotFoundError });
  await veth.sendUdp(sink.port, 3);
  await settle();
  t.is(sink.received(), 8);

  t.true(destroyTcHook(veth.hostIfindex));
  t.is(queryTc(veth.hostIfindex, { direction: 'egress', handle: 2, priority: 10 }), undefined);
  t.false(destroyTcHook(veth.hostIfindex));
});

test.serial('attachTc - a program of the wrong type is refused with EINVAL', (t) => {
  const error = t.throws(() => attachTc(xdp.program('xdp_pass'), veth.hostIfindex, { direction: 'ingress' }), { instanceOf: LibbpfError });
  t.is(error?.code, 'EINVAL');
  destroyTcHook(veth.hostIfindex);
});

test.serial('attachTcx - first in the chain, its verdict ends the hook before clsact; replace in place; query and detach', async (t) => {
  t.true(tcxSupported(), 'this kernel (6.6+) has tcx');
  const count = tc.program('tc_count_ingress');
  const drop = tc.program('tc_drop');
  const counts = tc.map('tc_counts').typed(u32, u64);
  const index = veth.hostIfindex;
  t.deepEqual(queryTcx(index, 'ingress'), []);
  const sink = await receiver(veth.hostAddress);
  t.teardown(() => sink.socket.close());

  // A cls_bpf filter that drops everything, behind the tcx program that passes everything.
  attachTc(drop, index, { direction: 'ingress', replace: true });
  attachTcx(count, index, 'ingress');
  t.deepEqual(queryTcx(index, 'ingress'), [count.id]);
  t.is(t.throws(() => attachTcx(count, index, 'ingress'), { instanceOf: LibbpfError })?.code, 'EEXIST');
  const before = counts.get(0) ?? 0n;
  await veth.sendUdp(sink.port, 5);
  await settle();
  t.is(sink.received(), 5, "the tcx program's TC_ACT_OK ends the hook: the clsact filter behind it never runs");
  t.true((counts.get(0) ?? 0n) - before >= 5n);
  destroyTcHook(index);

  // A second program goes first; replace swaps one in its place.
  attachTcx(tc.program('tc_count_egress'), index, 'ingress');
  t.deepEqual(queryTcx(index, 'ingress'), [tc.program('tc_count_egress').id, count.id]);
  attachTcx(drop, index, 'ingress', { replace: count });
  t.deepEqual(queryTcx(index, 'ingress'), [tc.program('tc_count_egress').id, drop.id]);
  t.is(t.throws(() => attachTcx(tc.program('tc_count_ingress'), index, 'ingress', { replace: count }), { instanceOf: LibbpfError })?.code, 'ENOENT');
  await veth.sendUdp(sink.port, 5);
  await settle();
  t.is(sink.received(), 10, "the first program's TC_ACT_OK ends the chain: tc_drop behind it does not run");
  t.true(detachTcx(tc.program('tc_count_egress'), index, 'ingress'));
  await veth.sendUdp(sink.port, 5);
  await settle();
  t.is(sink.received(), 10, 'tc_drop, first now, dropped the batch');

  t.true(detachTcx(drop, index, 'ingress'));
  t.false(detachTcx(drop, index, 'ingress'));
  t.deepEqual(queryTcx(index, 'ingress'), []);
  await veth.sendUdp(sink.port, 3);
  await settle();
  t.is(sink.received(), 13);
  t.is(t.throws(() => attachTcx(xdp.program('xdp_pass'), index, 'egress'), { instanceOf: LibbpfError })?.code, 'EINVAL', 'a program of the wrong type');

  attachTcx(count, index, 'egress');
  attachTcx(drop, index, 'egress');
  t.false(detachTcxId(tc.program('tc_count_egress').id, index, 'egress'), 'not attached there');
  t.is(clearTcx(index, 'egress'), 2);
  t.deepEqual(queryTcx(index, 'egress'), []);
});

test('interfaces - lists the namespace of this process, with the indexes ifindex() gives', (t) => {
  const listed = interfaces();
  t.deepEqual(listed.find((i) => i.name === 'lo'), { name: 'lo', index: ifindex('lo') });
  t.deepEqual(listed.find((i) => i.name === veth.host), { name: veth.host, index: veth.hostIfindex });
  t.is(listed.find((i) => i.name === veth.peer), undefined, 'the peer lives in another namespace');
});
