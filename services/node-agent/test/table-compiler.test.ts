// The incremental table compiler (TableCompiler): after every change of a random sequence its
// tables equal a fresh compile's, and its delta turns the previous tables into the new ones
// exactly. Pure: no kernel. Reproduce a failure with EDGEPLANE_SEED=<seed printed in the failure>.
import test from 'ava';
import { compileTables, sizes, TableCompiler, VECTOR_WORDS, TableCompilers, type MapEntriesSpec, type TablesDelta, type TablesSpec } from '../src/datapath/compile-tables.js';
import { MAX_RULES, type RuleSetSpec, type RuleSpec } from '../src/datapath/rule-set.js';
import { prng, randomRuleSet, seedFromEnv } from './datapath-helpers.js';

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

function entries(spec: MapEntriesSpec): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < spec.count; i++) {
    out.set(hex(spec.keys.subarray(i * spec.keySize, (i + 1) * spec.keySize)), hex(spec.values.subarray(i * spec.valueSize, (i + 1) * spec.valueSize)));
  }
  return out;
}

const sorted = (map: Map<string, string>): string[] => [...map].map(([k, v]) => `${k} ${v}`).sort();

/** The maps of `before` with `delta` applied as the datapath applies it: deletes (of keys it must hold), then writes. */
function applyDelta(before: { lpm: Map<string, string>; words: Map<string, string> }, delta: TablesDelta): string | undefined {
  for (const [map, deletes, writes] of [
    [before.lpm, delta.lpmDeletes, delta.lpm],
    [before.words, delta.wordDeletes, delta.classWords],
  ] as const) {
    for (const key of deletes) if (!map.delete(hex(key))) return `deleted key ${hex(key)} it does not hold`;
    for (const [key, value] of entries(writes)) map.set(key, value);
  }
  return undefined;
}

function change(rng: () => number, ruleSet: RuleSetSpec, fresh: () => RuleSpec): { ruleSet: RuleSetSpec; kind: string } {
  const rules = [...ruleSet.rules];
  const what = rng();
  const at = Math.floor(rng() * rules.length);
  if (what < 0.5) {
    rules[at] = rng() < 0.5 ? { ...fresh(), id: rules[at]!.id } : fresh();
    return { ruleSet: { ...ruleSet, rules }, kind: 'replace' };
  }
  if (what < 0.65) {
    for (let i = 0; i < 3; i++) rules[Math.floor(rng() * rules.length)] = fresh();
    return { ruleSet: { ...ruleSet, rules }, kind: 'replace' };
  }
  if (what < 0.72) {
    // The same rule as a new object: the compiler redoes it and finds nothing changed.
    rules[at] = { ...rules[at]! };
    return { ruleSet: { ...ruleSet, rules }, kind: 'same' };
  }
  if (what < 0.8 && at + 1 < rules.length) {
    [rules[at], rules[at + 1]] = [rules[at + 1]!, rules[at]!];
    return { ruleSet: { ...ruleSet, rules }, kind: 'replace' };
  }
  if (what < 0.87) {
    rules.splice(at, 0, fresh());
    return { ruleSet: { ...ruleSet, rules }, kind: 'insert' };
  }
  if (what < 0.94 && rules.length > 1) {
    rules.splice(at, 1);
    return { ruleSet: { ...ruleSet, rules }, kind: 'remove' };
  }
  return { ruleSet: { ...ruleSet, rules, defaultAction: ruleSet.defaultAction === 'allow' ? 'deny' : 'allow', trackDefault: rng() < 0.5 }, kind: 'default' };
}

