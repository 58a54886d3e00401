// The source blocklist on the real kernel (BPF_PROG_TEST_RUN, no interfaces): a 1,000,000-prefix
// list loaded by one generation switch and enforced at its first, a middle and its last prefix at
// XDP and TC, entries added and removed in place, expiry by the kernel's CLOCK_TAI, nesting of an
// expired block inside a live prefix, the tries kept by a restarted agent, and the empty-family
// marks that let a packet skip the lookup.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { BpfMap } from 'libbpf-ts';
import { parseCidr, type Cidr } from '@edgeplane/proto';
import { HASH_ENTRIES, HASH_MOVED, hashOf, mix32 } from '../src/datapath/blocklist-hash.js';
import { BLOCKLIST_F_BLOCK, BlocklistPacker, type BlocklistEntry } from '../src/datapath/blocklist.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS } from './datapath-helpers.js';
import { installTestMeter } from './node-agent-helpers.js';
import { observeBlocklists } from '../src/agent/blocklist-metrics.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());
let next = 0;
const freshRoot = (): string => {
  const dir = `${bpffs.path}/blk${next++}`;
  mkdirSync(dir);
  return dir;
};

const cidr = (text: string): Cidr => parseCidr(text) as Cidr;
const entry = (text: string, expiresTaiNs = 0n, flags = 0): BlocklistEntry => ({ cidr: cidr(text), expiresTaiNs, flags });
const allowAll: RuleSetSpec = { rules: [], defaultAction: 'allow' };

/** The i-th prefix of the big list: 1,000,000 distinct /32s and /24s spread over 16.0.0.0/4 .. */
function bigListPrefix(i: number): string {
  // Every 4th a /24 (its own /24 of 100.64.0.0/10 and up), the rest /32s in 16.0.0.0 + i.
  if (i % 4 === 3) {
    const n = (100 << 16) + i; // 100.x.y.0/24
    return `${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}.0/24`;
  }
  const a = (16 << 24) + i;
  return `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}/32`;
}
/** An address inside bigListPrefix(i). */
function inside(i: number): string {
  const p = bigListPrefix(i);
  return p.endsWith('/24') ? p.replace('.0/24', '.77') : p.replace('/32', '');
}

/** The inner map the live blocklist generation's slot of the pinned outer map `name` holds (closed at teardown). */
function liveInner(t: ExecutionContext, dp: EbpfDatapath, name: string): BpfMap {
  const outer = BpfMap.openPinned(join(dp.pinRoot, name));
  t.teardown(() => outer.close());
  const inner = outer.getInnerMap(new Uint8Array(new Uint32Array([dp.blocklist.generation]).buffer))!;
  t.teardown(() => inner.close());
  return inner;
}

const xdp = (dp: EbpfDatapath, src: string): number => dp.xdpProgram.testRun({ data: buildFrame(src.includes(':') ? { src, dst: '2001:db8::1', protocol: 'udp', dstPort: 53 } : { src, dst: '192.0.2.1', protocol: 'udp', dstPort: 53 }) }).retval;
const tc = (dp: EbpfDatapath, src: string): number => dp.tcProgram.testRun({ data: buildFrame({ src, dst: '192.0.2.1', protocol: 'tcp', dstPort: 443 }) }).retval;

