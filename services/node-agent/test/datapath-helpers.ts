// Shared by the datapath tests: a private bpffs, a seeded PRNG, random rule sets and frames
// aimed at them, verdict decoding, and a TypeScript model of the BPF table lookup.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { compileTables, genFlags, SCAN_ENTRIES, type TablesSpec } from '../src/datapath/compile-tables.js';
import { parseCidr } from '@edgeplane/proto';
import { buildFrame, buildNonIpFrame, type FrameSpec } from '../src/datapath/packet.js';
import type { PacketHeaders, RuleSetSpec, RuleSpec } from '../src/datapath/rule-set.js';
import { prng, seedFromEnv } from '../../../test/support/prng.js';

export { prng, seedFromEnv };

export const XDP_DROP = 1;
export const XDP_PASS = 2;
export const TC_ACT_OK = 0;
export const TC_ACT_SHOT = 2;

/** Mounts a fresh bpffs under /run; the returned function unmounts and removes it. */
export function mountBpffs(): { path: string; unmount: () => void } {
  const path = mkdtempSync('/run/edgeplane-test-bpf-');
  execFileSync('mount', ['-t', 'bpf', 'bpf', path]);
  return {
    path,
    unmount: () => {
      execFileSync('umount', [path]);
      rmdirSync(path);
    },
  };
}

const pick = <T>(rng: () => number, list: readonly T[]): T => list[Math.floor(rng() * list.length)] as T;
const int = (rng: () => number, lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));

// A small universe of addresses so prefixes overlap and nest and packets hit them.
const v4Bases = ['10.0.0.0', '10.1.0.0', '10.1.2.0', '192.168.0.0', '172.16.5.0'];
const v6Bases = ['2001:db8::', '2001:db8:1::', '2001:db8:1:2::', 'fd00::'];

function randomV4(rng: () => number): string {
  const base = (parseCidr(pick(rng, v4Bases)) as { address: Uint8Array }).address;
  const bytes = new Uint8Array(base);
  if (rng() < 0.7) bytes[3] = int(rng, 0, 15);
  else bytes[3] = int(rng, 0, 255);
  if (rng() < 0.2) bytes[2] = int(rng, 0, 3);
  return Array.from(bytes).join('.');
}

function randomV6(rng: () => number): string {
  const base = pick(rng, v6Bases);
  return `${base}${int(rng, 0, 15).toString(16)}`.replace(':::', '::');
}

function randomCidr(rng: () => number, family: 4 | 6, narrow: boolean): string {
  if (narrow) {
    // Many distinct, mostly disjoint prefixes, so packets reach rules deep in the list.
    if (family === 4) return `10.${int(rng, 0, 3)}.${int(rng, 0, 255)}.${int(rng, 0, 255)}/${pick(rng, [24, 28, 32, 32, 32])}`;
    return `2001:db8:${int(rng, 0, 3).toString(16)}::${int(rng, 0, 0xffff).toString(16)}/${pick(rng, [112, 124, 128, 128])}`;
  }
  if (family === 4) {
    const length = pick(rng, [0, 8, 16, 24, 24, 28, 30, 32, 32]);
    return `${randomV4(rng)}/${length}`;
  }
  const length = pick(rng, [0, 32, 48, 64, 120, 124, 128, 128]);
  return `${randomV6(rng)}/${length}`;
}

