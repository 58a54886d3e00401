// The load-balancing constants of bpf/include/ep_lb.h against lb-tables.ts's, and the entry sizes
// LB.md gives. The structs and maps themselves are checked against edgeplane.bpf.o's BTF and map
// definitions with every other table (datapath-layout.test.ts, tableCodecs).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { LB_BLOCK_SLOTS, lbSizes, lbSvcFlags } from '../src/datapath/lb-tables.js';

const headerPath = fileURLToPath(new URL('../../../bpf/include/ep_lb.h', import.meta.url));

test('lb layout - the flags and the block size are the header\'s; the entries have LB.md\'s sizes', (t) => {
  const header = readFileSync(headerPath, 'utf8');
  const define = (name: string): number => {
    const match = new RegExp(`^#define ${name}\\s+(0x[0-9a-f]+|\\d+)`, 'm').exec(header);
    if (!match) throw new Error(`${name} is not defined in ep_lb.h`);
    return Number(match[1]);
  };
  t.is(define('EP_LB_BLOCK_SLOTS'), LB_BLOCK_SLOTS);
  t.is(define('EP_LB_F_AFFINITY'), lbSvcFlags.affinity);
  t.is(define('EP_LB_F_DSR'), lbSvcFlags.dsr);
  t.is(define('EP_LB_F_FULLNAT'), lbSvcFlags.fullnat);
  t.deepEqual(lbSizes, { vipKey: 24, svc: 20, backend: 40, block: 64 }, 'the sizes LB.md gives (layout 5: a backend carries the node\'s address towards it and its MTU)');
});
