// The uplink in tc mode (--xdp-mode tc): the uplink object's edge_tc at clsact ingress instead of
// edge_xdp, on a real veth pair between a "node" and a "far" namespace. The rule set is stateful
// with a default deny inbound, so only connection tracking lets the node's own flows get replies.
// Hooks are read with libbpf-ts (netns-hooks.ts); traffic is real sockets (conntrack-traffic.py) and ping.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { addVethPair, mountBpffs, removeNetnsRig } from './datapath-helpers.js';
import type { InterfaceHooks } from './netns-hooks.js';

const id = `${process.pid % 10000}${Math.floor(Math.random() * 100)}`;
const nsN = `tmN${id}`;
const nsF = `tmF${id}`;
const vethN = `tmn${id}`;
const vethF = `tmf${id}`;
const v4 = { node: '10.203.0.1', far: '10.203.0.2' };
const bpffs = mountBpffs();
const script = join(import.meta.dirname, 'conntrack-traffic.py');
const helper = join(import.meta.dirname, 'datapath-netns-attach.ts');
const children = new Set<ChildProcess>();

const run = (command: string, ...args: string[]): string => execFileSync(command, args, { encoding: 'utf8' });
const inNs = (ns: string, ...args: string[]): string => run('ip', 'netns', 'exec', ns, ...args);
const lastJson = <T>(text: string): T => JSON.parse(text.trim().split('\n').at(-1) as string) as T;
const py = (ns: string, ...args: (string | number)[]): { ok: boolean; error?: string } => lastJson(inNs(ns, 'python3', script, ...args.map(String)));
const netnsAttach = (command: 'attach' | 'detach' | 'query' | 'foreign', mode = 'auto', tcAttach?: 'tcx' | 'cls_bpf'): string => inNs(nsN, process.execPath, '--import=tsx', helper, command, bpffs.path, vethN, 'uplink', mode, ...(tcAttach ? [tcAttach] : []));
const isAttached = (): { tc: boolean; xdp: boolean } => lastJson(netnsAttach('query'));

interface Hooks { xdp: number[]; ingress: number[]; egress: number[] }
/** The programs on the node's uplink (netns-hooks.ts: the TC hooks' tcx chain, then our clsact filter). */
const hooks = (): Hooks => {
  const all = lastJson<Record<string, InterfaceHooks>>(inNs(nsN, process.execPath, '--import=tsx', join(import.meta.dirname, 'netns-hooks.ts')));
  const h = all[vethN];
  return { xdp: h?.xdp === undefined ? [] : [h.xdp], ingress: h?.['tc-ingress'] ?? [], egress: h?.['tc-egress'] ?? [] };
};
const start = async (ns: string, args: string[]): Promise<void> => {
  const child = spawn('ip', ['netns', 'exec', ns, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  await new Promise<void>((resolve, reject) => {
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('ready')) resolve();
    });
    child.once('exit', () => reject(new Error(`${args.join(' ')} exited before it was ready`)));
  });
};
/**
 * Sends `count` ICMP echoes from `ns` to `to`, 10 ms apart (conntrack-traffic.py echo-stream); the
 * echoes sent, the replies received and the first echoes without one. A reply may come up to 3 s
 * after the last echo: on a loaded 2-core CI machine a late reply is not a drop (a reply that never
 * comes still counts as lost). ping itself will not do: once it has had a reply it waits only two
 * round trips after its last echo, whatever -W says, so a late last reply counted as lost.
 */
const ping = (ns: string, to: string, count: number): Promise<{ sent: number; received: number; missing: number[]; error?: string }> & { running: () => boolean } => {
  let running = true;
  const result = new Promise<{ sent: number; received: number; missing: number[]; error?: string }>((resolve) => {
    const child = spawn('ip', ['netns', 'exec', ns, 'python3', script, 'echo-stream', to, String(count), '0.01', '3'], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let output = '';
    let errors = '';
    child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (errors = (errors + chunk.toString()).slice(-2000)));
    // 'close', not 'exit': the last of its output may still be in the pipe when it exits.
    child.once('close', (code, signal) => {
      running = false;
      children.delete(child);
      // No result line: say how it ended.
      resolve(output.trim() === '' ? { sent: 0, received: -1, missing: [], error: `echo-stream exited ${signal ?? code}: ${errors.trim()}` } : lastJson(output));
    });
  });
  return Object.assign(result, { running: () => running });
};

