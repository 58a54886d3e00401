// The edgeplane command against a real controller (in-process, embedded nats-server, gRPC on
// a free port), run as a real process so the bin, exit codes, stdout and stderr are real.
// Fake agents speak the AgentService Connect stream to make nodes exist and ACK/NACK.
import test from 'ava';
import { createServer, type AddressInfo } from 'node:net';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { parse as parseYaml } from 'yaml';
import { AgentServiceClient, IntentServiceClient, RevisionOutcome, type ConnectRequest, type ConnectResponse } from '@edgeplane/proto';
import { parseConfig, startController, type ControllerConfig, type RunningController } from '@edgeplane/controller';
import { ExitCode, GrpcEdgeplaneApi } from '@edgeplane/cli';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = join(here, '..', 'dist', 'main.js');
const EXAMPLES = join(here, '..', '..', '..', 'examples');

let controller: RunningController;
let dataDir: string;
let work: string;
let intent: IntentServiceClient;

test.before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'cli-test-'));
  work = mkdtempSync(join(tmpdir(), 'cli-files-'));
  const config = parseConfig(['--insecure', '--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', dataDir, '--shutdown-grace', '1'], {}) as ControllerConfig;
  controller = await startController(config, { log: () => undefined });
  intent = new IntentServiceClient(controller.address, grpc.credentials.createInsecure());
});

