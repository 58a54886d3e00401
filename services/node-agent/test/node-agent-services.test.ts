// NodeAgent and services (issue 14): the node's load-balancing spec goes with the uplink's rule
// set through every path rule sets take (apply, NACK, rollback of a partial apply, relabel, the
// state file at boot), and a backend health change re-applies the revision in force with no log
// entry and no report. Signed entries on the real chain (IntentChain), the in-memory datapath
// (whose selection is LbReference over the laid-out bytes), faults injected into it; a health
// view that the test sets (the runtime's is ServiceHealth, run end to end in
// agent-service-lb.test.ts against real TCP backends). No kernel, no network, no clock in assertions.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RevisionOutcome, Rollout, RolloutKind, RolloutState, parseAddress, type ConditionReport, type Service, type RevisionReport } from '@edgeplane/proto';
import { IntentChain } from '@edgeplane/intent-log';
import { CONDITION_HEALTH_APPLY_FAILED, NodeAgent } from '../src/agent/node-agent.js';
import { StateFile, type StateStore } from '../src/agent/state-file.js';
import { DatapathError } from '../src/datapath/errors.js';
import type { FlowTuple } from '../src/datapath/flow-hash.js';
import { MemoryDatapath, type MemoryDatapathOptions } from '../src/datapath/memory-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import { compileServices, type LbSpec } from '../src/datapath/service-compile.js';
import { service } from './lb-helpers.js';
import { advance, denyPort, installTestMeter, pushChange, trustedKeys, type Change } from './node-agent-helpers.js';

const counterValue = installTestMeter();