/** Inbound only to TCP 7000 (tracked), outbound tracked, default deny. */
const stateful: RuleSetSpec = {
  rules: [{ id: 1, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 7000, to: 7000 }], action: 'allow', track: true }],
  defaultAction: 'deny',
  trackEgress: true,
};

let datapath: EbpfDatapath;

test.before(async () => {
  const mac = addVethPair({ ns: nsN, dev: vethN }, { ns: nsF, dev: vethF });
  for (const [ns, dev, address] of [[nsN, vethN, v4.node], [nsF, vethF, v4.far]] as const) inNs(ns, 'ip', 'addr', 'add', `${address}/24`, 'dev', dev);
  // Static neighbours: ARP replies are not IP and pass, but keep resolution out of the picture.
  inNs(nsN, 'ip', 'neigh', 'replace', v4.far, 'lladdr', mac(nsF, vethF), 'dev', vethN, 'nud', 'permanent');
  inNs(nsF, 'ip', 'neigh', 'replace', v4.node, 'lladdr', mac(nsN, vethN), 'dev', vethF, 'nud', 'permanent');
  datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  await datapath.apply(stateful);
  netnsAttach('attach', 'tc');
  await start(nsF, ['python3', script, 'tcp-server', v4.far, '8000']);
  await start(nsN, ['python3', script, 'tcp-server', v4.node, '7000']);
  await start(nsN, ['python3', script, 'tcp-server', v4.node, '9000']);
});

test.after.always(() => removeNetnsRig({ children, datapath, namespaces: [nsN, nsF], bpffs }));

test.serial('tc mode - the uplink holds edge_tc at TC ingress and edge_tc_egress at TC egress (in the tcx chains), and no XDP program', (t) => {
  t.deepEqual(hooks(), { xdp: [], ingress: [datapath.tcProgram.id], egress: [datapath.tcEgressProgram.id] });
  const h = lastJson<Record<string, InterfaceHooks>>(inNs(nsN, process.execPath, '--import=tsx', join(import.meta.dirname, 'netns-hooks.ts')))[vethN]!;
  t.deepEqual([h['tcx-ingress'], h['tcx-egress']], [[datapath.tcProgram.id], [datapath.tcEgressProgram.id]], 'in the tcx chains, not as clsact filters');
  t.deepEqual(isAttached(), { tc: true, xdp: false });
});

test.serial('tc mode - default deny drops unsolicited inbound, passes replies of the node\'s outbound TCP, and counts rules', (t) => {
  const before = datapath.readCounters();
  t.true(py(nsN, 'tcp-client', v4.far, 8000, 3).ok, 'the node\'s outbound connection gets its replies');
  t.false(py(nsF, 'tcp-client', v4.node, 9000, 1).ok, 'unsolicited inbound to 9000 is dropped');
  t.true(py(nsF, 'tcp-client', v4.node, 7000, 3).ok, 'inbound to 7000 is allowed');
  const after = datapath.readCounters();
  t.true((after.rules.get(1)?.packets ?? 0) > (before.rules.get(1)?.packets ?? 0), 'rule 1 counted the inbound connection');
  t.true(after.defaultAction.packets > before.defaultAction.packets, 'the default deny counted the dropped SYNs');
});