test.after.always(async () => {
  intent?.close();
  await controller?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `edgeplane ARGS` as a process against the test controller. */
function edgeplane(args: string[], stdin = '', onStdout?: (soFar: string) => void): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, EDGEPLANE_SERVER: controller.address, EDGEPLANE_INSECURE: '1' }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      onStdout?.(stdout);
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

function file(name: string, text: string): string {
  const path = join(work, name);
  writeFileSync(path, text);
  return path;
}

function policyYaml(name: string, selector: Record<string, string>, opts: { labels?: Record<string, string>; port?: number } = {}): string {
  return `apiVersion: edgeplane.io/v1
kind: Policy
metadata:
  name: ${name}
  labels: ${JSON.stringify(opts.labels ?? {})}
spec:
  nodeSelector:
    matchLabels: ${JSON.stringify(selector)}
  rules:
    - priority: 1
      name: block
      protocol: tcp
      destinationPorts: [${opts.port ?? 23}]
      action: deny
`;
}

function serviceYaml(name: string, vip: string, opts: { port?: number; labels?: Record<string, string>; extra?: string } = {}): string {
  return `apiVersion: edgeplane.io/v1
kind: Service
metadata:
  name: ${name}
  labels: ${JSON.stringify(opts.labels ?? {})}
spec:
  nodeSelector: tier=svc
  vip: ${vip}
  protocol: tcp
  port: ${opts.port ?? 443}
  backends:
    - address: 10.9.0.1
      weight: 3
    - address: 10.9.0.2
      port: 8443
    - address: 10.9.0.3
      weight: 0
${opts.extra ?? ''}`;
}

/** A fake agent: hello, then whatever the test sends. Waits for the welcome. */
async function fakeAgent(name: string, labels: Record<string, string>) {
  const client = new AgentServiceClient(controller.address, grpc.credentials.createInsecure());
  const stream = client.connect();
  const welcome = new Promise<void>((resolve, reject) => {
    stream.on('data', (m: ConnectResponse) => m.message?.$case === 'welcome' && resolve());
    stream.on('error', reject);
  });
  const send = (m: ConnectRequest): void => void stream.write(m);
  send({ message: { $case: 'hello', hello: { nodeName: name, labels, info: { agentVersion: 'test', kernelRelease: '6.1.0', hostname: name, datapath: 'memory', capabilities: { xdpNative: true, xdpGeneric: true, tc: true, maxRules: 65536, ipv6: true } }, interfaces: [{ name: 'eth0', ifindex: 2, role: 1, attachMode: 'xdp-native', attached: true, programId: 42 }], receivedRevision: 0n, appliedRevision: 0n, sessionId: `s-${name}`, conditions: [], appliedUnknown: false, lastReport: undefined } } });
  await welcome;
  let seq = 0n;
  const beat = setInterval(() => send({ message: { $case: 'heartbeat', heartbeat: { sequence: ++seq, time: new Date() } } }), 1000);
  return {
    send,
    report(revision: bigint, outcome: RevisionOutcome, reason = '', applied = outcome === RevisionOutcome.REVISION_OUTCOME_ACK ? revision : 0n): void {
      send({ message: { $case: 'report', report: { revision, outcome, reason, appliedRevision: applied, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false } } });
    },
    counters(policy: string, priority: number, packets: bigint): void {
      send({ message: { $case: 'counters', counters: { startTime: undefined, endTime: undefined, appliedRevision: 0n, conntrack: [], blocklists: [], loadBalancer: undefined, shadow: undefined, interfaces: [{ interface: 'eth0', passedPackets: 10n, droppedPackets: packets, passedBytes: 1000n, droppedBytes: packets * 60n, defaultActionPackets: 0n, nonIpPackets: 0n, malformedPackets: 0n }], rules: [{ rule: { policy, priority }, ruleName: 'block', packets, bytes: packets * 60n, rateLimitedPackets: 0n }] } } });
    },
    close(): void {
      clearInterval(beat);
      stream.end();
      client.close();
    },
  };
}

/** Waits until the policy exists on the server and returns its resource version. */
async function revisionOf(name: string): Promise<bigint> {
  for (let i = 0; i < 200; i++) {
    const rv = await new Promise<bigint | undefined>((resolve) => intent.getPolicy({ name }, (err, res) => resolve(err ? undefined : res.policy?.metadata?.resourceVersion)));
    if (rv) return rv;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`policy ${name} never appeared`);
}

async function eventually(t: { fail(m: string): void }, run: () => Promise<Result>, ok: (r: Result) => boolean): Promise<Result> {
  let r = await run();
  for (let i = 0; i < 40 && !ok(r); i++) {
    await new Promise((res) => setTimeout(res, 100));
    r = await run();
  }
  if (!ok(r)) t.fail(`condition not reached: ${r.stdout}${r.stderr}`);
  return r;
}

test('apply - a folder of examples, then again unchanged', async (t) => {
  const first = await edgeplane(['apply', '-f', EXAMPLES]);
  t.is(first.code, 0, first.stderr);
  for (const name of ['deny-telnet', 'ratelimit-dns', 'allow-web-v6', 'block-smb', 'ssh-mgmt-only']) t.regex(first.stdout, new RegExp(`policy/${name} created \\(revision \\d+\\)`));
  t.regex(first.stdout, /service\/web created \(revision \d+\)/);
  t.regex(first.stdout, /prefixlist\/threat-feed created \(\+3 -0, 3 prefixes, revision \d+\)/);
  const again = await edgeplane(['apply', '-f', EXAMPLES]);
  t.is(again.code, 0);
  t.is(again.stdout.match(/unchanged/g)?.length, 7);
});

test('apply - a multi-document file and standard input; get -o yaml reads back unchanged', async (t) => {
  const multi = file('multi.yaml', `${policyYaml('multi-a', { app: 'm' })}---\n${policyYaml('multi-b', { app: 'm' }, { port: 24 })}`);
  const r = await edgeplane(['apply', '-f', multi]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /policy\/multi-a created[\s\S]*policy\/multi-b created/);
  const piped = await edgeplane(['apply', '-f', '-'], policyYaml('from-stdin', { app: 's' }));
  t.is(piped.code, 0, piped.stderr);
  t.regex(piped.stdout, /policy\/from-stdin created/);
  const yaml = await edgeplane(['get', 'policy', 'multi-a', 'multi-b', '-o', 'yaml']);
  const back = await edgeplane(['apply', '-f', '-'], yaml.stdout);
  t.is(back.code, 0, back.stderr);
  t.is(back.stdout, 'policy/multi-a unchanged\npolicy/multi-b unchanged\n');
});

test('get - table, -o json, -o yaml, -o name, -l and a missing name', async (t) => {
  await edgeplane(['apply', '-f', file('get.yaml', `${policyYaml('get-a', { x: '1' }, { labels: { team: 'get' } })}---\n${policyYaml('get-b', { x: '2' }, { labels: { team: 'other' } })}`)]);
  const table = await edgeplane(['get', 'policies', '-l', 'team in (get,other)']);
  t.is(table.code, 0);
  const lines = table.stdout.trim().split('\n');
  t.regex(lines[0]!, /^NAME\s+NODE-SELECTOR\s+INTERFACES\s+RULES\s+DEFAULT\s+REVISION\s+AGE$/);
  t.regex(lines[1]!, /^get-a\s+x=1\s+all\s+1\s+<none>\s+\d+\s+\d+s$/);
  t.is(lines.length, 3);
  const json = JSON.parse((await edgeplane(['get', 'pol', '-l', 'team=get', '-o', 'json'])).stdout) as { kind: string; items: { metadata: { name: string }; spec: { rules: unknown[] } }[] };
  t.is(json.kind, 'List');
  t.deepEqual(json.items.map((i) => i.metadata.name), ['get-a']);
  t.deepEqual(json.items[0]?.spec.rules, [{ priority: 1, name: 'block', protocol: 'tcp', destinationPorts: [23], action: 'deny' }]);
  const one = parseYaml((await edgeplane(['get', 'policy/get-b', '-o', 'yaml'])).stdout) as { kind: string; metadata: { labels: object } };
  t.is(one.kind, 'Policy');
  t.deepEqual(one.metadata.labels, { team: 'other' });
  t.is((await edgeplane(['get', 'policies', '-l', 'team=get', '-o', 'name'])).stdout, 'policy/get-a\n');
  const missing = await edgeplane(['get', 'policy', 'nope']);
  t.is(missing.code, ExitCode.ERROR);
  t.regex(missing.stderr, /policy "nope" not found/);
  const badSelector = await edgeplane(['get', 'policies', '-l', 'a in (']);
  t.is(badSelector.code, ExitCode.USAGE);
});

test('get nodes and describe node - applied revision, NACK, last error and counters', async (t) => {
  const agent = await fakeAgent('desc-node', { role: 'desc', site: 'ams1' });
  t.teardown(() => agent.close());
  await edgeplane(['apply', '-f', file('desc.yaml', policyYaml('desc-pol', { role: 'desc' }))]);
  const rv = await revisionOf('desc-pol');
  agent.report(rv, RevisionOutcome.REVISION_OUTCOME_NACK, 'verifier rejected program', rv - 1n);
  agent.counters('desc-pol', 1, 7n);
  const nodes = await eventually(t, () => edgeplane(['get', 'nodes', '-l', 'role=desc']), (r) => /NACK@/.test(r.stdout));
  t.regex(nodes.stdout, new RegExp(`desc-node\\s+Connected\\s+${rv - 1n}\\s+NACK@${rv}`));
  const d = await eventually(t, () => edgeplane(['describe', 'node', 'desc-node']), (r) => /desc-pol\s+1\s+block\s+7/.test(r.stdout));
  t.is(d.code, 0);
  t.regex(d.stdout, /Last outcome:\s+NACK \(revision \d+\)/);
  t.regex(d.stdout, /Last error:\s+verifier rejected program/);
  t.regex(d.stdout, /eth0\s+2\s+uplink\s+xdp-native/);
  t.regex(d.stdout, /Policies:\n\s+NAME[^\n]*\n(\s+\S+\s+\d+\s+\d+\n)*\s+desc-pol\s+\d+\s+1\n/);
  const p = await edgeplane(['describe', 'policy', 'desc-pol']);
  t.is(p.code, 0, p.stderr);
  t.regex(p.stdout, /1\s+block\s+deny\s+tcp\s+\*\s+\*\s+23\s+7\s+420\s+0/);
  t.regex(p.stdout, /desc-node\s+Connected\s+\d+\s+NACK\s+7\s+verifier rejected program/);
  t.is((await edgeplane(['describe', 'node', 'ghost'])).code, ExitCode.ERROR);
});

test('get nodes and describe node - conditions, and an applied revision that is unknown', async (t) => {
  const agent = await fakeAgent('cond-node', { role: 'cond' });
  t.teardown(() => agent.close());
  await edgeplane(['apply', '-f', file('cond.yaml', policyYaml('cond-pol', { role: 'cond' }))]);
  const rv = await revisionOf('cond-pol');
  agent.send({ message: { $case: 'report', report: { revision: rv, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: 'apply-rollback-failed: apply failed (x) and roll back uplink: y', appliedRevision: rv - 1n, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: true } } });
  agent.send({ message: { $case: 'conditions', conditions: { appliedUnknown: true, conditions: [{ type: 'apply-rollback-failed', message: 'rollback failed; the datapath state of uplink is unknown', since: new Date(), revision: rv }, { type: 'state-file-failed', message: 'ENOSPC', since: new Date(), revision: rv - 1n }] } } });
  const nodes = await eventually(t, () => edgeplane(['get', 'nodes', '-l', 'role=cond']), (r) => /state-file-failed/.test(r.stdout));
  t.regex(nodes.stdout, /CONDITIONS/);
  t.regex(nodes.stdout, new RegExp(`cond-node\\s+Connected\\s+unknown\\(last ${rv - 1n}\\)\\s+NACK@${rv}.*apply-rollback-failed,state-file-failed`));
  const d = await edgeplane(['describe', 'node', 'cond-node']);
  t.regex(d.stdout, new RegExp(`Applied revision:\\s+unknown \\(.*last known revision ${rv - 1n}\\)`));
  t.regex(d.stdout, new RegExp(`Conditions:\\n\\s+TYPE\\s+REVISION\\s+SINCE\\s+MESSAGE\\n\\s+apply-rollback-failed\\s+${rv}\\s+\\S+ ago\\s+rollback failed`));
  const y = parseYaml((await edgeplane(['get', 'node', 'cond-node', '-o', 'yaml'])).stdout) as { status: { appliedUnknown?: boolean; conditions?: { type: string }[] } };
  t.true(y.status.appliedUnknown);
  t.deepEqual(y.status.conditions?.map((c) => c.type), ['apply-rollback-failed', 'state-file-failed']);
  const p = await edgeplane(['describe', 'policy', 'cond-pol']);
  t.regex(p.stdout, /cond-node\s+Connected\s+unknown\(last \d+\)\s+unknown\s/);
});

test('delete - by name and by file; a missing policy is an error unless --ignore-not-found', async (t) => {
  const path = file('del.yaml', `${policyYaml('del-a', { d: '1' })}---\n${policyYaml('del-b', { d: '1' })}`);
  await edgeplane(['apply', '-f', path]);
  const byName = await edgeplane(['delete', 'policy', 'del-a']);
  t.is(byName.code, 0, byName.stderr);
  t.regex(byName.stdout, /^policy\/del-a deleted \(revision \d+\)\n$/);
  const byFile = await edgeplane(['delete', '-f', path]);
  t.is(byFile.code, ExitCode.ERROR);
  t.regex(byFile.stderr, /policy "del-a" not found/);
  t.regex(byFile.stdout, /policy\/del-b deleted/);
  t.is((await edgeplane(['delete', '-f', path, '--ignore-not-found'])).code, 0);
  t.is((await edgeplane(['get', 'policy', 'del-b'])).code, ExitCode.ERROR);
});

test('diff - shows the change and which nodes the policy selects now and after', async (t) => {
  const a = await fakeAgent('diff-1', { tier: 'diff' });
  const b = await fakeAgent('diff-2', { tier: 'diff', zone: 'b' });
  t.teardown(() => {
    a.close();
    b.close();
  });
  const path = file('diff.yaml', policyYaml('diff-pol', { tier: 'diff' }));
  const create = await edgeplane(['diff', '-f', path]);
  t.is(create.code, 0, create.stderr);
  t.regex(create.stdout, /policy\/diff-pol \(would be created\)[\s\S]*nodes: 0 selected now, 2 after\n {2}\+ diff-1, diff-2/);
  await edgeplane(['apply', '-f', path]);
  t.regex((await edgeplane(['diff', '-f', path])).stdout, /would be unchanged/);
  writeFileSync(path, policyYaml('diff-pol', { zone: 'b' }));
  const narrow = await edgeplane(['diff', '-f', path, '--exit-code']);
  t.is(narrow.code, ExitCode.DIFFERENT);
  t.regex(narrow.stdout, /-\s+tier: diff\n\+\s+zone: b/);
  t.regex(narrow.stdout, /nodes: 2 selected now, 1 after\n {2}- diff-1\n {2}~ diff-2/);
});

test('services - apply, get (table, -o yaml read back unchanged, -o json, -o name), describe, delete by name and by file', async (t) => {
  const agent = await fakeAgent('svc-node-1', { tier: 'svc' });
  t.teardown(() => agent.close());
  const path = file('svc.yaml', `${serviceYaml('svc-a', '198.51.100.1', { labels: { team: 'svc' }, extra: '  healthCheck:\n    type: http\n    httpPath: /ready\n    interval: 10s\n' })}---\n${serviceYaml('svc-b', '2001:db8::53', { port: 53 }).replace(/10\.9\.0\./g, '2001:db8::a')}`);
  const applied = await edgeplane(['apply', '-f', path]);
  t.is(applied.code, 0, applied.stderr);
  t.regex(applied.stdout, /^service\/svc-a created \(revision \d+\)\nservice\/svc-b created \(revision \d+\)\n$/);

  const before = await edgeplane(['get', 'services', 'svc-a']);
  t.regex(before.stdout.split('\n')[1]!, /^svc-a\s+\S+\s+3 \(1 drained\)\s+<unknown>\s/, 'no node has said anything yet');
  // The node's own health checks, as its agent reports them: one backend fails there.
  agent.send({
    message: {
      $case: 'backendHealth',
      backendHealth: {
        replace: true,
        revision: 0n,
        backends: [
          { service: 'svc-a', address: '10.9.0.1', port: 443, healthy: true, reason: '', since: new Date() },
          { service: 'svc-a', address: '10.9.0.2', port: 8443, healthy: false, reason: 'http: ECONNREFUSED', since: new Date() },
          { service: 'svc-a', address: '10.9.0.3', port: 443, healthy: true, reason: '', since: new Date() },
        ],
      },
    },
  });
  const table = await eventually(t, () => edgeplane(['get', 'services', 'svc-a', 'svc-b']), (r) => r.stdout.includes('2/3'));
  t.is(table.code, 0, table.stderr);
  const lines = table.stdout.trim().split('\n');
  t.regex(lines[0]!, /^NAME\s+VIP\s+BACKENDS\s+HEALTHY\s+NODE-SELECTOR\s+REVISION\s+AGE$/);
  t.regex(lines[1]!, /^svc-a\s+198\.51\.100\.1:443\/tcp\s+3 \(1 drained\)\s+2\/3\s+tier=svc\s+\d+\s+\d+s$/);
  t.regex(lines[2]!, /^svc-b\s+\[2001:db8::53\]:53\/tcp\s+3 \(1 drained\)\s+<none>\s/);
  t.regex((await edgeplane(['get', 'svc', 'svc-a', '-o', 'wide'])).stdout, /SCHEDULER\s+TABLE-SIZE\s+HEALTH-CHECK[\s\S]*maglev\s+509 \(default\)\s+http/);

  const json = JSON.parse((await edgeplane(['get', 'service', 'svc-a', '-o', 'json'])).stdout) as { kind: string; spec: { backends: unknown[]; healthCheck: unknown } };
  t.is(json.kind, 'Service');
  t.deepEqual(json.spec.backends, [{ address: '10.9.0.1', weight: 3 }, { address: '10.9.0.2', port: 8443 }, { address: '10.9.0.3', weight: 0 }], 'a drained weight prints; an unset one does not');
  t.deepEqual(json.spec.healthCheck, { type: 'http', httpPath: '/ready', interval: '10s' });
  t.is((await edgeplane(['get', 'services', '-l', 'team=svc', '-o', 'name'])).stdout, 'service/svc-a\n');
  const yaml = await edgeplane(['get', 'services', 'svc-a', 'svc-b', '-o', 'yaml']);
  const back = await edgeplane(['apply', '-f', '-'], yaml.stdout);
  t.is(back.code, 0, back.stderr);
  t.is(back.stdout, 'service/svc-a unchanged\nservice/svc-b unchanged\n');

  const described = await edgeplane(['describe', 'service', 'svc-a']);
  t.is(described.code, 0, described.stderr);
  for (const line of [
    /VIP:\s+198\.51\.100\.1\n/,
    /Port:\s+443\n/,
    /Protocol:\s+tcp\n/,
    /Scheduler:\s+maglev, table size 509 \(default\)\n/,
    /Health check:\s+http GET \/ready every 10s, timeout 2s, healthy after 2, unhealthy after 2\n/,
    /Node selector:\s+tier=svc \(1 of \d+ nodes\)\n/,
    /Resource version:\s+\d+\n/,
    /Backends \(3 \(1 drained\), healthy 2\/3\):\n\s+ADDRESS\s+PORT\s+WEIGHT\s+SHARE\s+NODES-HEALTHY\s+UNHEALTHY\s+UNKNOWN\n/,
    /10\.9\.0\.1\s+443\s+3\s+75\.0%\s+1\s+0\s+0\n/,
    /10\.9\.0\.2\s+8443\s+1\s+25\.0%\s+0\s+1\s+0\n/,
    /10\.9\.0\.3\s+443\s+0\s+drained\s+1\s+0\s+0\n/,
    /Unhealthy backends \(no new flows on these nodes\):\n {2}10\.9\.0\.2:8443 on svc-node-1 for \d+s: http: ECONNREFUSED\n/,
  ]) t.regex(described.stdout, line);

  const diff = await edgeplane(['diff', '-f', file('svc-diff.yaml', serviceYaml('svc-a', '198.51.100.1', { labels: { team: 'svc' }, port: 8443 }))]);
  t.is(diff.code, 0, diff.stderr);
  t.regex(diff.stdout, /service\/svc-a \(would be configured\)[\s\S]*-\s+port: 443\n\+\s+port: 8443[\s\S]*nodes: 1 selected now, 1 after/);

  const byName = await edgeplane(['delete', 'service', 'svc-a']);
  t.is(byName.code, 0, byName.stderr);
  t.regex(byName.stdout, /^service\/svc-a deleted \(revision \d+\)\n$/);
  const byFile = await edgeplane(['delete', '-f', path]);
  t.is(byFile.code, ExitCode.ERROR);
  t.regex(byFile.stderr, /service "svc-a" not found/);
  t.regex(byFile.stdout, /service\/svc-b deleted/);
  t.is((await edgeplane(['get', 'service', 'svc-b'])).code, ExitCode.ERROR);
});

test('services - a bad manifest is reported at file:line:col before sending; a VIP in use is refused at its line', async (t) => {
  const bad = file('svc-bad.yaml', serviceYaml('svc-bad', '198.51.100.7').replace('10.9.0.2', '10.9.0.02'));
  const v = await edgeplane(['apply', '-f', bad]);
  t.is(v.code, ExitCode.ERROR);
  t.is(v.stderr, `${bad}:14:16: service.spec.backends[1].address: "10.9.0.02" is not an IPv4 or IPv6 address\n`);
  t.is((await edgeplane(['get', 'service', 'svc-bad'])).code, ExitCode.ERROR, 'nothing was written');
  const unknown = await edgeplane(['apply', '-f', file('svc-unknown.yaml', serviceYaml('svc-u', '198.51.100.8', { extra: '  affinity: client_ip\n' }))]);
  t.is(unknown.code, ExitCode.ERROR);
  t.regex(unknown.stderr, /:18:3: unknown field "affinity" in spec/);

  t.is((await edgeplane(['apply', '-f', file('svc-first.yaml', serviceYaml('svc-first', '198.51.100.9'))])).code, 0);
  const second = file('svc-second.yaml', serviceYaml('svc-second', '198.51.100.9'));
  const r = await edgeplane(['apply', '-f', second]);
  t.is(r.code, ExitCode.ERROR);
  t.true(r.stderr.includes(`${second}:8:8: service.spec.vip: 198.51.100.9 port 443 TCP is already service "svc-first"'s`), r.stderr);
});

test('apply - bad YAML and bad fields are reported at file:line:col, nothing is sent', async (t) => {
  const syntax = file('syntax.yaml', 'apiVersion: edgeplane.io/v1\nkind: Policy\nmetadata:\n  name: x\n  labels: {a: b\nspec: {}\n');
  const r = await edgeplane(['apply', '-f', syntax]);
  t.is(r.code, ExitCode.ERROR);
  t.regex(r.stderr, new RegExp(`^${syntax.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:\\d+:\\d+: `));
  const bad = file('client.yaml', policyYaml('client-bad', { a: 'b' }).replace('destinationPorts: [23]', 'destinationPorts: [23, "90-80"]'));
  const v = await edgeplane(['apply', '-f', bad]);
  t.is(v.code, ExitCode.ERROR);
  t.is(v.stderr, `${bad}:13:30: policy.spec.rules[0].destination_ports[1].last: range 90-80 is reversed; write 80-90\n`);
  t.is((await edgeplane(['get', 'policy', 'client-bad'])).code, ExitCode.ERROR, 'nothing was written');
});

test('apply - a server-side rejection prints the field path at its line', async (t) => {
  const path = file('server.yaml', policyYaml('server-bad', { a: 'b' }).replace('      name: block\n', '      name: block\n      sourceCIDRs: [10.0.0.1/8]\n'));
  const r = await edgeplane(['apply', '-f', path, '--validate=false']);
  t.is(r.code, ExitCode.ERROR);
  t.regex(r.stderr, /INVALID_ARGUMENT/);
  t.true(r.stderr.includes(`${path}:12:21: policy.spec.rules[0].source_cidrs[0]: "10.0.0.1/8" has host bits set`), r.stderr);
});

test('apply --wait - succeeds when the selected nodes ACK', async (t) => {
  const agents = await Promise.all(['wait-ok-1', 'wait-ok-2'].map((n) => fakeAgent(n, { role: 'wait-ok' })));
  await fakeAgent('wait-ok-bystander', { role: 'other' }).then((a) => t.teardown(() => a.close()));
  t.teardown(() => agents.forEach((a) => a.close()));
  // Each agent ACKs only after the command has shown the previous state, so every step is seen.
  let rv = 0n;
  const run = edgeplane(['apply', '-f', file('wait-ok.yaml', policyYaml('wait-ok', { role: 'wait-ok' })), '--wait', '--timeout', '20s'], '', (out) => {
    const m = /(\d)\/2 nodes at revision (\d+)/.exec(out.split('\n').slice(-2).join('\n'));
    if (!m) return;
    rv = BigInt(m[2]!);
    agents[Number(m[1])]?.report(rv, RevisionOutcome.REVISION_OUTCOME_ACK);
  });
  const r = await run;
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`0/2 nodes at revision ${rv} \\(waiting for wait-ok-1, wait-ok-2\\)\\n1/2 nodes at revision ${rv} \\(waiting for wait-ok-2\\)`));
  t.regex(r.stdout, new RegExp(`2/2 nodes at revision ${rv}\\nrevision ${rv} applied on all 2 selected nodes`));
});

