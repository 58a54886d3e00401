// Prefix list validation (proto/src/blocklist-validation.ts): canonical prefixes, each once
// across a request's add and remove, found without a string per prefix.
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { applyPrefixListChange, prefixChangesBetween, PrefixListUse, validatePrefixList, validatePrefixListUpdate, type PrefixList } from '@edgeplane/proto';

const list = (prefixes: string[]): PrefixList => ({ metadata: { name: 'feed', labels: {}, annotations: {}, resourceVersion: 0n, createRevision: 0n, createTime: undefined, updateTime: undefined }, spec: { nodeSelector: undefined, use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE, prefixes, description: '' } });

test('validatePrefixListUpdate - a prefix twice across add and remove, a non-canonical one and a malformed one are each named', (t) => {
  const violations = validatePrefixListUpdate(list([]), ['192.0.2.0/24', '2001:db8::/32', '192.0.2.0/24', '10.0.0.1/8'], ['2001:db8::/32', '2001:DB8:1::/48', 'x']);
  t.deepEqual(
    violations.map((v) => [v.field, v.reason]),
    [
      ['add[2]', 'DUPLICATE_PREFIX'],
      ['add[3]', 'NON_CANONICAL_CIDR'],
      ['remove[0]', 'DUPLICATE_PREFIX'],
      ['remove[1]', 'NON_CANONICAL_CIDR'],
      ['remove[2]', 'MALFORMED_CIDR'],
    ],
  );
  t.deepEqual(validatePrefixListUpdate(list([]), ['192.0.2.0/24', '192.0.2.0/25', '::/0', '0.0.0.0/0'], []), []);
});

