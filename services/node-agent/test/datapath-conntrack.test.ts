// Connection tracking on real traffic (bpf/CONNTRACK.md): a "node" namespace whose uplink carries
// the datapath (XDP ingress + TC egress) and a "far" namespace, joined by a veth pair, IPv4 and
// IPv6. The uplink's rule set is stateful with a default deny inbound: only connection tracking
// lets the node's own flows get their replies. Traffic is real sockets (conntrack-traffic.py),
// ping and iperf3.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { parseAddress } from '@edgeplane/proto';
import { BpfMap, encode, u32, u64 } from 'libbpf-ts';
import { DEFAULT_CONNTRACK_CONFIG, type ConnectionEntry } from '../src/datapath/conntrack.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { ctKeyOfFlow, type CtKey } from '../src/datapath/conntrack-key.js';
import { KernelCt4 } from './ct4-helpers.js';
import { addVethPair, mountBpffs, removeNetnsRig } from './datapath-helpers.js';

const id = `${process.pid % 10000}${Math.floor(Math.random() * 100)}`;
const nsN = `ctN${id}`;
const nsF = `ctF${id}`;
const vethN = `ctn${id}`;
const vethF = `ctf${id}`;
const v4 = { node: '10.202.0.1', far: '10.202.0.2' };
const v6 = { node: 'fd00:202::1', far: 'fd00:202::2' };
const families = [
  { name: 'IPv4', ...v4 },
  { name: 'IPv6', ...v6 },
] as const;
const bpffs = mountBpffs();
const script = join(import.meta.dirname, 'conntrack-traffic.py');
const children = new Set<ChildProcess>();

const run = (command: string, ...args: string[]): string => execFileSync(command, args, { encoding: 'utf8' });
const inNs = (ns: string, ...args: string[]): string => run('ip', 'netns', 'exec', ns, ...args);
/** Runs a conntrack-traffic.py command in `ns`; its JSON line. */
const py = <T = { ok: boolean; sport?: number; error?: string }>(ns: string, ...args: (string | number)[]): T => {
  const lines = inNs(ns, 'python3', script, ...args.map(String)).trim().split('\n');
  return JSON.parse(lines[lines.length - 1] as string) as T;
};
/** Whether `command` in `ns` exits 0. */
const succeeds = (ns: string, ...command: string[]): boolean => {
  try {
    inNs(ns, ...command);
    return true;
  } catch {
    return false;
  }
};
/** Starts a long-running command in `ns`; resolves once it prints `ready` (or the word given; at once if false). */
const start = async (ns: string, args: string[], ready: boolean | string = true): Promise<{ child: ChildProcess; output: () => string; exit: Promise<number | null> }> => {
  const word = typeof ready === 'string' ? ready : 'ready';
  const child = spawn('ip', ['netns', 'exec', ns, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  // 'close', not 'exit': the output read to its end.
  const exit = new Promise<number | null>((resolve) => child.once('close', (code) => {
    children.delete(child);
    resolve(code);
  }));
  if (ready) {
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (output.includes(word)) resolve();
      };
      child.stdout?.on('data', check);
      void exit.then(() => reject(new Error(`${args.join(' ')} exited before it was ready: ${output}`)));
      check();
    });
  }
  return { child, output: () => output, exit };
};
const stop = async (proc: { child: ChildProcess; exit: Promise<number | null> }): Promise<void> => {
  proc.child.kill('SIGKILL');
  await proc.exit;
};
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const attach = (pinRoot: string): void => {
  inNs(nsN, process.execPath, '--import=tsx', join(import.meta.dirname, 'datapath-netns-attach.ts'), 'attach', pinRoot, vethN, 'uplink');
};