test('services - a staged Service manifest rolls out: apply --wait follows it, rollout status and abort by service/NAME, get rollouts shows the kind', async (t) => {
  const agent = await fakeAgent('svcroll-1', { tier: 'svcroll' });
  t.teardown(() => agent.close());
  const yaml = serviceYaml('svc-roll', '198.51.100.11', { extra: '  rolloutStrategy:\n    staged:\n      waves:\n        - percent: 100\n          bakeTime: 10m\n' }).replace('tier=svc', 'tier=svcroll');
  let rv = 0n;
  // The wave bakes 10 minutes: --wait follows it wave by wave and gives up at its timeout.
  const applied = await edgeplane(['apply', '-f', file('svc-roll.yaml', yaml), '--wait', '--timeout', '3s'], '', (out) => {
    const m = /service\/svc-roll created \(revision (\d+)\)/.exec(out);
    if (m && rv === 0n) agent.report((rv = BigInt(m[1]!)), RevisionOutcome.REVISION_OUTCOME_ACK);
  });
  t.is(applied.code, ExitCode.TIMEOUT, applied.stderr);
  t.regex(applied.stdout, /service\/svc-roll: wave 1 of 1 \(100%\), 1 node\(s\) run the change, 1\/1 of the wave done/, 'a service rollout is followed like a policy\'s');
  t.regex(applied.stderr, /timed out after 3s: service\/svc-roll: wave 1 of 1/);

  const status = await edgeplane(['rollout', 'status', 'service/svc-roll']);
  t.is(status.code, 0, status.stderr);
  t.regex(status.stdout, new RegExp(`^Rollout of service svc-roll \\(change at revision ${rv}\\): progressing\nWave 1 of 1; 1 node\\(s\\) run the change \\(a new service\\)`));
  const listed = await edgeplane(['get', 'rollouts']);
  t.is(listed.code, 0, listed.stderr);
  t.regex(listed.stdout, /^KIND\s+NAME\s+REVISION\s+STATE/);
  t.regex(listed.stdout, new RegExp(`\\nservice +svc-roll +${rv} +progressing +1/1 +1\\n`));
  const asPolicy = await edgeplane(['rollout', 'status', 'svc-roll']);
  t.is(asPolicy.code, ExitCode.ERROR, 'a bare name is a policy, which has no rollout');
  t.regex(asPolicy.stderr, /policy svc-roll has no rollout/);
  const watched = await edgeplane(['rollout', 'status', 'service/svc-roll', '--watch', '--timeout', '1s']);
  t.is(watched.code, ExitCode.TIMEOUT, watched.stderr);
  t.regex(watched.stderr, /rollout of service svc-roll did not finish within 1s/);
  const badTimeout = await edgeplane(['rollout', 'status', 'service/svc-roll', '--watch', '--timeout', 'soon']);
  t.is(badTimeout.code, ExitCode.USAGE, 'the timeout reads as apply --wait\'s does');
  t.regex(badTimeout.stderr, /--timeout: "soon" is not a duration like 60s or 2m/);

  const aborted = await edgeplane(['rollout', 'abort', 'service/svc-roll', '--reason', 'not today']);
  t.is(aborted.code, 0, aborted.stderr);
  t.regex(aborted.stdout, /^rollout\/service\/svc-roll aborted \(revision \d+\): aborted\n$/);
  t.is((await edgeplane(['get', 'service', 'svc-roll'])).code, ExitCode.ERROR, 'the service its rollout created is gone');
  const bad = await edgeplane(['rollout', 'pause', 'node/x']);
  t.is(bad.code, ExitCode.USAGE);
});