test('blocklist - 1,000,000 prefixes load by one switch; first, middle and last are dropped, neighbours pass; one add and one remove in place', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const N = 1_000_000;
  // As the agent packs a list: from the text, sized once, its two prefix lengths hashed.
  const packer = new BlocklistPacker({ v4: N, hashed: true });
  const refused = Array.from({ length: N }, (_, i) => i).filter((i) => !packer.addText(bigListPrefix(i)));
  t.deepEqual(refused, []);
  t.false(packer.addText('16.0.0.0/33'), 'not a prefix: nothing added');
  t.true(packer.addText(bigListPrefix(7)), 'a prefix again');
  const spec = packer.finish();
  t.is(spec.v4Hashed?.count, N + 1, 'every prefix for the set, the repeated one too (filling the set finds it)');
  t.deepEqual(spec.v4Hashed?.shape.lengths, [32, 24]);
  t.is(spec.v4.count, 0, 'every one in the hashed set, none left for the trie');
  const before = datapath.blocklist.generation;
  const load = datapath.blocklist.load(spec);
  t.is(load.generation, 1 - before, 'built in the idle generation and switched to it');
  t.is(load.v4, N);
  for (const i of [0, N / 2, N - 1, N / 2 + 3]) {
    t.is(xdp(datapath, inside(i)), XDP_DROP, `xdp ${bigListPrefix(i)}`);
    t.is(tc(datapath, inside(i)), TC_ACT_SHOT, `tc ${bigListPrefix(i)}`);
  }
  // Neighbours just outside: after the last /32, and a /24 not in the list.
  t.is(xdp(datapath, '31.0.0.1'), XDP_PASS);
  t.is(xdp(datapath, '99.255.255.1'), XDP_PASS);
  t.is(tc(datapath, '203.0.113.9'), TC_ACT_OK);

  // One entry added in place: no switch.
  t.true(datapath.blocklist.add([entry('203.0.113.0/24')]));
  t.is(datapath.blocklist.generation, load.generation);
  t.is(xdp(datapath, '203.0.113.9'), XDP_DROP);
  t.is(tc(datapath, '203.0.113.9'), TC_ACT_SHOT);
  // One removed in place.
  t.is(datapath.blocklist.remove([cidr(bigListPrefix(N / 2))]), 1);
  t.is(xdp(datapath, inside(N / 2)), XDP_PASS);
  t.is(xdp(datapath, inside(N / 2 + 1)), XDP_DROP, 'its neighbour is still there');
  t.is(datapath.blocklist.generation, load.generation);

  const counters = datapath.blocklist.readCounters();
  t.true(counters.dropped4.packets >= 10);
});

test('blocklist - IPv6 prefixes drop at XDP; a new whole list replaces the old one, whose tries, set and prefilter are freed', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const slots = (name: string): [boolean, boolean] => {
    const outer = BpfMap.openPinned(join(datapath.pinRoot, name));
    try {
      return [0, 1].map((slot) => outer.get(new Uint8Array(new Uint32Array([slot]).buffer)) !== undefined) as [boolean, boolean];
    } finally {
      outer.close();
    }
  };
  const outers = ['ep_blk4', 'ep_blk6', 'ep_blk4h', 'ep_blk4p'];
  const first = new BlocklistPacker({ hashed: true });
  first.add(entry('2001:db8:bad::/48'));
  first.add(entry('198.51.100.0/24'));
  datapath.blocklist.load(first.finish());
  t.is(xdp(datapath, '2001:db8:bad:1::5'), XDP_DROP);
  t.is(xdp(datapath, '2001:db8:bad0::5'), XDP_PASS);
  t.is(xdp(datapath, '198.51.100.1'), XDP_DROP);
  const live = datapath.blocklist.generation;
  for (const name of outers) t.deepEqual(slots(name), live === 0 ? [true, false] : [false, true], `${name}: the live slot only`);
  const second = new BlocklistPacker({ hashed: true });
  second.add(entry('2001:db8:bad0::/48'));
  second.add(entry('203.0.113.0/24'));
  datapath.blocklist.load(second.finish());
  t.not(datapath.blocklist.generation, live);
  for (const name of outers) t.deepEqual(slots(name), live === 0 ? [false, true] : [true, false], `${name}: the previous generation's slot is emptied`);
  t.is(xdp(datapath, '2001:db8:bad:1::5'), XDP_PASS);
  t.is(xdp(datapath, '2001:db8:bad0::5'), XDP_DROP);
  t.is(xdp(datapath, '198.51.100.1'), XDP_PASS);
  t.is(xdp(datapath, '203.0.113.9'), XDP_DROP);
  t.true(datapath.blocklist.readCounters().dropped6.packets >= 2);
});

