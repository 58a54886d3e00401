// Blocklists of a million prefixes, side by side in one run: edgeplane's hashed set and LPM tries
// (built beside the live ones and switched in by one write; the agent's way: the permanent IPv4
// entries of the most common prefix lengths in the hashed set, written through mmap, the rest in
// the tries), the same with every entry in the tries (edgeplane-trie, the way before the hashed
// set), ipset hash:net (loaded with `ipset restore`, then swapped in with `ipset swap`) and an
// nftables interval set (one `nft -f` transaction).
//
//   1. load: 1,000,000 prefixes (3/4 /32s, 1/4 /24s) enforced atomically; edgeplane's figure is
//      packing (the agent's work: text straight into packed keys or buckets) + the kernel writes
//      + the switch, each also given alone, in wall time and in CPU time of the process (user and
//      system: on a shared machine the CPU times say what the work costs, the wall times what
//      the contention added). The prefixes are strings as a decoded snapshot holds them (flat),
//      in the list's order, and once more shuffled (the kernel's trie inserts an ordered list
//      fastest; the agent orders a shuffled one first).
//   2. one entry added to the loaded list: the log entry's size (a signed format 3 entry with one
//      PrefixListChange) and the time until the datapath enforces it (edgeplane: an LPM update in
//      place; ipset add; nft add element).
//   3. per-packet cost of edge_xdp with BPF_PROG_TEST_RUN with no list (not looked up:
//      bpf/README.md, "An empty family costs one read"), 10 entries and 1,000,000 entries
//      (hashed, and all in the tries; one datapath each, interleaved), for a packet in no list whose source is
//      far from every entry (the trie walk stops at the root; the hashed set's prefilter word
//      says "nothing here"), one in no list whose source sits among the entries (16.0.0.3: the
//      walk goes to the bottom of the trie, the worst case; the prefilter sends it to the /32s'
//      bucket), and one from a listed source (dropped).
//
// ipset and nft run in a network namespace the bench creates and always removes. Asserts nothing;
// prints a table and one JSON line.
//   node --import=tsx bench/blocklist.ts [--quick]
import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlocklistChange, LOG_FORMAT_BLOCKLIST, LogEntry, parseCidr, PrefixList, PrefixListUse, signLogEntry, SignedLogEntry, type Cidr } from '@edgeplane/proto';
import { BlocklistPacker, buildFrame, EbpfDatapath } from '@edgeplane/node-agent';

const quick = process.argv.includes('--quick');
const N = 1_000_000;
const reps = quick ? 1 : 3;
const repeat = quick ? 200_000 : 1_000_000;
const tag = process.pid.toString(36);
const ns = `epblk-${tag}`;
const work = mkdtempSync(join(tmpdir(), 'ep-bench-blk-'));

