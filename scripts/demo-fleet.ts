// The demo fleet (run by scripts/demo). Topology, all on this machine:
//
//   root namespace: controller (gRPC :7443) with its embedded nats-server (:4222)
//        |  mgmt veth per node (10.99.0.4i+1 <-> .4i+2): control traffic, never filtered
//   epd-nI (node I): agent; up0 (uplink, XDP) --- epd-inet ("internet": 172.31.I.1 and .3)
//                           wl0 (workload, TC) --- epd-wl ("workload": 172.30.I.2)
//
// Names are fixed so a second run (or a run after a crash) first removes what a previous one
// left behind.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { OtlpReceiver, type ReceivedSpan } from '../test/support/otlp-receiver.js';

const root = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '3' },
    'grpc-port': { type: 'string', default: '7443' },
    'nats-port': { type: 'string', default: '4222' },
    'data-dir': { type: 'string', default: '/var/lib/edgeplane-demo' },
    'otlp-endpoint': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log(`Usage: scripts/demo [--nodes N] [--grpc-port 7443] [--nats-port 4222] [--data-dir DIR] [--otlp-endpoint URL]`);
  process.exit(0);
}
const N = Number(values.nodes);
if (!Number.isInteger(N) || N < 1 || N > 50) throw new Error('--nodes must be 1..50');
const GRPC = Number(values['grpc-port']);
const NATS = Number(values['nats-port']);
const DATA = values['data-dir']!;
const PINS = '/run/edgeplane-demo';
const execFileAsync = promisify(execFile);
const SITES = ['ams1', 'fra1', 'lon1', 'par1'];
const labelsOf = (i: number): Record<string, string> => ({ role: i % 3 === 0 ? 'core' : 'edge', site: SITES[(i - 1) % SITES.length]!, node: `node-${i}` });

function sh(cmd: string, args: string[], quiet = false): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    // quiet: a failure is not fatal; its output is still shown.
    if (quiet) return `${(err as { stdout?: string }).stdout ?? ''}${(err as { stderr?: string }).stderr ?? ''}`;
    throw new Error(`${cmd} ${args.join(' ')}: ${(err as { stderr?: string }).stderr?.trim() ?? String(err)}`);
  }
}
const nsExec = (ns: string, cmd: string, args: string[], quiet = false): string => sh('ip', ['netns', 'exec', ns, cmd, ...args], quiet);
const say = (s: string): void => void process.stdout.write(`${s}\n`);

function teardown(): void {
  for (const ns of sh('ip', ['netns', 'list'], true).split('\n').map((l) => l.split(' ')[0]!).filter((n) => n.startsWith('epd-'))) sh('ip', ['netns', 'del', ns], true);
  for (const l of sh('ip', ['-o', 'link', 'show'], true).split('\n')) {
    const name = /^\d+: (epd-m\d+)[@:]/.exec(l)?.[1];
    if (name) sh('ip', ['link', 'del', name], true);
  }
  for (let i = 1; i <= 50; i++) sh('umount', [join(PINS, `node-${i}`)], true);
  rmSync(PINS, { recursive: true, force: true });
}

