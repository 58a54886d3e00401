// The blocklist's hashed set (pure, no kernel): a hashed packer holds the same prefixes with the
// same expiries as a trie-only one, split between the set (permanent IPv4 entries of the most
// common lengths, each once) and the trie (the rest, none of them in the set); the set's buckets
// take 8 entries each and say 'full' after; ep_blk_active's shape bits round-trip; the prefilter's
// bits say what a reference over the set's entries says, after a fill and after removes in place.
import test from 'ava';
import fc from 'fast-check';
import { parseCidr, type Cidr } from '@edgeplane/proto';
import { bucketsLog2, chooseLengths, fillHashed, fillPrefilter, HASH_ENTRIES, HASH_LENGTH_SLOTS, HASH_LENGTHS, HASH_MOVED, HashedSet4, hashOf, maskAddress, mix32, Prefilter, PREFILTER_COVERED, PREFILTER_LONGER, shapeBits, shapeOfWord } from '../src/datapath/blocklist-hash.js';
import { BLOCKLIST_F_BLOCK, BLOCKLIST_SIZES, BlocklistPacker, decodeBlocklistValue } from '../src/datapath/blocklist.js';

// Few distinct lengths and values, so prefixes repeat and more lengths than the set holds compete.
const v4Prefix = fc.tuple(fc.nat(3), fc.nat(255), fc.constantFrom(8, 16, 20, 24, 28, 30, 32)).map(([a, b, l]) => `10.${a}.${b}.${(a * 7 + b) & 255}/${l}`);
const v6Prefix = fc.tuple(fc.nat(3), fc.integer({ min: 16, max: 64 })).map(([a, l]) => `2001:db8:${a}::/${l}`);
const id = (cidr: Cidr): string => `${cidr.family}:${cidr.address.join('.')}/${cidr.prefixLength}`;
const hostAddress = (cidr: Cidr): number => new DataView(cidr.address.buffer, cidr.address.byteOffset, 4).getUint32(0, false);

test('hashed packer - the set and the trie together hold what a trie-only packer holds; the set only permanent IPv4 entries of its lengths, none also in the trie', (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.oneof(v4Prefix, v4Prefix, v6Prefix), fc.constantFrom(0n, 0n, 5n, 9n)), { maxLength: 400 }), (items) => {
      const hashed = new BlocklistPacker({ hashed: true });
      const plain = new BlocklistPacker();
      for (const [p, expires] of items) {
        t.true(hashed.addText(p, expires, expires === 0n ? 0 : BLOCKLIST_F_BLOCK));
        plain.addText(p, expires, expires === 0n ? 0 : BLOCKLIST_F_BLOCK);
      }
      const a = hashed.finish();
      const b = plain.finish();
      // Every prefix and its expiry, as the trie-only packer holds them.
      const want = new Map<string, bigint>();
      const read = (family: 4 | 6, spec: typeof b.v4, into: Map<string, bigint>): void => {
        const size = family === 4 ? BLOCKLIST_SIZES.key4 : BLOCKLIST_SIZES.key6;
        for (let i = 0; i < spec.count; i++) {
          const key = spec.keys.subarray(i * size, (i + 1) * size);
          const value = decodeBlocklistValue(spec.values.subarray(i * BLOCKLIST_SIZES.value, (i + 1) * BLOCKLIST_SIZES.value));
          into.set(`${family}:${Array.from(key.subarray(4)).join('.')}/${key[0]}`, value.expiresTaiNs);
        }
      };
      read(4, b.v4, want);
      read(6, b.v6, want);
      const got = new Map<string, bigint>();
      read(4, a.v4, got);
      read(6, a.v6, got);
      const buckets = a.v4Hashed === undefined ? undefined : HashedSet4.buffer(a.v4Hashed.shape.log2);
      const filled = buckets === undefined ? undefined : fillHashed(buckets, a.v4Hashed!.shape.log2, a.v4Hashed!.entries);
      t.deepEqual(filled?.overflow ?? [], [], 'every entry fits');
      const set = buckets === undefined ? undefined : new HashedSet4(buckets, a.v4Hashed!.shape.log2, false);
      let inSet = 0;
      for (const [p] of items) {
        const cidr = parseCidr(p) as Cidr;
        if (cidr.family !== 4 || set?.has(hostAddress(cidr), cidr.prefixLength) !== true) continue;
        t.true(a.v4Hashed!.shape.lengths.includes(cidr.prefixLength));
        t.is(want.get(id(cidr)), 0n, `${p} is permanent`);
        t.false(got.has(id(cidr)), `${p} is not in the trie too`);
        if (!got.has(`set:${id(cidr)}`)) inSet++;
        got.set(`set:${id(cidr)}`, 0n);
      }
      t.is(inSet, filled?.added ?? 0, 'the set holds each prefix once');
      for (const [key, expires] of got) if (key.startsWith('set:')) got.set(key.slice(4), expires);
      for (const key of [...got.keys()]) if (key.startsWith('set:')) got.delete(key);
      t.deepEqual(new Map([...got].sort()), new Map([...want].sort()));
      // The set holds the permanent IPv4 lengths with the most entries.
      if (a.v4Hashed !== undefined) t.true(a.v4Hashed.shape.lengths.length <= HASH_LENGTHS);
    }),
    { numRuns: 150 },
  );
});