/** The node's uplink policy: inbound only to 7000 and 5201 (tracked), outbound tracked, default deny. */
const stateful: RuleSetSpec = {
  rules: [
    { id: 1, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 7000, to: 7000 }], action: 'allow', track: true },
    { id: 2, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 5201, to: 5201 }], action: 'allow', track: true },
  ],
  defaultAction: 'deny',
  trackEgress: true,
};

let datapath: EbpfDatapath;

test.before(async () => {
  const mac = addVethPair({ ns: nsN, dev: vethN }, { ns: nsF, dev: vethF });
  for (const [ns, dev, a4, a6] of [
    [nsN, vethN, v4.node, v6.node],
    [nsF, vethF, v4.far, v6.far],
  ] as const) {
    inNs(ns, 'sysctl', '-qw', `net.ipv6.conf.${dev}.accept_ra=0`);
    inNs(ns, 'ip', 'addr', 'add', `${a4}/24`, 'dev', dev);
    inNs(ns, 'ip', '-6', 'addr', 'add', `${a6}/64`, 'dev', dev, 'nodad');
  }
  // Static neighbours: neighbour discovery is ICMPv6, which the default deny would drop.
  for (const [ns, dev, peerNs, peerDev, p4, p6] of [
    [nsN, vethN, nsF, vethF, v4.far, v6.far],
    [nsF, vethF, nsN, vethN, v4.node, v6.node],
  ] as const) {
    inNs(ns, 'ip', 'neigh', 'replace', p4, 'lladdr', mac(peerNs, peerDev), 'dev', dev, 'nud', 'permanent');
    inNs(ns, 'ip', '-6', 'neigh', 'replace', p6, 'lladdr', mac(peerNs, peerDev), 'dev', dev, 'nud', 'permanent');
  }
  datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  attach(bpffs.path);
  // Echo servers: in the far namespace for the node's outbound flows, in the node for inbound ones.
  for (const family of families) {
    await start(nsF, ['python3', script, 'tcp-server', family.far, '8000']);
    await start(nsF, ['python3', script, 'udp-server', family.far, '8001']);
    await start(nsN, ['python3', script, 'tcp-server', family.node, '7000']);
    await start(nsN, ['python3', script, 'tcp-server', family.node, '9000']);
    await start(nsN, ['python3', script, 'udp-server', family.node, '9001']);
  }
});

test.after.always(() => removeNetnsRig({ children, datapath, namespaces: [nsN, nsF], bpffs }));

const find = (filter: Parameters<EbpfDatapath['listConnections']>[0]): ConnectionEntry[] => datapath.listConnections(filter, 1000);

test.serial('conntrack - without egress tracking the default deny drops the replies of the node\'s own flows', async (t) => {
  await datapath.apply({ ...stateful, trackEgress: false });
  t.false(py(nsN, 'tcp-client', v4.far, 8000, 1).ok);
  t.false(py(nsN, 'udp-client', v4.far, 8001, 1).ok);
});