function topology(): void {
  sh('ip', ['netns', 'add', 'epd-inet']);
  sh('ip', ['netns', 'add', 'epd-wl']);
  for (const ns of ['epd-inet', 'epd-wl']) sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  for (let i = 1; i <= N; i++) {
    const ns = `epd-n${i}`;
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    nsExec(ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=0']);
    // Management link to the root namespace.
    sh('ip', ['link', 'add', `epd-m${i}`, 'type', 'veth', 'peer', 'name', 'mgmt', 'netns', ns]);
    sh('ip', ['addr', 'add', `10.99.0.${4 * i + 1}/30`, 'dev', `epd-m${i}`]);
    sh('ip', ['link', 'set', `epd-m${i}`, 'up']);
    sh('ip', ['-n', ns, 'addr', 'add', `10.99.0.${4 * i + 2}/30`, 'dev', 'mgmt']);
    sh('ip', ['-n', ns, 'link', 'set', 'mgmt', 'up']);
    // Uplink to the internet namespace, IPv4 and IPv6.
    sh('ip', ['link', 'add', 'up0', 'netns', ns, 'type', 'veth', 'peer', 'name', `n${i}`, 'netns', 'epd-inet']);
    sh('ip', ['-n', ns, 'addr', 'add', `172.31.${i}.2/24`, 'dev', 'up0']);
    sh('ip', ['-n', ns, 'addr', 'add', `2001:db8:${i}::2/64`, 'dev', 'up0', 'nodad']);
    sh('ip', ['-n', 'epd-inet', 'addr', 'add', `172.31.${i}.1/24`, 'dev', `n${i}`]);
    sh('ip', ['-n', 'epd-inet', 'addr', 'add', `172.31.${i}.3/24`, 'dev', `n${i}`]);
    sh('ip', ['-n', 'epd-inet', 'addr', 'add', `2001:db8:${i}::1/64`, 'dev', `n${i}`, 'nodad']);
    // Workload link.
    sh('ip', ['link', 'add', 'wl0', 'netns', ns, 'type', 'veth', 'peer', 'name', `w${i}`, 'netns', 'epd-wl']);
    sh('ip', ['-n', ns, 'addr', 'add', `172.30.${i}.1/24`, 'dev', 'wl0']);
    sh('ip', ['-n', 'epd-wl', 'addr', 'add', `172.30.${i}.2/24`, 'dev', `w${i}`]);
    for (const [n, l] of [[ns, 'up0'], [ns, 'wl0'], ['epd-inet', `n${i}`], ['epd-wl', `w${i}`]] as const) sh('ip', ['-n', n, 'link', 'set', l, 'up']);
  }
}

const children: { name: string; child: ChildProcess }[] = [];
function start(name: string, cmd: string, args: string[], logFile: string): Promise<Record<string, unknown>> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push({ name, child });
  const log = createWriteStream(logFile);
  child.stderr!.pipe(log);
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (const line of buf.split('\n').slice(0, -1)) {
        try {
          const j = JSON.parse(line) as Record<string, unknown>;
          if (j.event === 'ready') resolve(j);
        } catch {
          // not JSON
        }
      }
      buf = buf.slice(buf.lastIndexOf('\n') + 1);
    });
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code}; see ${logFile}`)));
  });
}

// The CLI speaks mutual TLS with the admin certificate the controller wrote on its first start.
const adminDir = (): string => join(DATA, 'controller', 'admin');
/**
 * Runs the CLI as the admin; its output. Asynchronous: the demo's own OTLP receiver must go on
 * answering the controller and agents while the CLI runs (apply --wait follows a rollout for
 * half a minute; a blocked receiver made every export of that time out, and the trace was lost).
 * @throws unless `quiet`, when the CLI fails.
 */
async function cli(args: string[], quiet = false): Promise<string> {
  const argv = [join(root, 'packages/cli/dist/main.js'), '--server', `127.0.0.1:${GRPC}`, '--tls-ca', join(adminDir(), 'ca.pem'), '--tls-cert', join(adminDir(), 'admin.pem'), '--tls-key', join(adminDir(), 'admin-key.pem'), ...args];
  try {
    return (await execFileAsync(process.execPath, argv, { encoding: 'utf8' })).stdout;
  } catch (err) {
    if (quiet) return `${(err as { stdout?: string }).stdout ?? ''}${(err as { stderr?: string }).stderr ?? ''}`;
    throw new Error(`edgeplane ${args.join(' ')}: ${(err as { stderr?: string }).stderr?.trim() ?? String(err)}`);
  }
}

async function main(): Promise<void> {
  say('edgeplane demo: cleaning up anything a previous run left behind');
  teardown();
  // Each run starts from an empty intent log, so it shows a fresh rollout and its trace.
  rmSync(DATA, { recursive: true, force: true });
  mkdirSync(DATA, { recursive: true });
  const logs = join(DATA, 'logs');
  mkdirSync(logs, { recursive: true });
  // Traces: to the collector the user named, else to a receiver in this process, so the demo
  // can print one rollout's trace across the controller and every agent.
  let receiver: OtlpReceiver | undefined;
  let otlpHost = (_i: number): string => values['otlp-endpoint']!;
  if (!values['otlp-endpoint']) {
    receiver = await OtlpReceiver.start('0.0.0.0');
    closers.push(() => receiver!.close());
    otlpHost = (i: number) => (i === 0 ? receiver!.endpoint('127.0.0.1') : receiver!.endpoint(`10.99.0.${4 * i + 1}`));
    process.env.OTEL_EXPORTER_OTLP_PROTOCOL = 'http/json';
    process.env.OTEL_BSP_SCHEDULE_DELAY = '300';
  }
  say(`building the topology: ${N} nodes, an internet namespace (epd-inet), a workload namespace (epd-wl)`);
  topology();

  say('starting the controller with its embedded nats-server');
  const ctl = await start(
    'controller',
    process.execPath,
    [join(root, 'services/controller/dist/main.js'), '--listen', `0.0.0.0:${GRPC}`, '--embedded-nats', `0.0.0.0:${NATS}`, '--data-dir', join(DATA, 'controller'), '--heartbeat-interval', '2', '--counter-interval', '2', '--otlp-endpoint', otlpHost(0)],
    join(logs, 'controller.log'),
  );
  say(`  controller ready: gRPC ${String(ctl.grpc)} (mutual TLS, CA ${String(ctl.caFingerprint)}), NATS ${String(ctl.nats)}, signing key ${String(ctl.keyId)}`);

  for (let i = 1; i <= N; i++) {
    const labels = labelsOf(i);
    const pin = join(PINS, `node-${i}`);
    // Each node enrolls with its own single-use join token; its labels travel in the token.
    const created = await cli(['token', 'create', '--ttl', '10m', '--labels', Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(',')]);
    const token = /^token:\s+(\S+)/m.exec(created)?.[1];
    const fingerprint = /^ca-fingerprint:\s+(\S+)/m.exec(created)?.[1];
    if (!token || !fingerprint) throw new Error(`edgeplane token create printed no token: ${created}`);
    const ready = await start(
      `agent node-${i}`,
      'nsenter',
      // Through its launcher, as a node runs it (deploy/): node with the agent's memory settings, then its bundle.
      [`--net=/run/netns/epd-n${i}`, '--', join(root, 'services/node-agent/bin/edgeplane-agent'),
        '--node-name', `node-${i}`, '--join-token', token, '--ca-fingerprint', fingerprint,
        '--controller', `10.99.0.${4 * i + 1}:${GRPC}`, '--nats', `nats://10.99.0.${4 * i + 1}:${NATS}`,
        '--interface', 'up0=uplink', '--interface', 'wl0=workload', '--pin-root', pin, '--state-dir', join(DATA, `node-${i}`),
        '--trusted-key', String(ctl.publicKey), '--otlp-endpoint', otlpHost(i)],
      join(logs, `node-${i}.log`),
    );
    say(`  agent node-${i} ready (${Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(',')}), XDP program ${String(ready.xdpProgramId)}`);
  }
  await new Promise((r) => setTimeout(r, 1500));

  say('\napplying the example policies: edgeplane apply -f examples/ --wait');
  say((await cli(['apply', '-f', join(root, 'examples'), '--wait', '--timeout', '2m'])).trimEnd().replace(/^/gm, '  '));

  say('\na little traffic from the internet namespace (ping, and telnet attempts the edge nodes deny):');
  for (let i = 1; i <= N; i++) {
    const out = nsExec('epd-inet', 'ping', ['-c', '3', '-i', '0.2', '-W', '1', '-q', `172.31.${i}.2`], true);
    const got = /(\d+) received/.exec(out)?.[1] ?? '0';
    // A denied SYN is never answered: bound each attempt.
    for (let k = 0; k < 3; k++) nsExec('epd-inet', 'timeout', ['0.3', 'bash', '-c', `exec 3<>/dev/tcp/172.31.${i}.2/23`], true);
    say(`  node-${i} (${labelsOf(i).role}): ping ${got}/3 replies`);
  }
  await new Promise((r) => setTimeout(r, 2500));
  say('\nedgeplane get nodes:');
  say((await cli(['get', 'nodes'])).trimEnd().replace(/^/gm, '  '));

  // apply --wait above followed it wave by wave to its end.
  say('\nssh-mgmt-only was a staged rollout (a 10% canary wave that bakes 15 s, then the rest): edgeplane rollout status ssh-mgmt-only');
  say((await cli(['rollout', 'status', 'ssh-mgmt-only'], true)).trimEnd().replace(/^/gm, '  '));
  if (receiver) {
    await new Promise((r) => setTimeout(r, 2000));
    say(`\nthe rollout's trace, collected over OTLP from the controller and every agent:\n${traceTree(receiver.spans, 'ssh-mgmt-only')}`);
  } else {
    say(`\nthe rollout's trace is in your collector (${values['otlp-endpoint']}): look for the span edgeplane.v1.IntentService/ApplyPolicy with edgeplane.policy=ssh-mgmt-only`);
  }

  say(`
The fleet is running. Try, in another shell (as the admin the controller wrote on first start):
  export EDGEPLANE_SERVER=127.0.0.1:${GRPC} EDGEPLANE_TLS_CA=${join(adminDir(), 'ca.pem')} \\
    EDGEPLANE_TLS_CERT=${join(adminDir(), 'admin.pem')} EDGEPLANE_TLS_KEY=${join(adminDir(), 'admin-key.pem')}
  npx edgeplane get policies
  npx edgeplane describe node node-1
  npx edgeplane describe policy deny-telnet
  npx edgeplane rollout status ssh-mgmt-only
  npx edgeplane diff -f examples/
  npx edgeplane apply -f examples/ --wait
  npx edgeplane cert issue --role viewer --name alice --out /tmp/alice   # a read-only colleague
  ip netns exec epd-inet ping 172.31.1.2          # traffic to node-1's uplink
  ip -n epd-n1 -d link show up0                    # the XDP program on node-1's uplink
Logs: ${logs}   Ctrl-C stops the fleet and removes namespaces and pins.`);
  await stopRequested;
}

