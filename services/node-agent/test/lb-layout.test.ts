// The load-balancing entries (bpf/include/ep_lb.h) against their codecs (table-codecs.ts) and
// lb-tables.ts's sizes and flags, through the BTF and map definitions of
// bpf/build/fixtures/lb_layout.bpf.o (built by `npm run build`). No kernel load. Needs bpftool.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { loadObjectSpec } from 'libbpf-ts';
import { LB_BLOCK_SLOTS, lbSizes, lbSvcFlags } from '../src/datapath/lb-tables.js';
import { lbTableCodecs } from '../src/datapath/table-codecs.js';
import { readObjectBtf } from './btf-helpers.js';

const objectPath = fileURLToPath(new URL('../../../bpf/build/fixtures/lb_layout.bpf.o', import.meta.url));
const headerPath = fileURLToPath(new URL('../../../bpf/include/ep_lb.h', import.meta.url));

test('lb layout - every codec field has the offset and size of the C struct member', (t) => {
  const btf = readObjectBtf(objectPath);
  for (const [name, codec] of Object.entries(lbTableCodecs)) {
    t.is<number | undefined, number | undefined>(codec.size, btf.structSize(name), `sizeof(struct ${name})`);
    t.deepEqual(codec.fields, btf.structFields(name), `struct ${name}`);
  }
  t.deepEqual(lbSizes, { vipKey: 24, svc: 20, backend: 20, block: 64 }, 'the sizes LB.md gives');
});

test('lb layout - maps shaped as LB.md has them take the codecs\' sizes as key and value', async (t) => {
  const spec = await loadObjectSpec(objectPath);
  const maps = Object.fromEntries([...spec.maps.values()].map(({ name, type, keySize, valueSize }) => [name, { type, keySize, valueSize }]));
  t.deepEqual(maps, {
    ep_lb_vip: { type: 'hash', keySize: lbSizes.vipKey, valueSize: lbSizes.svc },
    ep_lb_slots: { type: 'array', keySize: 4, valueSize: lbSizes.block },
    ep_lb_backends: { type: 'array', keySize: 4, valueSize: lbSizes.backend },
  });
});

test('lb layout - the flags and the block size are the header\'s', (t) => {
  const header = readFileSync(headerPath, 'utf8');
  const define = (name: string): number => {
    const match = new RegExp(`^#define ${name}\\s+(0x[0-9a-f]+|\\d+)`, 'm').exec(header);
    if (!match) throw new Error(`${name} is not defined in ep_lb.h`);
    return Number(match[1]);
  };
  t.is(define('EP_LB_BLOCK_SLOTS'), LB_BLOCK_SLOTS);
  t.is(define('EP_LB_F_AFFINITY'), lbSvcFlags.affinity);
  t.is(define('EP_LB_F_DSR'), lbSvcFlags.dsr);
});
