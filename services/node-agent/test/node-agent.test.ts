// NodeAgent's apply path against the in-memory datapath (the same interface as the eBPF one),
// with faults injected into it and into the state file: partial applies, failed rollbacks,
// state-file failures, and a restart from the state file. No kernel, no network.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Action, Policy, PrefixListChange, Protocol, RevisionOutcome, type ConditionReport, type CounterReport, type LogEntry, type RevisionReport } from '@edgeplane/proto';
import { IntentChain } from '@edgeplane/intent-log';
import { DatapathError } from '../src/datapath/errors.js';
import { MemoryDatapath } from '../src/datapath/memory-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import { CONDITION_APPLY_ROLLBACK_FAILED, CONDITION_STATE_FILE_FAILED, NodeAgent, type AgentLogger, type NodeAgentOptions } from '../src/agent/node-agent.js';
import { StateFile, type AppliedState, type StateStore } from '../src/agent/state-file.js';
import { advance as signedAdvance, denyPort, installTestMeter, pushChange, trustedKeys } from './node-agent-helpers.js';

const counterValue = installTestMeter();

const dir = mkdtempSync(join(tmpdir(), 'node-agent-test-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** Appends an entry upserting `policy` to `chain`; returns the entry. */
const advance = (chain: IntentChain, policy: Policy): LogEntry => signedAdvance(chain, { policies: [policy] });

const frame = (port: number): Uint8Array => buildFrame({ src: '198.18.0.7', dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: port });
const verdict = (dp: MemoryDatapath, port: number): string => dp.classify(frame(port)).verdict;

/** Waits for the next call of a callback slot (no clock involved). */
function nextCall<T>(slot: { waiters: ((v: T) => void)[] }, pred: (v: T) => boolean): Promise<T> {
  return new Promise((resolve) => {
    const w = (v: T): void => {
      if (pred(v)) resolve(v);
      else slot.waiters.push(w);
    };
    slot.waiters.push(w);
  });
}

interface Harness {
  agent: NodeAgent;
  chain: IntentChain;
  uplink: MemoryDatapath;
  workload: MemoryDatapath;
  reports: RevisionReport[];
  conditions: { list: ConditionReport[]; waiters: ((c: ConditionReport) => void)[] };
  logs: string[];
  /** Advances the chain with `policy` and waits until the agent has handled it. */
  push(policy: Policy): Promise<RevisionReport>;
}

function harness(stateFile: StateStore = new StateFile(join(mkdtempSync(join(dir, 's-')), 'applied.json')), retryMinMs = 5, extra: Partial<NodeAgentOptions> = {}): Harness {
  const uplink = new MemoryDatapath();
  const workload = new MemoryDatapath();
  const reports: RevisionReport[] = [];
  const conditions: Harness['conditions'] = { list: [], waiters: [] };
  const logs: string[] = [];
  const log: AgentLogger = (level, msg) => void logs.push(`${level} ${msg}`);
  const agent = new NodeAgent({
    nodeName: 'n1',
    labels: { role: 'edge' },
    datapaths: { uplink, workload },
    stateFile,
    report: (r) => void reports.push(r),
    conditions: (c) => {
      conditions.list.push(c);
      for (const w of conditions.waiters.splice(0)) w(c);
    },
    log,
    coalesceMs: 0,
    retryMinMs,
    retryMaxMs: Math.max(20, retryMinMs),
    ...extra,
  });
  const chain = new IntentChain(trustedKeys);
  return {
    agent,
    chain,
    uplink,
    workload,
    reports,
    conditions,
    logs,
    push: (policy) => pushChange(agent, chain, reports, { policies: [policy] }),
  };
}

const failOn = (role: string) => (): Error => new DatapathError(`apply ${role}: injected`);

test('NodeAgent - both roles apply and the revision is ACKed once enforced', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  const r = await h.push(denyPort('p', 23));
  t.like(r, { revision: 1n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 1n, appliedUnknown: false });
  t.is(verdict(h.uplink, 23), 'drop');
  t.is(verdict(h.workload, 23), 'drop');
  t.is(verdict(h.uplink, 80), 'pass');
  t.deepEqual(h.agent.conditions, { conditions: [], appliedUnknown: false });
});

test('NodeAgent - a failure on the second role switches the first back: NACK, the previous revision in force, state known', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  h.workload.injectApplyFault(failOn('workload'));
  const r = await h.push(denyPort('p', 24));
  t.is(r.outcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.is(r.appliedRevision, 1n);
  t.false(r.appliedUnknown);
  t.regex(r.reason, /apply workload: injected/);
  t.notRegex(r.reason, /apply-rollback-failed/);
  t.is(verdict(h.uplink, 23), 'drop', 'the uplink is back at revision 1');
  t.is(verdict(h.uplink, 24), 'pass');
  t.deepEqual(h.agent.conditions, { conditions: [], appliedUnknown: false });
  t.false(h.agent.status.appliedUnknown);
});

test('NodeAgent - a failure before any revision switches the first role back to passing everything', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  h.workload.injectApplyFault(failOn('workload'));
  const r = await h.push(denyPort('p', 23));
  t.like(r, { outcome: RevisionOutcome.REVISION_OUTCOME_NACK, appliedRevision: 0n, appliedUnknown: false });
  t.is(verdict(h.uplink, 23), 'pass', 'no half-applied revision on the uplink');
});

