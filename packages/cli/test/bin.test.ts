// The README's `npx edgeplane ...` (and `npx edgeplane-controller`, `npx edgeplane-agent`) from
// the repository root: npm must have linked each command, which it does at `npm ci` only for a
// bin file that exists before the build (scripts/setup runs npm ci, then builds).
import { execFile, spawn } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';

const root = fileURLToPath(new URL('../../../', import.meta.url));

test('npx edgeplane - runs the command line from the repository root', async (t) => {
  t.regex(readlinkSync(`${root}node_modules/.bin/edgeplane`), /@edgeplane\/cli\/bin\/edgeplane\.js$/);
  const { stdout } = await promisify(execFile)('npx', ['--no-install', 'edgeplane', '--help'], { cwd: root, timeout: 60_000 });
  t.regex(stdout, /^edgeplane: the command line of the edgeplane control plane/);
  t.regex(stdout, /Usage: edgeplane COMMAND/);
});

for (const [command, target, banner] of [
  ['edgeplane-controller', /@edgeplane\/controller\/bin\/edgeplane-controller\.js$/, /^edgeplane-controller: the edgeplane control plane/],
  ['edgeplane-agent', /@edgeplane\/node-agent\/bin\/edgeplane-agent$/, /^edgeplane-agent: enforces edgeplane intent on this node/],
] as const) {
  test(`npx ${command} - runs from the repository root, linked to a file that exists before the build`, async (t) => {
    t.regex(readlinkSync(`${root}node_modules/.bin/${command}`), target);
    const { stdout } = await promisify(execFile)('npx', ['--no-install', command, '--help'], { cwd: root, timeout: 60_000 });
    t.regex(stdout, banner);
  });
}

test('edgeplane - a reader that closes the pipe early ends the command quietly (no EPIPE stack trace)', async (t) => {
  const child = spawn(process.execPath, [`${root}packages/cli/dist/main.js`, '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
  // The read end is closed before the command writes a byte: its first write meets EPIPE.
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.is(stderr, '', 'nothing on stderr');
  t.is(code, 0);
});
