// The README's `npx edgeplane ...` from the repository root: npm must have linked the command
// (the root package depends on @edgeplane/cli, whose bin exists before the build).
import { execFile } from 'node:child_process';
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