test('NodeAgent - a failed rollback is a NACK of its own (apply-rollback-failed, appliedUnknown), alarmed, and retried until the datapath is at a known revision', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  const known: RuleSetSpec = h.uplink.ruleSet!;
  const alarmsBefore = await counterValue('edgeplane.agent.apply_rollback_failures');
  h.workload.injectApplyFault(failOn('workload'));
  // The uplink takes the new rule set, then refuses to go back.
  let uplinkBroken = true;
  let rollbacks = 0;
  let retried: () => void = () => undefined;
  const retriedTwice = new Promise<void>((r) => (retried = r));
  h.uplink.injectApplyFault((rs) => {
    if (!uplinkBroken || JSON.stringify(rs) !== JSON.stringify(known)) return undefined;
    if (++rollbacks === 3) retried();
    return new DatapathError('apply uplink: injected rollback failure');
  });
  const raised = nextCall(h.conditions, (c) => c.appliedUnknown);
  const r = await h.push(denyPort('p', 24));

  t.is(r.outcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.regex(r.reason, /^apply-rollback-failed: /);
  t.regex(r.reason, /apply workload: injected/);
  t.regex(r.reason, /injected rollback failure/);
  t.true(r.appliedUnknown, 'the report says the datapath state is unknown');
  t.is(r.appliedRevision, 1n, 'the last revision known to be enforced everywhere');
  const c = await raised;
  t.is(c.conditions[0]?.type, CONDITION_APPLY_ROLLBACK_FAILED);
  t.is(c.conditions[0]?.revision, 2n);
  t.true(h.agent.status.appliedUnknown);
  t.is(h.agent.status.applied, 1n);
  t.is(verdict(h.uplink, 24), 'drop', 'the uplink really is at the new rule set: the state is not revision 1');
  t.is((await counterValue('edgeplane.agent.apply_rollback_failures')) - alarmsBefore, 1);

  // The retries keep failing while the fault lasts (the rollback, then two retries), then bring the uplink back.
  await retriedTwice;
  t.true(h.agent.status.appliedUnknown);
  const cleared = nextCall(h.conditions, (x) => !x.appliedUnknown);
  uplinkBroken = false;
  const back = await cleared;
  t.deepEqual(back.conditions, []);
  t.false(h.agent.status.appliedUnknown);
  t.is(verdict(h.uplink, 23), 'drop', 'back at revision 1');
  t.is(verdict(h.uplink, 24), 'pass');
  t.true(h.logs.includes('info the datapath is back at a known revision'));

  // With the workload fixed, the next revision applies everywhere.
  h.workload.injectApplyFault(undefined);
  const next = await h.push(denyPort('p', 25));
  t.like(next, { outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 3n, appliedUnknown: false });
  t.is(verdict(h.workload, 25), 'drop');
});

test('NodeAgent - a full apply while the state is unknown makes it known again', async (t) => {
  // Retries far apart: only the next revision can settle it here.
  const h = harness(undefined, 3_600_000);
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  const known = JSON.stringify(h.uplink.ruleSet);
  let broken = true;
  h.workload.injectApplyFault(() => (broken ? new DatapathError('apply workload: injected') : undefined));
  h.uplink.injectApplyFault((rs) => (broken && JSON.stringify(rs) === known ? new DatapathError('apply uplink: injected rollback failure') : undefined));
  t.true((await h.push(denyPort('p', 24))).appliedUnknown);
  t.true(h.agent.status.appliedUnknown);
  broken = false;
  const r = await h.push(denyPort('p', 26));
  t.like(r, { outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 3n, appliedUnknown: false });
  t.deepEqual(h.agent.conditions, { conditions: [], appliedUnknown: false });
  t.is(verdict(h.uplink, 26), 'drop');
  t.is(verdict(h.uplink, 24), 'pass');
});

