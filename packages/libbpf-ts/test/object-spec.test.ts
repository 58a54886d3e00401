import test from 'ava';
import { LibbpfError, loadObject, loadObjectSpec, NotFoundError } from '../src/index.js';
import { buildFixtures, type Fixtures } from './helpers/fixtures.js';

let fixtures: Fixtures;
test.before(async () => {
  fixtures = await buildFixtures();
});
test.after.always(async () => {
  await fixtures?.remove();
});

test('loadObjectSpec - lists programs with section, type and attach type', async (t) => {
  const spec = await loadObjectSpec(fixtures.path('xdp-drop'));
  t.is(spec.path, fixtures.path('xdp-drop'));
  t.deepEqual([...spec.programs.keys()].sort(), ['xdp_drop_udp', 'xdp_pass']);
  t.deepEqual(spec.programs.get('xdp_drop_udp'), { name: 'xdp_drop_udp', section: 'xdp', type: 'xdp', expectedAttachType: 'xdp' });
  const tc = await loadObjectSpec(fixtures.path('tc-count'));
  t.like(tc.programs.get('tc_drop'), { section: 'tc', type: 'sched_cls' });
});

test('loadObjectSpec - lists maps with sizes, flags and pinning', async (t) => {
  const spec = await loadObjectSpec(fixtures.path('xdp-drop'));
  t.deepEqual(spec.maps.get('drop_port'), { name: 'drop_port', type: 'array', keySize: 4, valueSize: 2, maxEntries: 1, flags: 0, pinning: 'none', internal: false });
  t.like(spec.maps.get('counters'), { type: 'percpu_array', keySize: 4, valueSize: 8, maxEntries: 2 });
  t.like(spec.maps.get('scratch'), { type: 'hash', keySize: 4, valueSize: 8, maxEntries: 64 });
  const pinned = await loadObjectSpec(fixtures.path('pinned'));
  t.like(pinned.maps.get('agent_state'), { type: 'hash', pinning: 'by-name', maxEntries: 16 });
});

test('loadObjectSpec - describes the inner map of a map-in-map', async (t) => {
  const spec = await loadObjectSpec(fixtures.path('map-in-map'));
  t.deepEqual(spec.maps.get('verdicts'), {
    name: 'verdicts',
    type: 'array_of_maps',
    keySize: 4,
    valueSize: 4,
    maxEntries: 2,
    flags: 0,
    pinning: 'none',
    internal: false,
    innerMap: { type: 'array', keySize: 4, valueSize: 4, maxEntries: 1, flags: 0 },
  });
});

test('loadObjectSpec - a missing file is NotFoundError, garbage is a libbpf format error', async (t) => {
  const missing = await t.throwsAsync(loadObjectSpec(`${fixtures.dir}/nope.o`), { instanceOf: NotFoundError });
  t.is(missing?.code, 'ENOENT');
  t.is(missing?.operation, `open object path=${fixtures.dir}/nope.o`);
  const garbage = await t.throwsAsync(loadObjectSpec(new URL(import.meta.url).pathname), { instanceOf: LibbpfError });
  t.regex(garbage?.code ?? '', /^LIBBPF_ERRNO__|^E/);
  t.regex(garbage?.message ?? '', /^open object path=.*: /);
});

test('BpfObject - program() and map() name the missing one and list what exists', async (t) => {
  await using obj = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
  const noMap = t.throws(() => obj.map('rules'), { instanceOf: NotFoundError });
  t.regex(noMap?.message ?? '', /map name=rules: ENOENT/);
  t.regex(noMap?.message ?? '', /has maps: drop_port, counters, scratch/);
  const noProg = t.throws(() => obj.program('xdp_main'), { instanceOf: NotFoundError });
  t.regex(noProg?.message ?? '', /has programs: xdp_drop_udp, xdp_pass/);
});

test('BpfObject - close twice is safe and invalidates borrowed programs and maps', async (t) => {
  const obj = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
  const map = obj.map('scratch');
  const program = obj.program('xdp_pass');
  map.close(); // borrowed: a no-op
  t.true(map.fd >= 0);
  obj.close();
  obj.close();
  t.throws(() => map.fd, { instanceOf: LibbpfError, message: /EBADF/ });
  t.throws(() => program.fd, { instanceOf: LibbpfError, message: /EBADF/ });
});

test('loadObject - mapMaxEntries and mapReplacements name unknown maps', async (t) => {
  const spec = await loadObjectSpec(fixtures.path('xdp-drop'));
  await using obj = await loadObject(spec, { mapMaxEntries: { scratch: 128 } });
  t.is(obj.map('scratch').maxEntries, 128);
  const error = await t.throwsAsync(loadObject(spec, { mapMaxEntries: { nope: 1 } }), { instanceOf: NotFoundError });
  t.regex(error?.message ?? '', /mapMaxEntries map=nope.*\n.*has maps: drop_port, counters, scratch/);
});