test.serial('tc mode - switching the uplink between XDP and tc under traffic loses nothing allowed and passes nothing denied', async (t) => {
  // Long enough to outlast the switches (checked below), so every switch happens under traffic.
  const count = 2000;
  const allowed = ping(nsN, v4.far, count); // outbound, tracked: replies pass
  const denied = ping(nsF, v4.node, count); // unsolicited inbound ICMP: default deny
  const tcpOk: boolean[] = [];
  const tcpDenied: boolean[] = [];
  for (let round = 0; round < 6; round++) {
    netnsAttach('attach', round % 2 === 0 ? 'auto' : 'tc');
    const expected = round % 2 === 0 ? { xdp: 1, ingress: 0 } : { xdp: 0, ingress: 1 };
    const now = hooks();
    t.deepEqual({ xdp: now.xdp.length, ingress: now.ingress.length }, expected, `round ${round}`);
    tcpOk.push(py(nsN, 'tcp-client', v4.far, 8000, 3).ok);
    tcpDenied.push(py(nsF, 'tcp-client', v4.node, 9000, 0.3).ok);
  }
  t.true(allowed.running() && denied.running(), 'both pings were still running after the last switch');
  const [out, inbound] = await Promise.all([allowed, denied]);
  t.is(out.sent, count);
  t.is(out.received, count, `every echo of the node's outbound ping got its reply (missing: ${out.missing.join(', ')}${out.error ? `; ${out.error}` : ''})`);
  t.is(inbound.received, 0, 'no unsolicited inbound echo got through');
  t.deepEqual(tcpOk, Array(6).fill(true));
  t.deepEqual(tcpDenied, Array(6).fill(false));
  t.deepEqual(isAttached(), { tc: true, xdp: false });
});

test.serial('tc mode - moving the TC programs between clsact filters and tcx under traffic loses nothing allowed and passes nothing denied', async (t) => {
  // The clsact qdisc first, before the traffic: creating it (the first cls_bpf attach on an
  // interface) deactivates the device's queues for a moment and drops what it is sending then,
  // whoever creates it (bpf/README.md, "TC hooks: tcx or clsact"). Moves need no qdisc change.
  netnsAttach('attach', 'tc', 'cls_bpf');
  netnsAttach('attach', 'tc', 'tcx');
  const count = 1500;
  const allowed = ping(nsN, v4.far, count);
  const denied = ping(nsF, v4.node, count);
  const tcpOk: boolean[] = [];
  const tcpDenied: boolean[] = [];
  for (let round = 0; round < 6; round++) {
    const kind = round % 2 === 0 ? 'cls_bpf' : 'tcx';
    netnsAttach('attach', 'tc', kind);
    const h = lastJson<Record<string, InterfaceHooks>>(inNs(nsN, process.execPath, '--import=tsx', join(import.meta.dirname, 'netns-hooks.ts')))[vethN]!;
    const tcx = kind === 'tcx' ? [datapath.tcProgram.id] : [];
    t.deepEqual([h['tc-ingress'], h['tcx-ingress'], h['tc-egress'], h['tcx-egress']], [[datapath.tcProgram.id], tcx, [datapath.tcEgressProgram.id], kind === 'tcx' ? [datapath.tcEgressProgram.id] : []], `round ${round} (${kind}): each program once, in the asked place`);
    tcpOk.push(py(nsN, 'tcp-client', v4.far, 8000, 3).ok);
    tcpDenied.push(py(nsF, 'tcp-client', v4.node, 9000, 0.3).ok);
  }
  t.true(allowed.running() && denied.running(), 'both pings were still running after the last move');
  const [out, inbound] = await Promise.all([allowed, denied]);
  t.is(out.received, count, `every echo of the node's outbound ping got its reply (missing: ${out.missing.join(', ')}${out.error ? `; ${out.error}` : ''})`);
  t.is(inbound.received, 0, 'no unsolicited inbound echo got through');
  t.deepEqual(tcpOk, Array(6).fill(true));
  t.deepEqual(tcpDenied, Array(6).fill(false));
});

test.serial('tc mode - detach removes only our programs: a foreign program in the tcx chain and a foreign filter at our clsact handle stay', (t) => {
  t.is(datapath.tcAttach, 'tcx', 'this kernel has tcx');
  netnsAttach('foreign');
  t.deepEqual(hooks().ingress, [datapath.tcEgressProgram.id, datapath.tcProgram.id, datapath.tcEgressProgram.id], 'the foreign program first, ours, the foreign filter');
  t.deepEqual(isAttached(), { tc: true, xdp: false }, 'ours is still in the chain');
  t.true((lastJson<{ removed: boolean }>(netnsAttach('detach'))).removed);
  t.deepEqual(hooks(), { xdp: [], ingress: [datapath.tcEgressProgram.id, datapath.tcEgressProgram.id], egress: [] }, 'the foreign program and filter stay; ours are gone');
  t.false((lastJson<{ removed: boolean }>(netnsAttach('detach'))).removed, 'a second detach finds nothing of ours');
});
