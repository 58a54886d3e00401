// The controller's V8 heap growing percent (--heap-growing-percent, EDGEPLANE_HEAP_GROWING_PERCENT):
// parsed with the other flags, set by the controller on itself at start.
import { spawnSync } from 'node:child_process';
import test from 'ava';
import { parseConfig, type ControllerConfig } from '../src/config.js';
import { CONTROLLER_MAIN } from '../../../test/support/fleet.js';

const parse = (args: string[], env: Record<string, string> = {}): ControllerConfig => parseConfig(['--data-dir', '/tmp/x', ...args], env) as ControllerConfig;

test('config - heap growing percent: 25 by default, from the environment, the flag winning, 0 for V8 own heuristics, at most 1000', (t) => {
  t.is(parse([]).heapGrowingPercent, 25);
  t.is(parse([], { EDGEPLANE_HEAP_GROWING_PERCENT: '50' }).heapGrowingPercent, 50);
  t.is(parse(['--heap-growing-percent', '10'], { EDGEPLANE_HEAP_GROWING_PERCENT: '50' }).heapGrowingPercent, 10);
  t.is(parse(['--heap-growing-percent', '0']).heapGrowingPercent, 0);
  t.is(parse(['--heap-growing-percent', '5000']).heapGrowingPercent, 1000);
  for (const bad of ['-1', '2.5', 'lots']) t.throws(() => parse([`--heap-growing-percent=${bad}`]), { message: /--heap-growing-percent: .* is not a whole number >= 0/ }, bad);
});

test('controller - a bad heap growing percent stops the start with exit code 2 and the flag named', (t) => {
  const r = spawnSync(process.execPath, [CONTROLLER_MAIN, '--insecure', '--listen', '127.0.0.1:0', '--data-dir', '/tmp/edgeplane-never', '--heap-growing-percent', 'lots'], { encoding: 'utf8', timeout: 30_000 });
  t.is(r.status, 2);
  t.regex(r.stderr, /--heap-growing-percent: "lots" is not a whole number >= 0/);
});