test('validatePrefixList - a list of 200,000 distinct prefixes is valid; one repeated at its end is found', (t) => {
  const prefixes = Array.from({ length: 200_000 }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.${i >> 16}/32`);
  t.deepEqual(validatePrefixList(list(prefixes)), []);
  const violations = validatePrefixList(list([...prefixes, prefixes[123_456]!]));
  t.deepEqual(violations.map((v) => [v.field, v.reason]), [['prefix_list.spec.prefixes[200000]', 'DUPLICATE_PREFIX']]);
});

test('prefixChangesBetween - the changes from a list array to one applyPrefixListChange made from it, composed over steps; undefined otherwise', (t) => {
  const meta = (v: bigint): PrefixList['metadata'] => ({ name: 'feed', labels: {}, annotations: {}, resourceVersion: v, createRevision: 1n, createTime: undefined, updateTime: undefined });
  const step = (base: PrefixList, add: string[], remove: string[]): PrefixList =>
    applyPrefixListChange(base, { metadata: meta(base.metadata!.resourceVersion + 1n), spec: undefined, baseResourceVersion: base.metadata!.resourceVersion, add, remove, delete: false });
  const v1 = step({ metadata: meta(0n), spec: undefined } as unknown as PrefixList, ['10.0.0.0/8', '192.0.2.0/24'], []);
  const v2 = step(v1, ['198.51.100.0/24'], ['10.0.0.0/8']);
  const v3 = step(v2, ['10.0.0.0/8', '203.0.113.0/24'], ['198.51.100.0/24']);
  const from1 = prefixChangesBetween(v1.spec!.prefixes, v3.spec!.prefixes, 100);
  // 10/8 removed then added back, 198.51.100/24 added then removed: only 203.0.113/24 is new.
  t.deepEqual(from1, { add: ['203.0.113.0/24'], remove: [] });
  t.deepEqual(prefixChangesBetween(v2.spec!.prefixes, v3.spec!.prefixes, 100), { add: ['10.0.0.0/8', '203.0.113.0/24'], remove: ['198.51.100.0/24'] });
  t.deepEqual(prefixChangesBetween(v3.spec!.prefixes, v3.spec!.prefixes, 100), { add: [], remove: [] });
  t.is(prefixChangesBetween(v3.spec!.prefixes, v1.spec!.prefixes, 100), undefined, 'not a descendant');
  t.is(prefixChangesBetween([...v1.spec!.prefixes], v3.spec!.prefixes, 100), undefined, 'an equal array is not the base');
  t.is(prefixChangesBetween(v1.spec!.prefixes, v3.spec!.prefixes, 4), undefined, 'more changes than the limit');
});

test('prefixChangesBetween - a lineage keeps no version nobody holds: versions in between are collected and the walk still passes them; 64 steps at most', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const meta = (v: bigint): PrefixList['metadata'] => ({ name: 'feed', labels: {}, annotations: {}, resourceVersion: v, createRevision: 1n, createTime: undefined, updateTime: undefined });
  const step = (base: PrefixList, add: string[], remove: string[]): PrefixList =>
    applyPrefixListChange(base, { metadata: meta(base.metadata!.resourceVersion + 1n), spec: undefined, baseResourceVersion: base.metadata!.resourceVersion, add, remove, delete: false });
  const v1 = step({ metadata: meta(0n), spec: undefined } as unknown as PrefixList, Array.from({ length: 1000 }, (_, i) => `10.0.${i >> 8}.${i & 255}/32`), []);
  let at = v1;
  const between: WeakRef<readonly string[]>[] = [];
  for (let i = 0; i < 10; i++) {
    at = step(at, [`192.0.2.${i}/32`], i > 0 ? [`192.0.2.${i - 1}/32`] : []);
    if (i < 9) between.push(new WeakRef(at.spec!.prefixes));
  }
  const v11 = at;
  // WeakRef targets live until the end of the job that made them.
  await new Promise((r) => setTimeout(r, 10));
  gc();
  t.true(
    between.every((w) => w.deref() === undefined),
    'the versions between v1 and v11, held by nobody, are collected (each used to be kept by the next)',
  );
  t.deepEqual(prefixChangesBetween(v1.spec!.prefixes, v11.spec!.prefixes, 100), { add: ['192.0.2.9/32'], remove: [] });
  // Past 64 steps the lineage is cut: a holder that far behind compares the lists whole.
  for (let i = 10; i < 80; i++) at = step(at, [`192.0.2.${i}/32`], [`192.0.2.${i - 1}/32`]);
  t.is(prefixChangesBetween(v1.spec!.prefixes, at.spec!.prefixes, 1000), undefined);
  t.is(prefixChangesBetween(v11.spec!.prefixes, at.spec!.prefixes, 1000), undefined, '70 steps back: cut');
  let recent = v11;
  for (let i = 80; i < 90; i++) {
    at = step(at, [`198.51.100.${i}/32`], []);
    if (i === 80) recent = at;
  }
  t.deepEqual(prefixChangesBetween(recent.spec!.prefixes, at.spec!.prefixes, 1000)?.add.length, 9, 'within 64 steps: found');
});

test('applyPrefixListChange - a few changes and many give the same list (base order less the removed, then the added) and refuse the same mistakes', (t) => {
  const meta = { name: 'feed', labels: {}, annotations: {}, resourceVersion: 1n, createRevision: 1n, createTime: undefined, updateTime: undefined };
  const base = list(Array.from({ length: 40 }, (_, i) => `10.0.${i}.0/24`));
  base.metadata = meta;
  const apply = (add: string[], remove: string[]): string[] => applyPrefixListChange(base, { metadata: { ...meta, resourceVersion: 2n }, spec: undefined, baseResourceVersion: 1n, add, remove, delete: false }).spec!.prefixes;
  const expected = (add: string[], remove: string[]): string[] => [...base.spec!.prefixes.filter((p) => !remove.includes(p)), ...add];
  for (const [add, remove] of [
    [['192.0.2.0/24'], ['10.0.3.0/24', '10.0.7.0/24']],
    [Array.from({ length: 10 }, (_, i) => `192.0.${i}.0/24`), Array.from({ length: 10 }, (_, i) => `10.0.${i * 3}.0/24`)],
  ] as const) {
    t.deepEqual(apply([...add], [...remove]), expected([...add], [...remove]), `${add.length + remove.length} changes`);
    t.throws(() => apply([...add, '10.0.1.0/24'], [...remove]), { message: /adds "10\.0\.1\.0\/24", which the list holds/ });
    t.throws(() => apply([...add], [...remove, '172.16.0.0/12']), { message: /removes "172\.16\.0\.0\/12", which the list does not hold/ });
  }
  t.deepEqual(base.spec!.prefixes.length, 40, 'the base is not modified');
  // A list created by its first change, and an empty one changed.
  const many = Array.from({ length: 20 }, (_, i) => `192.0.${i}.0/24`);
  for (const from of [undefined, list([])]) {
    if (from) from.metadata = meta;
    const at = from ? 1n : 0n;
    const made = applyPrefixListChange(from, { metadata: { ...meta, resourceVersion: at + 1n }, spec: undefined, baseResourceVersion: at, add: many, remove: [], delete: false });
    t.deepEqual(made.spec!.prefixes, many);
    t.not(made.spec!.prefixes, many, 'a copy of the change');
    t.throws(() => applyPrefixListChange(from, { metadata: { ...meta, resourceVersion: at + 1n }, spec: undefined, baseResourceVersion: at, add: many, remove: ['10.0.0.0/8'], delete: false }), { message: /removes "10\.0\.0\.0\/8", which the list does not hold/ });
  }
});

test('applyPrefixListChange - pure: the same change applied to equal bases gives equal lists, and leaves its inputs as they were', (t) => {
  const meta = (v: bigint): PrefixList['metadata'] => ({ name: 'feed', labels: {}, annotations: {}, resourceVersion: v, createRevision: 1n, createTime: undefined, updateTime: undefined });
  const create = { metadata: meta(1n), spec: undefined, baseResourceVersion: 0n, add: ['10.0.0.0/8', '192.0.2.0/24'], remove: [], delete: false };
  const v1 = applyPrefixListChange(undefined, create);
  const change = { metadata: meta(2n), spec: undefined, baseResourceVersion: 1n, add: ['198.51.100.0/24'], remove: ['10.0.0.0/8'], delete: false };
  const v2 = applyPrefixListChange(v1, change);
  const other: PrefixList = { ...v1, spec: { ...v1.spec!, prefixes: [...v1.spec!.prefixes] } };
  const v2b = applyPrefixListChange(other, change);
  t.deepEqual(v2b.spec!.prefixes, ['192.0.2.0/24', '198.51.100.0/24']);
  t.deepEqual(v2b, v2);
  t.deepEqual(v1.spec!.prefixes, ['10.0.0.0/8', '192.0.2.0/24'], 'the base is not modified');
  // A base the change does not fit is refused every time.
  t.throws(() => applyPrefixListChange(v2, change), { message: /based on version 1, the list is at 2/ });
  t.throws(() => applyPrefixListChange(v2, change), { message: /based on version 1, the list is at 2/ });
});
