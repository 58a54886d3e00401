// The classification memo (bpf/README.md, "The classification memo"), through BPF_PROG_TEST_RUN on
// real kernel maps: what a tuple classified to is remembered per generation and epoch, so after
// every apply (each into the generation whose tables the one before last wrote) the same tuple
// gets the new rule set's verdict and its rule counts it; a generation
// whose rules name prefix lists (changed in place, under the same epoch) remembers nothing.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, XDP_DROP, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());

let roots = 0;
const freshRoot = (): string => {
  const dir = join(bpffs.path, `memo-${roots++}`);
  mkdirSync(dir);
  return dir;
};

/** A UDP datagram to 192.0.2.1:53 from `src`. */
const dns = (src: string): Uint8Array => buildFrame({ src, dst: '192.0.2.1', protocol: 'udp', srcPort: 40_000, dstPort: 53 });

/** edge_xdp's verdict on `frame`, as 'pass' or 'drop'. */
function xdp(datapath: EbpfDatapath, frame: Uint8Array): string {
  const retval = datapath.xdpProgram.testRun({ data: frame }).retval;
  if (retval !== XDP_PASS && retval !== XDP_DROP) throw new Error(`edge_xdp returned ${retval}`);
  return retval === XDP_PASS ? 'pass' : 'drop';
}

/** Live entries (a non-zero epoch) of the programs' private ep_cls_memo, over every CPU, through bpftool. */
function memoEntries(datapath: EbpfDatapath): number {
  const prog = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(datapath.xdpProgram.id)], { encoding: 'utf8' })) as { map_ids: number[] };
  for (const id of prog.map_ids) {
    const map = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'id', String(id)], { encoding: 'utf8' })) as { name: string };
    if (map.name !== 'ep_cls_memo') continue;
    // Each CPU's value as its bytes ("0x.."): struct ep_cls_memo's first four are the epoch.
    const dump = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'dump', 'id', String(id)], { encoding: 'utf8', maxBuffer: 1 << 28 })) as { values: { value: string[] }[] }[];
    return dump.reduce((n, element) => n + element.values.filter((v) => v.value.slice(0, 4).some((byte) => Number(byte) !== 0)).length, 0);
  }
  throw new Error('edge_xdp has no map ep_cls_memo');
}

const udp53 = (id: number, srcCidrs: string[], action: 'allow' | 'deny') => ({ id, srcCidrs, dstCidrs: [], protocol: 'udp' as const, dstPorts: [{ from: 53, to: 53 }], action });
/** 10.0.0.1 allowed, everything else denied. */
const A: RuleSetSpec = { rules: [udp53(1, ['10.0.0.1/32'], 'allow')], defaultAction: 'deny' };
/** Another rule set, which denies both sources. */
const B: RuleSetSpec = { rules: [{ ...udp53(2, [], 'allow'), protocol: 'tcp' }], defaultAction: 'deny' };
/** 10.0.0.1 denied, 10.0.0.2 allowed. */
const C: RuleSetSpec = { rules: [udp53(3, ['10.0.0.1/32'], 'deny'), udp53(4, [], 'allow')], defaultAction: 'deny' };

test('memo - the same tuple gets each applied rule set\'s verdict, whichever generation and epoch that lands in, and its rule counts every packet', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  const steps: { set: RuleSetSpec; name: string; one: string; two: string }[] = [
    { set: A, name: 'A', one: 'pass', two: 'drop' },
    { set: B, name: 'B', one: 'drop', two: 'drop' },
    // C rewrites the generation A was in, A again B's, C again A's.
    { set: C, name: 'C', one: 'drop', two: 'pass' },
    { set: A, name: 'A again', one: 'pass', two: 'drop' },
    { set: C, name: 'C again', one: 'drop', two: 'pass' },
  ];
  const modes: string[] = [];
  for (const step of steps) {
    const applied = await datapath.apply(step.set);
    modes.push(`${step.name}: ${applied.mode} generation ${applied.generation} epoch ${datapath.epoch}`);
    const before = datapath.readCounters().rules;
    for (let i = 0; i < 3; i++) {
      t.is(xdp(datapath, dns('10.0.0.1')), step.one, `${step.name}: 10.0.0.1, packet ${i}`);
      t.is(xdp(datapath, dns('10.0.0.2')), step.two, `${step.name}: 10.0.0.2, packet ${i}`);
    }
    const after = datapath.readCounters().rules;
    const counted = (id: number): number => (after.get(id)?.packets ?? 0) - (before.get(id)?.packets ?? 0);
    const firstRule = step.set.rules[0]!;
    if (firstRule.srcCidrs.includes('10.0.0.1/32')) t.is(counted(firstRule.id), 3, `${step.name}: rule ${firstRule.id} counts the three packets of 10.0.0.1`);
    // The memo holds what the programs classified (so the verdicts above came from it).
    t.true(memoEntries(datapath) > 0, `${step.name}: memo entries`);
  }
  t.log(modes.join('; '));
  // Each apply went into the generation the one before last used, rewritten with other tables:
  // a memo kept by generation alone would have answered A's verdicts under C.
  t.deepEqual(modes.map((m) => m.split(' generation ')[1]?.split(' ')[0]), ['1', '0', '1', '0', '1']);
});

test('memo - a generation whose rules name prefix lists remembers nothing: a list changed in place (same epoch) decides the next packet', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  const withList = (bad: string[]): RuleSetSpec => ({
    rules: [{ id: 7, srcCidrs: [], srcLists: ['bad'], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: 53, to: 53 }], action: 'deny' }],
    defaultAction: 'allow',
    lists: { bad },
  });
  await datapath.apply(withList(['198.51.100.0/24']));
  const epoch = datapath.epoch;
  for (let i = 0; i < 3; i++) t.is(xdp(datapath, dns('10.0.0.1')), 'pass', `before, packet ${i}`);
  t.is(memoEntries(datapath), 0, 'nothing remembered under a generation that names lists');
  await datapath.apply(withList(['198.51.100.0/24', '10.0.0.1/32']));
  t.is(datapath.epoch, epoch, 'the list changed in place, the generation and its epoch kept');
  t.is(xdp(datapath, dns('10.0.0.1')), 'drop', 'the next packet of the same tuple meets the changed list');
  t.is(xdp(datapath, dns('10.0.0.2')), 'pass');
});
