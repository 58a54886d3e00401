// Real traffic: two network namespaces joined by a veth pair. XDP on the uplink side, TC on the
// workload side; denied flows must really drop, allowed ones pass, and the datapath's counters
// must match what was sent and what the kernel's own counters saw.
import { join } from 'node:path';
import test from 'ava';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, QuietVethPair } from './datapath-helpers.js';

const pair = new QuietVethPair('ep', '10.201.0');
const { nsA, nsB, vethA, vethB, addrA, addrB } = pair;
const bpffs = mountBpffs();

const inNs = (ns: string, ...args: string[]): string => pair.inNs(ns, ...args);

test.before(() => pair.create());

test.after.always(() => {
  pair.remove();
  bpffs.unmount();
});

// Ip InReceives of a namespace: datagrams that reached IP, i.e. got past XDP and TC ingress.
const ipInReceives = (ns: string): number => {
  const lines = inNs(ns, 'cat', '/proc/net/snmp').split('\n').filter((line) => line.startsWith('Ip:'));
  const names = (lines[0] ?? '').split(/\s+/);
  const values = (lines[1] ?? '').split(/\s+/);
  return Number(values[names.indexOf('InReceives')]);
};
const txPackets = (ns: string, dev: string): number => Number(inNs(ns, 'cat', `/sys/class/net/${dev}/statistics/tx_packets`));
const sendUdp = (ns: string, dst: string, port: number, count: number): void => {
  const script = `import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(${count}): s.sendto(b'x'*32,('${dst}',${port}))`;
  inNs(ns, 'python3', '-c', script);
};
const attachIn = (ns: string, iface: string, role: string): void => {
  inNs(ns, process.execPath, '--import=tsx', join(import.meta.dirname, 'datapath-netns-attach.ts'), 'attach', bpffs.path, iface, role);
};

test('traffic - XDP and TC really drop denied flows and count what passed', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  t.teardown(() => datapath.close());
  const ruleSet: RuleSetSpec = {
    rules: [
      { id: 1, srcCidrs: [`${addrA}/32`], dstCidrs: [`${addrB}/32`], protocol: 'udp', dstPorts: [{ from: 5001, to: 5001 }], action: 'deny' },
      { id: 2, srcCidrs: ['10.201.0.0/24'], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: 5002, to: 5002 }], action: 'allow' },
      { id: 3, srcCidrs: [`${addrB}/32`], dstCidrs: [`${addrA}/32`], protocol: 'udp', dstPorts: [{ from: 5003, to: 5003 }], action: 'deny' },
    ],
    defaultAction: 'allow',
  };
  await datapath.apply(ruleSet);
  const n = 50;
  inNs(nsA, 'ping', '-c', '1', '-W', '2', addrB);

  // Phase 1: XDP on B's uplink only. A -> B:5001 is denied at B's XDP hook.
  attachIn(nsB, vethB, 'uplink');
  t.log(`XDP hook: ${/xdp\S*/.exec(inNs(nsB, 'ip', 'link', 'show', vethB))?.[0] ?? 'none'}`);
  let counters = datapath.readCounters();
  let sentA = txPackets(nsA, vethA);
  let receivedB = ipInReceives(nsB);
  sendUdp(nsA, addrB, 5001, n);
  t.is(txPackets(nsA, vethA) - sentA, n, 'A sent them');
  t.is(ipInReceives(nsB) - receivedB, 0, 'none reached B');
  t.is(datapath.readCounters().rules.get(1)?.packets, (counters.rules.get(1)?.packets ?? 0) + n);

  // Phase 2: TC on A's workload interface too. B -> A:5003 is denied at A's TC ingress.
  attachIn(nsA, vethA, 'workload');
  counters = datapath.readCounters();
  const sentB = txPackets(nsB, vethB);
  const receivedA = ipInReceives(nsA);
  sendUdp(nsB, addrA, 5003, n);
  t.is(txPackets(nsB, vethB) - sentB, n, 'B sent them');
  t.is(ipInReceives(nsA) - receivedA, 0, 'none reached A');
  t.is(datapath.readCounters().rules.get(3)?.packets, (counters.rules.get(3)?.packets ?? 0) + n);

  // A -> B:5001 now dies at A's TC egress: it never leaves A.
  counters = datapath.readCounters();
  sentA = txPackets(nsA, vethA);
  sendUdp(nsA, addrB, 5001, n);
  t.is(txPackets(nsA, vethA) - sentA, 0, 'dropped before the wire');
  t.is(datapath.readCounters().rules.get(1)?.packets, (counters.rules.get(1)?.packets ?? 0) + n);

  // A -> B:5002 is allowed: TC egress and XDP each count it once, and B receives all of it.
  counters = datapath.readCounters();
  receivedB = ipInReceives(nsB);
  sendUdp(nsA, addrB, 5002, n);
  t.is(datapath.readCounters().rules.get(2)?.packets, (counters.rules.get(2)?.packets ?? 0) + 2 * n);
  t.true(ipInReceives(nsB) - receivedB >= n, 'B received them (plus any ICMP unreachable traffic)');

  // Switching the rule set takes effect on live traffic: deny 5002 now.
  await datapath.apply({ ...ruleSet, rules: [{ ...(ruleSet.rules[1] as RuleSetSpec['rules'][number]), id: 4, action: 'deny' }, ...ruleSet.rules] });
  receivedB = ipInReceives(nsB);
  sendUdp(nsA, addrB, 5002, n);
  t.is(ipInReceives(nsB) - receivedB, 0);
  t.is(datapath.readCounters().rules.get(4)?.packets, n);
});
