// Upgrade in place (issues 13 and 14), on the real kernel: a node whose pinned datapath was loaded
// by the previous version (layout 5: every connection in ep_ct or ep_ct_new) takes this version's
// agent and object (layout 6: IPv4 TCP/UDP flows in ep_ct4 in front of them, bpf/CONNTRACK.md
// "The IPv4 table") without dropping an allowed packet, passing a denied one or losing an
// established connection: the flows layout 5 tracked stay in ep_ct, found after an ep_ct4 miss,
// and new ones go to ep_ct4. (Layouts 2 -> 3, 3 -> 4 and 4 -> 5 were this test's previous
// subjects; relayoutCtElement still converts layouts 2 to 5.)
//
// The previous version is built from git: the first commit whose bpf/include/ep_tables.h says
// `#define EP_LAYOUT_VERSION 6` (this version's) is the first of layout 6, so its first parent is
// the newest of layout 5 (EDGEPLANE_UPGRADE_FROM=<commit> overrides). `git archive` writes that tree into a temporary
// directory (no worktree entry in the shared repository to clean up if the test dies), its BPF
// object is built there with this tree's vmlinux.h, and its own TypeScript runs under tsx with
// its workspace packages mapped to its own sources (tsconfig paths) and this tree's
// node_modules for third-party code. datapath-upgrade-worker.ts is copied into both trees.
//
// Traffic (Cilium's conn-disrupt test): client namespace X - uplink (XDP) - node namespace N -
// workload (TC) - workload namespace W. Both roles are stateful from the start, and W's echo
// replies pass only by their connection entries. A connection loop and a long-lived connection
// to W's echo port must never fail; attacks on ports that only XDP denies, only TC egress
// denies, and only TC ingress denies (from W) must never get through, before, during and after
// the upgrade.
import test from 'ava';
import { execFile, execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { BpfMap, encode, NotFoundError, Program, u32 } from 'libbpf-ts';
import { Topology } from '../../../test/support/topology.js';
import { DEFAULT_OBJECT_PATH, EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import type { DatapathInstall, DatapathReset } from '../src/datapath/ebpf-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import { LAYOUT_MARKER, LAYOUT_VERSION, PROGRAMS_MARKER, readLayoutVersion, writeLayoutMarker } from '../src/datapath/pin-layout.js';
import { decodeConnection, type ConnectionEntry, type ConntrackOccupancy } from '../src/datapath/conntrack.js';
import { CT_FLAG_ORIG_B } from '../src/datapath/conntrack-key.js';
import { epCtEntry, epCtKey, NO_CT_NAT } from '../src/datapath/table-codecs.js';
import type { ApplyResult } from '../src/datapath/datapath.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS } from './datapath-helpers.js';
import { KernelCt4 } from './ct4-helpers.js';
import type { InterfaceHooks } from './netns-hooks.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const workerPath = 'services/node-agent/test/datapath-upgrade-worker.ts';
const trafficScript = fileURLToPath(new URL('./datapath-upgrade-traffic.py', import.meta.url));
const execFileAsync = promisify(execFile);

/**
 * The maps of layout 5 that layout 6 keeps as they are (all of them: bpf/CONNTRACK.md,
 * "Upgrades"), the ones it converts or resizes (none) and the ones it adds.
 */
const keptMaps = [
  'ep_active', 'ep_barrier', 'ep_blk4', 'ep_blk4h', 'ep_blk4p', 'ep_blk6', 'ep_blk_active', 'ep_blk_clock_out', 'ep_blk_stats', 'ep_buckets', 'ep_carry', 'ep_counters',
  'ep_ct', 'ep_ct_cfg', 'ep_ct_control', 'ep_ct_control_ports', 'ep_ct_new', 'ep_ct_stats', 'ep_cwords', 'ep_gen_cfg', 'ep_lb_backends', 'ep_lb_cfg', 'ep_lb_slots',
  'ep_lb_stats', 'ep_lb_vip', 'ep_lpm', 'ep_lref', 'ep_lst4', 'ep_lst6', 'ep_lvec', 'ep_meta', 'ep_rules', 'ep_scan', 'ep_shadow', 'ep_shadow_counters', 'ep_shadow_cwords',
  'ep_shadow_lpm', 'ep_shadow_lref', 'ep_shadow_lvec', 'ep_shadow_member', 'ep_shadow_rules', 'ep_shadow_samples', 'ep_shadow_slots', 'ep_shadow_stats', 'ep_shadow_wild', 'ep_stats', 'ep_wild',
];
const convertedMaps: string[] = [];
const resizedMaps: string[] = [];
// Maps the previous layout's object did not have: created empty by the upgrade.
const addedMaps = ['ep_ct4', 'ep_ct4_cold'];
const PREVIOUS_LAYOUT = 5;

const X = '10.210.0.1';
const W = '10.211.0.1';
const ECHO = 8080;
const port = (p: number): { from: number; to: number }[] => [{ from: p, to: p }];
// Only XDP denies 9090/tcp and 9091/udp; only the workload's TC egress denies 9092/tcp and
// 9093/udp; only its TC ingress denies 9094/udp from W to X.
const uplinkRules: RuleSetSpec = {
  rules: [
    { id: 1, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'tcp', dstPorts: port(ECHO), action: 'allow' },
    { id: 2, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'tcp', dstPorts: port(9090), action: 'deny' },
    { id: 3, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'udp', dstPorts: port(9091), action: 'deny' },
    { id: 4, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'tcp', dstPorts: port(9092), action: 'allow' },
    { id: 5, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'udp', dstPorts: port(9093), action: 'allow' },
  ],
  defaultAction: 'deny',
};
const workloadRules: RuleSetSpec = {
  rules: [
    { id: 11, srcCidrs: [`${W}/32`], dstCidrs: [`${X}/32`], protocol: 'udp', dstPorts: port(9094), action: 'deny' },
    { id: 12, srcCidrs: [`${W}/32`], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'allow' },
    { id: 13, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'tcp', dstPorts: port(ECHO), action: 'allow' },
    { id: 14, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'tcp', dstPorts: port(9090), action: 'allow' },
    { id: 15, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'udp', dstPorts: port(9091), action: 'allow' },
    { id: 16, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'tcp', dstPorts: port(9092), action: 'deny' },
    { id: 17, srcCidrs: [], dstCidrs: [`${W}/32`], protocol: 'udp', dstPorts: port(9093), action: 'deny' },
  ],
  defaultAction: 'deny',
};

// The stateful rule sets, applied by the previous version before any traffic: the echo flow is
// tracked and rule 12 is gone, so W's echo replies pass only by their connection entries. A
// reply classified by rules would meet the default deny and fail a connection: an entry lost
// or mis-keyed by the upgrade fails the traffic.
const uplinkStateful: RuleSetSpec = { ...uplinkRules, rules: uplinkRules.rules.map((rule) => (rule.id === 1 ? { ...rule, track: true } : rule)), trackEgress: true };
const workloadTracking: RuleSetSpec = { ...workloadRules, rules: workloadRules.rules.map((rule) => (rule.id === 13 ? { ...rule, track: true } : rule)) };
const workloadStateful: RuleSetSpec = { ...workloadTracking, rules: workloadTracking.rules.filter((rule) => rule.id !== 12) };

interface RoleOutput {
  pinRoot: string;
  adopted: boolean;
  install?: DatapathInstall;
  openMs: number;
  applied: ApplyResult[];
  conntrack?: ConntrackOccupancy;
  connections?: ConnectionEntry[];
  xdpProgramId: number;
  tcProgramId: number;
  pinned: Record<string, number>;
}

const topology = new Topology();
const bpffs = mountBpffs();
const children: ChildProcessWithoutNullStreams[] = [];
let previous: { dir: string; commit: string } | undefined;

const git = (...args: string[]): string => execFileSync('git', ['-C', repo, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
// The previous version comes from this checkout's history. A shallow clone (or an export without
// .git) has none: the upgrade tests are then skipped with the reason, never silently passed.
const history = ((): string | undefined => {
  try {
    if (process.env.EDGEPLANE_UPGRADE_FROM) return undefined;
    if (git('rev-parse', '--is-shallow-repository') === 'true') return 'this checkout is shallow (git fetch --unshallow to run the upgrade tests)';
    return undefined;
  } catch {
    return 'this tree is not a git checkout, so the previous version cannot be built';
  }
})();
if (history !== undefined) console.error(`datapath-upgrade: SKIPPED: ${history}`);
const upgradeTest = history === undefined ? test.serial : test.serial.skip;

test.before(() => {
  if (history !== undefined) return;
  // The first commit whose header says this layout (by content, not a fixed hash): its parent is the newest of the previous one.
  const firstOfThisLayout = git('log', '--format=%H', '--reverse', '-G', `^#define EP_LAYOUT_VERSION ${LAYOUT_VERSION}\\b`, '--', 'bpf/include/ep_tables.h').split('\n')[0];
  const commit = git('rev-parse', '--verify', process.env.EDGEPLANE_UPGRADE_FROM ?? `${firstOfThisLayout}^`);
  const dir = mkdtempSync('/tmp/edgeplane-previous-');
  previous = { dir, commit };
  execFileSync('sh', ['-c', `git -C "$1" archive "$2" | tar -x -C "$3"`, 'sh', repo, commit, dir]);
  mkdirSync(join(dir, 'bpf/build'), { recursive: true });
  copyFileSync(join(repo, 'bpf/build/vmlinux.h'), join(dir, 'bpf/build/vmlinux.h'));
  execFileSync('make', ['-s', '-C', join(dir, 'bpf')], { stdio: 'pipe' });
  symlinkSync(join(repo, 'node_modules'), join(dir, 'node_modules'));
  writeFileSync(
    join(dir, 'tsconfig.previous.json'),
    JSON.stringify({ extends: './tsconfig.base.json', compilerOptions: { baseUrl: '.', paths: { 'libbpf-ts': ['./packages/libbpf-ts/src/index.ts'], '@edgeplane/proto': ['./proto/gen/index.ts'] } } }),
  );
  copyFileSync(join(repo, workerPath), join(dir, workerPath));
});

test.after.always(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  topology.remove();
  bpffs.unmount();
  if (previous !== undefined) rmSync(previous.dir, { recursive: true, force: true });
});

/** Runs the worker of `tree` in namespace `ns`; resolves with its report, or with how it died. */
async function worker(tree: 'previous' | 'current', ns: string, command: object): Promise<{ roles?: RoleOutput[]; reset?: DatapathReset; killed?: string; error?: string }> {
  const root = tree === 'previous' ? (previous as { dir: string }).dir : repo;
  const env = tree === 'previous' ? { ...process.env, TSX_TSCONFIG_PATH: join(root, 'tsconfig.previous.json') } : process.env;
  try {
    const { stdout } = await execFileAsync('ip', ['netns', 'exec', ns, process.execPath, '--import=tsx', join(root, workerPath), JSON.stringify(command)], { cwd: root, env, encoding: 'utf8' });
    return JSON.parse(stdout.trim().split('\n').at(-1) as string) as { roles?: RoleOutput[]; reset?: DatapathReset };
  } catch (error) {
    const e = error as { signal?: string; stderr?: string };
    if (e.signal === 'SIGKILL') return { killed: e.signal };
    return { error: e.stderr ?? String(error) };
  }
}

/**
 * The programs attached in namespace `ns` (netns-hooks.ts: XDP, and the TC hooks' tcx chain then
 * our clsact filter), by interface and hook: a hook's one program, or all of them in the order
 * they run when there are several (so that a leftover shows).
 */
function hooks(ns: string): Record<string, { xdp?: number; 'tc-ingress'?: number | number[]; 'tc-egress'?: number | number[] }> {
  const read = JSON.parse(execFileSync('ip', ['netns', 'exec', ns, process.execPath, '--import=tsx', join(import.meta.dirname, 'netns-hooks.ts')], { encoding: 'utf8' }).trim().split('\n').at(-1)!) as Record<string, InterfaceHooks>;
  const out: Record<string, { xdp?: number; 'tc-ingress'?: number | number[]; 'tc-egress'?: number | number[] }> = {};
  for (const [dev, h] of Object.entries(read)) {
    const hook: (typeof out)[string] = {};
    if (h.xdp !== undefined) hook.xdp = h.xdp;
    for (const name of ['tc-ingress', 'tc-egress'] as const) if (h[name].length > 0) hook[name] = h[name].length === 1 ? h[name][0]! : h[name];
    out[dev] = hook;
  }
  return out;
}

/** A long-running process with stdin open; `lines` collects its stdout JSON lines. */
function spawnIn(ns: string, args: string[]): { child: ChildProcessWithoutNullStreams; lines: Record<string, unknown>[]; stderr: string[] } {
  const child = spawn('ip', ['netns', 'exec', ns, ...args]);
  children.push(child);
  const lines: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  let buffer = '';
  child.stdout.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buffer.slice(0, i)) as Record<string, unknown>);
      buffer = buffer.slice(i + 1);
    }
  });
  child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk.toString()));
  return { child, lines, stderr };
}