const dir = mkdtempSync(join(tmpdir(), 'node-agent-services-test-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** `n` new TCP flows from distinct clients to vip:port. */
function flows(vip: string, port: number, n = 400): FlowTuple[] {
  const dst = parseAddress(vip)!;
  return Array.from({ length: n }, (_, i) => ({ family: dst.length === 4 ? 4 : 6, proto: 6, src: new Uint8Array([198, 18, i >> 8, i & 255]), dst, sport: 20_000 + i, dport: port }));
}

/** How many of `n` new flows to vip:port each backend ("address:port") gets; "drop" and "pass" counted as such. */
function spread(dp: MemoryDatapath, vip: string, port: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of flows(vip, port)) {
    const s = dp.selectBackend(f);
    const k = s.kind === 'backend' ? `${s.address}:${s.port}` : s.kind;
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

const names = (lb: LbSpec | undefined): string[] => lb?.services.map((s) => s.name) ?? [];
const tables = (lb: LbSpec | undefined): number[][] => lb?.services.map((s) => [...s.table]) ?? [];

interface Harness {
  agent: NodeAgent;
  chain: IntentChain;
  uplink: MemoryDatapath;
  workload: MemoryDatapath;
  reports: RevisionReport[];
  conditions: ConditionReport[];
  /** Backends the test calls unhealthy: `service address port`. */
  down: Set<string>;
  push(change: Change): Promise<RevisionReport>;
  /** Tells the agent of a health change and waits until it is handled. */
  healthChanged(): Promise<void>;
}

function harness(o: { stateFile?: StateStore; labels?: Record<string, string>; uplink?: MemoryDatapathOptions; retryMinMs?: number; applied?: (down: Set<string>) => void } = {}): Harness {
  const uplink = new MemoryDatapath(o.uplink);
  const workload = new MemoryDatapath();
  const reports: RevisionReport[] = [];
  const conditions: ConditionReport[] = [];
  const down = new Set<string>();
  const agent = new NodeAgent({
    nodeName: 'n1',
    labels: o.labels ?? { role: 'edge' },
    datapaths: { uplink, workload },
    stateFile: o.stateFile ?? new StateFile(join(mkdtempSync(join(dir, 's-')), 'applied.json')),
    report: (r) => void reports.push(r),
    conditions: (c) => void conditions.push(c),
    health: (name, address, port) => !down.has(`${name} ${address} ${port}`),
    ...(o.applied ? { applied: () => o.applied!(down) } : {}),
    log: () => undefined,
    coalesceMs: 0,
    retryMinMs: o.retryMinMs ?? 5,
    retryMaxMs: Math.max(20, o.retryMinMs ?? 5),
  });
  const chain = new IntentChain(trustedKeys);
  return {
    agent,
    chain,
    uplink,
    workload,
    reports,
    conditions,
    down,
    push: (change) => pushChange(agent, chain, reports, change),
    async healthChanged() {
      agent.healthChanged();
      await agent.settled();
    },
  };
}

const edge = { nodeSelector: { matchLabels: { role: 'edge' } } };

test('NodeAgent services - a service selecting the node reaches the uplink apply with the rule set, never the workload; one selecting other nodes reaches neither', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  const web = service('web', { ...edge, vip: '192.0.2.10' });
  const elsewhere = service('elsewhere', { vip: '192.0.2.11', nodeSelector: { matchLabels: { role: 'core' } } });
  const r = await h.push({ policies: [denyPort('p', 23)], services: [web, elsewhere] });
  t.like(r, { revision: 1n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 1n });
  t.deepEqual(names(h.uplink.lb), ['web']);
  t.is(h.workload.lb, undefined, 'the workload role gets no services');
  t.is(h.uplink.classify(buildFrame({ src: '198.18.0.7', dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: 23 })).verdict, 'drop', 'the rule set came with it');
  // New flows to web's VIP spread over its backends by weight (1 and 3); the other VIP is not a service here.
  const shares = spread(h.uplink, '192.0.2.10', 443);
  t.deepEqual([...shares.keys()].sort(), ['10.0.0.1:443', '10.0.0.2:443']);
  t.true(shares.get('10.0.0.2:443')! > 2 * shares.get('10.0.0.1:443')!, JSON.stringify([...shares]));
  t.deepEqual([...spread(h.uplink, '192.0.2.11', 443)], [['pass', 400]]);
  t.deepEqual([...spread(h.workload, '192.0.2.10', 443)], [['pass', 400]]);

  // A later revision without the service takes it away.
  await h.push({ serviceDeletes: ['web'] });
  t.deepEqual(names(h.uplink.lb), []);
  t.deepEqual([...spread(h.uplink, '192.0.2.10', 443)], [['pass', 400]]);
});

test('NodeAgent services - one datapath for both roles is applied once, with the services', async (t) => {
  const dp = new MemoryDatapath();
  const reports: RevisionReport[] = [];
  const agent = new NodeAgent({ nodeName: 'n1', labels: {}, datapaths: { uplink: dp, workload: dp }, stateFile: new StateFile(join(mkdtempSync(join(dir, 'one-')), 'applied.json')), report: (r) => void reports.push(r), log: () => undefined, coalesceMs: 0 });
  t.teardown(() => agent.close());
  const chain = new IntentChain(trustedKeys);
  agent.intentAdvanced(chain, [advance(chain, { services: [service('web')] })]);
  await agent.settled();
  t.is(reports.at(-1)?.outcome, RevisionOutcome.REVISION_OUTCOME_ACK);
  t.deepEqual(names(dp.lb), ['web']);
});

test('NodeAgent services - an invalid service, or two on one VIP, NACKs naming the service; the previous pair stays in force', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push({ policies: [denyPort('p', 23)], services: [service('web', edge)] });
  const before = h.uplink.lb;
  const ruleSet = JSON.stringify(h.uplink.ruleSet);

  // Not what the controller would have written (version skew, a forged entry): refused on the node.
  const bad = service('bad', { vip: '192.0.2.99', backends: [] });
  const r = await h.push({ policies: [denyPort('p', 24)], services: [bad] });
  t.like(r, { revision: 2n, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, appliedRevision: 1n });
  t.regex(r.reason, /^service bad is invalid: /);
  t.is(h.uplink.lb, before, 'the previous services stay');
  t.is(JSON.stringify(h.uplink.ruleSet), ruleSet, 'and the previous rule set');

  // Two selected services on one VIP, port and protocol.
  const twin = service('twin', { ...edge, backends: [{ address: '10.0.0.9' }] });
  const r2 = await h.push({ serviceDeletes: ['bad'], services: [twin] });
  t.is(r2.outcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.regex(r2.reason, /^services twin and web both select this node on 192\.0\.2\.10 port 443 TCP/);
  t.is(h.uplink.lb, before);
  t.is(h.agent.status.applied, 1n);

  // Fixed by a later revision: applied.
  const r3 = await h.push({ serviceDeletes: ['twin'] });
  t.like(r3, { outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 4n });
});

test('NodeAgent services - services beyond the datapath capacity NACK with the limit; the previous pair stays', async (t) => {
  const h = harness({ uplink: { lbCapacity: { services: 1, slots: 1024, backends: 16 } } });
  t.teardown(() => h.agent.close());
  await h.push({ services: [service('web')] });
  const before = h.uplink.lb;
  const r = await h.push({ services: [service('api', { vip: '192.0.2.11' })] });
  t.like(r, { outcome: RevisionOutcome.REVISION_OUTCOME_NACK, appliedRevision: 1n });
  t.regex(r.reason, /^capacity lb-services: the 2 services that select this node need 2, the datapath holds at most 1/);
  t.is(h.uplink.lb, before);
  t.deepEqual([...spread(h.uplink, '192.0.2.11', 443)], [['pass', 400]]);
});

test('NodeAgent services - a partial apply is rolled back to the previous pair, services included', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push({ services: [service('web')] });
  const before = spread(h.uplink, '192.0.2.10', 443);
  // The uplink takes revision 2 (another backend set), the workload refuses it.
  h.workload.injectApplyFault(() => new DatapathError('apply workload: injected'));
  const r = await h.push({ services: [service('web', { backends: [{ address: '10.9.9.9' }] })] });
  t.like(r, { outcome: RevisionOutcome.REVISION_OUTCOME_NACK, appliedRevision: 1n, appliedUnknown: false });
  t.deepEqual(names(h.uplink.lb), ['web'], 'the services of revision 1 are back, not dropped');
  t.deepEqual(spread(h.uplink, '192.0.2.10', 443), before, 'and select as before');
});

test('NodeAgent services - a relabel compiles the services again: a service selecting the new labels is applied, and goes with them', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  const canary = service('canary', { nodeSelector: { matchLabels: { tier: 'canary' } } });
  const r = await h.push({ services: [canary] });
  t.deepEqual(names(h.uplink.lb), []);
  t.true(h.agent.setLabels({ role: 'edge', tier: 'canary' }));
  await h.agent.settled();
  t.deepEqual(names(h.uplink.lb), ['canary']);
  t.like(h.reports.at(-1), { revision: r.revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK });
  t.true(h.agent.setLabels({ role: 'edge' }));
  await h.agent.settled();
  t.deepEqual(names(h.uplink.lb), []);
});