/** A random ordered rule set of `count` rules: overlapping prefixes and ports, both families, every action. */
export function randomRuleSet(rng: () => number, count: number, options: { rateLimitBurst?: number; narrow?: boolean } = {}): RuleSetSpec {
  const rules: RuleSpec[] = [];
  for (let i = 0; i < count; i++) {
    const narrow = options.narrow === true;
    const familyMode = !narrow && rng() < 0.04 ? 'any' : pick(rng, ['4', '6', 'mixed'] as const);
    const cidrs = (): string[] => {
      if ((!narrow && rng() < 0.1) || familyMode === 'any') return [];
      const n = int(rng, 1, 3);
      return Array.from({ length: n }, () => randomCidr(rng, familyMode === 'mixed' ? pick(rng, [4, 6] as const) : familyMode === '4' ? 4 : 6, options.narrow === true));
    };
    const protocol = pick(rng, ['any', 'tcp', 'tcp', 'udp', 'udp', 'icmp', 'icmpv6'] as const);
    const dstPorts =
      (protocol === 'tcp' || protocol === 'udp') && rng() < 0.7
        ? Array.from({ length: int(rng, 1, 3) }, () => {
            const from = rng() < 0.5 ? pick(rng, [22, 53, 80, 443, 8080]) : int(rng, 0, 2000);
            return { from, to: Math.min(65535, from + pick(rng, [0, 0, 1, 10, 100, 1000, 65535])) };
          })
        : [];
    const action = pick(rng, ['allow', 'deny', 'deny', 'rate_limit'] as const);
    const rule: RuleSpec = { id: 1000 + i * 7, srcCidrs: cidrs(), dstCidrs: familyMode === 'mixed' ? cidrs() : rng() < (narrow ? 0.15 : 0.3) ? [] : cidrs(), protocol, dstPorts, action };
    if (action === 'rate_limit') rule.rateLimit = { pps: 1000, burst: options.rateLimitBurst ?? 1_000_000 };
    rules.push(rule);
  }
  return { rules, defaultAction: rng() < 0.5 ? 'allow' : 'deny' };
}

/** A random frame: mostly aimed at the rule set's prefixes and ports, sometimes odd (VLAN, fragments, ext headers, non-IP, truncated). */
export function randomFrame(rng: () => number, ruleSet: RuleSetSpec): Uint8Array {
  const roll = rng();
  if (roll < 0.02) return buildNonIpFrame(pick(rng, [0x0806, 0x88cc, 0x8100]), 60);
  // Half the frames aim at one rule (its source, destination, protocol and a port in range).
  const target = ruleSet.rules.length > 0 && rng() < 0.5 ? pick(rng, ruleSet.rules) : undefined;
  const targetFamilies = target === undefined ? [] : [...target.srcCidrs, ...target.dstCidrs].map((c) => (c.includes(':') ? 6 : 4));
  const family = targetFamilies.length > 0 ? pick(rng, targetFamilies) : rng() < 0.5 ? 4 : 6;
  const address = (side?: 'src' | 'dst'): string => {
    const rule = target !== undefined && side !== undefined ? target : ruleSet.rules.length > 0 && rng() < 0.6 ? pick(rng, ruleSet.rules) : undefined;
    const fromRule = rule === undefined ? [] : side === 'src' ? rule.srcCidrs : side === 'dst' ? rule.dstCidrs : [...rule.srcCidrs, ...rule.dstCidrs];
    const cidrs = fromRule.filter((c) => c.includes(':') === (family === 6));
    if (cidrs.length > 0 && rng() < 0.8) {
      const cidr = parseCidr(pick(rng, cidrs)) as { address: Uint8Array; prefixLength: number };
      const bytes = new Uint8Array(cidr.address);
      // Random host bits inside the prefix.
      for (let bit = cidr.prefixLength; bit < bytes.length * 8; bit++) if (rng() < 0.5) bytes[bit >> 3] = (bytes[bit >> 3] as number) | (0x80 >> (bit & 7));
      return family === 4 ? Array.from(bytes).join('.') : formatV6(bytes);
    }
    return family === 4 ? randomV4(rng) : randomV6(rng);
  };
  const targetProtocol = target === undefined || target.protocol === 'any' ? undefined : target.protocol === 'icmpv6' ? 'icmp' : target.protocol;
  const protocol = targetProtocol ?? pick(rng, ['tcp', 'tcp', 'udp', 'udp', 'icmp', 47] as const);
  const portRule = target !== undefined && target.dstPorts.length > 0 ? [target] : ruleSet.rules.filter((r) => r.dstPorts.length > 0);
  let dstPort = int(rng, 0, 65535);
  if (portRule.length > 0 && rng() < 0.7) {
    const range = pick(rng, pick(rng, portRule).dstPorts);
    dstPort = pick(rng, [range.from, range.to, int(rng, range.from, range.to), Math.max(0, range.from - 1), Math.min(65535, range.to + 1)]);
  }
  const spec: { -readonly [K in keyof FrameSpec]: FrameSpec[K] } = { src: address('src'), dst: address('dst'), protocol, dstPort, payloadLength: int(rng, 0, 64) };
  if (rng() < 0.1) spec.vlans = rng() < 0.5 ? [int(rng, 1, 4094)] : [int(rng, 1, 4094), int(rng, 1, 4094)];
  if (family === 4 && rng() < 0.08) spec.fragment = { offset: rng() < 0.5 ? 0 : int(rng, 1, 100), more: rng() < 0.7 };
  if (family === 4 && rng() < 0.05) spec.ipv4OptionBytes = 4 * int(rng, 1, 10);
  if (family === 6 && rng() < 0.12) {
    const kinds = ['hop-by-hop', 'routing', 'destination', 'ah', 'fragment'] as const;
    spec.extensionHeaders = Array.from({ length: int(rng, 1, 4) }, () => {
      const type = pick(rng, kinds);
      return type === 'fragment' ? { type, offset: rng() < 0.5 ? 0 : int(rng, 1, 50), more: true } : { type, length: int(rng, 0, 3) };
    });
  }
  const frame = buildFrame(spec);
  if (rng() < 0.03) return frame.slice(0, int(rng, 14, frame.length));
  return frame;
}