/**
 * Fake agents that ACK every record of a policy's rollout, as real agents apply every revision;
 * `ready(wave)` holds the ACKs of a wave's records back until it returns true.
 */
function ackRollouts(name: string, agents: { report(revision: bigint, outcome: RevisionOutcome, reason?: string): void }[], nack?: { agent: number; reason: string }, ready: (wave: number) => boolean = () => true): () => void {
  const api = new GrpcEdgeplaneApi({ server: controller.address, insecure: true, requestTimeoutMs: 2000 });
  let acked = 0n;
  const timer = setInterval(() => {
    void api.getRollout(name).then((s) => {
      const rv = s?.rollout?.resourceVersion ?? 0n;
      if (rv <= acked || !ready(s?.rollout?.currentWave ?? 0)) return;
      acked = rv;
      agents.forEach((a, i) => (nack?.agent === i ? a.report(rv, RevisionOutcome.REVISION_OUTCOME_NACK, nack.reason) : a.report(rv, RevisionOutcome.REVISION_OUTCOME_ACK)));
    }, () => undefined);
  }, 100);
  return () => {
    clearInterval(timer);
    api.close();
  };
}

const stagedPolicyYaml = (name: string, role: string, bake: string): string =>
  policyYaml(name, { role }) + `  rolloutStrategy:\n    staged:\n      waves: [{name: canary, selector: {matchLabels: {canary: "true"}}, bakeTime: ${bake}}]\n`;