test('NodeAgent services - a restarted agent enforces the services of its state file at boot', async (t) => {
  const path = join(mkdtempSync(join(dir, 'restart-')), 'applied.json');
  const first = harness({ stateFile: new StateFile(path) });
  await first.push({ services: [service('web', edge), service('api', { vip: '192.0.2.11', nodeSelector: { matchLabels: { role: 'core' } } })] });
  await first.push({ policies: [denyPort('p', 23)] });
  const shares = spread(first.uplink, '192.0.2.10', 443);
  first.agent.close();

  const uplink = new MemoryDatapath();
  const workload = new MemoryDatapath();
  const agent = new NodeAgent({ nodeName: 'n1', labels: { role: 'edge' }, datapaths: { uplink, workload }, stateFile: new StateFile(path), report: () => undefined, log: () => undefined, coalesceMs: 0 });
  t.teardown(() => agent.close());
  t.is((await agent.boot())?.revision, 2n);
  t.deepEqual(names(uplink.lb), ['web'], 'the services of revision 2 that select this node');
  t.is(workload.lb, undefined);
  t.deepEqual(spread(uplink, '192.0.2.10', 443), shares, 'the same selection as before the restart');
});

test('NodeAgent services - a health change re-applies the revision in force at once, with no report: the backend takes no new flows, and back it rebuilds the same tables', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  const web = service('web', { ...edge, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2' }, { address: '10.0.0.3' }] });
  await h.push({ policies: [denyPort('p', 23)], services: [web] });
  const reports = h.reports.length;
  const healthy = h.uplink.lb;
  t.deepEqual([...spread(h.uplink, '192.0.2.10', 443).keys()].sort(), ['10.0.0.1:443', '10.0.0.2:443', '10.0.0.3:443']);

  h.down.add('web 10.0.0.2 443');
  await h.healthChanged();
  t.is(h.reports.length, reports, 'no ACK or NACK: the revision did not change');
  t.is(h.agent.status.applied, 1n);
  t.is(h.agent.status.healthApplies, 1);
  const sick = h.uplink.lb!.services[0]!;
  t.deepEqual(sick.backends.map((b) => [b.address, b.healthy, b.effectiveWeight]), [['10.0.0.1', true, 1], ['10.0.0.2', false, 0], ['10.0.0.3', true, 1]]);
  const without = spread(h.uplink, '192.0.2.10', 443);
  t.deepEqual([...without.keys()].sort(), ['10.0.0.1:443', '10.0.0.3:443'], 'no new flow gets the unhealthy backend');
  t.is(h.uplink.classify(buildFrame({ src: '198.18.0.7', dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: 23 })).verdict, 'drop', 'the rule set stays');

  // Healthy again: exactly the tables of before (from the agent's cache: the same objects).
  h.down.clear();
  await h.healthChanged();
  t.is(h.reports.length, reports);
  t.is(h.agent.status.healthApplies, 2);
  t.deepEqual(tables(h.uplink.lb), tables(healthy));
  t.is(h.uplink.lb!.services[0]!.table, healthy!.services[0]!.table, 'not rebuilt: the cache held it');
  t.deepEqual([...spread(h.uplink, '192.0.2.10', 443).keys()].sort(), ['10.0.0.1:443', '10.0.0.2:443', '10.0.0.3:443']);
});

test('NodeAgent services - a failed health re-apply raises backend-health-apply-failed and its counter, keeps the previous tables, and is retried until it takes', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push({ services: [service('web')] });
  const before = h.uplink.lb;
  const failuresBefore = await counterValue('edgeplane.agent.health_apply_failures');
  let failing = 3;
  let failed: () => void = () => undefined;
  const allFailed = new Promise<void>((r) => (failed = r));
  h.uplink.injectApplyFault(() => {
    if (failing === 0) return undefined;
    if (--failing === 0) failed();
    return new DatapathError('apply uplink: injected');
  });
  h.down.add('web 10.0.0.2 443');
  await h.healthChanged();
  t.is(h.uplink.lb, before, 'the datapath keeps the previous tables');
  const raised = h.agent.conditions.conditions.find((c) => c.type === CONDITION_HEALTH_APPLY_FAILED);
  t.is(raised?.revision, 1n);
  t.regex(raised?.message ?? '', /^backend health of revision 1 not applied: apply uplink: injected$/);
  t.true((await counterValue('edgeplane.agent.health_apply_failures')) - failuresBefore >= 1);
  t.false(h.agent.status.appliedUnknown, 'a refused apply changed nothing: the state is known');

  // The retries run on their own (backoff) and the one after the fault ends takes.
  await allFailed;
  while (h.agent.status.healthApplies === 0) await new Promise((r) => setTimeout(r, 5));
  await h.agent.settled();
  t.false(h.uplink.lb!.services[0]!.backends[1]!.healthy);
  t.deepEqual([...spread(h.uplink, '192.0.2.10', 443).keys()], ['10.0.0.1:443']);
  t.deepEqual(h.agent.conditions.conditions, [], 'the condition cleared');
  t.is((await counterValue('edgeplane.agent.health_apply_failures')) - failuresBefore, 3);
  t.is(h.reports.length, 1, 'never a report');
});