// Ctrl-C (or SIGTERM) at any point ends main() and tears down.
let requestStop = (): void => undefined;
const stopRequested = new Promise<void>((resolve) => (requestStop = resolve));
let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    requestStop();
    // Interrupts a start-up step still waiting on a child.
    for (const { child } of children) if (child.exitCode === null) child.kill('SIGTERM');
  });
}

/** One change's trace as text: the API call, its publish and wave spans, then each node's spans. */
function traceTree(spans: ReceivedSpan[], policy: string): string {
  const root = spans.find((s) => s.name === 'edgeplane.v1.IntentService/ApplyPolicy' && s.attributes['edgeplane.policy'] === policy);
  if (!root) return '  (no spans yet)';
  const inTrace = spans.filter((s) => s.traceId === root.traceId);
  const lines = [`  trace ${root.traceId}`, `  ${root.service}: ${root.name} (revision ${String(root.attributes['edgeplane.revision'] ?? '?')})`];
  for (const s of inTrace.filter((x) => x.service === 'edgeplane-controller' && x !== root)) {
    lines.push(`    ${s.service}: ${s.name}${s.attributes['edgeplane.wave'] !== undefined ? ` wave ${Number(s.attributes['edgeplane.wave']) + 1} (${String(s.attributes['edgeplane.wave.nodes'])} nodes, ${String(s.attributes['edgeplane.outcome'] ?? 'open')})` : ''}`);
  }
  const byNode = new Map<string, ReceivedSpan[]>();
  for (const s of inTrace.filter((x) => x.service === 'edgeplane-agent')) byNode.set(String(s.attributes['edgeplane.node']), [...(byNode.get(String(s.attributes['edgeplane.node'])) ?? []), s]);
  for (const [node, list] of [...byNode].sort()) {
    const revisions = [...new Set(list.map((s) => String(s.attributes['edgeplane.revision'])))].sort();
    const acks = list.filter((s) => s.name === 'edgeplane.agent.ack').map((s) => `${String(s.attributes['edgeplane.outcome'])}@${String(s.attributes['edgeplane.revision'])}`);
    const kinds = [...new Set(list.map((s) => s.name.replace(/^edgeplane\.agent\./, '')))];
    lines.push(`    ${node}: ${list.length} spans (${kinds.join(', ')}) for revisions ${revisions.join(', ')}; ${acks.join(', ')}`);
  }
  return lines.join('\n');
}

async function stopAll(): Promise<void> {
  say('\nstopping: agents, controller (and its nats-server), namespaces, pins');
  for (const { child } of children.reverse()) {
    if (child.exitCode !== null) continue;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 8000))]);
    if (child.exitCode === null) child.kill('SIGKILL');
  }
  teardown();
  for (const c of closers) await c();
  say('done');
}

const closers: (() => Promise<void>)[] = [];

main()
  .catch((err: unknown) => {
    process.stderr.write(`demo failed: ${(err as Error).message}\n`);
    process.exitCode = 1;
  })
  .finally(() => void stopAll());