test('NodeAgent - a state file that cannot be written after enforcement: ACK, state-file-failed with a metric, the write retried', async (t) => {
  const file = new StateFile(join(mkdtempSync(join(dir, 'sf-')), 'applied.json'));
  let failing = true;
  const store: StateStore = {
    read: () => file.read(),
    write: (s: AppliedState) => {
      if (failing) throw new Error('write state file: ENOSPC (injected)');
      file.write(s);
    },
  };
  const h = harness(store);
  t.teardown(() => h.agent.close());
  const before = await counterValue('edgeplane.agent.state_file_failures');
  const raised = nextCall(h.conditions, (c) => c.conditions.some((x) => x.type === CONDITION_STATE_FILE_FAILED));
  const r = await h.push(denyPort('p', 23));
  t.like(r, { outcome: RevisionOutcome.REVISION_OUTCOME_ACK, revision: 1n, appliedRevision: 1n, appliedUnknown: false });
  t.is(verdict(h.uplink, 23), 'drop');
  const c = await raised;
  t.false(c.appliedUnknown);
  t.is(c.conditions[0]?.revision, 1n);
  t.regex(c.conditions[0]?.message ?? '', /ENOSPC/);
  t.true((await counterValue('edgeplane.agent.state_file_failures')) - before >= 1);
  t.is(file.read(), undefined);

  const cleared = nextCall(h.conditions, (x) => x.conditions.length === 0);
  failing = false;
  await cleared;
  t.is(file.read()?.snapshot.revision, 1n, 'the retried write recorded the enforced revision');
});

test('NodeAgent - a restarted agent enforces the state file before anything else, and continues from it', async (t) => {
  const path = join(mkdtempSync(join(dir, 'restart-')), 'applied.json');
  const first = harness(new StateFile(path));
  await first.push(denyPort('p', 23));
  await first.push(denyPort('q', 443));
  first.agent.close();

  const uplink = new MemoryDatapath();
  const workload = new MemoryDatapath();
  const reports: RevisionReport[] = [];
  const agent = new NodeAgent({ nodeName: 'n1', labels: { role: 'edge' }, datapaths: { uplink, workload }, stateFile: new StateFile(path), report: (r) => void reports.push(r), log: () => undefined, coalesceMs: 0 });
  t.teardown(() => agent.close());
  const booted = await agent.boot();
  t.is(booted?.revision, 2n);
  t.like(agent.status, { applied: 2n, received: 2n, appliedUnknown: false });
  for (const dp of [uplink, workload]) {
    t.is(verdict(dp, 23), 'drop');
    t.is(verdict(dp, 443), 'drop');
    t.is(verdict(dp, 80), 'pass');
  }
  t.deepEqual(reports, [], 'boot reports nothing: the hello carries the revision');

  // It continues from the state file's chain.
  const chain = new IntentChain(trustedKeys);
  chain.load(booted!);
  const entry = advance(chain, denyPort('p', 24));
  agent.intentAdvanced(chain, [entry]);
  await agent.settled();
  t.like(reports.at(-1), { revision: 3n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK });
  t.is(verdict(uplink, 24), 'drop');
  t.is(verdict(uplink, 23), 'pass');
});

test('NodeAgent - an entry after a quiet spell is applied without the coalescing wait; one right behind it waits for it', async (t) => {
  // A wait longer than the test may run: an entry applied within the test was not held by it.
  const { agent, chain, uplink, reports } = harness(undefined, 5, { coalesceMs: 600_000, coalesceMaxMs: 600_000 });
  t.teardown(() => agent.close());
  // Two entries delivered in one turn (as a catch-up hands them over): one apply, of the second.
  agent.intentAdvanced(chain, [advance(chain, denyPort('p', 23))]);
  agent.intentAdvanced(chain, [advance(chain, denyPort('p', 24))]);
  await agent.settled();
  t.deepEqual(reports.map((r) => r.revision), [2n]);
  t.is(verdict(uplink, 24), 'drop');
  agent.intentAdvanced(chain, [advance(chain, denyPort('p', 25))]);
  await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(reports.map((r) => r.revision), [2n], 'right behind an apply: held for the wait');
});