test.serial('conntrack - outbound TCP, UDP and ping from the node work; unsolicited inbound is dropped', async (t) => {
  await datapath.apply(stateful);
  const before = datapath.readCounters();
  for (const family of families) {
    const tcp = py(nsN, 'tcp-client', family.far, 8000, 3);
    t.true(tcp.ok, `${family.name} outbound TCP: ${tcp.error ?? ''}`);
    t.true(py(nsN, 'udp-client', family.far, 8001, 3).ok, `${family.name} outbound UDP`);
    t.true(succeeds(nsN, 'ping', '-c', '2', '-i', '0.2', '-W', '2', family.far), `${family.name} ping from the node`);
    const entry = find({ addr: family.far, port: 8000, proto: 'tcp' }).find((e) => e.sport === tcp.sport);
    t.truthy(entry, `${family.name} TCP entry`);
    t.like(entry, { family: family.name === 'IPv4' ? 4 : 6, src: family.node, dst: family.far, dport: 8000, table: 'established', egress: true, ruleId: 0xffff_fffe, state: 'closing' });
    t.true(entry!.packets.original >= 3 && entry!.packets.reply >= 3, `${family.name} TCP counted both ways`);
    const echo = find({ addr: family.far, proto: family.name === 'IPv4' ? 'icmp' : 'icmpv6' });
    t.true(echo.some((e) => e.state === 'icmp' && e.table === 'established'), `${family.name} echo entry`);

    t.false(py(nsF, 'tcp-client', family.node, 9000, 1).ok, `${family.name} unsolicited inbound TCP`);
    t.false(py(nsF, 'udp-client', family.node, 9001, 1).ok, `${family.name} unsolicited inbound UDP`);
    t.false(succeeds(nsF, 'ping', '-c', '1', '-W', '1', family.node), `${family.name} unsolicited ping`);
  }
  const after = datapath.readCounters();
  t.true(after.conntrack.created.packets - before.conntrack.created.packets >= 6);
  // Created straight in ep_ct (far below its direct mark): no flow had to move at its first reply.
  t.is(after.conntrack.promoted.packets - before.conntrack.promoted.packets, 0);
  t.true(after.conntrack.established.packets > before.conntrack.established.packets);
  t.true(after.defaultAction.packets - before.defaultAction.packets >= 6, 'the unsolicited packets met the default deny');
  const occupancy = datapath.readConntrackOccupancy();
  // TCP entries of closed flows may have left already (closing timeout 10 s); UDP and echo ones stay 60 s.
  t.true(occupancy.established >= 4);
  t.is(occupancy.established, find({ table: 'established' }).length);
});

test.serial('conntrack - an allowed inbound TCP connection works both ways and is tracked under its rule', async (t) => {
  await datapath.apply(stateful);
  const counted = datapath.readCounters().rules.get(1)?.packets ?? 0;
  for (const family of families) {
    const tcp = py(nsF, 'tcp-client', family.node, 7000, 3);
    t.true(tcp.ok, `${family.name}: ${tcp.error ?? ''}`);
    const entry = find({ addr: family.far, port: 7000 }).find((e) => e.sport === tcp.sport);
    t.like(entry, { src: family.far, dst: family.node, dport: 7000, ruleId: 1, egress: false, table: 'established', state: 'closing' });
    t.deepEqual(entry?.flags, ['seen_reply', 'fin_orig', 'fin_reply']);
  }
  // Per-rule counters count what rules classified: the first packet of each connection only.
  t.is((datapath.readCounters().rules.get(1)?.packets ?? 0) - counted, 2);
});

test.serial('conntrack - an ICMP error about an outbound flow reaches the sender, one about no flow does not', async (t) => {
  await datapath.apply(stateful);
  const before = datapath.readCounters().conntrack.related.packets;
  for (const family of families) {
    t.true(py(nsN, 'udp-client', family.far, 8001, 3, 40000).ok);
    const listener = await start(nsN, ['python3', script, 'icmp-listen', family.name === 'IPv4' ? '4' : '6', '5']);
    // The unrelated error first: were it not dropped, the listener would report it.
    py(nsF, 'icmp-error', family.node, family.node, family.far, 17, 40001, 8001);
    py(nsF, 'icmp-error', family.node, family.node, family.far, 17, 40000, 8001);
    await listener.exit;
    const error = (JSON.parse(listener.output().trim().split('\n').pop() as string) as { error: number[] | null }).error;
    t.deepEqual(error, family.name === 'IPv4' ? [3, 4, 40000] : [2, 0, 40000], `${family.name}: fragmentation needed / packet too big`);
  }
  t.is(datapath.readCounters().conntrack.related.packets - before, 2);
});