function formatV6(bytes: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] as number) << 8) | (bytes[i + 1] as number)).toString(16));
  return groups.join(':');
}

/**
 * A TypeScript model of ep_classify()'s table walk over compiled tables (not the rule set):
 * lets the compiler be checked against the oracle without a kernel.
 * @returns the matching rule index, or -1 for the default action.
 */
export function tableLookup(tables: TablesSpec, headers: PacketHeaders): number {
  const view = (bytes: Uint8Array): DataView => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lpmView = view(tables.lpm.keys);
  const valueView = view(tables.lpm.values);
  const longest = (tag: number, data: Uint8Array, bits: number): { cls: number; low: bigint; summary: bigint[] } => {
    let best = -1;
    let bestLength = -1;
    for (let i = 0; i < tables.lpm.count; i++) {
      const off = i * 24;
      if (tables.lpm.keys[off + 4] !== tag) continue;
      const length = lpmView.getUint32(off, true) - 8;
      if (length > bits || length <= bestLength) continue;
      let ok = true;
      for (let bit = 0; bit < length && ok; bit++) {
        const mask = 0x80 >> (bit & 7);
        ok = (((tables.lpm.keys[off + 5 + (bit >> 3)] as number) ^ (data[bit >> 3] as number)) & mask) === 0;
      }
      if (ok) {
        best = i;
        bestLength = length;
      }
    }
    if (best < 0) throw new Error(`no LPM entry for tag ${tag}`);
    const off = best * 136;
    return { cls: valueView.getUint32(off, true), low: BigInt(valueView.getUint32(off + 4, true)), summary: Array.from({ length: 16 }, (_, k) => valueView.getBigUint64(off + 8 + 8 * k, true)) };
  };
  const words = new Map<string, bigint>();
  const wordKeys = view(tables.classWords.keys);
  const wordValues = view(tables.classWords.values);
  for (let i = 0; i < tables.classWords.count; i++) words.set(`${wordKeys.getUint32(8 * i, true)}/${wordKeys.getUint32(8 * i + 4, true)}`, wordValues.getBigUint64(8 * i, true));
  const wild = view(tables.wild);
  const wildWord = (vector: number, w: number): bigint => wild.getBigUint64(vector * 8320 + 128 + 8 * w, true);
  const wildSummary = (vector: number, k: number): bigint => wild.getBigUint64(vector * 8320 + 8 * k, true);

  const f = headers.family;
  const slot = { 6: 0, 17: 1, 1: 2, 58: 3 }[headers.protocol as 6 | 17 | 1 | 58] ?? 4;
  const port = new Uint8Array(3);
  if (headers.dstPort === null) port[0] = 1;
  else port.set([0, headers.dstPort >> 8, headers.dstPort & 0xff]);
  const fields = [
    { ...longest(0x00 | f, headers.src, f === 4 ? 32 : 128), wid: f === 4 ? 0 : 1 },
    { ...longest(0x10 | f, headers.dst, f === 4 ? 32 : 128), wid: f === 4 ? 2 : 3 },
    { ...longest(0x20 | slot, port, 24), wid: 4 + slot },
  ];
  // A scan generation (genFlags.scan), for IPv4: per field the first scan entry whose masked
  // value is the packet's key; its bits ANDed over the fields (ep_rule_slot_scan).
  if ((tables.genFlags & genFlags.scan) !== 0 && f === 4) {
    if (tables.scan === undefined) throw new Error('genFlags.scan without a scan table');
    const scan = view(tables.scan);
    const u32 = (bytes: Uint8Array): number => view(bytes).getUint32(0, false);
    const keys = [u32(headers.src), u32(headers.dst), ((slot << 24) | (headers.dstPort === null ? 1 << 16 : headers.dstPort)) >>> 0];
    let acc = 0xffff_ffff;
    keys.forEach((key, field) => {
      let low = 0;
      for (let i = 0; i < scan.getUint32(field * 4, true); i++) {
        const at = 16 + (field * SCAN_ENTRIES + i) * 12;
        if ((key & scan.getUint32(at + 4, true)) >>> 0 === scan.getUint32(at, true)) {
          low = scan.getUint32(at + 8, true);
          break;
        }
      }
      acc = (acc & low) >>> 0;
    });
    return acc === 0 ? -1 : 31 - Math.clz32(acc & -acc);
  }
  // A small generation (genFlags.small): the classes' low bits OR the wildcards' first word.
  if ((tables.genFlags & genFlags.small) !== 0) {
    const acc = fields.reduce((a, field) => a & (field.low | wildWord(field.wid, 0)), 0xffff_ffffn);
    return acc === 0n ? -1 : (acc & -acc).toString(2).length - 1;
  }
  for (let k = 0; k < 16; k++) {
    let cand = fields.reduce((acc, field) => acc & (wildSummary(field.wid, k) | (field.summary[k] as bigint)), (1n << 64n) - 1n);
    while (cand !== 0n) {
      const bit = cand & -cand;
      cand ^= bit;
      const w = k * 64 + (bit.toString(2).length - 1);
      let acc = (1n << 64n) - 1n;
      for (const field of fields) {
        let word = wildWord(field.wid, w);
        if (((field.summary[k] as bigint) & bit) !== 0n) word |= words.get(`${field.cls}/${w}`) ?? 0n;
        acc &= word;
      }
      if (acc !== 0n) return w * 64 + ((acc & -acc).toString(2).length - 1);
    }
  }
  return -1;
}