test('NodeAgent - entries that trickle in after the first closer together than the coalescing wait are applied once; a stream that never pauses is applied within the cap', async (t) => {
  const uplink = new MemoryDatapath();
  const workload = new MemoryDatapath();
  const reports: RevisionReport[] = [];
  const path = join(mkdtempSync(join(dir, 's-')), 'applied.json');
  const agent = new NodeAgent({ nodeName: 'n1', labels: { role: 'edge' }, datapaths: { uplink, workload }, stateFile: new StateFile(path), report: (r) => void reports.push(r), log: () => undefined, coalesceMs: 300, coalesceMaxMs: 3_000 });
  t.teardown(() => agent.close());
  const chain = new IntentChain(trustedKeys);
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  // A live burst of writes: one entry every few ms, for longer than the wait (60 x 10 ms against
  // 300 ms). Each gap is far shorter than the wait, even on a loaded machine; the whole burst is
  // not. The first finds the agent idle and is applied at once.
  for (let i = 0; i < 60; i++) {
    agent.intentAdvanced(chain, [advance(chain, denyPort('p', 1000 + i))]);
    await sleep(10);
  }
  await agent.settled();
  t.deepEqual(
    reports.map((r) => r.revision),
    [1n, 60n],
    'the entry after the quiet spell, then one apply of the rest, of the last entry',
  );
  t.is(verdict(uplink, 1059), 'drop');
  // A stream that never pauses for the wait is applied by the cap, not held back forever.
  let streaming = true;
  const stream = (async () => {
    while (streaming) {
      agent.intentAdvanced(chain, [advance(chain, denyPort('p', 2000))]);
      await sleep(10);
    }
  })();
  const started = Date.now();
  while (reports.length === 2 && Date.now() - started < 5_000) await sleep(10);
  const appliedWhileStreaming = reports.length > 2;
  streaming = false;
  await stream;
  await agent.settled();
  t.true(appliedWhileStreaming, 'applied while the stream still ran');
  t.is(reports.at(-1)?.revision, chain.revision);
});

test('NodeAgent - closing twice is safe', (t) => {
  const h = harness();
  h.agent.close();
  h.agent.close();
  t.pass();
});

test('NodeAgent - conditions raised from outside reach the listener and clear', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  h.agent.raiseCondition('intent-stale', 'x'.repeat(600), 4n);
  const raised = h.conditions.list.at(-1)!;
  t.is(raised.conditions[0]?.type, 'intent-stale');
  t.is(raised.conditions[0]?.message.length, 512, 'bounded');
  h.agent.raiseCondition('intent-stale', 'x'.repeat(600), 4n);
  t.is(h.conditions.list.length, 1, 'no change, no report');
  h.agent.clearCondition('intent-stale');
  t.deepEqual(h.conditions.list.at(-1), { conditions: [], appliedUnknown: false });
});

test('NodeAgent - setLabels recompiles the revision in force for the new labels and ACKs it again; the same labels change nothing', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  const canary = Policy.fromPartial({ ...denyPort('canary', 31), spec: { ...denyPort('canary', 31).spec, nodeSelector: { matchLabels: { tier: 'canary' } } } });
  const r = await h.push(canary);
  t.is(verdict(h.uplink, 31), 'pass', 'not selected');
  t.false(h.agent.setLabels({ role: 'edge' }), 'the same labels');
  await h.agent.settled();
  t.is(h.reports.length, 1);
  t.true(h.agent.setLabels({ role: 'edge', tier: 'canary' }));
  await h.agent.settled();
  t.is(verdict(h.uplink, 31), 'drop');
  t.is(verdict(h.workload, 31), 'drop');
  t.like(h.reports.at(-1), { revision: r.revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: r.revision });
  t.deepEqual(h.agent.labels, { role: 'edge', tier: 'canary' });
});

test('NodeAgent - another history at or below the applied revision (a reset, a resync) is applied', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push(denyPort('a', 23));
  await h.push(denyPort('b', 24));
  // A second history of the same length holding another policy: the follower hands it over after a reset.
  const other = new IntentChain(trustedKeys);
  const entries = [advance(other, denyPort('c', 25)), advance(other, denyPort('d', 26))];
  t.is(other.revision, h.agent.status.applied);
  h.agent.intentAdvanced(other, entries);
  await h.agent.settled();
  t.is(verdict(h.uplink, 26), 'drop');
  t.is(verdict(h.uplink, 24), 'pass');
  t.like(h.reports.at(-1), { revision: 2n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK });
});