test.serial('conntrack - a closed TCP flow and an idle UDP flow leave the table after their timeouts', async (t) => {
  await datapath.apply(stateful);
  datapath.setConntrackConfig({ ...DEFAULT_CONNTRACK_CONFIG, tcpClosingMs: 5000, udpMs: 5000 });
  t.teardown(() => datapath.setConntrackConfig(DEFAULT_CONNTRACK_CONFIG));
  const tcp = py(nsN, 'tcp-client', v4.far, 8000, 3);
  const tcpEntry = find({ addr: v4.far, port: 8000 }).find((e) => e.sport === tcp.sport);
  const udp = py(nsN, 'udp-client', v4.far, 8001, 3, 40200);
  const udpEntry = find({ addr: v4.far, port: 8001 }).find((e) => e.sport === 40200);
  t.true(tcp.ok && udp.ok);
  t.is(tcpEntry?.state, 'closing');
  t.true((tcpEntry?.expiresInMs ?? Infinity) <= 5000);
  t.is(udpEntry?.state, 'udp');
  t.true((udpEntry?.expiresInMs ?? Infinity) <= 5000);
  // IPv4 TCP and UDP: in ep_ct4 (layout 6), one line each.
  const table = KernelCt4.open(bpffs.path);
  t.teardown(() => table.close());
  const keyOf = (e: ConnectionEntry): CtKey => {
    const pad = (a: string): Uint8Array => {
      const out = new Uint8Array(16);
      out.set(parseAddress(a) as Uint8Array);
      return out;
    };
    // The listing shows the original direction; the table's key is the flow's canonical one.
    return ctKeyOfFlow({ family: e.family, proto: e.proto, sport: e.sport, dport: e.dport, src: pad(e.src), dst: pad(e.dst) }).key;
  };
  t.truthy(table.find(keyOf(tcpEntry!)));
  t.truthy(table.find(keyOf(udpEntry!)));
  await sleep(5100 - (udpEntry?.expiresInMs === undefined ? 0 : 5000 - udpEntry.expiresInMs));
  // Past their deadlines: no longer listed, still stored until someone deletes them.
  t.is(find({ addr: v4.far, port: 8000 }).find((e) => e.sport === tcp.sport), undefined);
  t.is(find({ addr: v4.far, port: 8001 }).find((e) => e.sport === 40200), undefined);
  t.truthy(table.find(keyOf(tcpEntry!)));
  const expiredBefore = datapath.readCounters().conntrack.expired.packets;
  t.true(datapath.sweepConntrack(100_000) >= 2);
  t.is(table.find(keyOf(tcpEntry!)), undefined);
  t.is(table.find(keyOf(udpEntry!)), undefined);
  t.true(datapath.readCounters().conntrack.expired.packets - expiredBefore >= 2);
});