test('table compiler - after each change of a random sequence the tables equal a fresh compile, and the delta leads from the previous tables to them', (t) => {
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  let nextId = 100_000;
  const pool = [...randomRuleSet(rng, 600, { narrow: true }).rules, ...randomRuleSet(rng, 300).rules];
  const fresh = (): RuleSpec => ({ ...pool[Math.floor(rng() * pool.length)]!, id: nextId++ });
  let ruleSet: RuleSetSpec = { defaultAction: 'deny', rules: Array.from({ length: 300 }, fresh) };
  const compiler = new TableCompiler();
  let previous: TablesSpec | undefined;
  const kinds = new Map<string, number>();
  for (let step = 0; step < 100; step++) {
    let kind = 'first';
    if (step > 0) ({ ruleSet, kind } = change(rng, ruleSet, fresh));
    const compiled = compiler.compile(ruleSet);
    const got = compiler.tables();
    const want = compileTables(ruleSet);
    const where = `seed ${seed} step ${step} (${kind})`;
    t.deepEqual(sorted(entries(got.lpm)), sorted(entries(want.lpm)), `${where}: lpm`);
    t.deepEqual(sorted(entries(got.classWords)), sorted(entries(want.classWords)), `${where}: class words`);
    t.is(hex(got.rules), hex(want.rules), `${where}: rules`);
    t.is(hex(got.wild), hex(want.wild), `${where}: wildcard vectors`);
    t.deepEqual([got.fingerprint, got.classCount, got.genFlags, got.ruleIds], [want.fingerprint, want.classCount, want.genFlags, want.ruleIds], `${where}: fingerprint, classes, flags, ids`);
    t.deepEqual([compiled.lpmCount, compiled.wordCount, compiled.classCount], [want.lpm.count, want.classWords.count, want.classCount], `${where}: counts`);
    // An insert or a removal moves every later rule's bit: compiled afresh, no delta.
    t.is(compiled.delta === undefined, step === 0 || kind === 'insert' || kind === 'remove', `${where}: delta`);
    if (compiled.delta !== undefined && previous !== undefined) {
      const maps = { lpm: entries(previous.lpm), words: entries(previous.classWords) };
      const wrong = applyDelta(maps, compiled.delta);
      t.is(wrong, undefined, where);
      t.deepEqual(sorted(maps.lpm), sorted(entries(want.lpm)), `${where}: lpm after the delta`);
      t.deepEqual(sorted(maps.words), sorted(entries(want.classWords)), `${where}: class words after the delta`);
      // Every rule slot that differs is in the delta.
      for (let slot = 0; slot <= want.ruleCount; slot++) {
        const differs = hex(previous.rules.subarray(slot * sizes.rule, (slot + 1) * sizes.rule)) !== hex(want.rules.subarray(slot * sizes.rule, (slot + 1) * sizes.rule));
        if (differs) t.true(compiled.delta.ruleSlots.includes(slot), `${where}: slot ${slot} changed outside the delta`);
      }
      if (hex(previous.wild) !== hex(want.wild)) t.true(compiled.delta.wild, `${where}: wildcard vectors changed outside the delta`);
      t.deepEqual([compiled.delta.lpmCount, compiled.delta.wordCount], [want.lpm.count, want.classWords.count]);
      if (kind === 'same') t.is(compiled.delta.lpm.count + compiled.delta.lpmDeletes.length + compiled.delta.classWords.count + compiled.delta.wordDeletes.length, 0, `${where}: a rule compiled again unchanged writes no entry`);
    }
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    previous = want;
  }
  t.log([...kinds].map(([k, n]) => `${k} ${n}`).join(', '));
  t.true((kinds.get('replace') ?? 0) > 30);
});

