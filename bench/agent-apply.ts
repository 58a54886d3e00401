// The node agent's apply path in one process (issue 15), split by step: compileIntent, the table
// compile, and EbpfDatapath.apply with the tables already compiled, for the uplink and the
// workload datapath (one TableCompilers pool, as main.ts wires them), on real eBPF maps pinned on
// a bpffs this script mounts under /run and removes. No NATS, no controller: bench/agent.ts
// measures the whole agent; this splits what it calls "compile" and "datapath". Asserts nothing.
//   npx tsc --build && node --import=tsx bench/agent-apply.ts [--rules 65536] [--changes 8] [--heap-snapshot FILE]
//
// Steps: the first apply (whole), then `--changes` one-rule changes (the last rule's port, as
// bench/agent.ts changes it), then one inserted rule and the change after it. Prints a table (ms)
// and one JSON line; RSS (VmRSS, VmHWM), the heap (used, committed) and memory outside it (typed
// arrays' buffers, other external memory) after a forced collection when node runs with
// --expose-gc; --heap-snapshot writes a V8 heap snapshot there after it. Then the uplink's
// counter read, right after the last apply and a second later.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { writeHeapSnapshot } from 'node:v8';
import { Action, Policy, Protocol, type Rule } from '@edgeplane/proto';
import { compileIntent, EbpfDatapath, TableCompiler, TableCompilers } from '@edgeplane/node-agent';

const arg = (name: string, fallback: number): number => {
  const at = process.argv.indexOf(`--${name}`);
  return at < 0 ? fallback : Number(process.argv[at + 1]);
};
const RULES = arg('rules', 65_536);
const CHANGES = arg('changes', 8);
const LABELS = { role: 'edge' };

/** bench/agent.ts's rule set (priorities spaced by 2, so a rule can be inserted): alternately a TCP port and a /32 source. */
function rules(n: number): Rule[] {
  const out: Partial<Rule>[] = [{ priority: 2, name: 'probe', sourceCidrs: ['192.0.2.1/32'], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY }];
  for (let i = 1; i < n; i++) {
    const k = i >> 1;
    out.push(
      i % 2 === 0
        ? { priority: 2 * (i + 1), protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1 + k, last: 0 }], action: Action.ACTION_DENY }
        : { priority: 2 * (i + 1), sourceCidrs: [`198.18.${k >> 8}.${k & 255}/32`], protocol: Protocol.PROTOCOL_TCP, action: Action.ACTION_DENY },
    );
  }
  return out.map((rule) => Policy.fromPartial({ spec: { rules: [rule] } }).spec!.rules[0]!);
}

/** A policy of `list`, its rule objects carried over as the agent's patch entries carry them. */
function withRules(list: Rule[]): Policy {
  const policy = Policy.fromPartial({ metadata: { name: 'bench' }, spec: { nodeSelector: { matchLabels: LABELS }, defaultAction: Action.ACTION_ALLOW } });
  policy.spec!.rules = list;
  return policy;
}

const mib = (kib: number): number => Math.round((kib / 1024) * 10) / 10;
function status(): { rss: number; hwm: number } {
  const text = readFileSync('/proc/self/status', 'utf8');
  const field = (name: string): number => Number(/\s(\d+) kB/.exec(text.split('\n').find((l) => l.startsWith(name)) ?? '')?.[1] ?? NaN);
  return { rss: mib(field('VmRSS:')), hwm: mib(field('VmHWM:')) };
}
const gc = (globalThis as { gc?: () => void }).gc;

interface Row {
  step: string;
  compileIntentMs: number;
  compileTablesMs: number;
  uplinkMs: number;
  workloadMs: number;
  write: string;
  written: number;
  backgroundMs: number;
}

