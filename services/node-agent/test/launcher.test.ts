// bin/edgeplane-agent, the launcher every agent runs through (systemd, compose, the demo, the
// tests): the node flags and glibc settings it gives the agent, that a value in the environment
// wins, and that EDGEPLANE_AGENT_NODE_FLAGS comes after its own flags, where node takes the later
// of two (node refuses V8's heap flags in NODE_OPTIONS, so this is the only way to change them).
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';

const launcher = fileURLToPath(new URL('../bin/edgeplane-agent', import.meta.url));
const run = promisify(execFile);

/** What the launcher execs: NODE names a stand-in that prints its arguments and glibc settings, one per line. */
async function launched(env: Record<string, string>): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'ep-launcher-'));
  try {
    const stub = join(dir, 'node');
    writeFileSync(stub, '#!/bin/sh\nfor a in "$@"; do echo "arg $a"; done\necho "env MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX MALLOC_MMAP_THRESHOLD_=$MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_=$MALLOC_TRIM_THRESHOLD_"\n');
    chmodSync(stub, 0o755);
    const childEnv: Record<string, string | undefined> = { ...process.env, NODE: stub, ...env };
    for (const name of ['MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'EDGEPLANE_AGENT_NODE_FLAGS']) if (!(name in env)) delete childEnv[name];
    const { stdout } = await run(launcher, ['--node-name', 'edge-7'], { env: childEnv as NodeJS.ProcessEnv });
    return stdout.trim().split('\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('launcher - node gets the memory flags, then the bundle and every argument; glibc its settings', async (t) => {
  const lines = await launched({});
  t.deepEqual(lines.slice(0, 4), ['arg --max-semi-space-size=1', 'arg --heap-growing-percent=25', 'arg --no-sparkplug', 'arg --expose-gc']);
  t.regex(lines[4] ?? '', /^arg \/.+\/services\/node-agent\/dist\/bundle\/agent\.mjs$/);
  t.deepEqual(lines.slice(5), ['arg --node-name', 'arg edge-7', 'env MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072']);
});

test('launcher - the environment wins: glibc settings as given, EDGEPLANE_AGENT_NODE_FLAGS after the launcher\'s flags', async (t) => {
  const lines = await launched({ MALLOC_ARENA_MAX: '4', EDGEPLANE_AGENT_NODE_FLAGS: '--heap-growing-percent=0 --max-semi-space-size=2' });
  t.deepEqual(lines.slice(0, 6), ['arg --max-semi-space-size=1', 'arg --heap-growing-percent=25', 'arg --no-sparkplug', 'arg --expose-gc', 'arg --heap-growing-percent=0', 'arg --max-semi-space-size=2']);
  t.regex(lines[6] ?? '', /dist\/bundle\/agent\.mjs$/);
  t.is(lines.at(-1), 'env MALLOC_ARENA_MAX=4 MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072');
});

test('launcher - node takes the later of two heap flags (what EDGEPLANE_AGENT_NODE_FLAGS relies on)', async (t) => {
  // A young generation of 1 MiB semispaces is 2 MiB; given 8 after 1, node's is 16 once it has grown.
  const semi = async (...flags: string[]): Promise<number> => {
    const script = "let a = []; for (let i = 0; i < 3e6; i++) a.push({ i }); process.stdout.write(String(require('v8').getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size / 1048576))";
    return Number((await run(process.execPath, [...flags, '-e', script])).stdout);
  };
  t.is(await semi('--max-semi-space-size=1'), 2);
  t.is(await semi('--max-semi-space-size=1', '--max-semi-space-size=8'), 16);
});

test('launcher - with its flags node compiles no function to baseline (Sparkplug) code', async (t) => {
  const flags = (await launched({})).filter((l) => l.startsWith('arg --') && !l.startsWith('arg --node-name')).map((l) => l.slice(4));
  // A function called often enough to be compiled to baseline code by node's defaults; the loop
  // stops when it is (V8's own test of the tier it runs in).
  const script = 'function f(x) { return x + 1; } let n = 0; while (!%ActiveTierIsSparkplug(f) && n < 50) { for (let i = 0; i < 2000; i++) f(i); n++; } process.stdout.write(String(%ActiveTierIsSparkplug(f)))';
  const tier = async (nodeFlags: string[]): Promise<string> => (await run(process.execPath, [...nodeFlags, '--allow-natives-syntax', '-e', script])).stdout;
  t.is(await tier([]), 'true', "node's defaults compile it");
  t.true(flags.includes('--no-sparkplug'));
  t.is(await tier(flags), 'false', `with ${flags.join(' ')}`);
});
