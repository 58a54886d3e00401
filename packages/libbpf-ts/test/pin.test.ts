import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, encode, LibbpfError, loadObject, loadObjectSpec, NotFoundError, Program, u32, u64, type ObjectSpec } from '../src/index.js';
import { mountBpffs, type Bpffs } from './helpers/bpffs.js';
import { buildFixtures, type Fixtures } from './helpers/fixtures.js';

let fixtures: Fixtures;
let bpffs: Bpffs;
let pinnedSpec: ObjectSpec;
test.before(async () => {
  fixtures = await buildFixtures();
  bpffs = await mountBpffs();
  pinnedSpec = await loadObjectSpec(fixtures.path('pinned'));
});
test.after.always(async () => {
  await bpffs?.unmount();
  await fixtures?.remove();
});

test('BpfMap - pin, openPinned, unpin on a bpffs', async (t) => {
  const path = join(bpffs.dir, 'scratch-map');
  {
    await using obj = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
    const map = obj.map('scratch');
    map.set(encode(u32, 1), encode(u64, 42n));
    map.pin(path);
    t.is(t.throws(() => map.pin(path), { instanceOf: LibbpfError })?.code, 'EEXIST');
  }
  // The object is closed: the pin alone keeps the map and its data.
  const reopened = BpfMap.openPinned(path);
  t.like(reopened, { name: 'scratch', type: 'hash', keySize: 4, valueSize: 8 });
  t.deepEqual(reopened.get(encode(u32, 1)), encode(u64, 42n));
  reopened.unpin(path);
  t.false(existsSync(path));
  t.deepEqual(reopened.get(encode(u32, 1)), encode(u64, 42n)); // still alive through our fd
  reopened.close();
  reopened.close();
  const gone = t.throws(() => BpfMap.openPinned(path), { instanceOf: NotFoundError });
  t.is(gone?.operation, `map open pinned path=${path}`);
  t.throws(() => reopened.unpin(path), { instanceOf: NotFoundError });
});

test('Program - pin, openPinned, unpin; fromId; close twice is safe', async (t) => {
  const path = join(bpffs.dir, 'xdp-pass-prog');
  let id = 0;
  let tag = '';
  {
    await using obj = await loadObject(await loadObjectSpec(fixtures.path('xdp-drop')));
    const program = obj.program('xdp_pass');
    id = program.id;
    tag = program.tag;
    t.regex(tag, /^[0-9a-f]{16}$/);
    program.pin(path);
  }
  const pinned = Program.openPinned(path);
  t.is(pinned.id, id);
  t.is(pinned.tag, tag);
  t.is(pinned.type, 'xdp');
  t.is(pinned.name, 'xdp_pass');
  const byId = Program.fromId(id);
  t.is(byId.id, id);
  byId.close();
  byId.close();
  t.throws(() => byId.fd, { instanceOf: LibbpfError, message: /EBADF/ });
  pinned.unpin(path);
  pinned.close();
  pinned.close();
  t.throws(() => Program.openPinned(path), { instanceOf: NotFoundError });
  t.throws(() => Program.fromId(0x7ffffff0), { instanceOf: NotFoundError, message: /program open id=/ });
});

test('loadObject pinRoot - pins by-name maps, and a second load reuses them (same id, data kept)', async (t) => {
  const root = join(bpffs.dir, 'agent');
  await import('node:fs/promises').then((fs) => fs.mkdir(root));
  let firstId = 0;
  {
    await using first = await loadObject(pinnedSpec, { pinRoot: root });
    const state = first.map('agent_state').typed(u32, u64);
    state.set(0, 7n);
    firstId = first.map('agent_state').id;
    t.true(existsSync(join(root, 'agent_state')));
  }
  // Like a restarted agent: load again, the pinned map is adopted rather than created.
  await using second = await loadObject(pinnedSpec, { pinRoot: root });
  t.is(second.map('agent_state').id, firstId);
  t.is(second.map('agent_state').typed(u32, u64).get(0), 7n);
  // The program of the second load sees that same map.
  second.program('xdp_touch_state').testRun({ data: new Uint8Array(64) });
  t.is(second.map('agent_state').typed(u32, u64).get(0), 8n);
  second.map('agent_state').unpin(join(root, 'agent_state'));
});