/** A policy `p` of `n` rules denying TCP ports 1000.. (a large rule set for reclaimMinRules 2). */
const manyRules = (n: number): Policy => Policy.fromPartial({ metadata: { name: 'p' }, spec: { rules: Array.from({ length: n }, (_, i) => ({ priority: i + 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1000 + i }], action: Action.ACTION_DENY })) } });

test('NodeAgent - reclaim runs after the process\'s first apply, then once after the report of an apply whose rule set before or after is large, and after a boot; never for later small ones', async (t) => {
  const events: string[] = [];
  const chain = new IntentChain(trustedKeys);
  const stateFile = new StateFile(join(mkdtempSync(join(dir, 's-')), 'applied.json'));
  const make = (): NodeAgent =>
    new NodeAgent({
      nodeName: 'n1',
      labels: { role: 'edge' },
      datapaths: { uplink: new MemoryDatapath(), workload: new MemoryDatapath() },
      stateFile,
      report: (r) => void events.push(`report ${r.revision}`),
      log: () => undefined,
      coalesceMs: 0,
      reclaim: () => void events.push('reclaim'),
      reclaimMinRules: 2,
      reclaimQuietMs: 0,
    });
  const agent = make();
  t.teardown(() => agent.close());
  const quietTurn = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 20));
  const push = async (policy: Policy): Promise<void> => {
    agent.intentAdvanced(chain, [advance(chain, policy)]);
    await agent.settled();
    await quietTurn();
  };
  await push(manyRules(1));
  t.deepEqual(events, ['report 1', 'reclaim'], 'the first apply of the process: what the start left is garbage');
  await push(manyRules(1));
  t.deepEqual(events.slice(2), ['report 2'], 'one rule after the first: nothing to reclaim');
  await push(manyRules(3));
  t.deepEqual(events.slice(3), ['report 3', 'reclaim'], 'after the report of the large apply');
  await push(manyRules(1));
  t.deepEqual(events.slice(5), ['report 4', 'reclaim'], 'back to one rule: the large rule set it replaced is garbage now');
  await push(manyRules(1));
  t.deepEqual(events.slice(7), ['report 5']);
  await push(manyRules(3));
  t.deepEqual(events.slice(8), ['report 6', 'reclaim']);
  // A restart that enforces the large state file reclaims what its boot compile left.
  const restarted = make();
  t.teardown(() => restarted.close());
  await restarted.boot();
  await quietTurn();
  t.deepEqual(events.slice(10), ['reclaim']);
});

test('NodeAgent - reclaim waits until the agent is quiet: a burst of large applies is reclaimed once, after its last entry', async (t) => {
  const events: string[] = [];
  const chain = new IntentChain(trustedKeys);
  const quietMs = 400;
  const agent = new NodeAgent({
    nodeName: 'n1',
    labels: { role: 'edge' },
    datapaths: { uplink: new MemoryDatapath(), workload: new MemoryDatapath() },
    stateFile: new StateFile(join(mkdtempSync(join(dir, 's-')), 'applied.json')),
    report: (r) => void events.push(`report ${r.revision}`),
    log: () => undefined,
    coalesceMs: 0,
    reclaim: () => void events.push(`reclaim ${Math.round(performance.now() - lastEntryAt)}`),
    reclaimMinRules: 2,
    reclaimQuietMs: quietMs,
  });
  t.teardown(() => agent.close());
  let lastEntryAt = 0;
  // Five large applies 150 ms apart: each lands inside the quiet time the one before it asks for.
  for (let i = 0; i < 5; i++) {
    lastEntryAt = performance.now();
    agent.intentAdvanced(chain, [advance(chain, manyRules(3 + i))]);
    await agent.settled();
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  t.deepEqual(events, ['report 1', 'report 2', 'report 3', 'report 4', 'report 5'], 'no reclaim inside the burst');
  await new Promise((resolve) => setTimeout(resolve, quietMs));
  t.is(events.length, 6, 'one reclaim after the burst');
  const after = Number(/^reclaim (\d+)$/.exec(events[5] ?? '')?.[1]);
  t.true(after >= quietMs, `the reclaim ran ${after} ms after the last entry, not before the quiet time`);
  t.true(after < quietMs + 300, `and not much later (${after} ms)`);
});

test('NodeAgent - counters go out only when they moved: a delta after traffic, then nothing (no report at all) while no packet comes', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  // The first reading is the baseline: nothing counted yet, so nothing to send.
  t.is(h.agent.counterDeltas(), undefined);
  verdict(h.uplink, 23);
  verdict(h.uplink, 23);
  verdict(h.uplink, 80);
  const report = h.agent.counterDeltas();
  t.truthy(report, 'packets moved: a report');
  t.deepEqual(
    report!.rules.map((r) => [r.rule?.policy, r.rule?.priority, r.packets]),
    [['p', 10, 2n]],
  );
  t.is(report!.interfaces.find((i) => i.interface === 'uplink')?.droppedPackets, 2n);
  // Idle: every later reading is unchanged, and an idle node sends nothing (ControllerLink sends only a report it is given).
  t.is(h.agent.counterDeltas(), undefined);
  t.is(h.agent.counterDeltas(), undefined);
  verdict(h.workload, 23);
  t.deepEqual(h.agent.counterDeltas()?.rules.map((r) => r.packets), [1n], 'a delta since the last report, not a total');
});

