// The state file's base and journal (state-file.ts) on a real file system: a change to a large
// prefix list or a one-rule patch of a large policy appends a record of the change's size, a restart reads back exactly what was
// written last, a torn or corrupt tail loses only its own record, a journal of another base is
// ignored, and the base is rewritten when the journal has grown.
import test from 'ava';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, rmdirSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { Action, applyPolicyPatch, applyPrefixListChange, Policy, policyPatchOf, PrefixList, PrefixListUse, Protocol, Snapshot } from '@edgeplane/proto';
import { writeFileDurably } from '../src/agent/durable-file.js';
import { StateFile, type AppliedState } from '../src/agent/state-file.js';

const dir = mkdtempSync(join(tmpdir(), 'ep-state-file-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const fresh = (): string => join(mkdtempSync(join(dir, 's-')), 'applied.json');
const prefix = (i: number): string => `${10 + (i >>> 16)}.${(i >>> 8) & 255}.${i & 255}.0/24`;

function list(name: string, prefixes: string[], version = 1n): PrefixList {
  const l = PrefixList.fromPartial({ metadata: { name, resourceVersion: version }, spec: { use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE } });
  l.spec!.prefixes = prefixes;
  return l;
}

/** `base` changed as the chain changes it (so its lineage is known). */
function change(base: PrefixList, add: string[], remove: string[]): PrefixList {
  const version = base.metadata!.resourceVersion + 1n;
  return applyPrefixListChange(base, { metadata: { ...base.metadata!, resourceVersion: version }, spec: { ...base.spec!, prefixes: [] }, baseResourceVersion: base.metadata!.resourceVersion, add, remove, delete: false });
}

function snapshot(revision: bigint, prefixLists: PrefixList[], policies: Policy[] = []): Snapshot {
  return { revision, lastHash: Buffer.alloc(32, Number(revision % 256n)), policies, createTime: new Date(1_000_000), rollouts: [], fleetId: 'f', keyRotations: [], services: [], prefixLists, blocks: [] };
}

/** The parts of a state a restart must get back: revision, labels, policies, and each list's prefixes in order. */
function essence(s: AppliedState | undefined): unknown {
  if (!s) return undefined;
  return { revision: s.snapshot.revision, labels: s.labels, policies: s.snapshot.policies.map((p) => p.metadata?.name), lists: s.snapshot.prefixLists.map((l) => [l.metadata?.name, l.metadata?.resourceVersion, l.spec?.prefixes]) };
}

test('state file - a one-prefix change to a 200,000-prefix list appends a small record; a restart reads the list as changed', (t) => {
  const path = fresh();
  const file = new StateFile(path);
  let threat = list('threat', Array.from({ length: 200_000 }, (_, i) => prefix(i)));
  file.write({ snapshot: snapshot(1n, [threat]), labels: { site: 'ams1' } });
  const base = readFileSync(path, 'utf8');
  const journalAfterBase = statSync(`${path}.journal`).size;
  threat = change(threat, ['192.0.2.0/24'], [prefix(7)]);
  const written: AppliedState = { snapshot: snapshot(2n, [threat], [Policy.fromPartial({ metadata: { name: 'p' } })]), labels: { site: 'ams1' } };
  file.write(written);
  t.is(readFileSync(path, 'utf8'), base, 'the base is not rewritten');
  const record = statSync(`${path}.journal`).size - journalAfterBase;
  t.true(record > 0 && record < 2048, `the record is ${record} bytes`);
  const read = new StateFile(path).read();
  t.deepEqual(essence(read), essence(written));
  t.is(read!.snapshot.prefixLists[0]!.spec!.prefixes.at(-1), '192.0.2.0/24');
  t.false(read!.snapshot.prefixLists[0]!.spec!.prefixes.includes(prefix(7)));
});

/** A policy of `n` rules, rule i allowing TCP port 1024 + i from its own /32. */
function bigPolicy(n: number): Policy {
  const rules = Array.from({ length: n }, (_, i) => ({ name: `r${i}`, sourceCidrs: [`10.${(i >>> 8) & 255}.${i & 255}.1/32`], protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1024 + (i % 60_000), last: 0 }], action: Action.ACTION_ALLOW }));
  return Policy.fromPartial({ metadata: { name: 'big', resourceVersion: 1n }, spec: { defaultAction: Action.ACTION_DENY, rules } });
}