test('apply --wait - follows a staged rollout wave by wave, the implicit last wave included, until every node runs the change', async (t) => {
  const agents = await Promise.all([fakeAgent('wait-staged-1', { role: 'wait-staged', canary: 'true' }), fakeAgent('wait-staged-2', { role: 'wait-staged' })]);
  t.teardown(() => agents.forEach((a) => a.close()));
  // --wait polls: the last wave's ACKs wait until it has printed that wave, or a fast wave could end between two polls.
  let sawLastWave = false;
  t.teardown(ackRollouts('wait-staged', agents, undefined, (wave) => wave === 0 || sawLastWave));
  const r = await edgeplane(['apply', '-f', file('wait-staged.yaml', stagedPolicyYaml('wait-staged', 'wait-staged', '1s')), '--wait', '--timeout', '30s'], '', (out) => {
    sawLastWave ||= /wave 2 of 2/.test(out);
  });
  t.is(r.code, 0, r.stderr);
  const change = BigInt(/policy\/wait-staged created \(revision (\d+)\)/.exec(r.stdout)![1]!);
  t.regex(r.stdout, /policy\/wait-staged: wave 1 of 2 \(canary: selector\), 1 node\(s\) run the change/);
  t.regex(r.stdout, /policy\/wait-staged: wave 2 of 2 \(rest: 100%\), 2 node\(s\) run the change/);
  t.regex(r.stdout, /policy\/wait-staged: succeeded\n/);
  const final = BigInt(/revision (\d+) applied on all 2 selected nodes\n$/.exec(r.stdout)![1]!);
  t.true(final > change + 1n, `waited for the record that ended the rollout (${final}), not the change (${change})`);
});

