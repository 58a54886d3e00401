// The Python client (clients/python) against a real controller process started with its
// defaults (mutual TLS, embedded NATS with authorization): the wire contract serves a second
// language with stubs generated from proto/ at run time, over the controller's TLS.
import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { ConnectionState, Protocol, type ConnectResponse, type ConnectionsQuery } from '@edgeplane/proto';
import { Supervised } from './support/supervisor.js';
import { clientsFor, createToken, enroll } from '../services/controller/test/trust-helpers.js';
import { CONTROLLER_MAIN } from './support/fleet.js';
import { call, clients } from './support/grpc.js';
import { adminTlsOf } from './support/control-plane.js';

const CLIENT = fileURLToPath(new URL('../clients/python/edgeplane_client.py', import.meta.url));
const REFLECT = fileURLToPath(new URL('../clients/python/reflection_call.py', import.meta.url));
// Debian's interpreter: the one python3-grpcio and python3-grpc-tools are installed for (a
// python3 earlier on PATH, e.g. pyenv's, may lack them).
const PYTHON = '/usr/bin/python3';
const run = promisify(execFile);

function hasGrpc(): boolean {
  try {
    execFileSync(PYTHON, ['-c', 'import grpc, grpc_tools.protoc'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const available = hasGrpc();
const it = available ? test.serial : test.serial.skip;
if (!available) console.warn(`python client tests skipped: ${PYTHON} cannot import grpc and grpc_tools (Debian: apt install python3-grpcio python3-grpc-tools)`);

let controller: Supervised | undefined;
let dir: string;
let api: ReturnType<typeof clients>;

test.before(async () => {
  if (!available) return;
  dir = mkdtempSync(join(tmpdir(), 'py-client-'));
  controller = await Supervised.start('controller', {
    command: process.execPath,
    args: [CONTROLLER_MAIN, '--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'ctl'), '--shutdown-grace', '1'],
    readyEvent: 'ready',
  });
  api = clients(String(controller.ready.grpc), adminTlsOf(join(dir, 'ctl')));
});

test.after.always(async () => {
  api?.close();
  await controller?.stop(3000);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs the client; resolves with its exit code and output (never rejects on a non-zero exit). */
async function client(args: string[], script = CLIENT): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const admin = join(dir, 'ctl', 'admin');
    const tls = ['--tls-ca', join(admin, 'ca.pem'), '--tls-cert', join(admin, 'admin.pem'), '--tls-key', join(admin, 'admin-key.pem')];
    const { stdout, stderr } = await run(PYTHON, [script, '--server', String(controller!.ready.grpc), ...tls, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const name = `py-${randomBytes(3).toString('hex')}`;

it('python client - apply creates a policy with an IPv6 rule that the TypeScript client reads back', async (t) => {
  const r = await client(['apply', '--name', name]);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { revision: string; created: boolean; policy: { metadata: { name: string } } };
  t.true(out.created);
  t.is(out.policy.metadata.name, name);
  const got = await call(api.intent, api.intent.getPolicy, { name });
  t.is(got.policy?.metadata?.resourceVersion, BigInt(out.revision), 'the revision the Python client printed is the policy version');
  t.deepEqual(got.policy?.spec?.rules.map((x) => x.sourceCidrs), [['2001:db8::/32'], ['198.51.100.0/24']]);
  t.deepEqual(got.policy?.metadata?.labels, { client: 'python' });
});

it('python client - apply-service creates a service whose drained and default-weight backends stay apart', async (t) => {
  const r = await client(['apply-service', '--name', `${name}-svc`]);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { revision: string; created: boolean };
  t.true(out.created);
  const got = await call(api.intent, api.intent.getService, { name: `${name}-svc` });
  t.is(got.service?.metadata?.resourceVersion, BigInt(out.revision));
  t.is(got.service?.spec?.vip, '203.0.113.10');
  t.deepEqual(got.service?.spec?.backends.map((b) => [b.address, b.weight]), [['10.0.0.11', 3], ['10.0.0.12', undefined], ['10.0.0.13', 0]], 'unset is not 0');
  t.is(got.service?.spec?.healthCheck?.interval?.seconds, 2n);
});

it('python client - list prints the policies as JSON', async (t) => {
  const r = await client(['list']);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { policies: { metadata: { name: string } }[]; revision: string };
  t.true(out.policies.some((p) => p.metadata.name === name), r.stdout);
  t.true(BigInt(out.revision) >= 1n);
});

it('python client - a bad request prints the field violations from grpc-status-details-bin and exits 1', async (t) => {
  const file = join(dir, 'bad.json');
  writeFileSync(file, JSON.stringify({
    metadata: { name: `${name}-bad` },
    spec: { nodeSelector: { matchLabels: { role: 'edge' } }, rules: [{ priority: 1, sourceCidrs: ['2001:DB8::/32'], protocol: 'PROTOCOL_TCP', destinationPorts: [{ first: 23, last: 23 }], action: 'ACTION_DENY' }] },
  }));
  const r = await client(['apply', '-f', file]);
  t.is(r.code, 1, `${r.stdout}\n${r.stderr}`);
  const out = JSON.parse(r.stdout) as { error: string; fieldViolations: { field: string; description: string }[] };
  t.is(out.error, 'INVALID_ARGUMENT');
  t.deepEqual(out.fieldViolations.map((v) => v.field), ['policy.spec.rules[0].source_cidrs[0]']);
  t.regex(out.fieldViolations[0]!.description, /canonical/);
  await t.throwsAsync(call(api.intent, api.intent.getPolicy, { name: `${name}-bad` }), undefined, 'nothing was stored');
});

it('python client - without a client certificate it does not fall back to plaintext; plaintext to this controller fails', async (t) => {
  const bare = await run(PYTHON, [CLIENT, '--server', String(controller!.ready.grpc), 'list'], { timeout: 60_000, env: { ...process.env, EDGEPLANE_TLS_CA: '', EDGEPLANE_TLS_CERT: '', EDGEPLANE_TLS_KEY: '' } }).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  t.is(bare.code, 2, 'a usage error');
  t.regex(bare.stderr, /--tls-ca/);
  const plain = await run(PYTHON, [CLIENT, '--server', String(controller!.ready.grpc), '--insecure', '--timeout', '5', 'list'], { timeout: 60_000 }).then(
    () => ({ code: 0, stdout: '' }),
    (e: { code: number; stdout: string }) => e,
  );
  t.is(plain.code, 1);
  t.regex(plain.stdout, /UNAVAILABLE/);
});

// Issue 12: oversized and invalid input must reach a default grpcio client (C-core, 8 KiB
// metadata limit) as INVALID_ARGUMENT with decodable field violations, not RESOURCE_EXHAUSTED.
const bad: [title: string, args: () => string[], field: string][] = [
  ['a 1 MiB selector', () => ['list', '--selector-file', selectorFile('big', 'a'.repeat(1024 * 1024))], 'label_selector'],
  ['100,000 terms', () => ['list', '--selector-file', selectorFile('terms', Array.from({ length: 100_000 }, (_, i) => `k${i}=v`).join(','))], 'label_selector'],
  ['an 8,000-character bad value', () => ['apply', '-f', policyFile('long', { metadata: { name: `${name}-long`, labels: { team: 'x'.repeat(8000) } }, spec: { rules: [{ priority: 1, action: 'ACTION_DENY' }] } })], 'policy.metadata.labels["team"]'],
  [
    'long non-ASCII names and labels (9 bytes a character in grpc-message)',
    () => ['apply', '-f', policyFile('euro', { metadata: { name: '€'.repeat(4000), labels: Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`€${i}${'€'.repeat(4000)}`, '😀'.repeat(4000)])) }, spec: { rules: [{ priority: 1, action: 'ACTION_DENY' }] } })],
    'policy.metadata.name',
  ],
  [
    '5,000 bad CIDRs',
    () => ['apply', '-f', policyFile('cidrs', { metadata: { name: `${name}-cidrs` }, spec: { rules: Array.from({ length: 5000 }, (_, i) => ({ priority: i + 1, sourceCidrs: [`${'9'.repeat(200)}/${i}`], action: 'ACTION_DENY' })) } })],
    'policy.spec.rules[0].source_cidrs[0]',
  ],
];

function selectorFile(tag: string, text: string): string {
  const file = join(dir, `selector-${tag}.txt`);
  writeFileSync(file, text);
  return file;
}

function policyFile(tag: string, policy: unknown): string {
  const file = join(dir, `policy-${tag}.json`);
  writeFileSync(file, JSON.stringify(policy));
  return file;
}

for (const [title, args, field] of bad) {
  it(`python client - ${title}: INVALID_ARGUMENT with field violations a default grpcio client decodes`, async (t) => {
    const r = await client(args());
    t.is(r.code, 1, `${r.stdout}\n${r.stderr}`);
    const out = JSON.parse(r.stdout) as { error: string; message: string; fieldViolations: { field: string; description: string; reason: string }[] };
    t.is(out.error, 'INVALID_ARGUMENT', r.stdout.slice(0, 500));
    t.is(out.fieldViolations[0]?.field, field);
    t.true(out.fieldViolations.length <= 25, `${out.fieldViolations.length} violations`);
    t.true(out.message.length <= 512);
    for (const v of out.fieldViolations) t.true(v.description.length <= 512, v.description.slice(0, 100));
  });
}

it('python client - conntrack lists and counts a node\'s connections through the controller; a node not connected is FAILED_PRECONDITION', async (t) => {
  // The node's side of the relay is a Connect stream answering as an agent does, with the
  // certificate of an enrolled node.
  const node = `py-ct-${randomBytes(2).toString('hex')}`;
  const address = String(controller!.ready.grpc);
  const adminDir = join(dir, 'ctl', 'admin');
  const ca = readFileSync(join(adminDir, 'ca.pem'), 'utf8');
  const admin = clientsFor(address, ca, { keyPem: readFileSync(join(adminDir, 'admin-key.pem'), 'utf8'), certPem: readFileSync(join(adminDir, 'admin.pem'), 'utf8') });
  const anon = clientsFor(address, ca);
  const enrolled = await enroll(anon, await createToken(admin), node);
  const own = clientsFor(address, ca, enrolled);
  const stream = own.agent.connect();
  t.teardown(() => {
    stream.cancel();
    for (const c of [admin, anon, own]) c.close();
  });
  const asked: ConnectionsQuery[] = [];
  const welcomed = new Promise<void>((resolve) => {
    stream.on('data', (m: ConnectResponse) => {
      if (m.message?.$case === 'welcome') resolve();
      if (m.message?.$case !== 'listConnections') return;
      const q = m.message.listConnections;
      asked.push(q);
      const row = { role: 'uplink', family: 6, protocol: Protocol.PROTOCOL_TCP, source: '2001:db8::7', sourcePort: 40000, destination: '2001:db8::1', destinationPort: 22, state: ConnectionState.CONNECTION_STATE_ESTABLISHED, seenReply: true, egress: false, table: 'established', expiresIn: { seconds: 60n, nanos: 0 }, originalPackets: 3n, originalBytes: 240n, replyPackets: 2n, replyBytes: 160n, rule: { policy: 'ssh', priority: 10 }, admittedBy: 'rule' };
      stream.write({ message: { $case: 'connections', connections: { requestId: q.requestId, connections: q.countOnly ? [] : [row], matched: 1n, error: '' } } });
    });
  });
  stream.on('error', () => undefined);
  stream.write({ message: { $case: 'hello', hello: { nodeName: node, labels: {}, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 'py', conditions: [], appliedUnknown: false, lastReport: undefined } } });
  await welcomed;
  const listed = await client(['conntrack', node, '--proto', 'tcp', '--address', '2001:db8::/32', '--port', '22']);
  t.is(listed.code, 0, `${listed.stdout}\n${listed.stderr}`);
  const out = JSON.parse(listed.stdout) as { connections: { source: string; state: string; rule: { policy: string } }[]; matched: string };
  t.deepEqual(out.connections.map((c) => [c.source, c.state, c.rule.policy]), [['2001:db8::7', 'CONNECTION_STATE_ESTABLISHED', 'ssh']]);
  t.is(out.matched, '1');
  t.like(asked[0]?.filter, { protocol: Protocol.PROTOCOL_TCP, address: '2001:db8::/32', port: 22 });
  const counted = await client(['conntrack', node, '--count']);
  t.is(counted.code, 0, counted.stderr);
  t.is((JSON.parse(counted.stdout) as { matched: string }).matched, '1');
  t.true(asked[1]?.countOnly);
  stream.cancel();
  let gone: { code: number; stdout: string } = { code: 0, stdout: '' };
  for (let i = 0; i < 50; i++) {
    gone = await client(['conntrack', node]);
    if (gone.code === 1 && gone.stdout.includes('FAILED_PRECONDITION')) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.is(gone.code, 1);
  t.is((JSON.parse(gone.stdout) as { error: string }).error, 'FAILED_PRECONDITION');
});

// Issue 17: after the conntrack test, which registered a node.
it('python client - watch-nodes follows FleetService.WatchNodes over mutual TLS', async (t) => {
  const r = await client(['watch-nodes', '--initial', '--count', '1']);
  t.is(r.code, 0, r.stderr);
  const event = JSON.parse(r.stdout.trim().split('\n')[0]!) as { type: string; node: { name: string } };
  t.is(event.type, 'NODE_EVENT_TYPE_ADDED');
  t.regex(event.node.name, /^py-ct-/);
});

it('python reflection - a request built from server reflection alone: the real files resolve in a descriptor pool, unary and streaming calls work', async (t) => {
  const listed = await client(['--list'], REFLECT);
  t.is(listed.code, 0, listed.stderr);
  t.true((JSON.parse(listed.stdout) as string[]).includes('edgeplane.v1.IntentService'), listed.stdout);
  const file = await client(['--file', 'edgeplane/v1/policy.proto'], REFLECT);
  t.is(file.code, 0, `${file.stdout}\n${file.stderr}`);
  const fd = JSON.parse(file.stdout) as { name: string; dependency: string[]; messageType: string[] };
  t.is(fd.name, 'edgeplane/v1/policy.proto');
  t.true(fd.dependency.includes('google/protobuf/duration.proto'));
  t.true(fd.messageType.includes('Policy'));
  const policies = await client(['edgeplane.v1.IntentService/ListPolicies', '{"pageSize": 1000}'], REFLECT);
  t.is(policies.code, 0, `${policies.stdout}\n${policies.stderr}`);
  t.true((JSON.parse(policies.stdout) as { policies: { metadata: { name: string; labels: Record<string, string> } }[] }).policies.some((p) => p.metadata.name === name && p.metadata.labels.client === 'python'), 'map fields decode');
  const watched = await client(['edgeplane.v1.FleetService/WatchNodes', '{"sendInitial": true}', '--max-messages', '1'], REFLECT);
  t.is(watched.code, 0, `${watched.stdout}\n${watched.stderr}`);
  t.regex((JSON.parse(watched.stdout.trim().split('\n')[0]!) as { node: { name: string } }).node.name, /^py-ct-/);
  const missing = await client(['--file', 'edgeplane_v1.proto'], REFLECT);
  t.is(missing.code, 1);
  t.regex(missing.stdout, /not found/);
});