/** `base` with rule `at` replaced, as a follower's chain makes it from the log's patch (so its lineage is known). */
function patched(base: Policy, at: number, version: bigint): Policy {
  const rules = base.spec!.rules.slice();
  rules[at] = { ...rules[at]!, destinationPorts: [{ first: 7, last: 0 }] };
  const next = { metadata: { ...base.metadata!, resourceVersion: version }, spec: { ...base.spec!, rules } };
  return applyPolicyPatch(base, policyPatchOf(base, next)!);
}

const policyBytes = (p: Policy | undefined): Buffer => Buffer.from(Policy.encode(p ?? Policy.fromPartial({})).finish());

test('state file - one-rule patches of a 20,000-rule policy append small records; a restart reads the patched policy', (t) => {
  const path = fresh();
  const file = new StateFile(path);
  const other = Policy.fromPartial({ metadata: { name: 'other', resourceVersion: 1n } });
  let big = bigPolicy(20_000);
  file.write({ snapshot: snapshot(1n, [], [other, big]), labels: {} });
  const base = readFileSync(path, 'utf8');
  let journal = statSync(`${path}.journal`).size;
  for (const [revision, at] of [[2n, 17], [3n, 19_999], [4n, 0]] as const) {
    big = patched(big, at, revision);
    file.write({ snapshot: snapshot(revision, [], [other, big]), labels: {} });
    const record = statSync(`${path}.journal`).size - journal;
    journal += record;
    t.true(record > 0 && record < 2048, `revision ${revision}: the record is ${record} bytes`);
    const read = new StateFile(path).read();
    t.deepEqual(read?.snapshot.policies.map((p) => p.metadata?.name), ['other', 'big']);
    t.deepEqual(policyBytes(read?.snapshot.policies[1]), policyBytes(big), `revision ${revision}: the policy read back is the one written`);
  }
  t.is(readFileSync(path, 'utf8'), base, 'the base is not rewritten');
  // A policy made afresh (no patch known) goes whole into its record.
  const fresh2 = bigPolicy(2000);
  file.write({ snapshot: snapshot(5n, [], [fresh2]), labels: {} });
  t.deepEqual(policyBytes(new StateFile(path).read()?.snapshot.policies[0]), policyBytes(fresh2));
  // Such journals say so in their magic: an agent that reads only EPJ1 ignores them (the base alone).
  t.is(readFileSync(`${path}.journal`).subarray(0, 4).toString(), 'EPJ2');
});

test('state file - a journal an earlier agent wrote (EPJ1, every policy whole in each record) is read', (t) => {
  const path = fresh();
  const first = Policy.fromPartial({ metadata: { name: 'p', resourceVersion: 1n } });
  new StateFile(path).write({ snapshot: snapshot(1n, [], [first]), labels: {} });
  const id = readFileSync(`${path}.journal`).subarray(4, 20);
  // One record as the earlier agent wrote it: a header with labels and lists only, then the snapshot.
  const second = Policy.fromPartial({ metadata: { name: 'p', resourceVersion: 2n }, spec: { defaultAction: Action.ACTION_DENY } });
  const json = Buffer.from(JSON.stringify({ labels: { site: 'x' }, lists: [] }));
  const snap = Buffer.from(Snapshot.encode(snapshot(2n, [], [second])).finish());
  const payload = Buffer.concat([Buffer.alloc(4), json, snap]);
  payload.writeUInt32LE(json.length, 0);
  const header = Buffer.alloc(8);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt32LE(crc32(payload), 4);
  writeFileSync(`${path}.journal`, Buffer.concat([Buffer.from('EPJ1'), id, header, payload]));
  const read = new StateFile(path).read();
  t.is(read?.snapshot.revision, 2n);
  t.deepEqual(read?.labels, { site: 'x' });
  t.deepEqual(policyBytes(read?.snapshot.policies[0]), policyBytes(second));
});