test.serial('conntrack - 1,000 generation switches under a running TCP stream break nothing', async (t) => {
  const setA: RuleSetSpec = { ...stateful, cutOnDeny: true };
  // B adds an explicit deny that does not match the stream: a cut re-check runs at every switch.
  const setB: RuleSetSpec = { ...setA, rules: [{ id: 3, srcCidrs: ['192.0.2.0/24'], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' }, ...setA.rules] };
  await datapath.apply(setA);
  const server = await start(nsF, ['iperf3', '-s', '-1', '-B', v4.far, '-p', '5202'], false);
  await sleep(500);
  const client = await start(nsN, ['iperf3', '-c', v4.far, '-p', '5202', '-t', '6', '-i', '0.5', '-J'], false);
  await sleep(500);
  const cutBefore = datapath.readCounters().conntrack.cut.packets;
  const modes = new Map<string, number>();
  for (let i = 1; i <= 1000; i++) {
    const base = i % 2 === 1 ? setB : setA;
    const set = i % 50 === 0 ? { ...base, rules: [...base.rules, { id: 5000 + i, srcCidrs: [`203.0.113.${i % 250}/32`], dstCidrs: [], protocol: 'udp' as const, dstPorts: [], action: 'deny' as const }] } : base;
    const result = await datapath.apply(set);
    modes.set(result.mode, (modes.get(result.mode) ?? 0) + 1);
  }
  const code = await client.exit;
  await server.exit;
  const report = JSON.parse(client.output()) as { error?: string; intervals: { sum: { bytes: number } }[]; end: { sum_received: { bytes: number } } };
  t.log(`modes ${JSON.stringify([...modes])}, received ${report.end.sum_received.bytes} bytes in ${report.intervals.length} intervals`);
  t.is(code, 0);
  t.is(report.error, undefined);
  t.true(report.intervals.length >= 10);
  t.true(report.intervals.every((interval) => interval.sum.bytes > 0), 'data flowed in every interval');
  t.is(datapath.readCounters().conntrack.cut.packets - cutBefore, 0);
});

test.serial('conntrack - a change that denies a flow cuts it with cutOnDeny, and keeps it without', async (t) => {
  for (const cutOnDeny of [false, true]) {
    await datapath.apply({ ...stateful, cutOnDeny });
    const hold = await start(nsF, ['python3', script, 'tcp-hold', v4.node, '7000', '2', '2'], 'connected');
    await sleep(300);
    // Port 7000 no longer allowed: the connection is now one the policy denies.
    await datapath.apply({ ...stateful, cutOnDeny, rules: stateful.rules.filter((rule) => rule.id !== 1) });
    await hold.exit;
    const result = JSON.parse(hold.output().trim().split('\n').pop() as string) as { ok: boolean };
    t.is(result.ok, !cutOnDeny, cutOnDeny ? 'cut' : 'kept');
  }
  t.true(datapath.readCounters().conntrack.cut.packets > 0);
});

test.serial('conntrack - an agent killed with SIGKILL and restarted does not break a running stream', async (t) => {
  await datapath.apply(stateful);
  const agentScript = join(import.meta.dirname, 'datapath-conntrack-agent.ts');
  const variant = (n: number): RuleSetSpec => ({ ...stateful, rules: [...stateful.rules, { id: 100 + n, srcCidrs: [`198.51.100.${n}/32`], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' }] });
  const agent = (n: number): Promise<{ child: ChildProcess; output: () => string; exit: Promise<number | null> }> =>
    start(nsN, [process.execPath, '--import=tsx', agentScript, bpffs.path, vethN, JSON.stringify(variant(n))]);
  const server = await start(nsN, ['iperf3', '-s', '-1', '-B', v4.node, '-p', '5201'], false);
  const first = await agent(1);
  await sleep(500);
  const client = await start(nsF, ['iperf3', '-c', v4.node, '-p', '5201', '-t', '8', '-i', '0.5', '-J'], false);
  await sleep(1500);
  first.child.kill('SIGKILL');
  t.is(await first.exit, null, 'killed by the signal');
  const second = await agent(2);
  t.regex(second.output(), /ready \d+ installed/);
  const code = await client.exit;
  await server.exit;
  await stop(second);
  const report = JSON.parse(client.output()) as { error?: string; intervals: { sum: { bytes: number } }[]; end: { sum_received: { bytes: number } } };
  t.is(code, 0);
  t.is(report.error, undefined);
  t.true(report.intervals.length >= 14);
  t.true(report.intervals.every((interval) => interval.sum.bytes > 0), 'data flowed in every interval');
});

test.serial('conntrack - with ep_ct4 and ep_ct full, established flows and a control endpoint still pass and insert failures count', async (t) => {
  const pinRoot = join(bpffs.path, 'tiny');
  mkdirSync(pinRoot);
  // ep_ct4 of one window (its eight slots are every flow's): the first eight flows take it, the
  // rest go to ep_ct (sixteen) and ep_ct_new as before it existed.
  const tiny = await EbpfDatapath.open({ pinRoot, ctEntries: 16, ct4Slots: 8 });
  t.teardown(() => tiny.close());
  await tiny.apply(stateful);
  attach(pinRoot);
  t.teardown(() => attach(bpffs.path));
  // An established connection first, held open while the table fills.
  const hold = await start(nsN, ['python3', script, 'tcp-hold', v4.far, '8000', '2', '4'], 'connected');
  t.true(py(nsN, 'udp-flows', v4.far, 8001, 2, 41000, 24).ok, 'every UDP flow got its reply');
  // 25 flows: 8 in ep_ct4, 8 created in ep_ct below its mark, 9 in ep_ct_new of which 8 moved.
  t.deepEqual(tiny.readConntrackOccupancy(), { established: 8 + 16, new: 1, reverseNat: 0 });
  t.true(tiny.readCounters().conntrack.insertFailed.packets >= 1);
  // A flow that could not move keeps working from ep_ct_new.
  t.true(py(nsN, 'udp-client', v4.far, 8001, 2, 41023, 3).ok);
  await hold.exit;
  t.true((JSON.parse(hold.output().trim().split('\n').pop() as string) as { ok: boolean }).ok, 'the held connection kept echoing');

  tiny.setControlEndpoints([{ family: 4, proto: 'tcp', addr: v4.far, port: 6000 }]);
  // The port bitmap holds exactly the endpoints' ports, and an open derives it from the endpoints.
  const ports = BpfMap.openPinned(join(pinRoot, 'ep_ct_control_ports'));
  t.teardown(() => ports.close());
  const setBits = (): number[] =>
    [...ports.entries()].flatMap(([k, v]) => {
      const word = new DataView(k.buffer, k.byteOffset).getUint32(0, true);
      const bits = new DataView(v.buffer, v.byteOffset).getBigUint64(0, true);
      return Array.from({ length: 64 }, (_, i) => i).filter((i) => ((bits >> BigInt(i)) & 1n) === 1n).map((i) => word * 64 + i);
    });
  t.deepEqual(setBits(), [6000]);
  ports.set(encode(u32, 6000 >> 6), encode(u64, 0n));
  t.false(py(nsF, 'tcp-client', v4.node, 9000, 1, 6000).ok, 'a clear bit skips the endpoint (the bitmap is the filter)');
  (await EbpfDatapath.open({ pinRoot, ctEntries: 16 })).close();
  t.deepEqual(setBits(), [6000], 'open() rebuilt the bitmap from ep_ct_control');
  t.true(py(nsF, 'tcp-client', v4.node, 9000, 2, 6000).ok, 'from the control endpoint');
  t.false(py(nsF, 'tcp-client', v4.node, 9000, 1, 6001).ok, 'from another port of the same host');
  t.true(tiny.readCounters().conntrack.control.packets >= 3);
  tiny.setControlEndpoints([]);
  t.false(py(nsF, 'tcp-client', v4.node, 9000, 1, 6000).ok, 'after the endpoint was removed');
  t.deepEqual(setBits(), []);
});

test('conntrack - bad control endpoints, timeouts and filters are refused and change nothing', (t) => {
  t.throws(() => datapath.setControlEndpoints([{ family: 4, proto: 'tcp', addr: '::1', port: 1 }]), { name: 'ConntrackInputError', message: /endpoints\[0\]\.addr/ });
  t.throws(() => datapath.setControlEndpoints([{ family: 4, proto: 'tcp', addr: '10.0.0.1', port: 0 }]), { name: 'ConntrackInputError', message: /port/ });
  t.throws(() => datapath.setConntrackConfig({ ...DEFAULT_CONNTRACK_CONFIG, udpMs: 0 }), { name: 'ConntrackInputError', message: /udpMs/ });
  t.deepEqual(datapath.conntrackConfig, DEFAULT_CONNTRACK_CONFIG);
  t.throws(() => datapath.listConnections({ addr: 'nope' }, 10), { name: 'ConntrackInputError', message: /filter\.addr/ });
  t.throws(() => datapath.listConnections({}, 0), { name: 'ConntrackInputError', message: /limit/ });
});
