// --replica-delta-ms: how often a replica sends the nodes whose status changed to the others.
import test from 'ava';
import { parseConfig, type ControllerConfig } from '../src/config.js';

const parse = (args: string[]): ControllerConfig => parseConfig(['--data-dir', '/tmp/x', ...args], {}) as ControllerConfig;

test('config - replica delta interval: 100 ms by default, at least 10', (t) => {
  t.is(parse([]).replicaDeltaMs, 100);
  t.is(parse(['--replica-delta-ms', '250']).replicaDeltaMs, 250);
  t.is(parse(['--replica-delta-ms=10']).replicaDeltaMs, 10);
  for (const bad of ['0', '9', '0.5', 'soon']) t.throws(() => parse([`--replica-delta-ms=${bad}`]), { message: /--replica-delta-ms: .* is not a whole number >= 10/ }, bad);
});