test('state file - 300 random changes (lists changed, created, deleted, policies): every restart reads the last state written', (t) => {
  const path = fresh();
  const file = new StateFile(path, { journalShare: 1 / 2, journalMinBytes: 4096 });
  let seed = 42;
  const random = (n: number): number => {
    seed = (seed * 1_103_515_245 + 12_345) >>> 0;
    return seed % n;
  };
  let lists = new Map<string, PrefixList>([['a', list('a', Array.from({ length: 5000 }, (_, i) => prefix(i)))]]);
  let next = 100_000;
  let bases = 0;
  let lastBase = '';
  for (let revision = 1n; revision <= 300n; revision++) {
    const op = random(10);
    const names = [...lists.keys()];
    if (op < 6 && names.length > 0) {
      const name = names[random(names.length)]!;
      const held = lists.get(name)!;
      const remove = held.spec!.prefixes.length > 0 && random(2) === 0 ? [held.spec!.prefixes[random(held.spec!.prefixes.length)]!] : [];
      const add = Array.from({ length: random(3) }, () => prefix(next++));
      lists.set(name, change(held, add, remove));
    } else if (op < 8) lists.set(`l${revision}`, list(`l${revision}`, Array.from({ length: random(50) }, () => prefix(next++))));
    else if (names.length > 1) lists.delete(names[random(names.length)]!);
    lists = new Map([...lists].sort(([x], [y]) => (x < y ? -1 : 1)));
    const state: AppliedState = { snapshot: snapshot(revision, [...lists.values()], [Policy.fromPartial({ metadata: { name: `p${revision % 7n}` } })]), labels: { r: String(revision % 3n) } };
    file.write(state);
    const base = readFileSync(path, 'utf8');
    if (base !== lastBase) bases++;
    lastBase = base;
    if (random(10) === 0) t.deepEqual(essence(new StateFile(path).read()), essence(state), `after revision ${revision}`);
  }
  t.deepEqual(essence(new StateFile(path).read())!, essence({ snapshot: snapshot(300n, [...lists.values()], [Policy.fromPartial({ metadata: { name: `p${300n % 7n}` } })]), labels: { r: '0' } }));
  t.true(bases > 1 && bases < 100, `${bases} bases in 300 writes: the journal is used, and compacted`);
});

test('state file - a torn or corrupt last record loses only that state; a journal of another base is ignored', (t) => {
  const path = fresh();
  const file = new StateFile(path);
  let l = list('l', Array.from({ length: 1000 }, (_, i) => prefix(i)));
  const states: AppliedState[] = [];
  for (let r = 1n; r <= 3n; r++) {
    if (r > 1n) l = change(l, [prefix(5000 + Number(r))], []);
    states.push({ snapshot: snapshot(r, [l]), labels: {} });
    file.write(states.at(-1)!);
  }
  const journal = readFileSync(`${path}.journal`);
  truncateSync(`${path}.journal`, journal.length - 3);
  t.deepEqual(essence(new StateFile(path).read()), essence(states[1]), 'a torn tail: the state before it');
  const corrupt = Buffer.from(journal);
  corrupt[corrupt.length - 1]! ^= 0xff;
  writeFileSync(`${path}.journal`, corrupt);
  t.deepEqual(essence(new StateFile(path).read()), essence(states[1]), 'a bad checksum: the state before it');
  writeFileSync(`${path}.journal`, journal);
  t.deepEqual(essence(new StateFile(path).read()), essence(states[2]));

  // A new base (the first write after a read is one), then the old journal back, as a crash
  // between the base's rename and the journal's would leave it: ignored, the base is read.
  const restarted = new StateFile(path);
  restarted.read();
  const newer: AppliedState = { snapshot: snapshot(4n, [l]), labels: { after: 'restart' } };
  restarted.write(newer);
  t.is(statSync(`${path}.journal`).size, 20, 'the first write after a read is a whole base with an empty journal');
  writeFileSync(`${path}.journal`, journal);
  t.deepEqual(essence(new StateFile(path).read()), essence(newer));
});