test('NodeAgent services - a health change told with a revision goes with its apply; told while a revision is refused, it still reaches the revision in force', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  await h.push({ services: [service('web')] });
  h.down.add('web 10.0.0.1 443');
  h.agent.healthChanged();
  // Coalesced: the revision's compile sees the new health, and nothing is applied twice.
  await h.push({ services: [service('web'), service('api', { vip: '192.0.2.11' })] });
  t.false(h.uplink.lb!.services.find((x) => x.name === 'web')!.backends[0]!.healthy);
  t.is(h.agent.status.healthApplies, 0, 'no health re-apply after the revision that carried it');
  h.down.clear();
  await h.healthChanged();
  t.is(h.agent.status.healthApplies, 1);

  h.down.add('web 10.0.0.2 443');
  h.agent.healthChanged();
  // Coalesced with the health change: a revision that NACKs.
  const r = await h.push({ services: [service('bad', { vip: '192.0.2.99', backends: [] })] });
  t.is(r.outcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.is(h.agent.status.applied, 2n);
  const web = h.uplink.lb!.services.find((x) => x.name === 'web')!;
  t.false(web.backends[1]!.healthy, 'revision 2 runs with the new health');
  t.deepEqual([...spread(h.uplink, '192.0.2.10', 443).keys()], ['10.0.0.1:443']);
});