test('blocklist - an expired entry stops matching by the kernel clock and uncovers a live prefix around it', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const { taiNs } = datapath.blocklist.readClock();
  const packer = new BlocklistPacker();
  packer.add(entry('203.0.113.0/24', taiNs - 1n, BLOCKLIST_F_BLOCK)); // expired already
  packer.add(entry('198.51.100.0/25', taiNs - 1n, BLOCKLIST_F_BLOCK)); // expired, inside a permanent /24
  packer.add(entry('198.51.100.0/24'));
  packer.add(entry('192.0.2.0/24', taiNs + 3_600_000_000_000n, BLOCKLIST_F_BLOCK)); // an hour left
  datapath.blocklist.load(packer.finish());
  t.is(xdp(datapath, '203.0.113.1'), XDP_PASS, 'expired');
  t.is(xdp(datapath, '198.51.100.1'), XDP_DROP, 'the permanent /24 around the expired /25 still drops');
  t.is(xdp(datapath, '192.0.2.1'), XDP_DROP, 'not yet expired');
  t.true(datapath.blocklist.readCounters().expiredSeen.packets >= 2);
  // The same prefix twice: the longest-lasting entry is kept.
  const twice = new BlocklistPacker();
  twice.add(entry('203.0.113.0/24', taiNs + 3_600_000_000_000n));
  twice.add(entry('203.0.113.0/24', taiNs - 1n));
  t.is(twice.finish().v4.count, 1);
  const merged = new BlocklistPacker();
  merged.add(entry('203.0.113.0/24', taiNs - 1n));
  merged.add(entry('203.0.113.0/24', taiNs + 3_600_000_000_000n));
  datapath.blocklist.load(merged.finish());
  t.is(xdp(datapath, '203.0.113.1'), XDP_DROP);
});

test('blocklist - the TAI clock the programs read is the wall clock plus the kernel TAI offset', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  const { taiNs, utcNs } = datapath.blocklist.readClock();
  const offsetS = Number(taiNs - utcNs) / 1e9;
  // The kernel's TAI offset is whole seconds (0 until a time daemon sets it, 37 since 2017).
  t.true(Math.abs(offsetS - Math.round(offsetS)) < 0.05, `offset ${offsetS} s`);
  t.true(Math.round(offsetS) >= 0 && Math.round(offsetS) <= 40);
});

test('blocklist - a restarted agent adopts the live tries: they keep enforcing, and removes work in place', async (t) => {
  const root = freshRoot();
  const first = await EbpfDatapath.open({ pinRoot: root });
  await first.apply(allowAll);
  const packer = new BlocklistPacker();
  packer.add(entry('203.0.113.0/24'));
  packer.add(entry('198.51.100.7/32'));
  first.blocklist.load(packer.finish());
  first.close();
  first.close();
  const second = await EbpfDatapath.open({ pinRoot: root });
  t.teardown(() => second.close());
  t.true(second.adopted);
  t.is(xdp(second, '203.0.113.1'), XDP_DROP);
  t.is(second.blocklist.remove([cidr('203.0.113.0/24')]), 1);
  t.is(xdp(second, '203.0.113.1'), XDP_PASS);
  t.is(xdp(second, '198.51.100.7'), XDP_DROP);
});

test('blocklist - a family whose live trie is empty is not looked up; an entry added in place to it is enforced, and removing the last marks it empty again', async (t) => {
  const root = freshRoot();
  const datapath = await EbpfDatapath.open({ pinRoot: root });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const active = BpfMap.openPinned(join(root, 'ep_blk_active'));
  t.teardown(() => active.close());
  const zero = new Uint8Array(4);
  const word = (): number => new DataView((active.get(zero) as Uint8Array).buffer).getUint32(0, true);
  const setWord = (w: number): void => active.set(zero, new Uint8Array(new Uint32Array([w]).buffer));
  const EMPTY4 = 2;
  const EMPTY6 = 4;
  t.is(word() & (EMPTY4 | EMPTY6), EMPTY4 | EMPTY6, 'no list ever loaded: both families marked empty');

  const packer = new BlocklistPacker();
  packer.add(entry('198.51.100.0/24'));
  datapath.blocklist.load(packer.finish());
  t.is(word() & (EMPTY4 | EMPTY6), EMPTY6, 'the switch marks the family without entries');
  t.is(xdp(datapath, '198.51.100.1'), XDP_DROP);
  t.is(xdp(datapath, '2001:db8:bad::5'), XDP_PASS);

  // An IPv6 prefix added in place to the empty family: enforced at once (its mark cleared).
  t.true(datapath.blocklist.add([entry('2001:db8:bad::/48')]));
  t.is(word() & (EMPTY4 | EMPTY6), 0);
  t.is(xdp(datapath, '2001:db8:bad::5'), XDP_DROP);
  t.is(datapath.blocklist.generation, word() & 1, 'no switch');

  // The programs do skip a family marked empty (here, wrongly, by hand): the mark is the switch.
  setWord(word() | EMPTY4);
  t.is(xdp(datapath, '198.51.100.1'), XDP_PASS, 'marked empty: not looked up');
  // A word an older agent wrote (the generation alone) means "look".
  setWord(word() & 1);
  t.is(xdp(datapath, '198.51.100.1'), XDP_DROP);
  t.is(xdp(datapath, '2001:db8:bad::5'), XDP_DROP);

  // The last IPv6 entry removed in place: marked empty again; IPv4 still looked up.
  t.is(datapath.blocklist.remove([cidr('2001:db8:bad::/48')]), 1);
  t.is(word() & (EMPTY4 | EMPTY6), EMPTY6);
  t.is(xdp(datapath, '2001:db8:bad::5'), XDP_PASS);
  t.is(xdp(datapath, '198.51.100.1'), XDP_DROP);
});