test('apply --wait - a staged rollout failed by a NACK exits 3, an aborted one exits 6', async (t) => {
  const agents = await Promise.all([fakeAgent('wait-sfail-1', { role: 'wait-sfail', canary: 'true' }), fakeAgent('wait-sfail-2', { role: 'wait-sfail' })]);
  t.teardown(() => agents.forEach((a) => a.close()));
  t.teardown(ackRollouts('wait-sfail', agents, { agent: 0, reason: 'map full' }));
  const nacked = await edgeplane(['apply', '-f', file('wait-sfail.yaml', stagedPolicyYaml('wait-sfail', 'wait-sfail', '10m')), '--wait', '--timeout', '30s']);
  t.is(nacked.code, ExitCode.NACK, nacked.stdout + nacked.stderr);
  t.regex(nacked.stderr, /rollout of policy wait-sfail failed: .*wait-sfail-1/);

  const agents2 = await Promise.all([fakeAgent('wait-sabort-1', { role: 'wait-sabort', canary: 'true' }), fakeAgent('wait-sabort-2', { role: 'wait-sabort' })]);
  t.teardown(() => agents2.forEach((a) => a.close()));
  t.teardown(ackRollouts('wait-sabort', agents2));
  const waiting = edgeplane(['apply', '-f', file('wait-sabort.yaml', stagedPolicyYaml('wait-sabort', 'wait-sabort', '10m')), '--wait', '--timeout', '30s'], '', (out) => {
    if (/of the wave done/.test(out) && !aborting) aborting = edgeplane(['rollout', 'abort', 'wait-sabort', '--reason', 'operator says no']);
  });
  let aborting: Promise<Result> | undefined;
  const aborted = await waiting;
  t.is((await aborting!).code, 0);
  t.is(aborted.code, ExitCode.ROLLOUT_FAILED, aborted.stdout + aborted.stderr);
  t.regex(aborted.stderr, /rollout of policy wait-sabort aborted: operator says no/);
});