test('table compiler - one rule replaced in 4,096 disjoint ones yields a delta of a few entries', (t) => {
  const rules: RuleSpec[] = Array.from({ length: 4096 }, (_, i) => ({ id: i + 1, srcCidrs: [`198.18.${i >> 8}.${i & 255}/32`], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 1 + (i % 1000), to: 1 + (i % 1000) }], action: 'deny' }));
  const compiler = new TableCompiler();
  const first = compiler.compile({ rules, defaultAction: 'allow' });
  t.is(first.delta, undefined);
  const next = [...rules];
  next[4000] = { ...rules[4000]!, srcCidrs: ['198.19.0.1/32'], dstPorts: [{ from: 50_000, to: 50_000 }] };
  const spec: RuleSetSpec = { rules: next, defaultAction: 'allow' };
  const compiled = compiler.compile(spec);
  const delta = compiled.delta!;
  const size = delta.lpm.count + delta.lpmDeletes.length + delta.classWords.count + delta.wordDeletes.length;
  t.true(size > 0 && size <= 16, `delta of ${size} entries`);
  t.deepEqual(delta.ruleSlots, [4001]);
  t.is(compiler.compile(spec), compiled, 'the same spec object again: the same compile');
  t.deepEqual(compiler.deltasSince(first.version), [delta]);
  t.is(compiler.deltasSince(first.version - 1), undefined, 'before a fresh compile: no deltas');
});

test('table compiler - a compile\'s tables in chunks are its whole tables, a class\'s words never split, and gone once it compiles again', (t) => {
  // Nested port ranges (each rule's range holds the next one's): ~31,000 class words, classes of up to 32 words.
  const rules: RuleSpec[] = Array.from({ length: 2000 }, (_, i) => ({ id: i + 1, srcCidrs: [`198.18.${i >> 8}.${i & 255}/32`], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: i, to: 65535 }], action: 'deny' }));
  const compiler = new TableCompiler();
  const compiled = compiler.compile({ rules, defaultAction: 'allow' });
  const whole = compiler.tables();
  t.true(compiled.wordCount > 10 * VECTOR_WORDS, `${compiled.wordCount} class words`);
  // Each chunk read before the next is taken, as the datapath writes them (the buffers are reused).
  const gather = (chunks: Iterable<MapEntriesSpec>, most: number): { all: Map<string, string>; counts: number[]; classes: Set<string>[] } => {
    const all = new Map<string, string>();
    const counts: number[] = [];
    const classes: Set<string>[] = [];
    for (const chunk of chunks) {
      t.true(chunk.count > 0 && chunk.count <= most, `a chunk of ${chunk.count} entries, at most ${most}`);
      counts.push(chunk.count);
      const held = new Set<string>();
      for (const [key, value] of entries(chunk)) {
        t.false(all.has(key), `key ${key} in two chunks`);
        all.set(key, value);
        held.add(key.slice(0, 8));
      }
      classes.push(held);
    }
    return { all, counts, classes };
  };
  const lpm = gather(compiled.lpmChunks(300), 300);
  t.true(lpm.counts.length > 5, `${lpm.counts.length} LPM chunks`);
  t.deepEqual(sorted(lpm.all), sorted(entries(whole.lpm)));
  t.is(lpm.all.size, compiled.lpmCount);
  const words = gather(compiled.wordChunks(100), VECTOR_WORDS);
  t.true(words.counts.length > 10, `${words.counts.length} class-word chunks`);
  t.deepEqual(sorted(words.all), sorted(entries(whole.classWords)));
  t.is(words.all.size, compiled.wordCount);
  // A class id (the key's first 4 bytes) is in one chunk only.
  const seen = new Set<string>();
  for (const held of words.classes) {
    for (const id of held) t.false(seen.has(id), `class ${id} split between chunks`);
    for (const id of held) seen.add(id);
  }
  // Another compile replaces these tables: taking them, or going on taking them, throws.
  const going = compiled.lpmChunks(300)[Symbol.iterator]();
  t.false(going.next().done);
  const next = [...rules];
  next[5] = { ...rules[5]!, dstPorts: [{ from: 9, to: 9 }] };
  compiler.compile({ rules: next, defaultAction: 'allow' });
  t.throws(() => going.next(), { message: /tables of compile 1 are gone/ });
  t.throws(() => [...compiled.wordChunks()], { message: /tables of compile 1 are gone/ });
});