function prefix(i: number): string {
  if (i % 4 === 3) {
    const n = (100 << 16) + i;
    return `${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}.0/24`;
  }
  const a = (16 << 24) + i;
  return `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}/32`;
}
const ms = (from: bigint): number => Number(process.hrtime.bigint() - from) / 1e6;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const inNs = (cmd: string, args: string[], input?: string): void => {
  const r = spawnSync('ip', ['netns', 'exec', ns, cmd, ...args], { input, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.toString().slice(0, 400)}`);
};

const prefixes = Array.from({ length: N }, (_, i) => prefix(i));
// As the agent holds them: decoded from the wire (flat strings, not the concatenations above).
const decoded = (list: string[]): string[] => PrefixList.decode(PrefixList.encode({ metadata: undefined, spec: { nodeSelector: undefined, use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE, prefixes: list, description: '' } }).finish()).spec!.prefixes;
const shuffled = [...prefixes];
for (let i = shuffled.length - 1; i > 0; i--) {
  const j = (i * 2_654_435_761) % (i + 1); // a fixed permutation: runs compare
  [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
}
const orders = { listed: decoded(prefixes), shuffled: decoded(shuffled) };
const cpuMs = (from: NodeJS.CpuUsage): { user: number; sys: number } => {
  const u = process.cpuUsage(from);
  return { user: u.user / 1000, sys: u.system / 1000 };
};
// nft builds its interval tree in userspace first and is the slowest by far: --quick gives it a
// tenth of the list (said in the output) so a quick run ends in minutes.
const nftN = quick ? N / 10 : N;
const progress = (what: string, value: unknown): void => void process.stderr.write(`${new Date().toISOString()} ${what} ${JSON.stringify(value)}\n`);
const results: Record<string, Record<string, number>> = { edgeplane: {}, ipset: {}, nft: {} };
const bpffs = mkdtempSync('/run/ep-bench-blk-bpf-');
execFileSync('mount', ['-t', 'bpf', 'bpf', bpffs]);
execFileSync('ip', ['netns', 'add', ns]);
try {
  // ---- edgeplane ----
  mkdirSync(`${bpffs}/dp`);
  const dp = await EbpfDatapath.open({ pinRoot: `${bpffs}/dp` });
  try {
    await dp.apply({ rules: [{ id: 1, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 22, to: 22 }], action: 'deny' }], defaultAction: 'allow' });
    const miss = buildFrame({ src: '192.0.2.1', dst: '198.51.100.1', protocol: 'udp', dstPort: 53 });
    const near = buildFrame({ src: '16.0.0.3', dst: '198.51.100.1', protocol: 'udp', dstPort: 53 }); // between prefix(2) and prefix(4), in no list
    const hit = buildFrame({ src: '16.7.161.32', dst: '198.51.100.1', protocol: 'udp', dstPort: 53 }); // prefix(500_000)
    const perPacket = (frame: Uint8Array): number => median(Array.from({ length: 3 }, () => dp.xdpProgram.testRun({ data: frame, repeat }).durationNs));
    const packed = (list: readonly string[], hashed: boolean): ReturnType<BlocklistPacker['finish']> => {
      const packer = new BlocklistPacker({ v4: list.length, hashed });
      for (const p of list) packer.addText(p);
      return packer.finish();
    };
    // Per packet, interleaved: one datapath per list (no list; the issue's "the same at 1,000,000
    // entries as at 10": the list's first ten prefixes, the near source among them; the million),
    // each hashed and all in the tries, measured in turn, round after round, so the machine's
    // drift between runs (40 % here) falls on all of them alike; medians of the rounds.
    const lists: [string, ReturnType<BlocklistPacker['finish']> | undefined][] = [
      ['0', undefined],
      ['Ten', packed(orders.listed.slice(0, 10), true)],
      ['TrieTen', packed(orders.listed.slice(0, 10), false)],
      ['Million', packed(orders.listed, true)],
      ['TrieMillion', packed(orders.listed, false)],
    ];
    const side: { name: string; dp: EbpfDatapath; ns: { miss: number[]; near: number[] } }[] = [];
    try {
      for (const [name, spec] of lists) {
        mkdirSync(`${bpffs}/pp${name}`);
        const one = await EbpfDatapath.open({ pinRoot: `${bpffs}/pp${name}` });
        side.push({ name, dp: one, ns: { miss: [], near: [] } });
        await one.apply({ rules: [{ id: 1, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 22, to: 22 }], action: 'deny' }], defaultAction: 'allow' });
        if (spec !== undefined) one.blocklist.load(spec);
      }
      for (let round = 0; round < (quick ? 7 : 15); round++) {
        for (const { dp: one, ns } of side) {
          ns.miss.push(one.xdpProgram.testRun({ data: miss, repeat }).durationNs);
          ns.near.push(one.xdpProgram.testRun({ data: near, repeat }).durationNs);
        }
      }
      for (const { name, ns } of side) {
        results.edgeplane![`nsPerPacket${name}`] = median(ns.miss);
        results.edgeplane![`nsPerPacket${name}Near`] = median(ns.near);
      }
    } finally {
      for (const { dp: one } of side) one.close();
    }
    for (const [order, list] of Object.entries({ ...orders, trie: orders.listed })) {
      const pack: number[] = [];
      const write: number[] = [];
      const total: number[] = [];
      const packCpu: number[] = [];
      const writeUser: number[] = [];
      const writeSys: number[] = [];
      for (let r = 0; r < reps; r++) {
        const t0 = process.hrtime.bigint();
        const c0 = process.cpuUsage();
        const spec = packed(list, order !== 'trie');
        pack.push(ms(t0));
        packCpu.push(cpuMs(c0).user);
        const t1 = process.hrtime.bigint();
        const c1 = process.cpuUsage();
        dp.blocklist.load(spec);
        write.push(ms(t1));
        const w = cpuMs(c1);
        writeUser.push(w.user);
        writeSys.push(w.sys);
        total.push(ms(t0));
      }
      const key = order === 'listed' ? '' : order === 'trie' ? 'Trie' : 'Shuffled';
      results.edgeplane![`loadMs${key}`] = median(total);
      results.edgeplane![`packMs${key}`] = median(pack);
      results.edgeplane![`packCpuMs${key}`] = median(packCpu);
      results.edgeplane![`writeAndSwitchMs${key}`] = median(write);
      results.edgeplane![`writeUserCpuMs${key}`] = median(writeUser);
      results.edgeplane![`writeSysCpuMs${key}`] = median(writeSys);
    }
    dp.blocklist.load(packed(orders.listed, true));
    results.edgeplane!.nsPerPacketMillionHit = perPacket(hit);
    if (dp.xdpProgram.testRun({ data: hit }).retval !== 1) throw new Error('a listed source was not dropped');
    // The same million named by a rule (bpf/README.md, "Prefix lists in rules") instead of the
    // blocklist: the rule denies TCP 443 from the list, so these UDP frames go through the list
    // lookup and the vector walk and pass. Against the same rule naming an empty list.
    dp.blocklist.load(new BlocklistPacker().finish());
    const named = (list: readonly string[]): Promise<unknown> =>
      dp.apply({ rules: [{ id: 1, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 22, to: 22 }], action: 'deny' }, { id: 2, srcCidrs: [], dstCidrs: [], srcLists: ['feed'], protocol: 'tcp', dstPorts: [{ from: 443, to: 443 }], action: 'deny' }], defaultAction: 'allow', lists: { feed: list } });
    await named([]);
    results.edgeplane!.nsPerPacketRuleListEmpty = perPacket(miss);
    results.edgeplane!.nsPerPacketRuleListEmptyNear = perPacket(near);
    const t2 = process.hrtime.bigint();
    await named(orders.listed);
    results.edgeplane!.ruleListLoadMs = ms(t2);
    results.edgeplane!.nsPerPacketRuleListMillionMiss = perPacket(miss);
    results.edgeplane!.nsPerPacketRuleListMillionNear = perPacket(near);
    results.edgeplane!.nsPerPacketRuleListMillionHit = perPacket(hit);
    const hit443 = buildFrame({ src: '16.7.161.32', dst: '198.51.100.1', protocol: 'tcp', dstPort: 443 });
    if (dp.xdpProgram.testRun({ data: hit443 }).retval !== 1 || dp.xdpProgram.testRun({ data: hit }).retval !== 2) throw new Error('the rule naming the list did not match as written');
    // One entry added: the log entry a node receives, and the time to enforce it.
    const { privateKey } = generateKeyPairSync('ed25519');
    const change = BlocklistChange.fromPartial({
      prefixLists: [{ metadata: { name: 'threat-feed', resourceVersion: 1_000_021n, createRevision: 1_000_001n, createTime: new Date(), updateTime: new Date() }, spec: { use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE, nodeSelector: { matchLabels: { role: 'edge' } } }, baseResourceVersion: 1_000_020n, add: ['203.0.113.0/24'] }],
    });
    const entry = LogEntry.fromPartial({ revision: 1_000_021n, previousHash: Buffer.alloc(32), createTime: new Date(), controllerId: 'controller-0', fleetId: 'default', blocklistChange: change, traceContext: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', tracestate: '' } });
    results.edgeplane!.entryBytes = SignedLogEntry.encode(signLogEntry(entry, privateKey, LOG_FORMAT_BLOCKLIST)).finish().length;
    const addMs: number[] = [];
    for (let r = 0; r < 5; r++) {
      const cidr = parseCidr(`203.0.${113 + r}.0/24`) as Cidr;
      const t0 = process.hrtime.bigint();
      if (!dp.blocklist.add([{ cidr, expiresTaiNs: 0n, flags: 0 }])) throw new Error('no room');
      addMs.push(ms(t0));
    }
    results.edgeplane!.addOneMs = median(addMs);
    progress('edgeplane', results.edgeplane);
  } finally {
    dp.close();
  }

  // ---- ipset hash:net, restored beside and swapped in ----
  const ipsetScript = ['create bl-next hash:net family inet hashsize 1048576 maxelem 2000000', ...prefixes.map((p) => `add bl-next ${p}`)].join('\n') + '\n';
  inNs('ipset', ['create', 'bl', 'hash:net', 'family', 'inet', 'maxelem', '2000000']);
  const ipsetLoad: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    inNs('ipset', ['restore'], ipsetScript);
    inNs('ipset', ['swap', 'bl-next', 'bl']);
    ipsetLoad.push(ms(t0));
    inNs('ipset', ['destroy', 'bl-next']);
  }
  results.ipset!.loadMs = median(ipsetLoad);
  const ipsetAdd: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    inNs('ipset', ['add', 'bl', `203.0.${113 + r}.0/24`]);
    ipsetAdd.push(ms(t0));
  }
  results.ipset!.addOneMs = median(ipsetAdd);
  progress('ipset', results.ipset);

  // ---- nftables interval set, one transaction ----
  const nftFile = join(work, 'bl.nft');
  writeFileSync(nftFile, `table inet epbl {\n  set bl { type ipv4_addr; flags interval; elements = { ${prefixes.slice(0, nftN).join(', ')} }; }\n  chain input { type filter hook input priority 0; ip saddr @bl drop; }\n}\n`);
  const nftLoad: number[] = [];
  for (let r = 0; r < reps; r++) {
    spawnSync('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'epbl']);
    const t0 = process.hrtime.bigint();
    inNs('nft', ['-f', nftFile]);
    nftLoad.push(ms(t0));
  }
  results.nft!.loadMs = median(nftLoad);
  const nftAdd: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    inNs('nft', ['add', 'element', 'inet', 'epbl', 'bl', `{ 203.0.${113 + r}.0/24 }`]);
    nftAdd.push(ms(t0));
  }
  results.nft!.addOneMs = median(nftAdd);
  results.nft!.prefixes = nftN;
  progress('nft', results.nft);
} finally {
  spawnSync('ip', ['netns', 'del', ns]);
  spawnSync('umount', [bpffs]);
  rmSync(bpffs, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
}

const e = results.edgeplane!;
const f = (x: number | undefined, d = 1): string => (x === undefined ? '-' : x.toFixed(d));
console.log(`blocklist bench${quick ? ' (--quick)' : ''}: ${N} prefixes, reps ${reps}, BPF_PROG_TEST_RUN repeat ${repeat}`);
console.log(`contender   load (ms)     add one (ms)   (nft loads ${nftN} prefixes${nftN < N ? ' in --quick' : ''})`);
for (const name of ['edgeplane', 'ipset', 'nft'] as const) console.log(`${name.padEnd(14)}  ${f(results[name]!.loadMs).padStart(12)}  ${f(results[name]!.addOneMs, 3).padStart(12)}`);
console.log(`${'edgeplane-trie'.padEnd(14)}  ${f(e.loadMsTrie).padStart(12)}  ${'-'.padStart(12)}`);
console.log(`edgeplane load = pack ${f(e.packMs)} ms (agent; CPU ${f(e.packCpuMs)} ms) + write and switch ${f(e.writeAndSwitchMs)} ms (CPU: user ${f(e.writeUserCpuMs)} + kernel ${f(e.writeSysCpuMs)} ms); one-prefix log entry ${e.entryBytes} bytes signed`);
console.log(`edgeplane-trie load (every entry in the tries) = ${f(e.loadMsTrie)} ms = pack ${f(e.packMsTrie)} ms (CPU ${f(e.packCpuMsTrie)} ms) + write and switch ${f(e.writeAndSwitchMsTrie)} ms (CPU: user ${f(e.writeUserCpuMsTrie)} + kernel ${f(e.writeSysCpuMsTrie)} ms)`);
console.log(`edgeplane load, shuffled list = ${f(e.loadMsShuffled)} ms = pack ${f(e.packMsShuffled)} ms (CPU ${f(e.packCpuMsShuffled)} ms) + write and switch ${f(e.writeAndSwitchMsShuffled)} ms (CPU: user ${f(e.writeUserCpuMsShuffled)} + kernel ${f(e.writeSysCpuMsShuffled)} ms)`);
const pct = (x: number | undefined, base: number | undefined): string => f(((x! - base!) / base!) * 100);
console.log(`edge_xdp per packet (ns, interleaved medians), source far from the list / among its entries: no list (not looked up) ${f(e.nsPerPacket0)} / ${f(e.nsPerPacket0Near)}; 10 entries ${f(e.nsPerPacketTen)} / ${f(e.nsPerPacketTenNear)}; 1M entries ${f(e.nsPerPacketMillion)} (${pct(e.nsPerPacketMillion, e.nsPerPacket0)} % over no list, ${pct(e.nsPerPacketMillion, e.nsPerPacketTen)} % over 10) / ${f(e.nsPerPacketMillionNear)} (${pct(e.nsPerPacketMillionNear, e.nsPerPacket0Near)} %, ${pct(e.nsPerPacketMillionNear, e.nsPerPacketTenNear)} %); listed (dropped first) ${f(e.nsPerPacketMillionHit)}`);
console.log(`edge_xdp per packet (ns), every entry in the tries (edgeplane-trie): 10 entries ${f(e.nsPerPacketTrieTen)} / ${f(e.nsPerPacketTrieTenNear)}; 1M entries ${f(e.nsPerPacketTrieMillion)} (${pct(e.nsPerPacketTrieMillion, e.nsPerPacket0)} % over no list, ${pct(e.nsPerPacketTrieMillion, e.nsPerPacketTrieTen)} % over 10) / ${f(e.nsPerPacketTrieMillionNear)} (${pct(e.nsPerPacketTrieMillionNear, e.nsPerPacket0Near)} %, ${pct(e.nsPerPacketTrieMillionNear, e.nsPerPacketTrieTenNear)} %)`);
console.log(`edge_xdp per packet (ns), a rule naming the list (source far / among its entries / in it): empty list ${f(e.nsPerPacketRuleListEmpty)} / ${f(e.nsPerPacketRuleListEmptyNear)}; 1M entries ${f(e.nsPerPacketRuleListMillionMiss)} (${pct(e.nsPerPacketRuleListMillionMiss, e.nsPerPacketRuleListEmpty)} %) / ${f(e.nsPerPacketRuleListMillionNear)} (${pct(e.nsPerPacketRuleListMillionNear, e.nsPerPacketRuleListEmptyNear)} %) / ${f(e.nsPerPacketRuleListMillionHit)}; no list named ${f(e.nsPerPacket0)}; apply with the million ${f(e.ruleListLoadMs)} ms`);
console.log(JSON.stringify({ bench: 'blocklist', quick, prefixes: N, reps, repeat, results }));
