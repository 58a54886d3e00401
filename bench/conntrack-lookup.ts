// The per-packet cost of the connection table in the programs alone (issue 13, "look each packet
// up once"): edge_xdp run through BPF_PROG_TEST_RUN, one frame per run, the kernel's own
// duration of each run (bpf_prog_test_run: ktime around the program), for
//   syn:        the SYN of a new TCP flow that a tracking rule admits (lookups miss, classify, create);
//   reply@N:    a reply-direction UDP packet of an established flow, ep_ct holding N flows, each
//               run a different flow picked at random (so at 1,000,000 entries the lookups miss
//               the CPU caches as traffic would; each run is one syscall, so the program starts
//               cold, and the figure includes that);
//   warm@N:     the same packets, each run --repeat times in one BPF_PROG_TEST_RUN (the kernel
//               reports the average): the instructions alone, caches warm;
//   conn:       one whole new TCP connection as bench/conntrack.ts (a) makes it, a fresh tuple
//               each: SYN, ACK, ACK, FIN+ACK through the policy program (client -> server) and
//               SYN+ACK, FIN+ACK, ACK through edge_tc_egress (server -> client, the server
//               closing first), in that order; the figure is the sum of the 7 runs (the programs'
//               cost per connection, each run starting cold as above). Cases: --cases.
// With --baseline OBJECT, the same runs go through a second object (e.g. the previous layout's,
// built from git) in the same process, interleaved run by run, so both sides share the machine's
// load; half the rounds with the sides opened in one order, half in the other (measure()). This
// agent opens it, so it must declare every map this agent pins: a layout-2 object needs
// `ep_ct_control_ports` (an ARRAY[1024] of u64, unused by its programs) added to its ep_maps.h
// before `make` (bench/README.md, "conntrack-lookup"). Flows go from 10.x clients to 192.0.2.1,
// which sorts after them: layout 2's key (the original direction) and layout 3's flow key are the
// same bytes, so one fill serves both.
//
//   node --import=tsx bench/conntrack-lookup.ts [--program xdp|tc] [--baseline OBJECT] [--rounds 5] [--runs 20000] [--repeat 1000] [--sizes 1000,1000000] [--cases syn,conn,reply] [--sources N]
//
// Prints one JSON line per (case, round) and a summary: the median over rounds of each round's
// median per-packet ns. Needs root (bpffs mount); touches no interface.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildFrame, EbpfDatapath, type RuleSetSpec } from '@edgeplane/node-agent';
import { ConntrackAccess } from './conntrack-access.js';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
};
const baseline = arg('--baseline');
const rounds = Number(arg('--rounds') ?? 5);
const runs = Number(arg('--runs') ?? 20_000);
const sizes = (arg('--sizes') ?? '1000,1000000').split(',').map(Number);
const repeat = Number(arg('--repeat') ?? 1000);
/** Which hook's program runs the frames: `xdp` (edge_xdp) or `tc` (edge_tc, the same datapath on an skb). */
const hook = arg('--program') ?? 'xdp';
if (hook !== 'xdp' && hook !== 'tc') throw new Error(`--program ${hook}: xdp or tc`);
/** Which cases run: syn, conn, reply (reply@N and warm@N at every size). */
const cases = new Set((arg('--cases') ?? 'syn,conn,reply').split(','));
/** Connections per round of the conn case (7 runs each, per side). */
const connRuns = Math.min(runs, 5000);
const SERVER = '192.0.2.1';

const ruleSet: RuleSetSpec = {
  rules: [
    { id: 1, srcCidrs: [], dstCidrs: [`${SERVER}/32`], protocol: 'tcp', dstPorts: [{ from: 80, to: 80 }], action: 'allow', track: true },
    { id: 2, srcCidrs: [], dstCidrs: [`${SERVER}/32`], protocol: 'udp', dstPorts: [{ from: 53, to: 53 }], action: 'allow', track: true },
  ],
  defaultAction: 'deny',
};

/**
 * Client `i`'s address and port: 10.a.b.c of i itself, port 1024 + i % 60,000 (distinct for i <
 * 2^24 * 60,000); or with --sources N the address of i % N and port 1024 + (i / N) % 60,000 (a fresh
 * tuple each, from N sources, as bench/conntrack.ts (a)'s tcp-churn makes them from 200): whatever a
 * change keeps per source address is then met again.
 */