/** compileTables + tableLookup, for tests. */
export { compileTables };

/**
 * Tears down a namespace rig of the datapath tests: kills the processes it started, closes the
 * datapath, deletes the namespaces (and so their veths and programs) and unmounts the bpffs.
 * Never throws: it runs in test.after.always, also after a failed setup.
 */
export function removeNetnsRig(rig: { children: Iterable<{ kill(signal: NodeJS.Signals): unknown }>; datapath?: { close(): void }; namespaces: string[]; bpffs: { unmount(): void } }): void {
  for (const child of rig.children) child.kill('SIGKILL');
  rig.datapath?.close();
  for (const ns of rig.namespaces) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      // Already gone (or never made).
    }
  }
  rig.bpffs.unmount();
}

/**
 * Makes two network namespaces joined by a veth pair, with lo and both ends up (addresses are the
 * caller's). Returns the MAC address of a device in a namespace, for static neighbours.
 */
export function addVethPair(a: { ns: string; dev: string }, b: { ns: string; dev: string }): (ns: string, dev: string) => string {
  const run = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });
  run('netns', 'add', a.ns);
  run('netns', 'add', b.ns);
  run('link', 'add', a.dev, 'netns', a.ns, 'type', 'veth', 'peer', 'name', b.dev, 'netns', b.ns);
  for (const end of [a, b]) {
    run('-n', end.ns, 'link', 'set', 'lo', 'up');
    run('-n', end.ns, 'link', 'set', end.dev, 'up');
  }
  return (ns, dev) => execFileSync('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${dev}/address`], { encoding: 'utf8' }).trim();
}