/** Policy `name` with one TCP rule of `action` to `port` at `priority`, on both interface roles. */
const onePortRule = (name: string, priority: number, port: number, action: Action): Policy => {
  const p = denyPort(name, port);
  return Policy.fromPartial({ ...p, spec: { ...p.spec!, rules: [{ ...p.spec!.rules[0]!, priority, action }] } });
};

/** A harness whose flushes are recorded in order with its ACKs/NACKs (`sent` false: the link is down). */
function flushHarness(sent = true): Harness & { events: string[]; flushed: CounterReport[] } {
  const events: string[] = [];
  const flushed: CounterReport[] = [];
  const h = harness(undefined, 5, {
    flushCounters: (c) => {
      flushed.push(c);
      events.push(`flush ${c.appliedRevision}`);
      return sent;
    },
  });
  const push = h.push;
  return {
    ...h,
    events,
    flushed,
    push: async (policy) => {
      const r = await push(policy);
      events.push(`report ${r.revision}`);
      return r;
    },
  };
}

const drops = (c: CounterReport | undefined, role = 'uplink'): bigint | undefined => c?.interfaces.find((i) => i.interface === role)?.droppedPackets;

test('NodeAgent - counters are flushed when a rule set is replaced: what a removed rule counted since the last report goes out at the switch, before the ACK, under the revision before', async (t) => {
  const h = flushHarness();
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  t.is(h.agent.counterDeltas(), undefined, 'the baseline reading');
  verdict(h.uplink, 23);
  verdict(h.uplink, 23);
  verdict(h.uplink, 80);
  // The deny rule (priority 10) is replaced by one at priority 20: its id leaves the live rule set.
  await h.push(onePortRule('p', 20, 24, Action.ACTION_DENY));
  t.deepEqual(h.events, ['report 1', 'flush 1', 'report 2'], 'the flush goes before the ACK of the apply that replaced the rule set');
  const flush = h.flushed[0]!;
  t.deepEqual(flush.rules.map((r) => [r.rule?.policy, r.rule?.priority, r.packets]), [['p', 10, 2n]], 'the removed rule counted 2 packets up to the switch');
  t.is(drops(flush), 2n);
  t.is(flush.interfaces.find((i) => i.interface === 'uplink')?.passedPackets, 1n);
  t.is(flush.appliedRevision, 1n);
  t.is(h.agent.counterDeltas(), undefined, 'nothing counted since the switch: nothing is reported twice');
  verdict(h.uplink, 24);
  const after = h.agent.counterDeltas();
  t.deepEqual(after?.rules.map((r) => [r.rule?.priority, r.packets]), [[20, 1n]]);
  t.is(after?.appliedRevision, 2n);
});

test('NodeAgent - the flush reads after every role switched: a packet a rule only the new rule set has decided in between is reported, under the revision before', async (t) => {
  const h = flushHarness();
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  h.agent.counterDeltas();
  verdict(h.uplink, 23);
  // While the workload role applies, the uplink already enforces the new rule set: a packet to
  // port 24 meets its new rule (priority 20) before the flush reads the uplink.
  const apply = h.workload.apply.bind(h.workload);
  h.workload.apply = async (...args) => {
    t.is(verdict(h.uplink, 24), 'drop', 'the uplink switched before the workload applies');
    return apply(...args);
  };
  await h.push(onePortRule('p', 20, 24, Action.ACTION_DENY));
  const flush = h.flushed[0]!;
  t.deepEqual(
    flush.rules.map((r) => [r.rule?.priority, r.packets]).sort(),
    [
      [10, 1n],
      [20, 1n],
    ],
    'the removed rule and the new one, each once',
  );
  t.is(drops(flush), 2n);
  t.is(h.agent.counterDeltas(), undefined, 'nothing is reported twice');
});