test('loadObject pinRoot - an incompatible pinned map fails the load with libbpf saying why', async (t) => {
  const root = join(bpffs.dir, 'clash');
  await import('node:fs/promises').then((fs) => fs.mkdir(root));
  using impostor = { map: BpfMap.create({ type: 'array', name: 'agent_state', keySize: 4, valueSize: 8, maxEntries: 16 }), [Symbol.dispose]() { this.map.close(); } };
  impostor.map.pin(join(root, 'agent_state'));
  const error = await t.throwsAsync(loadObject(pinnedSpec, { pinRoot: root }), { instanceOf: LibbpfError });
  t.regex(error?.message ?? '', /^load object path=.*pinned\.bpf\.o: E/);
  t.regex(error?.message ?? '', /libbpf: .*agent_state/);
  impostor.map.unpin(join(root, 'agent_state'));
});

test('loadObject mapReplacements - the object uses the given map', async (t) => {
  using shared = { map: BpfMap.create({ type: 'hash', name: 'shared', keySize: 4, valueSize: 8, maxEntries: 16 }), [Symbol.dispose]() { this.map.close(); } };
  shared.map.set(encode(u32, 0), encode(u64, 100n));
  const root = join(bpffs.dir, 'replaced');
  await import('node:fs/promises').then((fs) => fs.mkdir(root));
  await using obj = await loadObject(pinnedSpec, { pinRoot: root, mapReplacements: { agent_state: shared.map } });
  t.is(obj.map('agent_state').id, shared.map.id);
  t.is(obj.map('agent_state').name, 'agent_state');
  obj.program('xdp_touch_state').testRun({ data: new Uint8Array(64) });
  t.deepEqual(shared.map.get(encode(u32, 0)), encode(u64, 101n));
  // libbpf still pins a by-name map it was given, at the declared name.
  const pinned = BpfMap.openPinned(join(root, 'agent_state'));
  t.is(pinned.id, shared.map.id);
  pinned.close();
  shared.map.unpin(join(root, 'agent_state'));
});

test('loadObject mapReplacements - a map of another shape is refused before anything loads', async (t) => {
  // agent_state is declared hash u32 -> u64: a hash u32 -> u32 would let the program write 8
  // bytes into 4 if libbpf took it as it is.
  using narrow = { map: BpfMap.create({ type: 'hash', name: 'narrow', keySize: 4, valueSize: 4, maxEntries: 16 }), [Symbol.dispose]() { this.map.close(); } };
  const root = join(bpffs.dir, 'refused');
  await import('node:fs/promises').then((fs) => fs.mkdir(root));
  const error = await t.throwsAsync(loadObject(pinnedSpec, { pinRoot: root, mapReplacements: { agent_state: narrow.map } }), { instanceOf: LibbpfError });
  t.is(error?.code, 'EINVAL');
  t.regex(error?.message ?? '', /reuse map=agent_state.*\ndeclared type=hash key=4 value=8 flags=0, given type=hash key=4 value=4 flags=0/);
  t.false(existsSync(join(root, 'agent_state')), 'nothing was pinned');
  // A larger max_entries is fine: the program does not depend on it.
  using wide = { map: BpfMap.create({ type: 'hash', name: 'wide', keySize: 4, valueSize: 8, maxEntries: 64 }), [Symbol.dispose]() { this.map.close(); } };
  await using obj = await loadObject(pinnedSpec, { pinRoot: root, mapReplacements: { agent_state: wide.map } });
  obj.program('xdp_touch_state').testRun({ data: new Uint8Array(64) });
  t.deepEqual(wide.map.get(encode(u32, 0)), undefined, 'the program found no element 0 to count in');
  wide.map.set(encode(u32, 0), encode(u64, 5n));
  obj.program('xdp_touch_state').testRun({ data: new Uint8Array(64) });
  t.deepEqual(wide.map.get(encode(u32, 0)), encode(u64, 6n), 'the program counts in the given map');
  wide.map.unpin(join(root, 'agent_state'));
});