test('table compiler - an invalid rule set changes nothing: the next change is still a delta', (t) => {
  const rules: RuleSpec[] = Array.from({ length: 64 }, (_, i) => ({ id: i + 1, srcCidrs: [`10.${i}.0.0/16`], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' }));
  const compiler = new TableCompiler();
  compiler.compile({ rules, defaultAction: 'allow' });
  const bad = [...rules];
  bad[3] = { ...rules[3]!, srcCidrs: ['10.0.0.0/40'] };
  t.throws(() => compiler.compile({ rules: bad, defaultAction: 'allow' }), { name: 'RuleSetError' });
  const good = [...rules];
  good[3] = { ...rules[3]!, srcCidrs: ['10.200.0.0/16'] };
  const compiled = compiler.compile({ rules: good, defaultAction: 'allow' });
  t.not(compiled.delta, undefined);
  t.deepEqual(sorted(entries(compiler.tables().lpm)), sorted(entries(compileTables({ rules: good, defaultAction: 'allow' }).lpm)));
});

test('table compiler - an invalid or too large rule set that would compile afresh changes nothing either, and names the problem validateRuleSet names first', (t) => {
  const rules: RuleSpec[] = Array.from({ length: 64 }, (_, i) => ({ id: i + 1, srcCidrs: [`10.${i}.0.0/16`], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' }));
  const compiler = new TableCompiler();
  compiler.compile({ rules, defaultAction: 'allow' });
  // One rule more (a fresh compile, checked while it is built): rule 70 has a bad prefix, and rule
  // 40 both a duplicate id and a bad prefix. validateRuleSet checks a rule's id before its fields.
  const longer: RuleSpec[] = [...rules, ...Array.from({ length: 16 }, (_, i) => ({ ...rules[0]!, id: 1000 + i, srcCidrs: [`10.1${i}.0.0/16`] }))];
  longer[70] = { ...longer[70]!, srcCidrs: ['10.0.0.0/40'] };
  t.throws(() => compiler.compile({ rules: longer, defaultAction: 'allow' }), { name: 'RuleSetError', message: /rules\[70\]\.srcCidrs\[0\]/ });
  longer[40] = { ...longer[40]!, id: 2, srcCidrs: ['10.0.0.0/99'] };
  t.throws(() => compiler.compile({ rules: longer, defaultAction: 'allow' }), { name: 'RuleSetError', message: /rules\[40\]\.id.*duplicate rule id 2/ });
  t.throws(() => compiler.compile({ rules: longer, defaultAction: 'allow', trackEgress: 'yes' as unknown as boolean }), { name: 'RuleSetError', message: /rules\[40\]\.id/ });
  t.throws(() => compiler.compile({ rules: Array.from({ length: MAX_RULES + 1 }, (_, i) => ({ ...rules[0]!, id: i + 1 })), defaultAction: 'allow' }), { name: 'CapacityError' });
  // The state of the first compile is still held: a one-rule change is a delta, with the tables of a fresh compile.
  const good = [...rules];
  good[3] = { ...rules[3]!, srcCidrs: ['10.200.0.0/16'] };
  const compiled = compiler.compile({ rules: good, defaultAction: 'allow' });
  t.not(compiled.delta, undefined);
  t.deepEqual(sorted(entries(compiler.tables().lpm)), sorted(entries(compileTables({ rules: good, defaultAction: 'allow' }).lpm)));
  t.deepEqual(compiler.tables().rules, compileTables({ rules: good, defaultAction: 'allow' }).rules);
});

test('table compilers - a rule set object one datapath compiled is not compiled again by the other', (t) => {
  const pool = new TableCompilers();
  const [uplink, workload] = [new TableCompiler(), new TableCompiler()];
  const spec: RuleSetSpec = { rules: [{ id: 1, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' }], defaultAction: 'allow' };
  const a = pool.compile(spec, uplink);
  t.is(pool.compile(spec, workload), a);
  t.is(workload.spec, undefined, 'the other compiler holds nothing');
  const other: RuleSetSpec = { ...spec, defaultAction: 'deny' };
  t.is(pool.compile(other, workload).compiler, workload, 'another rule set: its own compiler');
});
