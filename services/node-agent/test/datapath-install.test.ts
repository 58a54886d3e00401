// The layout marker and the install procedure on the real kernel, without interfaces: what a
// changed map does to an upgrade (migrated with its contents, or the upgrade refused with
// nothing touched), and the marker's own rules. datapath-upgrade.test.ts covers the upgrade
// from the previous version with traffic and crashes.
import test from 'ava';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, Program } from 'libbpf-ts';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { DatapathError } from '../src/datapath/errors.js';
import { LAYOUT_MARKER, LAYOUT_VERSION, PROGRAMS_MARKER, readLayoutVersion, readProgramsIdentity, writeLayoutMarker } from '../src/datapath/pin-layout.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());

/** A fresh directory on the test's bpffs. */
const pinDir = (name: string): string => {
  const dir = join(bpffs.path, name);
  mkdirSync(dir);
  return dir;
};

const ruleSet: RuleSetSpec = {
  rules: [{ id: 7, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 22, to: 22 }], action: 'deny' }],
  defaultAction: 'allow',
};

/** Kernel ids of the maps pinned under `dir` as `names`. */
function pinnedMapIds(dir: string, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(
    names.map((name) => {
      const map = BpfMap.openPinned(join(dir, name));
      const id = map.id;
      map.close();
      return [name, id];
    }),
  );
}