test('NodeAgent services - health that moved under an apply without being told (a retarget aligning a new service with a probe it shares) is re-applied', async (t) => {
  // What ServiceHealth.retarget does after an apply: a backend already probed for another
  // service takes that probe's verdict, without telling its listeners.
  const h = harness({ applied: (down) => down.add('api 10.0.0.2 443') });
  t.teardown(() => h.agent.close());
  await h.push({ services: [service('api', { vip: '192.0.2.11' })] });
  t.is(h.reports.length, 1);
  t.false(h.uplink.lb!.services[0]!.backends[1]!.healthy, 'the agent noticed and applied it');
  t.is(h.agent.status.healthApplies, 1);
  t.deepEqual([...spread(h.uplink, '192.0.2.11', 443).keys()], ['10.0.0.1:443']);
});

/** A rollout record of service `name`, in progress, whose waves so far hold `waveNodes`. */
function serviceRollout(name: string, waveNodes: string[], previousService?: Service, state = RolloutState.ROLLOUT_STATE_PROGRESSING): Rollout {
  return Rollout.fromPartial({ name, kind: RolloutKind.ROLLOUT_KIND_SERVICE, ...(previousService ? { previousService } : {}), state, waveNodes, strategy: { waves: [{ target: { $case: 'percent', percent: 50 } }, { target: { $case: 'percent', percent: 100 } }] } });
}