test('apply --wait - exits with the NACK code, naming the node and its reason', async (t) => {
  const agent = await fakeAgent('wait-nack-1', { role: 'wait-nack' });
  t.teardown(() => agent.close());
  const run = edgeplane(['apply', '-f', file('wait-nack.yaml', policyYaml('wait-nack', { role: 'wait-nack' })), '--wait', '--timeout', '20s']);
  const rv = await revisionOf('wait-nack');
  agent.report(rv, RevisionOutcome.REVISION_OUTCOME_NACK, 'map full: 65536 rules');
  const r = await run;
  t.is(r.code, ExitCode.NACK);
  t.regex(r.stderr, new RegExp(`node wait-nack-1 NACKed revision ${rv}: map full: 65536 rules`));
});

test('apply --wait - exits with the timeout code when nobody reports', async (t) => {
  const agent = await fakeAgent('wait-silent-1', { role: 'wait-silent' });
  t.teardown(() => agent.close());
  const r = await edgeplane(['apply', '-f', file('wait-silent.yaml', policyYaml('wait-silent', { role: 'wait-silent' })), '--wait', '--timeout', '1s']);
  t.is(r.code, ExitCode.TIMEOUT);
  t.regex(r.stderr, /timed out after 1s: 0\/1 nodes at revision \d+; no report from wait-silent-1/);
});

test('--help - lists commands, flags and exit codes; usage errors exit 2', async (t) => {
  const help = await edgeplane(['--help']);
  t.is(help.code, 0);
  for (const word of ['apply', 'diff', 'get', 'describe', 'delete', 'completion', '--server', 'EDGEPLANE_SERVER', '--tls-ca', '--request-timeout', 'Exit codes:', '3  apply --wait: a node NACKed', '4  apply --wait']) t.true(help.stdout.includes(word), word);
  t.regex((await edgeplane(['apply', '--help'])).stdout, /--wait[\s\S]*--timeout[\s\S]*Exit codes:/);
  t.is((await edgeplane([])).code, ExitCode.USAGE);
  const unknown = await edgeplane(['get', 'policies', '--wait']);
  t.is(unknown.code, ExitCode.USAGE);
  t.regex(unknown.stderr, /get does not take --wait/);
  t.is((await edgeplane(['frobnicate'])).code, ExitCode.USAGE);
});

test('completion - prints bash and zsh scripts', async (t) => {
  const bash = await edgeplane(['completion', 'bash']);
  t.is(bash.code, 0);
  t.regex(bash.stdout, /complete -F _edgeplane edgeplane/);
  t.regex(bash.stdout, /apply\) words="[^"]*--wait/);
  t.regex(bash.stdout, /get\) words="policies services nodes /);
  t.regex(bash.stdout, /\|service\|services\|svc\|/, 'names of every kind complete, from the kind table');
  const zsh = await edgeplane(['completion', 'zsh']);
  t.regex(zsh.stdout, /^#compdef edgeplane/);
  t.is((await edgeplane(['completion', 'fish'])).code, ExitCode.USAGE);
});

test('connection - a server that never answers fails with DEADLINE_EXCEEDED after --request-timeout', async (t) => {
  // Accepts TCP and stays silent: only the request deadline can end the call.
  const silent = createServer((socket) => socket.on('error', () => undefined));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(() => silent.close());
  const port = (silent.address() as AddressInfo).port;
  const r = await new Promise<Result>((resolve) => {
    const child = spawn(process.execPath, [BIN, 'get', 'nodes', '--server', `127.0.0.1:${port}`, '--insecure', '--request-timeout', '1s'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout: '', stderr }));
  });
  t.is(r.code, ExitCode.ERROR);
  t.regex(r.stderr, /^error: list nodes: DEADLINE_EXCEEDED/);
  // A refused connection is UNAVAILABLE, with the same exit code.
  const refused = await new Promise<Result>((resolve) => {
    const child = spawn(process.execPath, [BIN, 'get', 'nodes', '--server', '127.0.0.1:1', '--insecure', '--request-timeout', '1s'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout: '', stderr }));
  });
  t.is(refused.code, ExitCode.ERROR);
  t.regex(refused.stderr, /^error: list nodes: (UNAVAILABLE|DEADLINE_EXCEEDED)/);
});

test('GrpcEdgeplaneApi - closing twice is safe', (t) => {
  const api = new GrpcEdgeplaneApi({ server: controller.address, insecure: true, requestTimeoutMs: 1000 });
  api.close();
  t.notThrows(() => api.close());
});

