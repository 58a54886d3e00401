// BlocklistSync over the real eBPF datapath (BPF_PROG_TEST_RUN probes): a 5 s block stops
// matching at its expiry by the kernel's clock, an agent restarted on the pinned datapath keeps
// unexpired blocks and drops expired ones, a small change is written in place, and a node only
// enforces what selects it. Serial: opening a datapath holds the event loop, which would stretch
// the probes' timing.
import { mkdirSync } from 'node:fs';
import test from 'ava';
import { applyPrefixListChange, formatAddress, formatCidr, PrefixListUse, Snapshot, type Block, type Cidr, type PrefixList } from '@edgeplane/proto';
import { BlocklistSync } from '../src/agent/blocklist-sync.js';
import type { BlocklistPacker } from '../src/datapath/blocklist.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, XDP_DROP, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());
let next = 0;
const freshRoot = (): string => {
  const dir = `${bpffs.path}/sync${next++}`;
  mkdirSync(dir);
  return dir;
};
const allowAll: RuleSetSpec = { rules: [], defaultAction: 'allow' };
const ams1 = { site: 'ams1' };

const xdp = (dp: EbpfDatapath, src: string): number => dp.xdpProgram.testRun({ data: buildFrame({ src, dst: '192.0.2.1', protocol: 'udp', dstPort: 53 }) }).retval;

function block(id: string, prefixes: string[], expireMs: number, site = 'ams1'): Block {
  return { id, prefixes, nodeSelector: { matchLabels: { site }, matchExpressions: [] }, reason: 'test', createdBy: 'operator/ci', createTime: new Date(expireMs - 3_600_000), expireTime: new Date(expireMs), liftTime: undefined, liftedBy: '', resourceVersion: 1n };
}
function list(name: string, prefixes: string[], use = PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE): PrefixList {
  return { metadata: { name, labels: {}, annotations: {}, resourceVersion: 1n, createRevision: 1n, createTime: undefined, updateTime: undefined }, spec: { nodeSelector: undefined, use, prefixes, description: '' } };
}
const snapshot = (prefixLists: PrefixList[], blocks: Block[]): Snapshot => Snapshot.fromPartial({ revision: 5n, prefixLists, blocks });

