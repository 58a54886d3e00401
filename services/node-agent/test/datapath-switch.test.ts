// Atomic switch: a second process classifies one frame continuously while this one switches
// between two rule sets thousands of times. Each set passes the frame; a packet classified with
// one set's source lookup and the other's destination lookup would be dropped (shown below on
// the table model), so any drop means a mixed generation.
import { fork } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';
import { compileTables, genFlags, type TablesSpec } from '../src/datapath/compile-tables.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import { parseFrame, ReferenceClassifier } from '../src/datapath/reference-classifier.js';
import type { PacketHeaders, RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, tableLookup } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());

const frame = buildFrame({ src: '10.9.0.1', dst: '10.9.0.2', protocol: 'tcp', dstPort: 80 });
const headers = (parseFrame(frame) as { headers: PacketHeaders }).headers;
// A: the deny rule names the frame's source, the allow rule its source subnet.
const setA: RuleSetSpec = {
  rules: [
    { id: 10, srcCidrs: ['10.9.0.1/32'], dstCidrs: ['192.0.2.1/32'], protocol: 'any', dstPorts: [], action: 'deny' },
    { id: 11, srcCidrs: ['10.9.0.0/24'], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'allow' },
  ],
  defaultAction: 'deny',
};
// B: the deny rule names the frame's destination, the allow rule its destination subnet.
const setB: RuleSetSpec = {
  rules: [
    { id: 20, srcCidrs: ['198.51.100.1/32'], dstCidrs: ['10.9.0.2/32'], protocol: 'any', dstPorts: [], action: 'deny' },
    { id: 21, srcCidrs: [], dstCidrs: ['10.9.0.0/24'], protocol: 'any', dstPorts: [], action: 'allow' },
  ],
  defaultAction: 'deny',
};
// Variants with one more (never matching) rule: different tables, so switching to them installs.
const variant = (set: RuleSetSpec, n: number): RuleSetSpec => ({
  ...set,
  rules: [...set.rules, { id: 5000 + n, srcCidrs: [`203.0.113.${n % 250}/32`], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: n, to: n }], action: 'deny' }],
});

test('switch - both rule sets pass the frame, mixed generations drop it', (t) => {
  for (const set of [setA, setB]) t.is(new ReferenceClassifier(set).classify(frame).verdict, 'pass');
  // The LPM path (both sets are small enough to be scanned, which reads each field's answer from
  // one generation's ep_scan just as a trie's; the kernel test below runs that path).
  const unscanned = (tables: TablesSpec): TablesSpec => ({ ...tables, genFlags: tables.genFlags & ~genFlags.scan, scan: undefined });
  const a = unscanned(compileTables(setA));
  const b = unscanned(compileTables(setB));
  t.is(tableLookup(a, headers), 1);
  t.is(tableLookup(b, headers), 1);
  // Source lookup from A, everything else from B: rule 0, deny in both sets.
  t.is(tableLookup(mixSourceLookup(a, b), headers), 0);
  // Source lookup from B, everything else from A: no rule, default deny in both sets.
  t.is(tableLookup(mixSourceLookup(b, a), headers), -1);
});

test('switch - thousands of switches under load never mix generations', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  t.teardown(() => datapath.close());
  await datapath.apply(setA);
  const worker = fork(join(import.meta.dirname, 'datapath-switch-worker.ts'), [join(bpffs.path, 'edge_xdp'), Buffer.from(frame).toString('hex')], {
    execArgv: ['--import=tsx'],
    stdio: ['pipe', 'pipe', 'inherit', 'ipc'],
  });
  let output = '';
  worker.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  await new Promise<void>((resolve) => worker.once('message', () => resolve()));
  const modes = new Map<string, number>();
  const switches = 3000;
  const started = process.hrtime.bigint();
  for (let i = 1; i <= switches; i++) {
    // Mostly plain switches between the two installed sets; every 25th builds new tables.
    const base = i % 2 === 1 ? setB : setA;
    const set = i % 25 === 0 ? variant(base, i) : base;
    const result = await datapath.apply(set);
    modes.set(result.mode, (modes.get(result.mode) ?? 0) + 1);
  }
  const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
  worker.stdin?.end();
  await new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  const verdicts = JSON.parse(output) as { pass: number; drop: number; other: number };
  t.log(`${switches} applies in ${elapsedMs.toFixed(0)} ms (${[...modes].map(([m, n]) => `${m}: ${n}`).join(', ')}); worker verdicts ${JSON.stringify(verdicts)}`);
  t.true(verdicts.pass > 10_000, 'the worker ran throughout');
  t.is(verdicts.drop, 0);
  t.is(verdicts.other, 0);
  // The deny rules of both sets never counted a packet either.
  await datapath.apply(setA);
  const countersA = datapath.readCounters();
  t.is(countersA.rules.get(10)?.packets, 0);
  await datapath.apply(setB);
  const countersB = datapath.readCounters();
  t.is(countersB.rules.get(20)?.packets, 0);
  t.is(countersB.defaultAction.packets, 0);
});

// Tables whose source-prefix entries come from `src` and everything else from `rest` (class
// ids of `src` shifted so both sets' class words can live in one table).
function mixSourceLookup(src: TablesSpec, rest: TablesSpec): TablesSpec {
  const shift = 1000;
  const keys: Uint8Array[] = [];
  const values: Uint8Array[] = [];
  const take = (tables: TablesSpec, wantSource: boolean, offset: number): void => {
    for (let i = 0; i < tables.lpm.count; i++) {
      const key = tables.lpm.keys.slice(i * 24, (i + 1) * 24);
      if (((key[4] as number) >> 4 === 0) !== wantSource) continue;
      const value = tables.lpm.values.slice(i * 136, (i + 1) * 136);
      const view = new DataView(value.buffer);
      const cls = view.getUint32(0, true);
      if (cls !== 0) view.setUint32(0, cls + offset, true);
      keys.push(key);
      values.push(value);
    }
  };
  take(src, true, shift);
  take(rest, false, 0);
  const wordKeys = new Uint8Array(src.classWords.keys.length + rest.classWords.keys.length);
  wordKeys.set(rest.classWords.keys, 0);
  const shifted = src.classWords.keys.slice();
  const view = new DataView(shifted.buffer);
  for (let i = 0; i < src.classWords.count; i++) view.setUint32(8 * i, view.getUint32(8 * i, true) + shift, true);
  wordKeys.set(shifted, rest.classWords.keys.length);
  const wordValues = new Uint8Array([...rest.classWords.values, ...src.classWords.values]);
  const concat = (parts: Uint8Array[]): Uint8Array => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  };
  return {
    ...rest,
    lpm: { ...rest.lpm, count: keys.length, keys: concat(keys), values: concat(values) },
    classWords: { ...rest.classWords, count: src.classWords.count + rest.classWords.count, keys: wordKeys, values: wordValues },
  };
}
