// Packing the blocklist (pure, no kernel): prefix text parsed straight into packed keys equals
// packing parsed entries, duplicates keep the longest-lasting entry, and the insert order the
// tries are written in is the entries by address, each key with its own value.
import test from 'ava';
import fc from 'fast-check';
import { parseCidr, type Cidr } from '@edgeplane/proto';
import { BLOCKLIST_F_BLOCK, BLOCKLIST_SIZES, BlocklistPacker, decodeBlocklistValue, inInsertOrder } from '../src/datapath/blocklist.js';

const v4Prefix = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255), fc.integer({ min: 0, max: 32 })).map(([a, b, c, d, l]) => `${a}.${b}.${c}.${d}/${l}`);
const v6Prefix = fc.tuple(fc.nat(0xffff), fc.nat(0xffff), fc.integer({ min: 0, max: 128 })).map(([a, b, l]) => `2001:${a.toString(16)}:${b.toString(16)}::/${l}`);

test('blocklist packer - addText packs what add of the parsed prefix packs, each prefix once, the longest-lasting entry kept', (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.oneof(v4Prefix, v6Prefix), fc.constantFrom(0n, 5n, 9n)), { maxLength: 300 }), (items) => {
      const fromText = new BlocklistPacker();
      const fromEntries = new BlocklistPacker({ v4: 1, v6: 1 });
      for (const [p, expires] of items) {
        fromText.addText(p, expires, expires === 0n ? 0 : BLOCKLIST_F_BLOCK);
        fromEntries.add({ cidr: parseCidr(p) as Cidr, expiresTaiNs: expires, flags: expires === 0n ? 0 : BLOCKLIST_F_BLOCK });
      }
      const a = fromText.finish();
      const b = fromEntries.finish();
      const distinct = new Map<string, bigint>();
      for (const [p, expires] of items) {
        const cidr = parseCidr(p) as Cidr;
        const id = `${cidr.family}:${cidr.address.join('.')}/${cidr.prefixLength}`;
        const held = distinct.get(id);
        distinct.set(id, held === undefined ? expires : held === 0n || expires === 0n ? 0n : expires > held ? expires : held);
      }
      const never = [...distinct.values()].filter((e) => e === 0n).length;
      const packedNever = [a.v4, a.v6].reduce((n, f) => n + Array.from({ length: f.count }, (_, i) => decodeBlocklistValue(f.values.subarray(i * 16, i * 16 + 16))).filter((v) => v.expiresTaiNs === 0n).length, 0);
      return Buffer.compare(Buffer.from(a.v4.keys), Buffer.from(b.v4.keys)) === 0 && Buffer.compare(Buffer.from(a.v6.keys), Buffer.from(b.v6.keys)) === 0 && Buffer.compare(Buffer.from(a.v6.values), Buffer.from(b.v6.values)) === 0 && Buffer.compare(Buffer.from(a.v4.values), Buffer.from(b.v4.values)) === 0 && a.v4.count + a.v6.count === distinct.size && packedNever === never;
    }),
    { numRuns: 300 },
  );
  const packer = new BlocklistPacker();
  t.false(packer.addText('10.0.0.0/33'));
  t.false(packer.addText('not a prefix'));
  t.true(packer.addText('10.0.0.1/8'), 'the packet side: host bits cleared');
  t.is(packer.finish().v4.count, 1);
});

test('blocklist packer - the insert order is by address, each key with its own value; an ordered list is kept as it is', (t) => {
  const packer = new BlocklistPacker();
  // Random-looking order: more than a third of neighbours descend.
  const addresses = Array.from({ length: 3000 }, (_, i) => ((i * 2_654_435_761) >>> 0) % 2 ** 32);
  addresses.forEach((a, i) => packer.addText(`${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}/32`, BigInt(i + 1), 0));
  const packed = packer.finish().v4;
  const ordered = inInsertOrder(packed, BLOCKLIST_SIZES.key4);
  t.not(ordered, packed);
  t.is(ordered.count, packed.count);
  const view = (keys: Uint8Array, i: number): number => new DataView(keys.buffer, keys.byteOffset).getUint32(i * 8 + 4, false);
  const pairs = (p: typeof packed): string[] => Array.from({ length: p.count }, (_, i) => `${view(p.keys, i)}=${decodeBlocklistValue(p.values.subarray(i * 16, i * 16 + 16)).expiresTaiNs}`).sort();
  t.deepEqual(pairs(ordered), pairs(packed), 'the same key-value pairs');
  for (let i = 1; i < ordered.count; i++) if (view(ordered.keys, i) < view(ordered.keys, i - 1)) t.fail(`entry ${i} is out of order`);
  t.is(inInsertOrder(ordered, BLOCKLIST_SIZES.key4), ordered, 'in order already: no copy');
});