test('NodeAgent - a flush attributes packets to the verdicts of the rule set that decided them: a rule whose action changes reports its drops before the switch as drops', async (t) => {
  const h = flushHarness();
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  h.agent.counterDeltas();
  verdict(h.uplink, 23);
  verdict(h.uplink, 23);
  verdict(h.uplink, 23);
  // The same rule (policy p, priority 10: the same id) now allows.
  await h.push(onePortRule('p', 10, 23, Action.ACTION_ALLOW));
  t.is(drops(h.flushed[0]), 3n, 'dropped under the deny rule');
  verdict(h.uplink, 23);
  const after = h.agent.counterDeltas();
  t.is(drops(after), 0n);
  t.is(after?.interfaces.find((i) => i.interface === 'uplink')?.passedPackets, 1n, 'passed under the allow rule');
});

test('NodeAgent - a flush that cannot be sent goes alone with the next counter report, never mixed with what the new rule set counted', async (t) => {
  const h = flushHarness(false);
  t.teardown(() => h.agent.close());
  await h.push(denyPort('p', 23));
  h.agent.counterDeltas();
  verdict(h.uplink, 23);
  await h.push(onePortRule('p', 20, 24, Action.ACTION_DENY));
  verdict(h.uplink, 24);
  verdict(h.uplink, 24);
  const first = h.agent.counterDeltas();
  t.is(first?.appliedRevision, 1n);
  t.is(drops(first), 1n);
  const second = h.agent.counterDeltas();
  t.is(second?.appliedRevision, 2n);
  t.is(drops(second), 2n);
  t.is(h.agent.counterDeltas(), undefined);
});

test('NodeAgent - a rule naming a prefix list enforces the list as the log changes it; a list that does not select the node NACKs, the previous revision in force', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  const from = (src: string): string => h.uplink.classify(buildFrame({ src, dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: 443 })).verdict;
  const feed = (base: bigint, add: string[], remove: string[] = [], site = 'edge'): PrefixListChange =>
    PrefixListChange.fromPartial({ metadata: { name: 'feed' }, spec: { nodeSelector: { matchLabels: { role: site } } }, baseResourceVersion: base, add, remove });
  const policy = (list: string): Policy =>
    Policy.fromPartial({ metadata: { name: 'threats' }, spec: { defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 1, protocol: Protocol.PROTOCOL_TCP, sourcePrefixLists: [list], action: Action.ACTION_DENY }] } });
  const first = await pushChange(h.agent, h.chain, h.reports, { prefixLists: [feed(0n, ['198.51.100.0/24'])], policies: [policy('feed')] });
  t.is(first.outcome, RevisionOutcome.REVISION_OUTCOME_ACK);
  t.is(from('198.51.100.9'), 'drop');
  t.is(from('203.0.113.9'), 'pass');
  // The list alone changes: the next revision enforces the new prefixes.
  const grown = await pushChange(h.agent, h.chain, h.reports, { prefixLists: [feed(1n, ['203.0.113.0/24'], ['198.51.100.0/24'])] });
  t.is(grown.outcome, RevisionOutcome.REVISION_OUTCOME_ACK);
  t.is(from('203.0.113.9'), 'drop');
  t.is(from('198.51.100.9'), 'pass');
  // A policy naming a list no list of that name selects this node with: NACKed, nothing changes.
  const missing = await pushChange(h.agent, h.chain, h.reports, { policies: [policy('other')] });
  t.is(missing.outcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.regex(missing.reason, /prefix list "other" is not held/);
  t.is(from('203.0.113.9'), 'drop', 'the previous revision is in force');
  // The list stops selecting the node: the policy naming it cannot be enforced there.
  const moved = await pushChange(h.agent, h.chain, h.reports, { prefixLists: [feed(2n, [], [], 'core')], policies: [policy('feed')] });
  t.is(moved.outcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.regex(moved.reason, /prefix list "feed" is not held/);
});