const sourceCount = arg('--sources') === undefined ? undefined : Number(arg('--sources'));
if (sourceCount !== undefined && (!Number.isInteger(sourceCount) || sourceCount < 1 || sourceCount > 1 << 24)) throw new Error(`--sources ${arg('--sources')}: an integer from 1 to ${1 << 24}`);
const address = (n: number): string => `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
const client = (i: number): { src: string; sport: number } =>
  sourceCount === undefined ? { src: address(i), sport: 1024 + (i % 60_000) } : { src: address(i % sourceCount), sport: 1024 + (Math.floor(i / sourceCount) % 60_000) };

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
};

const mount = mkdtempSync('/run/edgeplane-bench-lookup-');
execFileSync('mount', ['-t', 'bpf', 'bpf', mount]);
const perRound: Record<string, Record<string, number[]>> = {};
// Room for every flow of a syn or conn round (closed ones stay, closing) below the direct mark (half of ep_ct), and an
// ep_ct4 of twice that (its windows then hardly ever fill).
const capacity = Math.max(...sizes, 1000, 4 * Math.min(runs, 20_000)) + 1000;
const sides: { name: string; objectPath?: string }[] = [{ name: 'current' }, ...(baseline === undefined ? [] : [{ name: 'baseline', objectPath: baseline }])];
let next = 5_000_000;

/**
 * Opens the sides one after another in `order`, runs rounds `from`..`to` - 1 of every case on
 * them and closes them (their pins removed). The side opened first read up to 9 % cheaper on a
 * whole connection with the same object on both sides (where the kernel put its maps), so with a
 * baseline the bench runs half its rounds in each opening order; within a half the sides also
 * take turns going first, run by run.
 */
async function measure(order: typeof sides, from: number, to: number): Promise<void> {
  const open: { name: string; datapath: EbpfDatapath; access: ConntrackAccess }[] = [];
  try {
    for (const side of order) {
      const pinRoot = join(mount, side.name);
      mkdirSync(pinRoot);
      // The baseline's object wins over EP_BENCH_OBJECT, which names the current side's (so the sides can swap).
      const datapath = await EbpfDatapath.open({ pinRoot, ...ConntrackAccess.openOptions(capacity, 2 ** Math.ceil(Math.log2(2 * capacity))), ...(side.objectPath === undefined ? {} : { objectPath: side.objectPath }) });
      const access = new ConntrackAccess(datapath);
      open.push({ name: side.name, datapath, access });
      await datapath.apply(ruleSet);
    }
    measureOn(open, from, to);
  } finally {
    for (const { datapath, access } of open) {
      access.close();
      datapath.close();
    }
    for (const side of order) rmSync(join(mount, side.name), { recursive: true, force: true });
  }
}

/** Rounds `from`..`to` - 1 of every case on the open sides. */
function measureOn(open: { name: string; datapath: EbpfDatapath; access: ConntrackAccess }[], from: number, to: number): void {
  // The sides take turns going first, run by run.
  const inTurn = (i: number): typeof open => (i % 2 === 0 ? open : [...open].reverse());
  // Rounds `from`..`to` - 1 of `framesFor(round)`, each frame run once on every side in turn.
  const run = (what: string, framesFor: (round: number) => Uint8Array[], times = 1): void => {
    for (let round = from; round < to; round++) {
      const frames = framesFor(round);
      const durations: Record<string, number[]> = Object.fromEntries(open.map((side) => [side.name, []]));
      frames.forEach((frame, i) => {
        for (const side of inTurn(i)) (durations[side.name] as number[]).push((hook === 'xdp' ? side.datapath.xdpProgram : side.datapath.tcProgram).testRun({ data: frame, repeat: times }).durationNs);
      });
      const line: Record<string, unknown> = { case: what, round, runs: frames.length };
      for (const side of open) {
        const m = median(durations[side.name] as number[]);
        line[`${side.name}MedianNs`] = m;
        ((perRound[what] ??= {})[side.name] ??= []).push(m);
      }
      console.log(JSON.stringify(line));
    }
  };

  // A SYN of a new flow: fresh clients every round (an entry, once created, would be found).
  if (cases.has('syn')) run('syn', () => {
    for (const side of open) side.access.clear();
    return Array.from({ length: Math.min(runs, 20_000) }, () => {
      const c = client(next++);
      return buildFrame({ src: c.src, dst: SERVER, protocol: 'tcp', srcPort: c.sport, dstPort: 80, tcpFlags: 0x02, payloadLength: 0 });
    });
  });

  // A whole connection, SYN..FIN, a fresh tuple each; on each side in turn, connection by connection.
  if (cases.has('conn')) {
    const { syn, ack, fin } = { syn: 0x02, ack: 0x10, fin: 0x01 };
    for (let round = from; round < to; round++) {
      for (const side of open) side.access.clear();
      const durations: Record<string, number[]> = Object.fromEntries(open.map((side) => [side.name, []]));
      // Each packet's own runs too (which of the 7 costs what).
      const byPacket: Record<string, number[][]> = Object.fromEntries(open.map((side) => [side.name, Array.from({ length: 7 }, () => [])]));
      for (let n = 0; n < connRuns; n++) {
        const c = client(next++);
        const toServer = (flags: number): Uint8Array => buildFrame({ src: c.src, dst: SERVER, protocol: 'tcp', srcPort: c.sport, dstPort: 80, tcpFlags: flags, payloadLength: 0 });
        const toClient = (flags: number): Uint8Array => buildFrame({ src: SERVER, dst: c.src, protocol: 'tcp', srcPort: 80, dstPort: c.sport, tcpFlags: flags, payloadLength: 0 });
        const packets: [boolean, Uint8Array][] = [
          [true, toServer(syn)],
          [false, toClient(syn | ack)],
          [true, toServer(ack)],
          [false, toClient(fin | ack)],
          [true, toServer(ack)],
          [true, toServer(fin | ack)],
          [false, toClient(ack)],
        ];
        for (const side of inTurn(n)) {
          const policy = hook === 'xdp' ? side.datapath.xdpProgram : side.datapath.tcProgram;
          let ns = 0;
          packets.forEach(([inbound, frame], i) => {
            const one = (inbound ? policy : side.datapath.tcEgressProgram).testRun({ data: frame }).durationNs;
            (byPacket[side.name]?.[i] as number[]).push(one);
            ns += one;
          });
          (durations[side.name] as number[]).push(ns);
        }
      }
      const line: Record<string, unknown> = { case: 'conn', round, runs: connRuns };
      for (const side of open) {
        const m = median(durations[side.name] as number[]);
        line[`${side.name}MedianNs`] = m;
        line[`${side.name}PacketMedianNs`] = (byPacket[side.name] as number[][]).map(median);
        ((perRound.conn ??= {})[side.name] ??= []).push(m);
      }
      console.log(JSON.stringify(line));
    }
  }

  // A reply of an established flow, at each table size.
  for (const size of cases.has('reply') ? sizes : []) {
    for (const side of open) {
      side.access.clear();
      side.access.fill(0, size, { src: client(0).src, sport: client(0).sport, dst: SERVER, dport: 53 }, client);
    }
    const replies = (count: number): Uint8Array[] =>
      Array.from({ length: count }, () => {
        const c = client(Math.floor(Math.random() * size));
        return buildFrame({ src: SERVER, dst: c.src, protocol: 'udp', srcPort: 53, dstPort: c.sport });
      });
    run(`reply@${size}`, () => replies(runs));
    run(`warm@${size}`, () => replies(Math.max(1, Math.floor(runs / repeat) * 10)), repeat);
  }
}

try {
  if (baseline === undefined) {
    await measure(sides, 0, rounds);
  } else {
    const half = Math.ceil(rounds / 2);
    await measure(sides, 0, half);
    await measure([...sides].reverse(), half, rounds);
  }
  const out: Record<string, Record<string, number>> = {};
  for (const [what, bySide] of Object.entries(perRound)) out[what] = Object.fromEntries(Object.entries(bySide).map(([side, values]) => [side, median(values)]));
  console.log(JSON.stringify({ bench: 'conntrack-lookup', rounds, runs, sizes, baseline: baseline ?? null, medianNs: out }));
} finally {
  spawnSync('umount', [mount]);
  if (existsSync(mount)) rmdirSync(mount);
}
