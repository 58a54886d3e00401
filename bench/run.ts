// `npm run bench [-- --quick]`: every benchmark in turn, each printing its table and one JSON
// line. A benchmark that fails is reported and the others still run; the exit code is 1 if any
// failed. Benchmarks print figures; they assert nothing.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const BENCHES = ['datapath', 'netfilter', 'conntrack', 'lb', 'programming', 'blocklist', 'list-change', 'agent', 'fleet', 'fleet-floor', 'proto-encode', 'bad-input', 'trust', 'nats-restart'] as const;
const args = process.argv.slice(2);
const only = args.filter((a) => !a.startsWith('-'));
const flags = args.filter((a) => a.startsWith('-'));
const selected = only.length > 0 ? BENCHES.filter((b) => only.includes(b)) : [...BENCHES];
if (only.some((o) => !(BENCHES as readonly string[]).includes(o))) {
  process.stderr.write(`usage: npm run bench -- [--quick] [${BENCHES.join('|')}...]\n`);
  process.exit(2);
}

const build = spawnSync('npx', ['tsc', '--build'], { stdio: 'inherit' });
if (build.status !== 0) process.exit(1);

const failed: string[] = [];
for (const name of selected) {
  process.stdout.write(`\n=== bench/${name}.ts ${flags.join(' ')}\n`);
  const file = fileURLToPath(new URL(`./${name}.ts`, import.meta.url));
  const r = spawnSync(process.execPath, ['--import=tsx', file, ...flags], { stdio: 'inherit' });
  if (r.status !== 0) failed.push(`${name} (exit ${r.status ?? r.signal})`);
}
if (failed.length > 0) {
  process.stderr.write(`\nbenchmarks that failed: ${failed.join(', ')}\n`);
  process.exitCode = 1;
}
