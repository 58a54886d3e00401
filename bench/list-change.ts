// One prefix added to a 1,000,000-prefix list, from the signed log entry to the node enforcing it
// (issue 16), on one node agent in this process: the real IntentChain (signature check and the
// change applied to the list), NodeAgent (compile, blocklist sync, apply, the state file written
// and fsynced) and the eBPF datapath (BPF_PROG_TEST_RUN probes the new prefix after each change).
// Two ways the list is used: as a source blocklist (use DENY_SOURCE) and named by a rule of a
// policy (source_prefix_lists). No NATS: the fleet fan-out is bench/fleet.ts's; this is what one
// node adds to it. Prints a table and one JSON line; asserts nothing.
//   npx tsc --build && node --import=tsx bench/list-change.ts [--quick] [--profile DIR]
// --profile writes a CPU profile of the changes (not of the loads: the profiler's signals make
// the verifier's program loads fail with EAGAIN, so it starts after them).
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { Action, keyIdOf, LOG_FORMAT_BLOCKLIST, LogEntry, Policy, PrefixListChange, PrefixListUse, Protocol, RevisionOutcome, signLogEntry, type RevisionReport } from '@edgeplane/proto';
import { IntentChain } from '@edgeplane/intent-log';
import { BlocklistSync, buildFrame, EbpfDatapath, NodeAgent, StateFile } from '@edgeplane/node-agent';

const quick = process.argv.includes('--quick');
const profileAt = process.argv.indexOf('--profile');
const profileDir = profileAt > 0 ? process.argv[profileAt + 1] : undefined;
const N = 1_000_000 - 100; // room for the changes under MAX_PREFIX_LIST_ENTRIES
const CHANGES = quick ? 5 : 20;
const XDP_DROP = 1;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const quantile = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

// The log's signing key, as a controller's.
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trustedKeys = new Map([[keyIdOf(publicKey), publicKey]]);

/** Appends a signed entry with `change` to `chain`, hands it to `agent` and waits until the agent is done with it. */
async function pushChange(agent: NodeAgent, chain: IntentChain, reports: readonly RevisionReport[], change: { prefixLists: PrefixListChange[]; policies?: Policy[] }): Promise<RevisionReport> {
  const revision = chain.revision + 1n;
  const entry = LogEntry.fromPartial({
    revision,
    previousHash: Buffer.from(chain.lastHash),
    change: { upserts: change.policies ?? [] },
    blocklistChange: { prefixLists: change.prefixLists.map((c) => ({ ...c, metadata: { ...c.metadata!, resourceVersion: revision } })) },
  });
  const appended = chain.append(signLogEntry(entry, privateKey, LOG_FORMAT_BLOCKLIST), revision).entry;
  agent.intentAdvanced(chain, [appended]);
  await agent.settled();
  const r = reports.at(-1)!;
  if (r.revision !== revision) throw new Error(`no report for revision ${revision}`);
  return r;
}