test.serial('blocklist sync - a 5 s block stops matching at 5 s +- 1 s by the kernel clock, with no further write', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const sync = new BlocklistSync(datapath.blocklist);
  t.teardown(() => sync.close());
  const expireMs = Date.now() + 5000;
  sync.sync(snapshot([], [block('blk-1', ['203.0.113.0/24'], expireMs)]), ams1);
  t.is(xdp(datapath, '203.0.113.7'), XDP_DROP);
  // Probe every 50 ms until the block stops matching (or 8 s have passed).
  let stoppedAt: number | undefined;
  const deadline = Date.now() + 8000;
  while (Date.now() < deadline) {
    if (xdp(datapath, '203.0.113.7') === XDP_PASS) {
      stoppedAt = Date.now();
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  t.not(stoppedAt, undefined, 'the block stopped matching');
  const offByMs = stoppedAt! - expireMs;
  t.log(`stopped ${offByMs} ms from its expiry`);
  t.true(Math.abs(offByMs) <= 1000, `stopped ${offByMs} ms from its expiry`);
  t.true(datapath.blocklist.readCounters().expiredSeen.packets >= 1);
});

test.serial('blocklist sync - an agent restarted on the pinned datapath keeps unexpired blocks and lists and drops expired blocks', async (t) => {
  const root = freshRoot();
  const first = await EbpfDatapath.open({ pinRoot: root });
  await first.apply(allowAll);
  const now = Date.now();
  const intent = snapshot([list('feed', ['198.51.100.0/24'])], [block('blk-1', ['203.0.113.0/24'], now + 3_600_000), block('blk-2', ['192.0.2.0/24'], now + 1500)]);
  const before = new BlocklistSync(first.blocklist);
  t.is(before.sync(intent, ams1).entries, 3);
  t.is(xdp(first, '192.0.2.1'), XDP_DROP);
  before.close();
  first.close();
  // The agent is down while blk-2 expires; the pinned tries stop matching it by themselves.
  await new Promise((r) => setTimeout(r, 2000));
  const second = await EbpfDatapath.open({ pinRoot: root });
  t.teardown(() => second.close());
  t.true(second.adopted);
  t.is(xdp(second, '192.0.2.1'), XDP_PASS, 'expired while the agent was down');
  t.is(xdp(second, '203.0.113.1'), XDP_DROP);
  const after = new BlocklistSync(second.blocklist);
  t.teardown(() => after.close());
  const result = after.sync(intent, ams1);
  t.is(result.mode, 'loaded', 'what the tries hold is unknown to a new process: loaded whole');
  t.is(result.entries, 2, 'the expired block is dropped');
  t.is(second.blocklist.size.v4, 2);
  t.is(xdp(second, '203.0.113.1'), XDP_DROP);
  t.is(xdp(second, '198.51.100.9'), XDP_DROP);
  t.is(xdp(second, '192.0.2.1'), XDP_PASS);
});

test.serial('blocklist sync - a small change is written in place; selection by labels and use; a lifted block stops at once', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  await datapath.apply(allowAll);
  const sync = new BlocklistSync(datapath.blocklist);
  t.teardown(() => sync.close());
  const later = Date.now() + 3_600_000;
  const feed = list('feed', Array.from({ length: 5000 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`));
  const held = list('reference-only', ['100.64.0.0/10'], PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED);
  const other = block('blk-9', ['192.0.2.0/24'], later, 'fra1');
  t.is(sync.sync(snapshot([feed, held], [other]), ams1).mode, 'loaded');
  const generation = datapath.blocklist.generation;
  t.is(xdp(datapath, '10.3.7.1'), XDP_DROP);
  t.is(xdp(datapath, '100.64.1.1'), XDP_PASS, 'a list without use deny-source drops nothing');
  t.is(xdp(datapath, '192.0.2.1'), XDP_PASS, 'a block for another site');
  const changed = list('feed', [...feed.spec!.prefixes.filter((p) => p !== '10.3.7.0/24'), '203.0.113.0/24']);
  const blk = block('blk-10', ['198.51.100.0/24'], later);
  const result = sync.sync(snapshot([changed, held], [other, blk]), ams1);
  t.deepEqual([result.mode, result.added, result.removed], ['updated', 2, 1]);
  t.is(datapath.blocklist.generation, generation, 'no switch');
  t.is(xdp(datapath, '10.3.7.1'), XDP_PASS);
  t.is(xdp(datapath, '203.0.113.1'), XDP_DROP);
  t.is(xdp(datapath, '198.51.100.1'), XDP_DROP);
  t.is(sync.sync(snapshot([changed, held], [other, blk]), ams1).mode, 'unchanged');
  // Lifted: a new record of the block with its lift time.
  t.is(sync.sync(snapshot([changed, held], [other, { ...blk, liftTime: new Date() }]), ams1).removed, 1);
  t.is(xdp(datapath, '198.51.100.1'), XDP_PASS);
  // The same prefix in the list and in a block: lifting the block keeps the list's entry.
  sync.sync(snapshot([changed], [block('blk-11', ['203.0.113.0/24'], later)]), ams1);
  sync.sync(snapshot([changed], []), ams1);
  t.is(xdp(datapath, '203.0.113.1'), XDP_DROP);
});

// A writer that records what it is asked to write, and holds the result as a set of prefix -> expiry.
class RecordingWriter {
  held = new Map<string, bigint>();
  loads = 0;
  writes: { add: string[]; remove: string[] }[] = [];
  load(spec: ReturnType<BlocklistPacker['finish']>): { v4: number; v6: number } {
    this.loads++;
    this.held = new Map();
    for (const [family, packed] of [[4, spec.v4], [6, spec.v6]] as const) {
      const keySize = family === 4 ? 8 : 20;
      for (let i = 0; i < packed.count; i++) {
        const key = packed.keys.subarray(i * keySize, (i + 1) * keySize);
        const length = new DataView(key.buffer, key.byteOffset).getUint32(0, true);
        const text = `${formatAddress(family, key.subarray(4))}/${length}`;
        this.held.set(text, new DataView(packed.values.buffer, packed.values.byteOffset).getBigUint64(i * 16, true));
      }
    }
    const hashed = spec.v4Hashed;
    for (let k = 0; k < (hashed?.entries.length ?? 0); k += 2) {
      const address = hashed!.entries[k] as number;
      this.held.set(`${formatAddress(4, new Uint8Array([address >>> 24, (address >>> 16) & 255, (address >>> 8) & 255, address & 255]))}/${hashed!.entries[k + 1]}`, 0n);
    }
    const v6 = [...this.held.keys()].filter((p) => p.includes(':')).length;
    return { v4: this.held.size - v6, v6 };
  }
  add(entries: readonly { cidr: Cidr; expiresTaiNs: bigint }[]): boolean {
    this.writes.push({ add: entries.map((e) => formatCidr(e.cidr)), remove: [] });
    for (const e of entries) this.held.set(formatCidr(e.cidr), e.expiresTaiNs);
    return true;
  }
  remove(prefixes: readonly Cidr[]): number {
    this.writes.push({ add: [], remove: prefixes.map(formatCidr) });
    for (const c of prefixes) this.held.delete(formatCidr(c));
    return prefixes.length;
  }
  readClock(): { taiNs: bigint; utcNs: bigint } {
    return { taiNs: 0n, utcNs: 0n };
  }
}

test('blocklist sync - a list the log changes by a few prefixes costs those prefixes: shared prefixes, lists joining and leaving, blocks under lists', (t) => {
  const writer = new RecordingWriter();
  const sync = new BlocklistSync(writer, { now: () => 1_000_000 });
  t.teardown(() => sync.close());
  const big = Array.from({ length: 50_000 }, (_, i) => `10.${i >> 8}.${i & 0xff}.0/24`);
  let feed = list('feed', big);
  const other = list('other', ['10.0.0.0/24', '192.0.2.0/24']);
  // The snapshot an agent gets holds the chain's list objects as they are (fromPartial copies them).
  const held = (prefixLists: PrefixList[], blocks: Block[]): Snapshot => ({ ...snapshot([], blocks), prefixLists });
  const change = (base: PrefixList, add: string[], remove: string[]): PrefixList => applyPrefixListChange(base, { metadata: { ...base.metadata!, resourceVersion: base.metadata!.resourceVersion + 1n }, spec: { ...base.spec!, prefixes: [] }, baseResourceVersion: base.metadata!.resourceVersion, add, remove, delete: false });
  const blk = block('blk-1', ['10.0.1.0/24', '198.51.100.0/24'], 5_000_000);
  t.is(sync.sync(held([feed, other], [blk]), ams1).mode, 'loaded');
  t.is(writer.held.size, 50_002);
  t.is(writer.held.get('10.0.1.0/24'), 0n, 'a list beats a block of the same prefix');
  writer.writes = [];
  // One added, one removed from the big list: written as exactly that.
  feed = change(feed, ['203.0.113.0/24'], ['10.0.5.0/24']);
  t.like(sync.sync(held([feed, other], [blk]), ams1), { mode: 'updated', added: 1, removed: 1 });
  t.deepEqual(writer.writes, [{ add: [], remove: ['10.0.5.0/24'] }, { add: ['203.0.113.0/24'], remove: [] }]);
  // A prefix in both lists leaves one of them: still held. A prefix under a block leaves the list: the block's expiry takes over.
  writer.writes = [];
  feed = change(feed, [], ['10.0.0.0/24', '10.0.1.0/24']);
  t.like(sync.sync(held([feed, other], [blk]), ams1), { mode: 'updated' });
  t.is(writer.held.get('10.0.0.0/24'), 0n, 'still in the other list');
  t.is(writer.held.get('10.0.1.0/24'), 5_000_000n * 1_000_000n, 'now the block');
  // Two revisions at once (the agent coalesced them): both changes, composed.
  const skipped = change(feed, ['203.0.114.0/24'], []);
  feed = change(skipped, ['203.0.115.0/24'], ['203.0.114.0/24']);
  writer.writes = [];
  t.like(sync.sync(held([feed, other], [blk]), ams1), { mode: 'updated', added: 1, removed: 0 });
  t.deepEqual(writer.writes.flatMap((w) => w.add), ['203.0.115.0/24']);
  // The other list stops selecting the node: its prefixes go, the shared one stays only if feed has it.
  writer.writes = [];
  t.like(sync.sync(held([feed], [blk]), ams1), { mode: 'updated' });
  t.false(writer.held.has('192.0.2.0/24'));
  t.false(writer.held.has('10.0.0.0/24'), 'in neither list now');
  // Whatever path it took, the tries equal a fresh load of the same intent.
  const fresh = new RecordingWriter();
  const again = new BlocklistSync(fresh, { now: () => 1_000_000 });
  t.teardown(() => again.close());
  again.sync(held([feed], [blk]), ams1);
  t.deepEqual([...writer.held].sort(), [...fresh.held].sort());
  t.is(writer.loads, 1, 'no whole load after the first');
});

test('blocklist sync - a change larger than is written in place loads the whole set without a difference; the changes after it are in place again, shared prefixes and blocks kept', (t) => {
  const writer = new RecordingWriter();
  const sync = new BlocklistSync(writer, { now: () => 1_000_000, maxInPlace: 8 });
  t.teardown(() => sync.close());
  let feed = list('feed', Array.from({ length: 100 }, (_, i) => `10.0.${i}.0/24`));
  const other = list('other', ['10.0.0.0/24', '192.0.2.0/24']);
  const held = (prefixLists: PrefixList[], blocks: Block[]): Snapshot => ({ ...snapshot([], blocks), prefixLists });
  const change = (base: PrefixList, add: string[], remove: string[]): PrefixList => applyPrefixListChange(base, { metadata: { ...base.metadata!, resourceVersion: base.metadata!.resourceVersion + 1n }, spec: { ...base.spec!, prefixes: [] }, baseResourceVersion: base.metadata!.resourceVersion, add, remove, delete: false });
  const blk = block('blk-1', ['10.0.1.0/24', '198.51.100.0/24'], 5_000_000);
  t.like(sync.sync(held([feed, other], [blk]), ams1), { mode: 'loaded', entries: 102 });
  // Twenty added: more than 8, known from the change alone: loaded whole.
  feed = change(feed, Array.from({ length: 20 }, (_, i) => `10.1.${i}.0/24`), []);
  t.like(sync.sync(held([feed, other], [blk]), ams1), { mode: 'loaded', entries: 122 });
  t.is(writer.loads, 2);
  t.is(writer.held.get('10.1.19.0/24'), 0n);
  t.is(writer.held.get('198.51.100.0/24'), 5_000_000n * 1_000_000n, 'the block, with its expiry');
  t.is(writer.held.get('10.0.1.0/24'), 0n, 'a list beats a block of the same prefix');
  // In place again, on what the whole load held: a prefix in both lists leaves one, and stays.
  writer.writes = [];
  feed = change(feed, ['203.0.113.0/24'], ['10.0.0.0/24', '10.0.1.0/24']);
  t.like(sync.sync(held([feed, other], [blk]), ams1), { mode: 'updated', added: 2, removed: 0 });
  t.is(writer.loads, 2);
  t.is(writer.held.get('10.0.0.0/24'), 0n, 'still in the other list');
  t.is(writer.held.get('10.0.1.0/24'), 5_000_000n * 1_000_000n, 'now the block');
  t.is(writer.held.get('203.0.113.0/24'), 0n);
  t.is(writer.held.size, 123);
});

test('blocklist sync - a lone list with no block is changed from its change alone after a whole load; a block then joins on what the list holds by then', (t) => {
  const writer = new RecordingWriter();
  const sync = new BlocklistSync(writer, { now: () => 1_000_000 });
  t.teardown(() => sync.close());
  let feed = list('feed', Array.from({ length: 1000 }, (_, i) => `10.${i >> 8}.${i & 0xff}.0/24`));
  const held = (prefixLists: PrefixList[], blocks: Block[]): Snapshot => ({ ...snapshot([], blocks), prefixLists });
  const change = (base: PrefixList, add: string[], remove: string[]): PrefixList => applyPrefixListChange(base, { metadata: { ...base.metadata!, resourceVersion: base.metadata!.resourceVersion + 1n }, spec: { ...base.spec!, prefixes: [] }, baseResourceVersion: base.metadata!.resourceVersion, add, remove, delete: false });
  t.like(sync.sync(held([feed], []), ams1), { mode: 'loaded', entries: 1000 });
  for (let i = 0; i < 3; i++) {
    writer.writes = [];
    feed = change(feed, [`203.0.${113 + i}.0/24`], [`10.0.${i}.0/24`]);
    t.like(sync.sync(held([feed], []), ams1), { mode: 'updated', entries: 1000, added: 1, removed: 1 });
    t.deepEqual(writer.writes, [{ add: [], remove: [`10.0.${i}.0/24`] }, { add: [`203.0.${113 + i}.0/24`], remove: [] }]);
  }
  t.like(sync.sync(held([feed], []), ams1), { mode: 'unchanged', entries: 1000 });
  // A block over a prefix the list dropped and one it added: the difference is taken against
  // what the list holds now (the map made from it at this sync).
  writer.writes = [];
  const blk = block('blk-1', ['10.0.1.0/24', '203.0.114.0/24'], 5_000_000);
  t.like(sync.sync(held([feed], [blk]), ams1), { mode: 'updated', entries: 1001, added: 1, removed: 0 });
  t.deepEqual(writer.writes.flatMap((w) => w.add), ['10.0.1.0/24'], 'the list already holds 203.0.114.0/24');
  t.is(writer.loads, 1);
  t.is(writer.held.size, 1001);
});