async function until(what: string, predicate: () => boolean, diagnostics: () => string = () => ''): Promise<void> {
  // A bound on waiting, so a broken datapath fails the test instead of hanging it; no assertion
  // is made on how long anything took.
  const deadline = Date.now() + 30_000;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}\n${diagnostics()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function stop(running: { child: ChildProcessWithoutNullStreams; lines: Record<string, unknown>[] }): Promise<Record<string, unknown>> {
  const done = new Promise((resolve) => running.child.once('exit', resolve));
  running.child.stdin.end();
  await done;
  return running.lines.at(-1) as Record<string, unknown>;
}

/**
 * Waits until no program has kernel id `id`. The last reference to a replaced cls_bpf program
 * is dropped from a workqueue after an RCU grace period, not by the replace itself.
 * @returns true once it is gone, false if it stayed for the whole wait.
 */
async function programGone(id: number): Promise<boolean> {
  const gone = (): boolean => {
    try {
      Program.fromId(id).close();
      return false;
    } catch (error) {
      if (error instanceof NotFoundError) return true;
      throw error;
    }
  };
  return until(`program ${id} to be freed`, gone).then(
    () => true,
    () => false,
  );
}

upgradeTest('upgrade - a node on layout 5 takes the new agent and object under traffic: 0 leaks, 0 failed connections, established connections kept in their original direction', async (t) => {
  t.timeout(120_000);
  t.log(`previous version: ${previous?.commit}`);
  const nsX = topology.namespace('ux');
  const nsN = topology.namespace('un');
  const nsW = topology.namespace('uw');
  const [xc, nu, nw, ws] = [topology.name('xc'), topology.name('nu'), topology.name('nw'), topology.name('ws')];
  topology.veth({ ns: nsX, name: xc, address: `${X}/24` }, { ns: nsN, name: nu, address: '10.210.0.2/24' });
  topology.veth({ ns: nsN, name: nw, address: '10.211.0.2/24' }, { ns: nsW, name: ws, address: `${W}/24` });
  topology.exec(nsN, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  topology.exec(nsX, 'ip', ['route', 'add', '10.211.0.0/24', 'via', '10.210.0.2']);
  topology.exec(nsW, 'ip', ['route', 'add', 'default', 'via', '10.211.0.2']);
  const uplinkRoot = join(bpffs.path, 'uplink');
  const workloadRoot = join(bpffs.path, 'workload');
  mkdirSync(uplinkRoot);
  mkdirSync(workloadRoot);
  const previousObject = join((previous as { dir: string }).dir, 'bpf/build/edgeplane.bpf.o');

  // The previous version's datapath: loaded, applied (stateful) and attached by its own code.
  const before = await worker('previous', nsN, {
    op: 'open',
    roles: [
      { pinRoot: uplinkRoot, objectPath: previousObject, apply: [uplinkStateful], attach: [{ iface: nu, role: 'uplink' }] },
      { pinRoot: workloadRoot, objectPath: previousObject, apply: [workloadStateful], attach: [{ iface: nw, role: 'workload' }] },
    ],
  });
  if (before.roles === undefined) return t.fail(`the previous version's worker failed: ${before.error}`);
  const [oldUplink, oldWorkload] = before.roles as [RoleOutput, RoleOutput];
  t.is(readLayoutVersion(uplinkRoot), PREVIOUS_LAYOUT);
  t.is(readLayoutVersion(workloadRoot), PREVIOUS_LAYOUT);
  t.deepEqual(Object.keys(oldUplink.pinned).sort(), [...keptMaps, ...convertedMaps, ...resizedMaps, LAYOUT_MARKER, PROGRAMS_MARKER, 'edge_tc', 'edge_tc_egress', 'edge_xdp', 'ep_ct_sweep', 'ep_blk_clock'].sort(), 'layout 5: its maps, programs and markers');
  t.deepEqual(hooks(nsN), {
    [nu]: { xdp: oldUplink.xdpProgramId, 'tc-egress': oldUplink.pinned.edge_tc_egress },
    [nw]: { 'tc-ingress': oldWorkload.tcProgramId, 'tc-egress': oldWorkload.tcProgramId },
  });

  // Traffic from before the upgrade to after it.
  const server = spawnIn(nsW, ['python3', '-u', trafficScript, 'server', X, '9090,9092', '9091,9093']);
  await until('the server', () => server.lines.length > 0, () => server.stderr.join(''));
  const client = spawnIn(nsX, ['python3', '-u', trafficScript, 'client', W, '9090,9092', '9091,9093']);
  const okCount = (): number => Math.max(0, ...client.lines.map((line) => Number(line.ok ?? 0)));
  await until('20 connections before the upgrade', () => okCount() >= 20, () => client.stderr.join(''));
  // The established echo connections the previous version tracks (the long-lived one among them).
  const echoFlows = { family: 4, proto: 'tcp', port: ECHO, state: 'established', table: 'established' };
  const listed = await worker('previous', nsN, { op: 'open', roles: [{ pinRoot: workloadRoot, objectPath: previousObject, list: echoFlows }] });
  const establishedBefore = listed.roles?.[0]?.connections ?? [];
  t.true(establishedBefore.length > 0, `established echo connections before the upgrade: ${listed.error ?? ''}`);
  client.child.stdin.write('mark upgrade-start\n');
  const upgrade = await worker('current', nsN, {
    op: 'open',
    roles: [
      { pinRoot: uplinkRoot, apply: [uplinkStateful] },
      { pinRoot: workloadRoot, apply: [workloadStateful], list: echoFlows },
    ],
  });
  client.child.stdin.write('mark upgrade-end\n');
  const okAtUpgradeEnd = okCount();
  await until('20 connections after the upgrade', () => okCount() >= okAtUpgradeEnd + 20, () => client.stderr.join(''));
  // A restarted agent of the new version adopts what the upgrade left, as it is.
  const restart = await worker('current', nsN, {
    op: 'open',
    roles: [
      { pinRoot: uplinkRoot, apply: [uplinkStateful] },
      { pinRoot: workloadRoot, apply: [workloadStateful], list: echoFlows },
    ],
  });
  const okAtRestart = okCount();
  await until('20 connections after the restart', () => okCount() >= okAtRestart + 20, () => client.stderr.join(''));
  client.child.stdin.write('mark end\n');
  const traffic = await stop(client);
  const received = await stop(server);
  t.log('traffic', JSON.stringify(traffic));
  t.log('server', JSON.stringify(received));

  if (upgrade.roles === undefined) return t.fail(`the upgrade failed: ${upgrade.error}`);
  const [uplink, workload] = upgrade.roles as [RoleOutput, RoleOutput];
  t.log(`open() with the upgrade: uplink ${uplink.openMs.toFixed(0)} ms, workload ${workload.openMs.toFixed(0)} ms; entries caught up after the switch: uplink ${uplink.install?.caughtUpEntries}, workload ${workload.install?.caughtUpEntries}`);

  // No packet of a denied flow passed, no allowed connection failed (the long-lived one included).
  t.deepEqual(traffic.failures, [], 'failed connections or exchanges');
  t.deepEqual(traffic.leaks, { 9090: 0, 9092: 0 }, 'attack connections that completed (client side)');
  t.deepEqual(received.accepted, { 9090: 0, 9092: 0 }, 'attack connections accepted (server side)');
  t.deepEqual(received.received, { 9091: 0, 9093: 0 }, 'attack datagrams received');
  t.is(traffic.leakBack, 0, 'datagrams from the workload that its TC ingress denies');
  for (const [denied, attempts] of Object.entries(traffic.attempts as Record<string, number>)) t.true(attempts > 0, `attacks on ${denied} were made`);
  t.true((received.sentBack as number) > 0);
  t.true((traffic.longLived as number) > 0, 'the long-lived connection exchanged messages');

  // The established connections the previous version tracked are still tracked, listed in their
  // original direction (src = the client that opened them), their counters carried over.
  const flowOf = (c: ConnectionEntry): string => `${c.src}:${c.sport}>${c.dst}:${c.dport}`;
  const after = new Map((workload.connections ?? []).map((c) => [flowOf(c), c]));
  const kept = establishedBefore.filter((c) => after.has(flowOf(c)));
  t.true(kept.length > 0, `established connections kept: ${kept.length} of ${establishedBefore.length}`);
  for (const c of kept) {
    const now = after.get(flowOf(c)) as ConnectionEntry;
    t.is(now.src, X, `${flowOf(c)}: listed from its originator`);
    t.is(now.dport, ECHO);
    t.is(now.ruleId, 13, `${flowOf(c)}: admitted by the same rule`);
    t.true(now.packets.original >= c.packets.original && now.packets.reply >= c.packets.reply, `${flowOf(c)}: counters carried over`);
  }
  // The long-lived connection went on through the switch: some kept flow counted packets after it.
  const restartedEntries = new Map((restart.roles?.[1]?.connections ?? []).map((c) => [flowOf(c), c]));
  t.true(
    kept.some((c) => (restartedEntries.get(flowOf(c))?.packets.reply ?? 0) > (after.get(flowOf(c))?.packets.reply ?? 0)),
    'an established connection from before the upgrade exchanged packets after it',
  );

  // What the upgrade did: every map handed over as it was, ep_ct4 created beside them, each hook
  // switched from the old program to the new one in place.
  for (const [role, old] of [
    [uplink, oldUplink],
    [workload, oldWorkload],
  ] as const) {
    const install = role.install as DatapathInstall;
    t.is(install.fromVersion, PREVIOUS_LAYOUT);
    t.deepEqual([...install.reusedMaps].sort(), keptMaps);
    t.deepEqual([...install.createdMaps], addedMaps);
    t.deepEqual([...install.migratedMaps].sort(), [...convertedMaps, ...resizedMaps].sort());
    for (const name of keptMaps) t.is(role.pinned[name], old.pinned[name], `${name}: the same map, not a copy`);
    for (const name of [...convertedMaps, ...resizedMaps]) t.not(role.pinned[name], old.pinned[name], `${name}: a converted copy`);
    // The same rule set: 'unchanged' when the previous version wrote the very tables this one
    // compiles, 'installed' (one ordinary generation switch, under the traffic checks above) when
    // its compiler laid them out otherwise (class ids by order before, by hash since issue 15's
    // in-place updates); never a failure, and the restart below then finds them its own.
    t.true(['unchanged', 'installed'].includes(role.applied[0]?.mode ?? ''), `the new agent takes the live rule set as it is or switches to its own tables of it: ${role.applied[0]?.mode}`);
    t.false(Object.keys(role.pinned).some((name) => name.endsWith('-prev') || name.endsWith('-next')));
    t.is(readLayoutVersion(role.pinRoot), LAYOUT_VERSION);
  }
  t.deepEqual((uplink.install as DatapathInstall).switched.map(({ interface: i, hook, fromProgramId, toProgramId }) => ({ i, hook, fromProgramId, toProgramId })), [
    { i: nu, hook: 'xdp', fromProgramId: oldUplink.xdpProgramId, toProgramId: uplink.xdpProgramId },
    { i: nu, hook: 'tc-egress', fromProgramId: oldUplink.pinned.edge_tc_egress, toProgramId: uplink.pinned.edge_tc_egress },
  ]);
  t.deepEqual((workload.install as DatapathInstall).switched.map(({ interface: i, hook, fromProgramId, toProgramId }) => ({ i, hook, fromProgramId, toProgramId })), [
    { i: nw, hook: 'tc-ingress', fromProgramId: oldWorkload.tcProgramId, toProgramId: workload.tcProgramId },
    { i: nw, hook: 'tc-egress', fromProgramId: oldWorkload.tcProgramId, toProgramId: workload.tcProgramId },
  ]);
  t.deepEqual(hooks(nsN), { [nu]: { xdp: uplink.xdpProgramId, 'tc-egress': uplink.pinned.edge_tc_egress }, [nw]: { 'tc-ingress': workload.tcProgramId, 'tc-egress': workload.tcProgramId } });
  // Nothing holds the previous programs any more: the kernel freed them.
  for (const id of [oldUplink.xdpProgramId, oldUplink.tcProgramId, oldUplink.pinned.edge_tc_egress as number, oldWorkload.tcProgramId]) t.true(await programGone(id), `previous program ${id} freed`);

  // The restart adopted: same programs, same maps, nothing to apply.
  if (restart.roles === undefined) return t.fail(`the restart failed: ${restart.error}`);
  for (const [again, first] of [
    [restart.roles[0], uplink],
    [restart.roles[1], workload],
  ] as const) {
    t.true(again?.adopted);
    t.is(again?.install, undefined);
    t.deepEqual(again?.pinned, first.pinned);
    t.is(again?.applied[0]?.mode, 'unchanged');
  }
  t.log(`longest interval between successful connections: ${JSON.stringify(traffic.gapsMs)}; connections: ${JSON.stringify(traffic.okBetween)}`);
});

/** A frame and the verdicts it must get from the uplink rules: XDP drop, TC pass (no TC rule set here). */
const deniedFrame = buildFrame({ src: X, dst: W, protocol: 'tcp', dstPort: 9090 });
const allowedFrame = buildFrame({ src: X, dst: W, protocol: 'tcp', dstPort: ECHO });

/** Runs both frames through program `id` (XDP or TC): what it enforces. */
function verdicts(id: number): { denied: number; allowed: number } {
  const program = Program.fromId(id);
  try {
    return { denied: program.testRun({ data: deniedFrame }).retval, allowed: program.testRun({ data: allowedFrame }).retval };
  } finally {
    program.close();
  }
}

upgradeTest('upgrade - a crash after any step leaves every hook enforcing, old or new, and the next start finishes the job', async (t) => {
  t.timeout(120_000);
  const ns = topology.namespace('uc');
  const [up, wl] = [topology.name('cu'), topology.name('cw')];
  topology.veth({ ns, name: up, address: '10.212.0.1/24' }, { ns, name: wl, address: '10.212.0.2/24' });
  const pinRoot = join(bpffs.path, 'crash');
  mkdirSync(pinRoot);
  // One pin root whose XDP program holds one interface and whose TC program holds the other.
  const before = await worker('previous', ns, {
    op: 'open',
    roles: [{ pinRoot, objectPath: join((previous as { dir: string }).dir, 'bpf/build/edgeplane.bpf.o'), apply: [uplinkRules], attach: [{ iface: up, role: 'uplink' }, { iface: wl, role: 'workload' }] }],
  });
  if (before.roles === undefined) return t.fail(`the previous version's worker failed: ${before.error}`);
  const old = before.roles[0] as RoleOutput;
  const seen = { xdp: new Set([old.xdpProgramId]), tc: new Set([old.tcProgramId]) };
  const expectEnforcing = (when: string): void => {
    const now = hooks(ns);
    const xdp = now[up]?.xdp as number;
    const tc = [now[wl]?.['tc-ingress'] as number, now[wl]?.['tc-egress'] as number];
    t.true(seen.xdp.has(xdp), `${when}: XDP holds a program of ours (${xdp})`);
    t.deepEqual(verdicts(xdp), { denied: XDP_DROP, allowed: XDP_PASS }, `${when}: XDP enforces`);
    for (const id of tc) {
      t.true(seen.tc.has(id), `${when}: TC holds a program of ours (${id})`);
      t.deepEqual(verdicts(id), { denied: TC_ACT_SHOT, allowed: TC_ACT_OK }, `${when}: TC enforces`);
    }
  };
  expectEnforcing('before');
  // A connection the previous version tracks, written as layout 5 keys it (the flow's key, side a
  // the lower address, EP_CT_F_ORIG_B: opened from the higher one) in its 112-byte entry: every
  // attempt reuses ep_ct as it is, and the entry stays there (layout 6 looks it up after ep_ct4).
  const planted = { src: '10.212.0.9', sport: 80, dst: '10.212.0.1', dport: 40000 };
  const v4 = (a: string): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(a.split('.').map(Number));
    return out;
  };
  const oldCt = BpfMap.openPinned(join(pinRoot, 'ep_ct'));
  const plantedAt = process.hrtime.bigint();
  oldCt.set(
    encode(epCtKey, { family: 4, proto: 6, pad: 0, sport: planted.dport, dport: planted.sport, src: v4(planted.dst), dst: v4(planted.src) }),
    encode(epCtEntry, { expiresNs: plantedAt + 3_600_000_000_000n, createdNs: plantedAt, packets: [5n, 4n], bytes: [500n, 400n], ruleId: 1, epoch: 1, state: 3, flags: 0x01 | CT_FLAG_ORIG_B, pad0: 0, pad1: 0, nat: NO_CT_NAT }).subarray(0, oldCt.valueSize),
  );
  oldCt.close();

  for (const step of ['loaded', 'maps-pinned', 'programs-pinned', 'switched', 'marked']) {
    const crashed = await worker('current', ns, { op: 'open', roles: [{ pinRoot }], crashAt: step });
    t.is(crashed.killed, 'SIGKILL', `the worker died at ${step}`);
    const pinned = readdirSync(pinRoot);
    for (const name of ['edge_xdp', 'edge_tc']) {
      if (pinned.includes(name)) {
        const program = Program.openPinned(join(pinRoot, name));
        (name === 'edge_xdp' ? seen.xdp : seen.tc).add(program.id);
        program.close();
      }
    }
    expectEnforcing(`crash after ${step}`);
    t.is(readLayoutVersion(pinRoot), step === 'marked' ? LAYOUT_VERSION : PREVIOUS_LAYOUT, `layout after a crash at ${step}`);
  }

  const finished = await worker('current', ns, { op: 'open', roles: [{ pinRoot }] });
  if (finished.roles === undefined) return t.fail(`the last start failed: ${finished.error}`);
  const done = finished.roles[0] as RoleOutput;
  // The crash after 'marked' had switched every hook and written the marker: this start adopts.
  t.true(done.adopted);
  t.is(readLayoutVersion(pinRoot), LAYOUT_VERSION);
  t.false(readdirSync(pinRoot).some((name) => name.endsWith('-prev') || name.endsWith('-next')), 'no superseded pins left');
  t.deepEqual(hooks(ns), { [up]: { xdp: done.xdpProgramId, 'tc-egress': done.pinned.edge_tc_egress }, [wl]: { 'tc-ingress': done.tcProgramId, 'tc-egress': done.tcProgramId } });
  t.is(done.pinned.ep_rules, old.pinned.ep_rules, 'the rule table is the one the previous version filled');
  // The planted connection, kept: under its flow's key (side a = the lower address),
  // EP_CT_F_ORIG_B set, listed from its originator with its state and counters.
  const ct = BpfMap.openPinned(join(pinRoot, 'ep_ct'));
  const elements = [...ct.entries()];
  ct.close();
  t.is(elements.length, 1, 'one entry, not one per attempt');
  const [key, value] = elements[0] as [Uint8Array, Uint8Array];
  const stored = epCtKey.decode(key);
  t.deepEqual([stored.sport, stored.dport, [...stored.src.subarray(0, 4)].join('.')], [planted.dport, planted.sport, planted.dst]);
  const entry = decodeConnection(key, value, 'established', process.hrtime.bigint());
  t.like(entry, { src: planted.src, sport: planted.sport, dst: planted.dst, dport: planted.dport, state: 'established', flags: ['seen_reply'], packets: { original: 5, reply: 4 }, ruleId: 1 });
  t.is(epCtEntry.decode(value).flags, 0x01 | CT_FLAG_ORIG_B);
  t.is(value.length, epCtEntry.size, 'the layout-5 entry');
  t.is(epCtEntry.decode(value).nat.flags, 0, 'not NATed');
  for (const id of [...seen.xdp, ...seen.tc]) {
    if (id === done.xdpProgramId || id === done.tcProgramId) continue;
    t.true(await programGone(id), `superseded program ${id} freed`);
  }
});

upgradeTest('upgrade - a newer layout is refused untouched; --reset-datapath forgets it and the next start loads fresh', async (t) => {
  t.timeout(60_000);
  const ns = topology.namespace('ud');
  const [up] = [topology.name('du')];
  topology.veth({ ns, name: up, address: '10.213.0.1/24' }, { ns, name: topology.name('dp'), address: '10.213.0.2/24' });
  const pinRoot = join(bpffs.path, 'newer');
  mkdirSync(pinRoot);
  const first = await worker('current', ns, { op: 'open', roles: [{ pinRoot, apply: [uplinkRules], attach: [{ iface: up, role: 'uplink' }] }] });
  if (first.roles === undefined) return t.fail(`the first start failed: ${first.error}`);
  const loaded = first.roles[0] as RoleOutput;
  t.is(loaded.install?.fromVersion, undefined, 'a first load');
  // Pretend a newer agent wrote this directory.
  const marker = BpfMap.openPinned(join(pinRoot, LAYOUT_MARKER));
  marker.set(encode(u32, 0), encode(u32, LAYOUT_VERSION + 1));
  marker.close();
  const hooksBefore = hooks(ns);

  const refused = await worker('current', ns, { op: 'open', roles: [{ pinRoot, apply: [uplinkRules] }] });
  t.regex(refused.error ?? '', new RegExp(`layout version ${LAYOUT_VERSION + 1} is newer than this agent's ${LAYOUT_VERSION}; refused, nothing was changed`));
  t.regex(refused.error ?? '', /--reset-datapath/);
  t.is(readLayoutVersion(pinRoot), LAYOUT_VERSION + 1);
  t.deepEqual(readdirSync(pinRoot).sort(), Object.keys(loaded.pinned).sort());
  t.deepEqual(hooks(ns), hooksBefore);

  const reset = await worker('current', ns, { op: 'reset', pinRoot });
  t.deepEqual([...(reset.reset?.unpinned ?? [])].sort(), Object.keys(loaded.pinned).sort());
  t.deepEqual(reset.reset?.detached, [{ interface: up, ifindex: reset.reset?.detached[0]?.ifindex, hook: 'tc-egress' }]);
  t.deepEqual(readdirSync(pinRoot), []);
  // The XDP program stays attached and enforcing until the next agent replaces it.
  t.deepEqual(hooks(ns), { [up]: { xdp: loaded.xdpProgramId } });
  t.deepEqual(verdicts(loaded.xdpProgramId), { denied: XDP_DROP, allowed: XDP_PASS });

  const fresh = await worker('current', ns, { op: 'open', roles: [{ pinRoot, apply: [uplinkRules], attach: [{ iface: up, role: 'uplink' }] }] });
  if (fresh.roles === undefined) return t.fail(`the start after the reset failed: ${fresh.error}`);
  const again = fresh.roles[0] as RoleOutput;
  t.is(again.install?.fromVersion, undefined, 'loaded fresh');
  t.is(again.applied[0]?.mode, 'installed');
  t.deepEqual(hooks(ns), { [up]: { xdp: again.xdpProgramId, 'tc-egress': again.pinned.edge_tc_egress } });
  t.true(await programGone(loaded.xdpProgramId), 'the forgotten program is freed once replaced');
  t.true(existsSync(DEFAULT_OBJECT_PATH));
});

/** The object of the next agent in "same layout, other programs": built from edgeplane.bpf.c with one VLAN tag skipped instead of two. */
const variantObject = fileURLToPath(new URL('../../../bpf/build/fixtures/edgeplane_variant.bpf.o', import.meta.url));
/** Denied on the uplink when classified: double-tagged, edgeplane.bpf.o classifies it (drop), the variant passes it as non-IP. */
const doubleTagged = buildFrame({ src: X, dst: W, protocol: 'tcp', dstPort: 9090, vlans: [10, 20] });

test.serial('upgrade - same layout, other programs: the new programs are attached on restart with every map reused, contents included; the same programs again are adopted', async (t) => {
  t.timeout(60_000);
  const ns = topology.namespace('up');
  const [up, wl] = [topology.name('pu'), topology.name('pw')];
  topology.veth({ ns, name: up, address: '10.214.0.1/24' }, { ns, name: wl, address: '10.214.0.2/24' });
  const pinRoot = join(bpffs.path, 'programs');
  mkdirSync(pinRoot);
  const mapIds = (role: RoleOutput): Record<string, number> => Object.fromEntries(Object.entries(role.pinned).filter(([name]) => name.startsWith('ep_') && name !== PROGRAMS_MARKER && name !== 'ep_ct_sweep' && name !== 'ep_blk_clock' && name !== 'ep_ct4_count'));
  const xdpVerdict = (id: number, frame: Uint8Array): number => {
    const program = Program.fromId(id);
    try {
      return program.testRun({ data: frame }).retval;
    } finally {
      program.close();
    }
  };

  // Agent A (this object): a stateful policy, then traffic through its attached programs: a
  // tracked connection (rule 1) and denied packets (rule 2), so counters and an entry exist.
  const first = await worker('current', ns, { op: 'open', roles: [{ pinRoot, apply: [uplinkStateful], attach: [{ iface: up, role: 'uplink' }, { iface: wl, role: 'workload' }] }] });
  if (first.roles === undefined) return t.fail(`agent A failed: ${first.error}`);
  const a = first.roles[0] as RoleOutput;
  t.is(xdpVerdict(a.xdpProgramId, allowedFrame), XDP_PASS);
  for (let i = 0; i < 3; i++) t.is(xdpVerdict(a.xdpProgramId, deniedFrame), XDP_DROP);
  t.is(xdpVerdict(a.xdpProgramId, doubleTagged), XDP_DROP, "A classifies a double-tagged frame");
  const readState = async (objectPath: string): Promise<{ adopted: boolean; counters: [number, number]; ct: string[] }> => {
    const datapath = await EbpfDatapath.open({ pinRoot, objectPath });
    try {
      const rules = datapath.readCounters().rules;
      // The IPv4 TCP connection is in ep_ct4 (layout 6); ep_ct is read too.
      const ct = BpfMap.openPinned(join(pinRoot, 'ep_ct'));
      const ct4 = KernelCt4.open(pinRoot);
      const entries = [
        ...[...ct.entries()].map(([key, value]) => `ep_ct ${Buffer.from(key).toString('hex')}=${Buffer.from(value).toString('hex')}`),
        ...ct4.read().map(({ index, key, entry }) => `ep_ct4 ${index} ${JSON.stringify(key, (_, v: unknown) => (typeof v === 'bigint' ? String(v) : v instanceof Uint8Array ? [...v].join('.') : v))} ${JSON.stringify(entry, (_, v: unknown) => (typeof v === 'bigint' ? String(v) : v instanceof Uint8Array ? [...v].join('.') : v))}`),
      ].sort();
      ct.close();
      ct4.close();
      return { adopted: datapath.adopted, counters: [rules.get(1)?.packets ?? 0, rules.get(2)?.packets ?? 0], ct: entries };
    } finally {
      datapath.close();
    }
  };
  const before = await readState(DEFAULT_OBJECT_PATH);
  t.true(before.adopted, 'the same object adopts');
  t.deepEqual(before.counters, [1, 4], 'counted: the connection under rule 1, the denied packets under rule 2');
  t.is(before.ct.length, 1, 'the tracked connection has its entry');

  // Agent B: the same layout, other programs. Its start loads them, reuses every map and
  // switches every hook that holds one of A's programs.
  const upgrade = await worker('current', ns, { op: 'open', roles: [{ pinRoot, objectPath: variantObject }] });
  if (upgrade.roles === undefined) return t.fail(`agent B failed: ${upgrade.error}`);
  const b = upgrade.roles[0] as RoleOutput;
  t.false(b.adopted, 'other programs are not adopted');
  t.is(b.install?.fromVersion, LAYOUT_VERSION);
  t.deepEqual(b.install?.createdMaps, []);
  t.deepEqual(b.install?.migratedMaps, []);
  t.deepEqual([...(b.install?.reusedMaps ?? [])].sort(), Object.keys(mapIds(a)).filter((n) => n !== LAYOUT_MARKER).sort(), 'every map reused (the marker aside)');
  for (const name of ['edge_xdp', 'edge_tc', 'edge_tc_egress', 'ep_ct_sweep']) t.not(b.pinned[name], a.pinned[name], `${name}: B's program pinned`);
  t.deepEqual(hooks(ns), { [up]: { xdp: b.xdpProgramId, 'tc-egress': b.pinned.edge_tc_egress }, [wl]: { 'tc-ingress': b.tcProgramId, 'tc-egress': b.tcProgramId } }, "every hook holds B's programs");
  t.is(xdpVerdict(b.xdpProgramId, doubleTagged), XDP_PASS, 'the attached XDP program is B: the double-tagged frame is non-IP there');
  t.is(xdpVerdict(b.xdpProgramId, deniedFrame), XDP_DROP, "B enforces A's rule set");
  const { [LAYOUT_MARKER]: markerA, ...mapsA } = mapIds(a);
  const { [LAYOUT_MARKER]: markerB, ...mapsB } = mapIds(b);
  t.deepEqual(mapsB, mapsA, 'the same maps (kernel ids)');
  t.not(markerB, markerA, 'a new marker');
  t.is(readLayoutVersion(pinRoot), LAYOUT_VERSION, 'the layout version is unchanged');
  t.false(readdirSync(pinRoot).some((name) => name.endsWith('-prev') || name.endsWith('-next')), 'no superseded pins left');
  t.true(await programGone(a.xdpProgramId), "A's XDP program is freed");
  const after = await readState(variantObject);
  t.true(after.adopted);
  t.deepEqual(after.counters, [1, 5], "the counters continue (the denied frame B was given counts on A's total)");
  t.deepEqual(after.ct, before.ct, 'the connection entry is the same');

  // B again: adopted as it is, same programs.
  const again = await worker('current', ns, { op: 'open', roles: [{ pinRoot, objectPath: variantObject }] });
  if (again.roles === undefined) return t.fail(`agent B's restart failed: ${again.error}`);
  const b2 = again.roles[0] as RoleOutput;
  t.true(b2.adopted, 'the same programs are adopted');
  t.deepEqual([b2.xdpProgramId, b2.tcProgramId, b2.pinned.edge_tc_egress], [b.xdpProgramId, b.tcProgramId, b.pinned.edge_tc_egress]);
  t.deepEqual(b2.pinned, b.pinned, 'nothing re-pinned');

  // A marker without the programs' identity (an older agent of this layout wrote it): unknown
  // programs, loaded again.
  writeLayoutMarker(pinRoot, LAYOUT_VERSION);
  const unknown = await worker('current', ns, { op: 'open', roles: [{ pinRoot, objectPath: variantObject }] });
  if (unknown.roles === undefined) return t.fail(`agent B after an older marker failed: ${unknown.error}`);
  const b3 = unknown.roles[0] as RoleOutput;
  t.false(b3.adopted, 'programs of unknown origin are replaced');
  t.not(b3.xdpProgramId, b.xdpProgramId);
  t.deepEqual(hooks(ns), { [up]: { xdp: b3.xdpProgramId, 'tc-egress': b3.pinned.edge_tc_egress }, [wl]: { 'tc-ingress': b3.tcProgramId, 'tc-egress': b3.tcProgramId } });
  const { [LAYOUT_MARKER]: _marker3, ...mapsB3 } = mapIds(b3);
  t.deepEqual(mapsB3, mapsA, 'still the same maps');
});