test('NodeAgent services - under a staged rollout a service is its target version on the wave nodes, its previous one (or none) elsewhere, health re-applies included; a policy of its name is apart', async (t) => {
  const h = harness();
  t.teardown(() => h.agent.close());
  const v1 = service('web', { ...edge, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2' }] });
  await h.push({ policies: [denyPort('web', 23)], services: [v1] });
  const stored = h.chain.services.get('web')!;
  const v2 = service('web', { ...edge, backends: [{ address: '10.0.0.3' }] });
  const backends = (): string[] => [...spread(h.uplink, '192.0.2.10', 443).keys()].sort();

  // Wave 1 is another node: n1 keeps v1, and the policy of the same name is untouched.
  t.like(await h.push({ services: [v2], rollouts: [serviceRollout('web', ['n2'], stored)] }), { outcome: RevisionOutcome.REVISION_OUTCOME_ACK });
  t.deepEqual(backends(), ['10.0.0.1:443', '10.0.0.2:443'], 'outside the wave: the previous version');
  t.is(h.uplink.classify(buildFrame({ src: '198.18.0.7', dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: 23 })).verdict, 'drop', 'policy web is enforced as stored');
  // A health re-apply of the revision in force compiles the same version.
  h.down.add('web 10.0.0.1 443');
  await h.healthChanged();
  t.deepEqual(backends(), ['10.0.0.2:443'], 'the previous version, with its unhealthy backend out');
  h.down.clear();
  await h.healthChanged();

  // The next wave takes n1: the target version.
  await h.push({ rollouts: [serviceRollout('web', ['n1', 'n2'], stored)] });
  t.deepEqual(backends(), ['10.0.0.3:443']);
  // A policy rollout of the same name does not choose the service's version.
  await h.push({ rollouts: [serviceRollout('web', ['n2'], stored), Rollout.fromPartial({ name: 'web', kind: RolloutKind.ROLLOUT_KIND_POLICY, state: RolloutState.ROLLOUT_STATE_PROGRESSING, waveNodes: ['n1'] })] });
  t.deepEqual(backends(), ['10.0.0.1:443', '10.0.0.2:443']);
  // Finished: the stored version everywhere.
  await h.push({ rollouts: [serviceRollout('web', ['n2'], stored, RolloutState.ROLLOUT_STATE_SUCCEEDED)] });
  t.deepEqual(backends(), ['10.0.0.3:443']);

  // A rollout that creates a service: nothing outside its waves.
  await h.push({ services: [service('fresh', { ...edge, vip: '192.0.2.12' })], rollouts: [serviceRollout('fresh', ['n2'])] });
  t.deepEqual(names(h.uplink.lb), ['web']);
  await h.push({ rollouts: [serviceRollout('fresh', ['n1', 'n2'])] });
  t.deepEqual(names(h.uplink.lb), ['web', 'fresh']);
});

test('MemoryDatapath - keeps the LbSpec it was given; the same rule set and services are unchanged, other services are installed', async (t) => {
  const dp = new MemoryDatapath();
  t.is(dp.lb, undefined);
  t.deepEqual(dp.selectBackend(flows('192.0.2.10', 443, 1)[0]!), { kind: 'pass' });
  const ruleSet = { rules: [], defaultAction: 'allow' as const };
  const lb = compileServices([service('web')], { labels: {} });
  t.like(await dp.apply(ruleSet, lb), { mode: 'installed', services: 1 });
  t.is(dp.lb, lb);
  t.like(await dp.apply(ruleSet, compileServices([service('web')], { labels: {} })), { mode: 'unchanged', services: 1 }, 'equal services, other objects');
  const drained = compileServices([service('web')], { labels: {}, health: (_s, a) => a !== '10.0.0.2' });
  t.like(await dp.apply(ruleSet, drained), { mode: 'installed', services: 1 }, 'health is part of the pair');
  t.like(await dp.apply(ruleSet), { mode: 'installed', services: 0 });
  t.deepEqual(dp.selectBackend(flows('192.0.2.10', 443, 1)[0]!), { kind: 'pass' });
  t.like(await dp.apply(ruleSet), { mode: 'unchanged', services: 0 });
  // Refused (capacity): nothing changes.
  const small = new MemoryDatapath({ lbCapacity: { services: 1, slots: 32, backends: 4 } });
  await t.throwsAsync(small.apply(ruleSet, lb), { name: 'CapacityError', message: /^capacity lb-slots: / });
  t.is(small.lb, undefined);
  t.is(small.ruleSet, undefined);
});
