// IdIndex (rule id -> position) and RuleOrigins, which the agent finds rule ids through.
import test from 'ava';
import { Action, Policy, Protocol } from '@edgeplane/proto';
import { compileIntent } from '../src/agent/compile.js';
import { IdIndex } from '../src/datapath/id-index.js';

test('id index - every id at its position, across the whole uint32 range; ids not held are undefined', (t) => {
  const ids = [0xffff_ffff, 0, 7, 0x8000_0000, 0x7fff_ffff, ...Array.from({ length: 1000 }, (_, i) => ((i * 2_654_435_761) % 0xffff_ff00) + 9)];
  t.is(new Set(ids).size, ids.length);
  const index = new IdIndex(ids);
  ids.forEach((id, at) => t.is(index.positionOf(id), at, `id ${id}`));
  for (const absent of [1, 8, 0x8000_0001, 0xffff_fffe]) t.is(index.positionOf(absent), undefined, `id ${absent}`);
  t.is(new IdIndex([]).positionOf(0), undefined);
  const copied = [5, 6];
  const early = new IdIndex(copied);
  copied[0] = 9;
  t.is(early.positionOf(5), 0, 'the ids were copied');
});

test('rule origins - a merged rule set: get, has, size and iteration in rule order, as a Map of the same entries', (t) => {
  const policy = (name: string, priorities: number[]): Policy =>
    Policy.fromPartial({
      metadata: { name },
      spec: { rules: priorities.map((priority) => ({ priority, name: `r${priority}`, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: priority, last: 0 }], action: Action.ACTION_DENY })) },
    });
  const compiled = compileIntent([policy('b', [1, 5, 9]), policy('a', [5, 7])], {});
  const origins = compiled.uplink.origins;
  const ids = compiled.uplink.ruleSet.rules.map((r) => r.id);
  const expected = [
    { policy: 'b', priority: 1, ruleName: 'r1' },
    { policy: 'a', priority: 5, ruleName: 'r5' },
    { policy: 'b', priority: 5, ruleName: 'r5' },
    { policy: 'a', priority: 7, ruleName: 'r7' },
    { policy: 'b', priority: 9, ruleName: 'r9' },
  ];
  t.is(origins.size, 5);
  t.deepEqual([...origins], ids.map((id, i) => [id, expected[i]]));
  t.deepEqual([...origins.keys()], ids);
  t.deepEqual([...origins.values()], expected);
  ids.forEach((id, i) => {
    t.deepEqual(origins.get(id), expected[i]);
    t.true(origins.has(id));
  });
  const missing = Math.max(...ids) + 1;
  t.false(origins.has(missing));
  t.is(origins.get(missing), undefined);
  const seen: [number, unknown][] = [];
  origins.forEach((value, key, map) => {
    t.is(map, origins);
    seen.push([key, value]);
  });
  t.deepEqual(seen, [...new Map([...origins])]);
});