test('hashed set - a bucket holds 7 entries and its mark, the 8th of a full bucket is refused; present, remove and the atomic writer agree', (t) => {
  for (const atomic of [false, true]) {
    const bytes = HashedSet4.buffer(0); // one bucket: both choices are the same
    const set = new HashedSet4(bytes, 0, atomic);
    const addresses = Array.from({ length: HASH_ENTRIES + 1 }, (_, i) => (0x0a000000 + i) >>> 0);
    for (const a of addresses.slice(0, HASH_ENTRIES)) t.is(set.insert(a, 32), 'added');
    t.is(set.insert(addresses[HASH_ENTRIES]!, 32), 'full');
    t.false(set.has(addresses[HASH_ENTRIES]!, 32));
    t.is(new BigUint64Array(bytes.buffer)[HASH_ENTRIES], BigInt(HASH_MOVED), 'the full bucket is marked');
    t.is(set.insert(addresses[3]!, 32), 'present');
    t.false(set.has(addresses[3]!, 31), 'another length is another entry');
    t.true(set.remove(addresses[3]!, 32));
    t.false(set.remove(addresses[3]!, 32));
    t.is(set.insert(addresses[HASH_ENTRIES]!, 32), 'added', 'the hole is reused');
    t.true(set.has(addresses[HASH_ENTRIES]!, 32));
    t.is([...set.entries()].length, HASH_ENTRIES, 'the mark is not an entry');
    // The slot as the programs read it: address << 32 | length + 1, little-endian.
    const slots = new BigUint64Array(bytes.buffer);
    t.true(slots.includes((BigInt(addresses[0]!) << 32n) | 33n));
  }
  t.throws(() => new HashedSet4(new Uint8Array(32), 0, false), { instanceOf: RangeError });
});

test('hashed set - with both buckets full, an entry of one moves to its other bucket to make room, found throughout', (t) => {
  // Two buckets; addresses sorted by where their two choices fall.
  const kinds = new Map<string, number[]>();
  for (let a = 1; kinds.size < 3 || [...kinds.values()].some((xs) => xs.length < 9); a++) {
    const h = hashOf(a, 32);
    const kind = `${h & 1}${mix32((h + 0x7f4a7c15) >>> 0) & 1}`;
    kinds.set(kind, [...(kinds.get(kind) ?? []), a]);
  }
  const movable = kinds.get('01') ?? kinds.get('10')!.map((a) => a); // one choice in each bucket
  const zeroOnly = kinds.get('00')!;
  const oneOnly = kinds.get('11')!;
  for (const atomic of [false, true]) {
    const set = new HashedSet4(HashedSet4.buffer(1), 1, atomic);
    const firstOf = (a: number): number => hashOf(a, 32) & 1;
    // Bucket 1 one short of full; bucket 0 full of entries that could live in bucket 1.
    for (const a of oneOnly.slice(0, HASH_ENTRIES - 1)) t.is(set.insert(a, 32), 'added');
    const intoZero = movable.filter((a) => firstOf(a) === 0).slice(0, HASH_ENTRIES);
    for (const a of intoZero) t.is(set.insert(a, 32), 'added');
    t.is(set.insert(zeroOnly[0]!, 32), 'added', 'room made in bucket 0');
    for (const a of [...oneOnly.slice(0, HASH_ENTRIES - 1), ...intoZero, zeroOnly[0]!]) t.true(set.has(a, 32), `${a} still found`);
    t.is(set.insert(zeroOnly[1]!, 32), 'full', 'no room left anywhere');
    t.is([...set.entries()].length, 2 * HASH_ENTRIES);
  }
});

test('hashed set - lengths by count, longest first; the shape round-trips through the active word; buckets for four entries each', (t) => {
  const counts = new Uint32Array(33);
  Object.assign(counts, { 32: 700, 24: 250, 16: 20, 8: 20, 12: 3, 0: 1 });
  t.deepEqual(chooseLengths(counts), [32, 24, 16]);
  t.deepEqual(chooseLengths(new Uint32Array(33)), []);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 28 }), fc.boolean(), fc.uniqueArray(fc.integer({ min: 0, max: 32 }), { minLength: 1, maxLength: HASH_LENGTH_SLOTS }), fc.nat(1), (log2, prefilter, all, generation) => {
      // With a prefilter, three lengths and the mark; without (an older agent's word), four.
      const lengths = prefilter ? all.slice(0, HASH_LENGTHS) : all;
      const word = generation | 0x2 | shapeBits({ log2, lengths, prefilter });
      t.deepEqual(shapeOfWord(word), { log2, lengths, prefilter });
      t.is(word & 0x7, generation | 0x2, 'the generation and empty marks are left alone');
    }),
  );
  t.throws(() => shapeBits({ log2: 4, lengths: [32, 24, 16, 8], prefilter: true }), { instanceOf: RangeError });
  t.is(shapeBits(undefined), 0);
  t.is(shapeOfWord(0x7), undefined);
  t.is(bucketsLog2(0), 0);
  t.is(bucketsLog2(4), 0);
  t.is(bucketsLog2(5), 1);
  t.is(bucketsLog2(1_000_000), 18);
  t.is(bucketsLog2(1_048_577), 19);
  t.is(maskAddress(0x0a0b0c0d, 24), 0x0a0b0c00);
  t.is(maskAddress(0x8a0b0c0d, 0), 0);
  t.is(maskAddress(0x8a0b0c0d, 1), 0x80000000);
});