const prefixes = Array.from({ length: N }, (_, i) => `${11 + (i >> 16)}.${(i >> 8) & 0xff}.${i & 0xff}.0/24`);
const work = mkdtempSync(join(tmpdir(), 'ep-bench-list-'));
const bpffs = mkdtempSync('/run/ep-bench-list-bpf-');
execFileSync('mount', ['-t', 'bpf', 'bpf', bpffs]);
const results: Record<string, { firstMs: number; firstAckMs: number; changeMs: number[]; settledMs: number[]; cpuMs: number[] }> = {};
try {
  for (const use of ['deny-source', 'named-by-rule'] as const) {
    mkdirSync(join(bpffs, use));
    const dp = await EbpfDatapath.open({ pinRoot: join(bpffs, use) });
    const sync = new BlocklistSync(dp.blocklist);
    const reports: RevisionReport[] = [];
    let reportedAt = 0n;
    const agent = new NodeAgent({
      nodeName: 'n1',
      labels: { role: 'edge' },
      datapaths: { uplink: dp, workload: dp },
      stateFile: new StateFile(join(work, `${use}.json`)),
      report: (r) => {
        reportedAt = process.hrtime.bigint();
        reports.push(r);
      },
      log: () => undefined,
      blocklist: { sync: (snapshot, labels) => sync.sync(snapshot, labels) },
      coalesceMs: 0,
    });
    const chain = new IntentChain(trustedKeys);
    const listUse = use === 'deny-source' ? PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE : PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED;
    const change = (base: bigint, add: string[]): PrefixListChange => PrefixListChange.fromPartial({ metadata: { name: 'feed' }, spec: { use: listUse }, baseResourceVersion: base, add });
    const policy = Policy.fromPartial({
      metadata: { name: 'threats' },
      spec: { defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 1, protocol: Protocol.PROTOCOL_ANY, ...(use === 'named-by-rule' ? { sourcePrefixLists: ['feed'] } : { sourceCidrs: ['10.0.0.0/8'] }), action: Action.ACTION_DENY }] },
    });
    // ms: the entry handed to the agent -> its ACK; settledMs: -> the agent done (the state file written).
    const push = async (c: Parameters<typeof pushChange>[3]): Promise<{ ms: number; settledMs: number; cpuMs: number }> => {
      const cpu = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await pushChange(agent, chain, reports, c);
      const settledMs = Number(process.hrtime.bigint() - t0) / 1e6;
      const used = process.cpuUsage(cpu);
      if (r.outcome !== RevisionOutcome.REVISION_OUTCOME_ACK) throw new Error(`${use}: revision ${r.revision} ${r.reason}`);
      return { ms: Number(reportedAt - t0) / 1e6, settledMs, cpuMs: (used.user + used.system) / 1000 };
    };
    const first = await push({ prefixLists: [change(0n, prefixes)], policies: [policy] });
    const probe = (src: string): number => dp.xdpProgram.testRun({ data: buildFrame({ src, dst: '192.0.2.1', protocol: 'udp', dstPort: 53 }) }).retval;
    if (probe('11.7.161.9') !== XDP_DROP) throw new Error(`${use}: a listed source passes`);
    const changeMs: number[] = [];
    const settledMs: number[] = [];
    const cpuMs: number[] = [];
    const session = profileDir === undefined ? undefined : new Session();
    if (session !== undefined) {
      session.connect();
      await session.post('Profiler.enable');
      await session.post('Profiler.start');
    }
    for (let k = 0; k < CHANGES; k++) {
      const added = `203.0.${113 + (k >> 8)}.${k & 0xff}`;
      const r = await push({ prefixLists: [change(chain.revision, [`${added}/32`])] });
      if (probe(added) !== XDP_DROP) throw new Error(`${use}: the added prefix ${added} is not enforced`);
      changeMs.push(r.ms);
      settledMs.push(r.settledMs);
      cpuMs.push(r.cpuMs);
    }
    if (session !== undefined) {
      const { profile } = await session.post('Profiler.stop');
      mkdirSync(profileDir!, { recursive: true });
      writeFileSync(join(profileDir!, `list-change-${use}.cpuprofile`), JSON.stringify(profile));
      session.disconnect();
    }
    results[use] = { firstMs: first.settledMs, firstAckMs: first.ms, changeMs, settledMs, cpuMs };
    agent.close();
    sync.close();
    dp.close();
  }
} finally {
  execFileSync('umount', [bpffs]);
  rmSync(bpffs, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
}
const f = (x: number): string => x.toFixed(1);
console.log(`list-change bench${quick ? ' (--quick)' : ''}: one prefix added to a ${N}-prefix list, ${CHANGES} changes; entry handed to the agent -> ACK (enforced), and -> done (state file written)`);
console.log('list use          first load: to ACK / to done (ms)   to ACK p50 (ms)   p99 (ms)   to done p50 (ms)   CPU p50 (ms)');
for (const [use, r] of Object.entries(results)) console.log(`${use.padEnd(16)}  ${`${f(r.firstAckMs)} / ${f(r.firstMs)}`.padStart(32)}   ${f(median(r.changeMs)).padStart(15)}   ${f(quantile(r.changeMs, 0.99)).padStart(8)}   ${f(median(r.settledMs)).padStart(16)}   ${f(median(r.cpuMs)).padStart(12)}`);
console.log(JSON.stringify({ bench: 'list-change', quick, prefixes: N, changes: CHANGES, results }));