test('state file - a base written in pieces is byte for byte the JSON an earlier agent wrote whole, and reads back', (t) => {
  // A policy whose snapshot encodes to several of the base64 pieces, and not to a multiple of 3 bytes.
  const rules = Array.from({ length: 6000 }, (_, i) => ({ priority: i + 1, protocol: Protocol.PROTOCOL_TCP, sourceCidrs: [prefix(i)], destinationPorts: [{ first: 22, last: 22 }], action: Action.ACTION_DENY }));
  for (const extra of [0, 1, 2]) {
    const path = fresh();
    const policy = Policy.fromPartial({ metadata: { name: 'x'.repeat(1 + extra) }, spec: { rules } });
    const state: AppliedState = { snapshot: snapshot(7n, [], [policy]), labels: { site: 'a "quoted" label' } };
    const encoded = Snapshot.encode(state.snapshot).finish();
    t.true(encoded.length > 3 * 3 * 16_384, `${encoded.length} bytes encoded`);
    new StateFile(path).write(state);
    const text = readFileSync(path, 'utf8');
    const journal = (JSON.parse(text) as { journal: string }).journal;
    t.is(text, JSON.stringify({ version: 1, revision: '7', labels: state.labels, journal, snapshot: Buffer.from(encoded).toString('base64') }), `${encoded.length % 3} bytes past a multiple of 3`);
    const back = new StateFile(path).read();
    t.is(back?.snapshot.policies[0]?.spec?.rules.length, 6000);
    t.deepEqual(essence(back), essence(state));
  }
});

test('durable file - a body in pieces that fails part-way leaves the old file and no temporary one', (t) => {
  const path = fresh();
  writeFileDurably(path, 'old');
  t.throws(() => writeFileDurably(path, (function* () {
    yield Buffer.from('new, part one');
    throw new Error('no second part');
  })()), { message: 'no second part' });
  t.is(readFileSync(path, 'utf8'), 'old');
  t.deepEqual(readdirSync(dirname(path)), ['applied.json']);
  writeFileDurably(path, [Buffer.from('new, '), Buffer.from('whole')]);
  t.is(readFileSync(path, 'utf8'), 'new, whole');
});

test('state file - a base written by an agent before the journal is read; an append that fails makes the next write a base', (t) => {
  const path = fresh();
  const old: AppliedState = { snapshot: snapshot(9n, [list('l', ['192.0.2.0/24'])]), labels: { a: 'b' } };
  new StateFile(path).write(old);
  // What the previous agent wrote: the same JSON without the journal's id.
  const j = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  delete j.journal;
  writeFileSync(path, JSON.stringify(j));
  t.deepEqual(essence(new StateFile(path).read()), essence(old));

  const file = new StateFile(path);
  file.write(old);
  rmSync(`${path}.journal`);
  mkdirSync(`${path}.journal`);
  t.throws(() => file.write({ snapshot: snapshot(10n, old.snapshot.prefixLists), labels: { a: 'b' } }), { message: /EISDIR/ });
  rmdirSync(`${path}.journal`);
  const after: AppliedState = { snapshot: snapshot(11n, old.snapshot.prefixLists), labels: { a: 'c' } };
  file.write(after);
  t.true(existsSync(`${path}.journal`));
  t.is(statSync(`${path}.journal`).size, 20, 'a whole base, not an append after a failed one');
  t.deepEqual(essence(new StateFile(path).read()), essence(after));
});