test('prefilter - covered exactly where an entry of length <= 24 contains the block, "longer" wherever an entry of length > 24 lies in it; removes in place keep both true', (t) => {
  // Entries in 10.0.0.0/14 (1,024 blocks, so entries nest), three lengths out of seven (a /8
  // contains the whole region), sets of 4 to 64 buckets: a remove of a short prefix probes the
  // longer lengths' prefixes inside it, or scans the set when they outnumber its slots. Checked
  // over 10.0.0.0/12 and its edges.
  const lengthsOf = fc.shuffledSubarray([8, 12, 16, 20, 24, 28, 32], { minLength: 1, maxLength: HASH_LENGTHS });
  fc.assert(
    fc.property(lengthsOf, fc.integer({ min: 2, max: 6 }), fc.array(fc.tuple(fc.nat(2), fc.nat(0x3fff)), { minLength: 1, maxLength: 120 }), fc.array(fc.nat(), { maxLength: 40 }), (lengths, log2, picks, removes) => {
      const region = 0x0a000000;
      const entries = picks.map(([l, offset]) => {
        const length = lengths[l % lengths.length]!;
        return [maskAddress((region + offset * 16) >>> 0, length), length] as const;
      });
      const bytes = HashedSet4.buffer(log2);
      const packed = new Uint32Array(entries.flat());
      const { overflow } = fillHashed(bytes, log2, packed);
      const set = new HashedSet4(bytes, log2, true);
      const preBytes = Prefilter.buffer();
      fillPrefilter(preBytes, packed, overflow);
      const pre = new Prefilter(preBytes, true);
      const check = (what: string): void => {
        const inSet = [...set.entries()];
        for (let block = (region >>> 8) - 2; block < (region >>> 8) + 4096 + 2; block++) {
          const address = (block << 8) >>> 0;
          const covered = inSet.some(([a, l]) => l <= 24 && maskAddress(address, l) === a);
          const longer = inSet.some(([a, l]) => l > 24 && maskAddress(a, 24) === address);
          const bits = pre.bits(address);
          if (((bits & PREFILTER_COVERED) !== 0) !== covered) t.fail(`${what}: block ${address.toString(16)} covered ${covered}, bits ${bits}`);
          if (longer && (bits & PREFILTER_LONGER) === 0) t.fail(`${what}: block ${address.toString(16)} holds a longer entry, bits ${bits}`);
        }
      };
      check('filled');
      for (const r of removes) {
        const [address, length] = entries[r % entries.length]!;
        if (set.remove(address, length)) pre.uncover(address, length, set, lengths);
      }
      check('after removes');
    }),
    { numRuns: 60 },
  );
  t.pass();
});

test('prefilter - a remove clears "covered" only where no entry left contains the block, and keeps every "longer" hint', (t) => {
  const bytes = HashedSet4.buffer(2);
  const set = new HashedSet4(bytes, 2, false);
  const preBytes = Prefilter.buffer();
  const pre = new Prefilter(preBytes, false);
  const add = (text: string): void => {
    const cidr = parseCidr(text) as Cidr;
    t.is(set.insert(hostAddress(cidr), cidr.prefixLength), 'added');
    pre.add(hostAddress(cidr), cidr.prefixLength);
  };
  for (const text of ['192.0.2.0/24', '192.0.3.0/24', '192.0.2.7/32', '192.0.0.0/22']) add(text);
  const at = (text: string): number => pre.bits(hostAddress(parseCidr(text) as Cidr));
  t.is(at('192.0.2.0/24'), PREFILTER_COVERED | PREFILTER_LONGER);
  t.is(at('192.0.1.0/24'), PREFILTER_COVERED, 'inside the /22');
  t.is(at('192.0.4.0/24'), 0);
  const remove = (text: string): void => {
    const cidr = parseCidr(text) as Cidr;
    t.true(set.remove(hostAddress(cidr), cidr.prefixLength));
    pre.uncover(hostAddress(cidr), cidr.prefixLength, set, [32, 24, 22]);
  };
  remove('192.0.2.0/24');
  t.is(at('192.0.2.0/24'), PREFILTER_COVERED | PREFILTER_LONGER, 'still inside the /22');
  remove('192.0.0.0/22');
  t.is(at('192.0.0.0/24'), 0);
  t.is(at('192.0.1.0/24'), 0);
  t.is(at('192.0.2.0/24'), PREFILTER_LONGER, 'the /32 keeps its hint; nothing covers the block now');
  t.is(at('192.0.3.0/24'), PREFILTER_COVERED, 'its own /24 still covers it');
});
