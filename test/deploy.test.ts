// What deploy/ offers for running edgeplane for real: the node install script (into a root
// directory: this machine runs no systemd), the systemd units as systemd-analyze checks them,
// and the installed agent's launcher running from the copy.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const repo = fileURLToPath(new URL('..', import.meta.url));
const INSTALL = join(repo, 'deploy/install-node.sh');
const run = async (cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
  promisify(execFile)(cmd, args, { timeout: 120_000, maxBuffer: 16 << 20 }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
const flags = ['--controller', 'ctl-1.example:7443,ctl-2.example:7443', '--nats', 'tls://nats.example:4222', '--join-token', 'ept_abc.def', '--ca-fingerprint', 'sha256:00ff', '--trusted-key', 'KEY+/=', '--fleet-id', 'fleet-1', '--interface', 'eth0=uplink', '--interface', 'veth1=workload', '--labels', 'site=ams1,role=edge'];
const hasAnalyze = existsSync('/usr/bin/systemd-analyze');

test.serial('install-node - lays out the agent, its settings (0600) and its unit; the installed launcher runs; the unit verifies', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ep-install-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const r = await run(INSTALL, [...flags, '--root', root]);
  t.is(r.code, 0, r.stderr);
  const env = readFileSync(join(root, 'etc/edgeplane/agent.env'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
  t.deepEqual(env, [
    'EDGEPLANE_CA_FINGERPRINT=sha256:00ff',
    'EDGEPLANE_CONTROLLER=ctl-1.example:7443,ctl-2.example:7443',
    'EDGEPLANE_FLEET_ID=fleet-1',
    'EDGEPLANE_INTERFACES=eth0=uplink,veth1=workload',
    'EDGEPLANE_JOIN_TOKEN=ept_abc.def',
    'EDGEPLANE_NATS_URL=tls://nats.example:4222',
    'EDGEPLANE_NODE_LABELS=site=ams1,role=edge',
    'EDGEPLANE_TRUSTED_KEYS=KEY+/=',
  ]);
  t.is(statSync(join(root, 'etc/edgeplane/agent.env')).mode & 0o777, 0o600, 'the join token is for root only');
  t.is(readFileSync(join(root, 'etc/systemd/system/edgeplane-agent.service'), 'utf8'), readFileSync(join(repo, 'deploy/systemd/edgeplane-agent.service'), 'utf8'));
  t.false(existsSync(join(root, 'opt/edgeplane/.git')), 'no repository history copied');
  const help = await run(join(root, 'opt/edgeplane/services/node-agent/bin/edgeplane-agent'), ['--help']);
  t.regex(help.stdout, /^edgeplane-agent: enforces edgeplane intent/, 'the installed copy runs');
  if (hasAnalyze) {
    // Verified as installed, its paths moved under the root (verify --root wants a whole system there).
    mkdirSync(join(root, 'verify'));
    const unit = join(root, 'verify/edgeplane-agent.service');
    writeFileSync(unit, readFileSync(join(root, 'etc/systemd/system/edgeplane-agent.service'), 'utf8').replaceAll('/opt/edgeplane/', `${root}/opt/edgeplane/`));
    const agent = await run('systemd-analyze', ['verify', unit]);
    t.is(agent.code, 0, agent.stderr);
    t.is(agent.stderr.trim(), '', 'no warning');
    const controller = await run('systemd-analyze', ['verify', join(repo, 'deploy/systemd/edgeplane-controller.service')]);
    t.is(controller.code, 0, controller.stderr);
  }

  const again = await run(INSTALL, [...flags, '--root', root]);
  t.is(again.code, 1);
  t.regex(again.stderr, /agent\.env exists: give --force/);
  t.is((await run(INSTALL, [...flags, '--root', root, '--force'])).code, 0);
});

test.serial('install-node - bad input is refused with a clear message and writes nothing', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ep-install-bad-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const without = (flag: string): string[] => flags.filter((_, i) => flags[i] !== flag && flags[i - 1] !== flag);
  const cases: [string[], RegExp][] = [
    [without('--join-token'), /missing join-token/],
    [without('--interface'), /at least one --interface/],
    [[...flags, '--interface', 'eth0=router'], /--interface eth0=router: expected NAME=uplink or NAME=workload/],
    [[...without('--labels'), '--labels', 'site=ams1\nEDGEPLANE_INSECURE=1'], /EDGEPLANE_NODE_LABELS must be one line/],
    [[...without('--labels'), '--labels', 'site="x"'], /without quotes or backslashes/],
    [[...flags, '--bogus'], /unknown argument --bogus/],
  ];
  for (const [args, message] of cases) {
    const r = await run(INSTALL, [...args, '--root', root]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, message);
  }
  t.false(existsSync(join(root, 'etc')), 'nothing written');
});