/**
 * Two network namespaces joined by a veth pair (IPv4 `${subnet}.1` in A, `${subnet}.2` in B, /24),
 * kept quiet: no IPv6 (router solicitations, MLD) and static neighbours (no ARP), so the kernel's
 * packet counters move only with a test's own traffic. Names start with `tag`; create() makes
 * them, remove() deletes what is there (twice is harmless).
 */
export class QuietVethPair {
  readonly nsA: string;
  readonly nsB: string;
  readonly vethA: string;
  readonly vethB: string;
  readonly addrA: string;
  readonly addrB: string;

  constructor(tag: string, subnet: string) {
    const id = `${process.pid % 10000}${Math.floor(Math.random() * 100)}`;
    this.nsA = `${tag}A${id}`;
    this.nsB = `${tag}B${id}`;
    this.vethA = `${tag.toLowerCase()}a${id}`;
    this.vethB = `${tag.toLowerCase()}b${id}`;
    this.addrA = `${subnet}.1`;
    this.addrB = `${subnet}.2`;
  }

  /** Runs a command in namespace `ns`; its standard output. */
  inNs(ns: string, ...args: string[]): string {
    return execFileSync('ip', ['netns', 'exec', ns, ...args], { encoding: 'utf8' });
  }

  create(): void {
    const { nsA, nsB, vethA, vethB, addrA, addrB } = this;
    execFileSync('ip', ['netns', 'add', nsA]);
    execFileSync('ip', ['netns', 'add', nsB]);
    execFileSync('ip', ['link', 'add', vethA, 'netns', nsA, 'type', 'veth', 'peer', 'name', vethB, 'netns', nsB]);
    this.inNs(nsA, 'ip', 'addr', 'add', `${addrA}/24`, 'dev', vethA);
    this.inNs(nsB, 'ip', 'addr', 'add', `${addrB}/24`, 'dev', vethB);
    for (const [ns, dev] of [[nsA, vethA], [nsB, vethB]] as const) {
      this.inNs(ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', `net.ipv6.conf.${dev}.disable_ipv6=1`);
      this.inNs(ns, 'ip', 'link', 'set', dev, 'up');
    }
    const mac = (ns: string, dev: string): string => this.inNs(ns, 'cat', `/sys/class/net/${dev}/address`).trim();
    this.inNs(nsA, 'ip', 'neigh', 'replace', addrB, 'lladdr', mac(nsB, vethB), 'dev', vethA, 'nud', 'permanent');
    this.inNs(nsB, 'ip', 'neigh', 'replace', addrA, 'lladdr', mac(nsA, vethA), 'dev', vethB, 'nud', 'permanent');
  }

  remove(): void {
    for (const ns of [this.nsA, this.nsB]) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'pipe' });
      } catch {
        // Already gone (or never made): nothing to remove.
      }
    }
  }
}

/**
 * The program's verdict on `frame` through BPF_PROG_TEST_RUN, or undefined when the kernel refuses
 * the frame before the program runs (EINVAL: some truncated frames, for skb test runs).
 */
export function verdictOf(program: { testRun(options: { data: Uint8Array }): { retval: number } }, frame: Uint8Array): number | undefined {
  try {
    return program.testRun({ data: frame }).retval;
  } catch (error) {
    if ((error as { code?: string }).code !== 'EINVAL') throw error;
    return undefined;
  }
}
