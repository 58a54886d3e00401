// Bounded, linear manifest reading (issue 12): the port-range parser and the manifest reader
// under fast-check with a fixed seed and budget (the seed is printed on failure), and
// linearity by counting work (ParseStats), never by timing.
import test from 'ava';
import fc from 'fast-check';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_COLLECTED_VIOLATIONS, MAX_MANIFEST_BYTES, type ParseStats } from '@edgeplane/proto';
import { InputError, parseManifests, parsePortRange, readManifestSources } from '@edgeplane/cli';

const params = { seed: 20261130, numRuns: 1500 };

test('parsePortRange - the forms manifests use', (t) => {
  t.deepEqual(parsePortRange('443'), { first: 443, last: 0 });
  t.deepEqual(parsePortRange(' 8000 - 8100 '), { first: 8000, last: 8100 });
  t.deepEqual(parsePortRange('90-80'), { first: 90, last: 80 }, 'order is for validation to judge');
  for (const bad of ['', '-', '1-', '-1', '1-2-3', 'a', '1 2', '123456', '1-123456', '0x10']) t.is(parsePortRange(bad), undefined, bad);
});

test('parsePortRange - any text is a range or undefined, each character visited at most once', (t) => {
  const text = fc.oneof(fc.array(fc.constantFrom('1', '0', '9', '65535', '-', ' ', '\t', 'a', '99999999'), { maxLength: 40 }).map((a) => a.join('')), fc.string({ maxLength: 100, unit: 'binary' }));
  fc.assert(
    fc.property(text, (s) => {
      const stats = { steps: 0 };
      const r = parsePortRange(s, stats);
      if (stats.steps > s.length) throw new Error(`${stats.steps} steps for ${s.length} characters`);
      if (r && (!Number.isInteger(r.first) || r.first > 99999 || r.last > 99999)) throw new Error(`bad range from ${JSON.stringify(s)}`);
    }),
    params,
  );
  t.pass();
});

const head = 'apiVersion: edgeplane.io/v1\nkind: Policy\nmetadata:\n  name: web\nspec:\n  nodeSelector: "role=edge,site in (a,b)"\n  rules:\n';
const rules = (n: number): string => Array.from({ length: n }, (_, i) => `    - {priority: ${i + 1}, protocol: tcp, destinationPorts: ["${1000 + i}-${1001 + i}"], sourceCIDRs: [10.0.0.0/8], action: deny}\n`).join('');

test('parseManifests - work grows linearly with the number of rules (n vs 8n)', (t) => {
  const count = (text: string): number => {
    const stats: ParseStats = { steps: 0 };
    const r = parseManifests([{ file: 'p.yaml', text }], stats);
    t.deepEqual(r.problems, []);
    return stats.steps;
  };
  const a = count(head + rules(100));
  const b = count(head + rules(800));
  t.true(b <= 8.5 * a, `n: ${a}, 8n: ${b}`);
});

test('parseManifests - a map of 10,000 labels with a duplicate key is read once (no quadratic unique-key scan) and the duplicate named', (t) => {
  const labels = Array.from({ length: 10_000 }, (_, i) => `    k${i}: v`).join('\n');
  const stats: ParseStats = { steps: 0 };
  const r = parseManifests([{ file: 'p.yaml', text: `apiVersion: edgeplane.io/v1\nkind: Policy\nmetadata:\n  name: web\n  labels:\n${labels}\n    k7: again\nspec: {rules: [{priority: 1, action: deny}]}\n` }], stats);
  t.regex(r.problems.map((p) => p.message).join('\n'), /"k7" is given twice/);
  t.true(stats.steps < 4 * (labels.length + 200), `${stats.steps} steps`);
});

test('parseManifests - problems are listed up to the bound and counted after; long values are quoted short', (t) => {
  const text = head + Array.from({ length: 2000 }, (_, i) => `    - {priority: ${i + 1}, protocl: tcp, action: deny}\n`).join('') + '';
  const r = parseManifests([{ file: 'p.yaml', text }]);
  t.is(r.problems.length, MAX_COLLECTED_VIOLATIONS + 1);
  t.regex(r.problems.at(-1)!.message, /and 1744 more problems/);
  const long = parseManifests([{ file: 'p.yaml', text: `${head}    - {priority: 1, protocol: tcp, destinationPorts: ["${'9'.repeat(8000)}"], action: deny}\n` }]);
  t.is(long.problems.length, 1);
  t.true(long.problems[0]!.message.length < 200, long.problems[0]!.message);
});

test('parseManifests - any text yields policies or problems, never a throw', (t) => {
  const token = fc.constantFrom('apiVersion: edgeplane.io/v1\n', 'kind: Policy\n', 'metadata: {name: a}\n', 'spec:\n', '  rules:\n', '    - priority: 1\n', '      action: deny\n', '      destinationPorts: [80, "1-2", x]\n', '  nodeSelector: "a in (b"\n', '---\n', '&a [*a]\n', '{', '}', '[', ']', ': ', '- ', '"', "'", '#', '\t', '  ', 'labels: {__proto__: x}\n', '!!binary x\n', '? ', '|\n');
  const text = fc.oneof(fc.array(token, { maxLength: 40 }).map((a) => a.join('')), fc.string({ maxLength: 300 }));
  fc.assert(
    fc.property(text, (s) => {
      const stats: ParseStats = { steps: 0 };
      const r = parseManifests([{ file: 'f.yaml', text: s }], stats);
      if (!Array.isArray(r.policies) || !Array.isArray(r.problems)) throw new Error('bad result');
      // Characters handed to the YAML parser, plus at most a few steps per character for the reader.
      if (stats.steps > 8 * s.length + 64) throw new Error(`${stats.steps} steps for ${s.length} characters`);
    }),
    { ...params, numRuns: 800 },
  );
  t.pass();
});

test('readManifestSources and parseManifests - input over MAX_MANIFEST_BYTES is refused unread', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'manifest-bound-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const big = join(dir, 'big.yaml');
  writeFileSync(big, Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x61));
  await t.throwsAsync(readManifestSources([big], async () => ''), { instanceOf: InputError, message: /at most/ });
  await t.throwsAsync(readManifestSources(['-'], async () => 'a'.repeat(MAX_MANIFEST_BYTES + 1)), { instanceOf: InputError });
  const r = parseManifests([{ file: 'x', text: 'a'.repeat(MAX_MANIFEST_BYTES + 1) }]);
  t.regex(r.problems[0]!.message, /at most/);
});