test('prefix lists - apply -f of a PrefixList (inline and prefixesFile) creates it, a changed file sends only the difference, get and describe show it', async (t) => {
  // 60,000 prefixes: more than one UpdatePrefixList carries (MAX_PREFIX_LIST_CHANGE), so it is built by successive updates.
  const feed = (from: number, to: number): string => ['# threat feed', ...Array.from({ length: to - from }, (_, k) => `10.${((from + k) >> 8) & 255}.${(from + k) & 255}.${(from + k) >> 16}/32`)].join('\n') + '\n';
  file('feed.txt', feed(0, 60_000));
  const manifest = file('feed.yaml', 'apiVersion: edgeplane.io/v1\nkind: PrefixList\nmetadata:\n  name: feed\nspec:\n  use: deny_source\n  nodeSelector:\n    matchLabels: {role: edge}\n  prefixes: [203.0.113.0/24]\n  prefixesFile: feed.txt\n');
  // A 50,000-prefix update is validated, logged and applied to the chain by the controller: give
  // it more than the default 10 s deadline on a loaded test machine.
  const created = await edgeplane(['apply', '-f', manifest, '--request-timeout', '2m']);
  t.is(created.code, ExitCode.OK, created.stderr);
  t.regex(created.stdout, /^prefixlist\/feed created \(\+60001 -0, 60001 prefixes, revision \d+\)\n$/);
  // Two prefixes leave the feed and one comes: the server refuses an add of a prefix the list holds,
  // so this succeeds only because the difference is sent, not the whole list.
  file('feed.txt', feed(2, 60_001));
  const changed = await edgeplane(['apply', '-f', manifest, '--request-timeout', '2m']);
  t.is(changed.code, ExitCode.OK, changed.stderr);
  t.regex(changed.stdout, /^prefixlist\/feed configured \(\+1 -2, 60000 prefixes, revision \d+\)\n$/);
  t.is((await edgeplane(['apply', '-f', manifest, '--request-timeout', '2m'])).stdout, 'prefixlist/feed unchanged\n');

  const table = await edgeplane(['get', 'prefixlists']);
  t.regex(table.stdout, /NAME\s+USE\s+PREFIXES\s+SELECTOR\s+VERSION\nfeed\s+deny_source\s+60000\s+role=edge\s+\d+\n/);
  const yaml = parseYaml((await edgeplane(['get', 'prefixlist', 'feed', '-o', 'yaml'])).stdout) as { kind: string; spec: { prefixes: string[] } };
  t.is(yaml.kind, 'PrefixList');
  t.is(yaml.spec.prefixes.length, 60_000);
  t.false(yaml.spec.prefixes.includes(feed(0, 1).split('\n')[1]!), 'the removed prefix is gone');
  const described = await edgeplane(['describe', 'prefixlist', 'feed']);
  t.regex(described.stdout, /Prefixes:\s+60000\n/);
  t.regex(described.stdout, /Use:\s+deny_source\n/);
});

test('prefix lists - apply -f writes a PrefixList before the policy naming it, whatever their order; get shows the rule\'s lists', async (t) => {
  const both = file(
    'named.yaml',
    [
      'apiVersion: edgeplane.io/v1\nkind: Policy\nmetadata:\n  name: named-lists\nspec:\n  rules:\n    - {priority: 1, sourcePrefixLists: [scanners], protocol: tcp, destinationPorts: [22], action: deny}\n',
      'apiVersion: edgeplane.io/v1\nkind: PrefixList\nmetadata:\n  name: scanners\nspec:\n  prefixes: [198.51.100.0/24]\n',
    ].join('---\n'),
  );
  const r = await edgeplane(['apply', '-f', both]);
  t.is(r.code, ExitCode.OK, r.stderr);
  const [first, second] = r.stdout.trim().split('\n');
  t.regex(first ?? '', /^prefixlist\/scanners created/);
  t.regex(second ?? '', /^policy\/named-lists created/);
  const yaml = parseYaml((await edgeplane(['get', 'policy', 'named-lists', '-o', 'yaml'])).stdout) as { spec: { rules: { sourcePrefixLists?: string[] }[] } };
  t.deepEqual(yaml.spec.rules[0]?.sourcePrefixLists, ['scanners']);
  t.regex((await edgeplane(['describe', 'policy', 'named-lists'])).stdout, /list:scanners/);
  const inUse = await edgeplane(['delete', 'prefixlist', 'scanners']);
  t.is(inUse.code, ExitCode.ERROR);
  t.regex(inUse.stderr, /prefix list scanners is named by policy named-lists \(rules\[0\]\.source_prefix_lists\[0\]\)/);
  // delete -f takes the policy first, whatever the order in the file (here the list comes first).
  const reversed = file('named-reversed.yaml', readFileSync(both, 'utf8').split('---\n').reverse().join('---\n'));
  const deleted = await edgeplane(['delete', '-f', reversed]);
  t.is(deleted.code, ExitCode.OK, deleted.stderr);
  t.deepEqual(deleted.stdout.trim().split('\n').map((line) => line.split(' ')[0]), ['policy/named-lists', 'prefixlist/scanners']);
});

test('prefix lists - a bad prefix in a prefixesFile is reported at its file:line, nothing is sent; delete -f removes a list', async (t) => {
  const feed = file('bad-feed.txt', '192.0.2.0/24\n\n10.0.0.1/8  # host bits\n198.51.100.0/24\n');
  const manifest = file('bad-feed.yaml', `apiVersion: edgeplane.io/v1\nkind: PrefixList\nmetadata:\n  name: bad-feed\nspec:\n  use: deny_source\n  prefixes:\n    - 203.0.113.0/24\n    - 203.0.113.0/24\n  prefixesFile: ${feed}\n`);
  const r = await edgeplane(['apply', '-f', manifest]);
  t.is(r.code, ExitCode.ERROR);
  t.true(r.stderr.includes(`${feed}:3:1: prefix_list.spec.prefixes[3]: "10.0.0.1/8" has host bits set; write 10.0.0.0/8`), r.stderr);
  t.true(r.stderr.includes(`${manifest}:9:7: prefix_list.spec.prefixes[1]: "203.0.113.0/24" appears twice`), r.stderr);
  t.is((await edgeplane(['get', 'prefixlist', 'bad-feed'])).code, ExitCode.ERROR, 'nothing was written');

  const good = file('small.yaml', 'apiVersion: edgeplane.io/v1\nkind: PrefixList\nmetadata:\n  name: small\nspec:\n  prefixes: [192.0.2.0/24]\n');
  t.is((await edgeplane(['apply', '-f', good])).code, ExitCode.OK);
  const deleted = await edgeplane(['delete', '-f', good]);
  t.regex(deleted.stdout, /^prefixlist\/small deleted \(revision \d+\)\n$/);
  t.is((await edgeplane(['get', 'prefixlist', 'small'])).code, ExitCode.ERROR);
});