/** A seeded generator (runs repeat). */
function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1_664_525) + 1_013_904_223) >>> 0;
    return x;
  };
}
const dotted = (a: number): string => `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
/** The host-order address of an IPv4 prefix's text. */
const cidrAddress = (text: string): number => (text.split('/')[0] as string).split('.').reduce((x, o) => x * 256 + Number(o), 0) >>> 0;

test('blocklist - the hashed set, its prefilter and the trie decide as a reference does: six prefix lengths (three hashed), permanent and expiring, changes in place moving entries between them, an adoption', async (t) => {
  const root = freshRoot();
  let datapath = await EbpfDatapath.open({ pinRoot: root });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const { taiNs } = datapath.blocklist.readClock();
  const hour = 3_600_000_000_000n;
  const next = lcg(13);
  // Prefixes inside 10.0.0.0/8, lengths by weight (per mille): 32, 24, 20 are hashed (the /24s
  // and /20s as the prefilter's covered blocks, the /32s behind its "longer" bits), /28s and a
  // few /16s and /12s are in the trie (the /16s and /12s cover about a third of the range, with
  // entries inside them).
  const weights: [number, number][] = [[32, 450], [24, 250], [20, 150], [28, 136], [16, 12], [12, 2]];
  const randomPrefix = (): { address: number; length: number } => {
    let pick = next() % 1000;
    let length = 32;
    for (const [l, w] of weights) {
      if (pick < w) {
        length = l;
        break;
      }
      pick -= w;
    }
    const address = (0x0a000000 | (next() & 0xffffff)) >>> 0;
    return { address: (address & (0xffffffff << (32 - length))) >>> 0, length };
  };
  /** The reference: prefix text -> expiry (0n never). */
  const held = new Map<string, bigint>();
  const expiryOf = (): bigint => {
    const r = next() % 20;
    return r === 0 ? taiNs - 1n : r === 1 ? taiNs + hour : 0n; // 5 % expired already, 5 % in an hour
  };
  for (let i = 0; i < 3000; i++) {
    const p = randomPrefix();
    const text = `${dotted(p.address)}/${p.length}`;
    if (!held.has(text)) held.set(text, expiryOf());
  }
  const live = (e: bigint): boolean => e === 0n || e > taiNs;
  const blocked = (address: number): boolean => {
    // LPM with expiry: the longest live entry covering it, looking below expired ones (a nest of
    // four at most, which these lists never reach) - i.e. any live entry covering it.
    for (let length = 32; length >= 0; length--) {
      const masked = length === 0 ? 0 : (address & (0xffffffff << (32 - length))) >>> 0;
      const e = held.get(`${dotted(masked)}/${length}`);
      if (e !== undefined && live(e)) return true;
    }
    return false;
  };
  const probe = (what: string): void => {
    const probes: number[] = [];
    for (const text of [...held.keys()].slice(0, 300)) {
      const length = Number(text.split('/')[1]);
      probes.push((cidrAddress(text) | (next() & (length === 32 ? 0 : 0xffffffff >>> length))) >>> 0);
    }
    for (let i = 0; i < 300; i++) probes.push((0x0a000000 | (next() & 0xffffff)) >>> 0);
    const wrong = probes.filter((a) => (xdp(datapath, dotted(a)) === XDP_DROP) !== blocked(a)).map(dotted);
    t.deepEqual(wrong, [], `${what}: verdicts that differ from the reference`);
    t.true(probes.some(blocked) && probes.some((a) => !blocked(a)), `${what}: both verdicts probed`);
  };

  const packer = new BlocklistPacker({ hashed: true });
  for (const [text, expires] of held) packer.addText(text, expires, expires === 0n ? 0 : BLOCKLIST_F_BLOCK);
  const spec = packer.finish();
  t.deepEqual(spec.v4Hashed?.shape, { log2: spec.v4Hashed!.shape.log2, lengths: [32, 24, 20], prefilter: true });
  t.true(spec.v4.count > 100, 'the trie holds the other lengths and the expiring entries');
  datapath.blocklist.load(spec);
  probe('loaded');

  // In place: new entries of every length, entries made permanent, made expiring, removed.
  const keys = [...held.keys()];
  const adds: BlocklistEntry[] = [];
  const removes: Cidr[] = [];
  for (let i = 0; i < 60; i++) {
    const p = randomPrefix();
    const text = `${dotted(p.address)}/${p.length}`;
    const expires = i % 3 === 0 ? taiNs + hour : 0n;
    held.set(text, expires);
    adds.push(entry(text, expires, expires === 0n ? 0 : BLOCKLIST_F_BLOCK));
  }
  for (const [i, text] of keys.slice(0, 40).entries()) {
    // permanent -> expiring (in an hour, or past: it must stop matching), expiring -> permanent
    const expires = held.get(text) === 0n ? (i % 2 === 0 ? taiNs - 1n : taiNs + hour) : 0n;
    held.set(text, expires);
    adds.push(entry(text, expires, expires === 0n ? 0 : BLOCKLIST_F_BLOCK));
  }
  for (const text of keys.slice(40, 100)) {
    held.delete(text);
    removes.push(cidr(text));
  }
  t.true(datapath.blocklist.add(adds));
  t.is(datapath.blocklist.remove(removes), 60);
  probe('changed in place');
  // Expiring entries made permanent left the trie; permanent made expiring left the set.
  const set = datapath.blocklist;
  t.true(set.size.v4 >= held.size - 100 && set.size.v4 <= held.size, `size ${set.size.v4} for ${held.size}`);

  // A restarted agent adopts the set: it enforces, and removes work in place.
  datapath.close();
  datapath = await EbpfDatapath.open({ pinRoot: root });
  t.true(datapath.adopted);
  probe('adopted');
  // Five permanent /32s (in the set) that no other entry covers.
  const permanent32: string[] = [];
  for (const [text, e] of [...held]) {
    if (e !== 0n || !text.endsWith('/32') || permanent32.length === 5) continue;
    held.delete(text);
    if (blocked(cidrAddress(text))) held.set(text, e);
    else permanent32.push(text);
  }
  t.is(datapath.blocklist.remove(permanent32.map(cidr)), 5);
  for (const text of permanent32) t.is(xdp(datapath, text.replace('/32', '')), XDP_PASS, `${text} removed from the adopted set`);
  probe('removed after the adoption');
  t.false(datapath.blocklist.add([entry('192.0.2.0/24')]), 'an add after an adoption asks for a whole load');
});

test('blocklist - an entry in its second bucket is found behind its marked first one; one that fits in neither goes into the trie (a set without a prefilter, as an older agent wrote it)', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  // Two buckets. /32s of 198.51.100.0/24 sorted by their two choices.
  const firstZero: number[] = [];
  const zeroThenOne: number[] = [];
  for (let i = 1; i < 255; i++) {
    const a = (0xc6336400 + i) >>> 0;
    const h = hashOf(a, 32);
    if ((h & 1) === 0) firstZero.push(a);
    if ((h & 1) === 0 && (mix32((h + 0x7f4a7c15) >>> 0) & 1) === 1) zeroThenOne.push(a);
  }
  const crowd = firstZero.filter((a) => !zeroThenOne.includes(a)).slice(0, HASH_ENTRIES);
  t.is(crowd.length, HASH_ENTRIES);
  const spilled = zeroThenOne[0]!;
  const pairs = (addresses: number[]): Uint32Array => new Uint32Array(addresses.flatMap((a) => [a, 32]));
  const empty = new BlocklistPacker().finish();
  // Bucket 0 filled by the crowd, then the spilled entry: into its second bucket, the first marked.
  const load = datapath.blocklist.load({ ...empty, v4Hashed: { shape: { log2: 1, lengths: [32], prefilter: false }, entries: pairs([...crowd, spilled]), count: HASH_ENTRIES + 1 } });
  t.is(load.v4, HASH_ENTRIES + 1);
  for (const a of [...crowd, spilled]) t.is(xdp(datapath, dotted(a)), XDP_DROP, dotted(a));
  t.is(xdp(datapath, '198.51.100.255'), XDP_PASS);
  // The programs read the second bucket only behind the mark: without it (cleared by hand, in
  // the live set) the entry is not found.
  const live = liveInner(t, datapath, 'ep_blk4h');
  const markOf = (): bigint => live.withMapped((bytes) => new BigUint64Array(bytes.buffer, bytes.byteOffset, 16)[HASH_ENTRIES]!);
  t.is(markOf(), BigInt(HASH_MOVED), 'bucket 0 is marked');
  live.withMapped((bytes) => void (new BigUint64Array(bytes.buffer, bytes.byteOffset, 16)[HASH_ENTRIES] = 0n));
  t.is(xdp(datapath, dotted(spilled)), XDP_PASS, 'not looked for behind an unmarked bucket');
  t.is(xdp(datapath, dotted(crowd[0]!)), XDP_DROP);

  // A set of one bucket: the eighth entry of a whole load goes into the trie, and so does one more
  // added in place.
  const eight = Array.from({ length: HASH_ENTRIES + 1 }, (_, i) => (0xc6336401 + i) >>> 0); // 198.51.100.1..8
  t.is(datapath.blocklist.load({ ...empty, v4Hashed: { shape: { log2: 0, lengths: [32], prefilter: false }, entries: pairs(eight), count: eight.length } }).v4, 8);
  t.is(xdp(datapath, '198.51.100.8'), XDP_DROP, 'in the trie');
  t.is(xdp(datapath, '198.51.100.9'), XDP_PASS);
  t.true(datapath.blocklist.add([entry('198.51.100.9/32')]));
  t.is(xdp(datapath, '198.51.100.9'), XDP_DROP, 'in the trie');
  t.is(datapath.blocklist.size.v4, 9);
  t.is(datapath.blocklist.remove([cidr('198.51.100.9/32'), cidr('198.51.100.1/32')]), 2);
  t.is(xdp(datapath, '198.51.100.9'), XDP_PASS);
  t.is(xdp(datapath, '198.51.100.1'), XDP_PASS);
  t.is(xdp(datapath, '198.51.100.2'), XDP_DROP);
  // A word without the set's lengths (an older agent's) reads no bucket.
  const active = BpfMap.openPinned(join(datapath.pinRoot, 'ep_blk_active'));
  t.teardown(() => active.close());
  const zero = new Uint8Array(4);
  const word = new DataView((active.get(zero) as Uint8Array).buffer).getUint32(0, true);
  t.not(word >>> 8, 0, 'the live word names the set');
  active.set(zero, new Uint8Array(new Uint32Array([word & 0x7]).buffer));
  t.is(xdp(datapath, '198.51.100.2'), XDP_PASS, 'not read without its lengths');
  active.set(zero, new Uint8Array(new Uint32Array([word]).buffer));
  t.is(xdp(datapath, '198.51.100.2'), XDP_DROP);
});

test('blocklist - the programs answer from the prefilter: a covered block drops with no bucket read, a block without "longer" reads none; removes in place clear what no entry still covers', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const packer = new BlocklistPacker({ hashed: true });
  for (const p of ['203.0.113.0/24', '198.51.96.0/20', '198.51.100.0/24', '192.0.2.7/32', '192.0.2.9/32']) packer.addText(p);
  const spec = packer.finish();
  t.deepEqual(spec.v4Hashed?.shape.lengths, [32, 24, 20]);
  t.true(spec.v4Hashed?.shape.prefilter);
  datapath.blocklist.load(spec);
  const listed = ['203.0.113.1', '198.51.97.3', '198.51.100.200', '192.0.2.7', '192.0.2.9'];
  for (const src of listed) t.is(xdp(datapath, src), XDP_DROP, src);
  for (const src of ['203.0.112.1', '198.51.112.1', '192.0.2.8']) t.is(xdp(datapath, src), XDP_PASS, src);

  // The live prefilter, zeroed by hand and restored: with no bits, no listed source is looked for.
  const zeroedWhile = (name: 'ep_blk4p' | 'ep_blk4h', probe: () => void): void => {
    const live = liveInner(t, datapath, name);
    const saved = live.withMapped((bytes) => bytes.slice());
    live.withMapped((bytes) => bytes.fill(0));
    probe();
    live.withMapped((bytes) => bytes.set(saved));
    for (const src of listed) t.is(xdp(datapath, src), XDP_DROP, `${src} with ${name} restored`);
  };
  zeroedWhile('ep_blk4p', () => {
    for (const src of listed) t.is(xdp(datapath, src), XDP_PASS, `${src} passes without its bits`);
  });
  // The set's buckets zeroed instead: covered blocks still drop (no bucket read), the /32s do not.
  zeroedWhile('ep_blk4h', () => {
    for (const src of ['203.0.113.1', '198.51.97.3', '198.51.100.200']) t.is(xdp(datapath, src), XDP_DROP, `${src}: covered, answered by its bits`);
    for (const src of ['192.0.2.7', '192.0.2.9']) t.is(xdp(datapath, src), XDP_PASS, `${src}: "longer", looked for in the buckets`);
  });

  // In place: the /24 inside the /20 leaves, the /20 still covers its block; then the /20 leaves.
  t.is(datapath.blocklist.remove([cidr('198.51.100.0/24')]), 1);
  t.is(xdp(datapath, '198.51.100.200'), XDP_DROP, 'still inside the /20');
  t.is(datapath.blocklist.remove([cidr('198.51.96.0/20')]), 1);
  t.is(xdp(datapath, '198.51.100.200'), XDP_PASS);
  t.is(xdp(datapath, '198.51.97.3'), XDP_PASS);
  t.true(datapath.blocklist.add([entry('198.51.100.0/24'), entry('192.0.2.8/32')]));
  for (const src of ['198.51.100.200', '192.0.2.8', '192.0.2.7']) t.is(xdp(datapath, src), XDP_DROP, `${src} added in place`);
  t.is(xdp(datapath, '198.51.101.1'), XDP_PASS);
});

test('blocklist - what it dropped and how many prefixes it holds are observed as the agent metrics, per role and family, until observing stops', async (t) => {
  const read = installTestMeter();
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const packer = new BlocklistPacker({ hashed: true });
  for (const p of ['198.51.100.0/24', '203.0.113.7/32', '2001:db8:bad::/48']) packer.addText(p);
  datapath.blocklist.load(packer.finish());
  const stop = observeBlocklists('n1', [{ role: 'uplink', tables: datapath.blocklist }]);
  t.teardown(stop);
  t.is(await read('edgeplane.agent.blocklist.dropped'), 0);
  t.is(await read('edgeplane.agent.blocklist.entries'), 3);
  for (const src of ['198.51.100.1', '198.51.100.2', '203.0.113.7', '2001:db8:bad::1', '192.0.2.1']) xdp(datapath, src);
  t.is(await read('edgeplane.agent.blocklist.dropped'), 4, 'three IPv4 drops and one IPv6; the unlisted source passed');
  t.true(datapath.blocklist.add([entry('192.0.2.0/24')]));
  t.is(await read('edgeplane.agent.blocklist.entries'), 4);
  stop();
  xdp(datapath, '192.0.2.9');
  t.is(datapath.blocklist.readCounters().dropped4.packets, 4);
  t.is(await read('edgeplane.agent.blocklist.dropped'), 4, 'no longer read: the reader keeps the last value it was given');
});