test('layout version - LAYOUT_VERSION is EP_LAYOUT_VERSION of bpf/include/ep_tables.h', (t) => {
  const header = readFileSync(new URL('../../../bpf/include/ep_tables.h', import.meta.url), 'utf8');
  t.is(Number(/#define EP_LAYOUT_VERSION\s+(\d+)/.exec(header)?.[1]), LAYOUT_VERSION);
});

test('layout marker - none, written, replaced in one rename; a marker that is not one is refused', (t) => {
  const dir = pinDir('marker');
  t.is(readLayoutVersion(dir), undefined, 'nothing pinned');
  writeLayoutMarker(dir, 5);
  t.is(readLayoutVersion(dir), 5);
  writeLayoutMarker(dir, 6);
  t.is(readLayoutVersion(dir), 6, 'a second marker replaces the first');
  t.deepEqual(readdirSync(dir), [LAYOUT_MARKER], 'no staged pin left');
  BpfMap.openPinned(join(dir, LAYOUT_MARKER)).unpin(join(dir, LAYOUT_MARKER));
  const impostor = BpfMap.create({ type: 'hash', name: LAYOUT_MARKER, keySize: 4, valueSize: 4, maxEntries: 1 });
  impostor.pin(join(dir, LAYOUT_MARKER));
  t.throws(() => readLayoutVersion(dir), { instanceOf: DatapathError, message: /is not a layout marker/ });
  impostor.unpin(join(dir, LAYOUT_MARKER));
  impostor.close();
  const zero = BpfMap.create({ type: 'array', name: LAYOUT_MARKER, keySize: 4, valueSize: 4, maxEntries: 1 });
  zero.pin(join(dir, LAYOUT_MARKER));
  t.throws(() => readLayoutVersion(dir), { instanceOf: DatapathError, message: /version 0 is not a layout version/ });
  zero.unpin(join(dir, LAYOUT_MARKER));
  zero.close();
});

test('programs marker - written with the marker, it counts only beside that marker; one of another shape is refused', (t) => {
  const dir = pinDir('programs');
  const identity = new Uint8Array(32).map((_, i) => i + 1);
  t.is(readProgramsIdentity(dir), undefined, 'nothing pinned');
  writeLayoutMarker(dir, 4, identity);
  t.deepEqual(readProgramsIdentity(dir), identity);
  t.is(readLayoutVersion(dir), 4);
  t.deepEqual(readdirSync(dir).sort(), [LAYOUT_MARKER, PROGRAMS_MARKER], 'no staged pin left');
  // A marker written without it (an older agent, or a crash between the two renames): unknown.
  writeLayoutMarker(dir, 4);
  t.is(readProgramsIdentity(dir), undefined, 'it named the replaced marker');
  t.true(readdirSync(dir).includes(PROGRAMS_MARKER));
  t.throws(() => writeLayoutMarker(dir, 4, new Uint8Array(31)), { instanceOf: DatapathError, message: /32 bytes, got 31/ });
  BpfMap.openPinned(join(dir, PROGRAMS_MARKER)).unpin(join(dir, PROGRAMS_MARKER));
  const impostor = BpfMap.create({ type: 'array', name: PROGRAMS_MARKER, keySize: 4, valueSize: 4, maxEntries: 1 });
  impostor.pin(join(dir, PROGRAMS_MARKER));
  t.throws(() => readProgramsIdentity(dir), { instanceOf: DatapathError, message: /is not a programs marker/ });
  impostor.unpin(join(dir, PROGRAMS_MARKER));
  impostor.close();
});

test('install - a map whose size changed is created beside and filled before the switch, the others reused', async (t) => {
  const dir = pinDir('resized');
  const first = await EbpfDatapath.open({ pinRoot: dir, rateLimitEntries: 1024 });
  await first.apply(ruleSet);
  const before = pinnedMapIds(dir, ['ep_buckets', 'ep_rules', 'ep_ct']);
  first.close();
  first.close();
  // A token bucket as the programs would have left it.
  const buckets = BpfMap.openPinned(join(dir, 'ep_buckets'));
  const key = new Uint8Array(24).fill(3);
  const value = new Uint8Array(16).fill(9);
  buckets.set(key, value);
  buckets.close();
  // The same version with another --rate-limit-entries adopts as it is; without the marker
  // (what a crash before the marker leaves) the install runs and resizes.
  const adopted = await EbpfDatapath.open({ pinRoot: dir, rateLimitEntries: 4096 });
  t.true(adopted.adopted);
  adopted.close();
  BpfMap.openPinned(join(dir, LAYOUT_MARKER)).unpin(join(dir, LAYOUT_MARKER));
  t.is(readLayoutVersion(dir), 1);

  const steps: string[] = [];
  const upgraded = await EbpfDatapath.open({ pinRoot: dir, rateLimitEntries: 4096, onInstallStep: (step) => steps.push(step) });
  t.teardown(() => upgraded.close());
  t.deepEqual(steps, ['loaded', 'migrated', 'maps-pinned', 'programs-pinned', 'switched', 'marked']);
  t.deepEqual(upgraded.install?.migratedMaps, ['ep_buckets']);
  t.deepEqual(upgraded.install?.createdMaps, []);
  t.true(upgraded.install?.reusedMaps.includes('ep_rules'));
  const after = pinnedMapIds(dir, ['ep_buckets', 'ep_rules', 'ep_ct']);
  t.not(after.ep_buckets, before.ep_buckets, 'a new map');
  t.is(after.ep_rules, before.ep_rules);
  t.is(after.ep_ct, before.ep_ct);
  const resized = BpfMap.openPinned(join(dir, 'ep_buckets'));
  t.is(resized.maxEntries, 4096);
  t.deepEqual(resized.get(key), value, 'the bucket was carried over');
  resized.close();
  t.is((await upgraded.apply(ruleSet)).mode, 'unchanged');
  t.is(readLayoutVersion(dir), LAYOUT_VERSION);
});

test('install - a map whose value layout changed refuses the upgrade and changes nothing', async (t) => {
  const dir = pinDir('changed');
  const first = await EbpfDatapath.open({ pinRoot: dir });
  await first.apply(ruleSet);
  const programId = first.xdpProgram.id;
  first.close();
  // An ep_stats of another value size, in a pin dir without a marker: as if an older layout had it.
  BpfMap.openPinned(join(dir, 'ep_stats')).unpin(join(dir, 'ep_stats'));
  const other = BpfMap.create({ type: 'percpu_array', name: 'ep_stats', keySize: 4, valueSize: 8, maxEntries: 4 });
  other.pin(join(dir, 'ep_stats'));
  other.close();
  BpfMap.openPinned(join(dir, LAYOUT_MARKER)).unpin(join(dir, LAYOUT_MARKER));
  const pinsBefore = readdirSync(dir).sort();
  const statsBefore = pinnedMapIds(dir, ['ep_stats']);

  const error = await t.throwsAsync(EbpfDatapath.open({ pinRoot: dir }), { instanceOf: DatapathError });
  t.regex(error?.message ?? '', /migrate map=ep_stats: the pinned percpu_array key=4 value=8 entries=4 became percpu_array key=4 value=16 .*no migration converts its elements; the pinned datapath keeps running unchanged/);
  t.deepEqual(readdirSync(dir).sort(), pinsBefore);
  t.deepEqual(pinnedMapIds(dir, ['ep_stats']), statsBefore);
  const pinnedXdp = Program.openPinned(join(dir, 'edge_xdp'));
  t.is(pinnedXdp.id, programId, 'the pinned program is the one that was there');
  pinnedXdp.close();
  t.is(readLayoutVersion(dir), 1);
});

test('install - EbpfDatapath.reset on an empty or missing pin dir removes nothing', (t) => {
  const dir = pinDir('empty');
  t.deepEqual(EbpfDatapath.reset(dir), { unpinned: [], detached: [] });
  t.deepEqual(EbpfDatapath.reset(join(bpffs.path, 'missing')), { unpinned: [], detached: [] });
});