async function main(): Promise<void> {
  const root = mkdtempSync('/run/edgeplane-bench-bpf-');
  execFileSync('mount', ['-t', 'bpf', 'bpf', root]);
  const opened: EbpfDatapath[] = [];
  try {
    const compilers = new TableCompilers();
    const tableCompiler = new TableCompiler();
    for (const role of ['uplink', 'workload']) {
      mkdirSync(join(root, role));
      opened.push(await EbpfDatapath.open({ pinRoot: join(root, role), compilers, lbCapacity: { services: 1, slots: 32, backends: 1 } }));
    }
    const [uplink, workload] = opened as [EbpfDatapath, EbpfDatapath];
    const rows: Row[] = [];
    let list = rules(RULES);
    const step = async (name: string, policy: Policy): Promise<void> => {
      const t0 = performance.now();
      const compiled = compileIntent([policy], LABELS);
      const t1 = performance.now();
      // The table compile alone, in the pool: both applies find it done (the same rule set object).
      compilers.compile(compiled.uplink.ruleSet, tableCompiler);
      const t2 = performance.now();
      const up = await uplink.apply(compiled.uplink.ruleSet);
      const t3 = performance.now();
      const wl = await workload.apply(compiled.workload.ruleSet);
      const t4 = performance.now();
      await Promise.all([uplink.settled(), workload.settled()]);
      const t5 = performance.now();
      rows.push({ step: name, compileIntentMs: t1 - t0, compileTablesMs: t2 - t1, uplinkMs: t3 - t2, workloadMs: t4 - t3, write: `${up.write ?? up.mode}/${wl.write ?? wl.mode}`, written: (up.written ?? 0) + (wl.written ?? 0), backgroundMs: t5 - t4 });
      process.stderr.write(`${name}: ${JSON.stringify(rows.at(-1))}\n`);
    };
    await step('first apply', withRules(list));
    for (let i = 0; i < CHANGES; i++) {
      list = [...list];
      list[list.length - 1] = Policy.fromPartial({ spec: { rules: [{ priority: 2 * RULES, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 50_000 + i, last: 0 }], action: Action.ACTION_DENY }] } }).spec!.rules[0]!;
      await step(`one-rule change ${i + 1}`, withRules(list));
    }
    // An inserted rule (priority between two others): every later rule's bit moves.
    const at = list.length >> 1;
    const inserted = Policy.fromPartial({ spec: { rules: [{ priority: 2 * at + 1, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 53, last: 0 }], action: Action.ACTION_DENY }] } }).spec!.rules[0]!;
    list = [...list.slice(0, at), inserted, ...list.slice(at, -1)];
    await step('insert (one rule in, the last out)', withRules(list));
    list = [...list];
    list[list.length - 1] = Policy.fromPartial({ spec: { rules: [{ priority: 2 * RULES, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 60_000, last: 0 }], action: Action.ACTION_DENY }] } }).spec!.rules[0]!;
    await step('one-rule change after the insert', withRules(list));
    // Counter reads (what the agent does at every counter report and at each apply's flush):
    // right after a switch the idle generation is read again; a second after it its counts are
    // final and kept, so a read is the live generation's batch lookup and sums.
    const timeRead = (): number => {
      const t = performance.now();
      uplink.readCounters();
      return performance.now() - t;
    };
    const afterSwitch = [timeRead(), timeRead(), timeRead()];
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const settledReads = Array.from({ length: 5 }, timeRead);
    const counterReads = { afterSwitchMs: afterSwitch.map((x) => Math.round(x * 10) / 10), settledMs: settledReads.map((x) => Math.round(x * 10) / 10) };
    gc?.();
    const usage = process.memoryUsage();
    const mib = (n: number): number => Math.round(n / 1024 / 102.4) / 10;
    const memory = { ...status(), heapUsedMiB: mib(usage.heapUsed), heapTotalMiB: mib(usage.heapTotal), arrayBuffersMiB: mib(usage.arrayBuffers), externalMiB: mib(usage.external), gc: gc !== undefined };
    const snapshotAt = process.argv.indexOf('--heap-snapshot');
    if (snapshotAt > 0) writeHeapSnapshot(process.argv[snapshotAt + 1]);
    const round = (n: number): number => Math.round(n);
    const cols = ['step', 'compileIntent', 'compileTables', 'uplink apply', 'workload apply', 'write', 'entries written', 'background'];
    console.log(`${RULES} rules, load ${loadavg().map((l) => l.toFixed(1)).join(' ')} (ms)`);
    console.log(`| ${cols.join(' | ')} |`);
    console.log(`| ${cols.map(() => '---').join(' | ')} |`);
    for (const r of rows) console.log(`| ${r.step} | ${round(r.compileIntentMs)} | ${round(r.compileTablesMs)} | ${round(r.uplinkMs)} | ${round(r.workloadMs)} | ${r.write} | ${r.written} | ${round(r.backgroundMs)} |`);
    console.log(`uplink readCounters (ms): right after the last apply ${counterReads.afterSwitchMs.join(', ')}; a second later ${counterReads.settledMs.join(', ')}`);
    console.log(`memory: VmRSS ${memory.rss} MiB, VmHWM ${memory.hwm} MiB, heap used ${memory.heapUsedMiB} of ${memory.heapTotalMiB} MiB committed, array buffers ${memory.arrayBuffersMiB} MiB, external ${memory.externalMiB} MiB${memory.gc ? ' (after a forced collection)' : ''}`);
    console.log(JSON.stringify({ rules: RULES, rows, counterReads, memory }));
  } finally {
    for (const datapath of opened) datapath.close();
    execFileSync('umount', [root]);
    rmdirSync(root);
  }
}

await main();
