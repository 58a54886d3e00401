// Shadow waves (issue 18) end to end on the control plane: a real controller process and
// nats-server, agents' runtimes enrolled with join tokens over mutual TLS, each on an in-memory
// datapath that classifies a steady stream of frames (the simulated fleet's datapath; the eBPF
// one implements the same ShadowDatapath). A bad change fails at the shadow gate with nothing
// enforced and its broken flows sampled; a good one passes and is enforced by the same nodes,
// then the rest; shadow counters a node sends for another node are refused.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Action,
  AgentServiceClient,
  GetRolloutRequest,
  Policy,
  Protocol,
  RolloutState,
  ShadowVerdict,
  WavePhase,
  type ConnectRequest,
  type DeepPartial,
  type RolloutStatus,
  type Rule,
} from '@edgeplane/proto';
import { AgentRuntime } from '../src/agent/agent-runtime.js';
import type { NodeIdentity } from '../src/agent/node-identity.js';
import { MemoryDatapath } from '../src/datapath/memory-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';
import type { LbSpec } from '../src/datapath/service-compile.js';
import { TestControlPlane, until } from '../../../test/support/control-plane.js';
import { call } from '../../../test/support/grpc.js';
import { OtlpReceiver } from '../../../test/support/otlp-receiver.js';
import { enrollTestNode, testRuntimeOptions } from './runtime-helpers.js';

// The controller's spans leave it quickly, as JSON, for the receiver below.
process.env.OTEL_EXPORTER_OTLP_PROTOCOL = 'http/json';
process.env.OTEL_BSP_SCHEDULE_DELAY = '200';

/** A memory datapath that remembers every rule set it was made to enforce. */
class RecordingDatapath extends MemoryDatapath {
  readonly enforced: RuleSetSpec[] = [];
  override async apply(ruleSet: RuleSetSpec, lb?: LbSpec): ReturnType<MemoryDatapath['apply']> {
    const result = await super.apply(ruleSet, lb);
    this.enforced.push(ruleSet);
    return result;
  }
}

const NODES = ['sh-1', 'sh-2', 'sh-3'];
let cp: TestControlPlane;
let otlp: OtlpReceiver;
const dir = mkdtempSync(join(tmpdir(), 'shadow-rollout-test-'));
const logs: string[] = [];
const identities: NodeIdentity[] = [];
const runtimes: AgentRuntime[] = [];
const datapaths = new Map<string, RecordingDatapath>();
let traffic: NodeJS.Timeout | undefined;

/** Web traffic (TCP 80) and a little SSH (TCP 22) from a few clients, into every node's datapath. */
function sendTraffic(): void {
  for (const dp of datapaths.values()) {
    for (let i = 1; i <= 4; i++) dp.classify(buildFrame({ src: `198.18.0.${i}`, dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000 + i, dstPort: 80 }));
    dp.classify(buildFrame({ src: '198.18.0.9', dst: '10.0.0.1', protocol: 'tcp', srcPort: 41_000, dstPort: 22 }));
  }
}

test.before(async () => {
  otlp = await OtlpReceiver.start('127.0.0.1');
  cp = await TestControlPlane.start({ extra: ['--otlp-endpoint', otlp.endpoint('127.0.0.1')] });
  for (const name of NODES) {
    const log = (line: string): void => void logs.push(`${name} ${line}`);
    const labels = { role: 'sh', ...(name === 'sh-1' ? { canary: 'true' } : {}) };
    const identity = await enrollTestNode(cp, name, labels, join(dir, name), log);
    identities.push(identity);
    const dp = new RecordingDatapath();
    datapaths.set(name, dp);
    runtimes.push(await AgentRuntime.start({ ...testRuntimeOptions(cp, identity, { uplink: dp, workload: dp }, join(dir, name), log), retryMinMs: 50, retryMaxMs: 200 }));
  }
  await Promise.all(runtimes.map((r) => r.synced()));
  traffic = setInterval(sendTraffic, 20);
});

test.after.always(async () => {
  clearInterval(traffic);
  for (const r of runtimes) await r.close();
  for (const id of identities) id.close();
  await cp?.close();
  await otlp?.close();
  rmSync(dir, { recursive: true, force: true });
});

const context = (): string => `${logs.slice(-30).join('\n')}\n${cp.controller.output}`;
const rollout = async (name: string): Promise<RolloutStatus | undefined> => (await call(cp.api.fleet, cp.api.fleet.getRollout, GetRolloutRequest.fromPartial({ name })).catch(() => undefined))?.status;
const sec = (s: number) => ({ seconds: BigInt(s), nanos: 0 });
const deny = (priority: number, port: number): DeepPartial<Rule> => ({ priority, name: `deny-${port}`, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: port, last: 0 }], action: Action.ACTION_DENY });

/** Policy `web` (every node of role sh): the rules, rolled out with a shadowed canary wave, then the rest. */
function web(rules: DeepPartial<Rule>[], staged = true): Policy {
  return Policy.fromPartial({
    metadata: { name: 'web' },
    spec: {
      nodeSelector: { matchLabels: { role: 'sh' } },
      defaultAction: Action.ACTION_ALLOW,
      rules,
      ...(staged
        ? {
            rolloutStrategy: {
              strategy: {
                $case: 'staged',
                staged: {
                  waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { canary: 'true' } } }, shadowBakeTime: sec(1), bakeTime: sec(1) }],
                  gates: { maxWouldDropPercent: 5, minShadowPackets: 20n },
                  reportTimeout: sec(30),
                },
              },
            },
          }
        : {}),
    },
  } as DeepPartial<Policy>);
}

/** Whether a rule set denies TCP `port`. */
const denies = (rs: RuleSetSpec, port: number): boolean => rs.rules.some((r) => r.action === 'deny' && r.dstPorts.some((p) => p.from <= port && port <= p.to));

test.serial('shadow wave - a change that would drop the served port fails at the shadow gate: no node ever enforces it, the broken flows are sampled', async (t) => {
  const base = await cp.apply(web([deny(10, 23)], false));
  for (const n of NODES) await until(`${n} at the base revision`, async () => (await cp.nodeStatus(n))?.appliedRevision === base, 15_000, context);

  // The bad change denies the port the nodes serve.
  const bad = await cp.apply(web([deny(10, 23), deny(20, 80)]));
  const phases: string[] = [];
  await until('the rollout to fail', async () => {
    const r = (await rollout('web'))?.rollout;
    if (r && r.changeRevision === bad) phases.push(`${WavePhase[r.wavePhase]} shadow=${r.shadowNodes.join(',')} enforce=${r.waveNodes.join(',')}`);
    return r?.changeRevision === bad && r.state === RolloutState.ROLLOUT_STATE_FAILED;
  }, 30_000, context);
  t.is(phases[0], 'WAVE_PHASE_SHADOW shadow=sh-1 enforce=', 'the canary shadowed the change, nobody enforced it');
  const status = (await rollout('web'))!;
  t.regex(status.rollout!.reason, /^wave 1 \(shadow\): node sh-1 would drop \d+\.\d% of the packets it classified \(\d+ of \d+; more than 5%\); nothing was enforced$/);

  // What the canary would have broken: its web traffic, sampled with the rule that would drop it.
  const reading = status.shadowReadings.find((x) => x.node === 'sh-1');
  t.truthy(reading, 'the canary\'s shadow figures are kept after the failure');
  t.true(reading!.classified >= 20n && reading!.wouldDrop > 0n && reading!.wouldDropPercent > 5);
  t.is(reading!.wouldAllow, 0n);
  t.true(reading!.rules.some((r) => r.rule?.policy === 'web' && r.rule.priority === 20 && r.packets > 0n), 'the candidate\'s rule counted what it would have dropped');
  const broken = status.shadowSamples.filter((f) => f.verdict === ShadowVerdict.SHADOW_VERDICT_WOULD_DROP);
  t.true(broken.length > 0);
  for (const f of broken) {
    t.like(f, { node: 'sh-1', family: 4, protocol: 6, destination: '10.0.0.1', port: 80, candidateRule: { policy: 'web', priority: 20 }, candidateRuleName: 'deny-80', enforcedRule: undefined });
  }

  // Nothing ever enforced it, and the canary stops shadowing once the rollout ended.
  const revert = status.rollout!.resourceVersion;
  for (const n of NODES) await until(`${n} at the revert`, async () => (await cp.nodeStatus(n))?.appliedRevision === revert, 15_000, context);
  for (const [n, dp] of datapaths) t.false(dp.enforced.some((rs) => denies(rs, 80)), `${n} never enforced the change`);
  await until('the canary drops its shadow', () => datapaths.get('sh-1')!.readShadow() === null, 15_000, context);
  t.true(denies(datapaths.get('sh-1')!.ruleSet!, 23), 'the previous version is enforced');

  // The rollout's trace has the shadow phase with its figures.
  await until('the shadow span to arrive', () => otlp.spans.some((s) => s.name === 'edgeplane.rollout.shadow' && s.attributes['edgeplane.revision'] === Number(bad)), 20_000, context);
  const span = otlp.spans.find((s) => s.name === 'edgeplane.rollout.shadow' && s.attributes['edgeplane.revision'] === Number(bad))!;
  t.is(span.attributes['edgeplane.outcome'], 'failed');
  t.is(span.statusCode, 2);
  t.true(Number(span.attributes['edgeplane.shadow.would_drop']) > 0);
  t.true(Number(span.attributes['edgeplane.shadow.classified']) >= 20);
});

test.serial('shadow wave - a good change passes the shadow gate, is enforced by the same nodes, then by the rest', async (t) => {
  const good = await cp.apply(web([deny(10, 23), deny(30, 24)]));
  const phases: string[] = [];
  await until('the rollout to succeed', async () => {
    const r = (await rollout('web'))?.rollout;
    if (r && r.changeRevision === good) {
      const p = `${r.currentWave}:${WavePhase[r.wavePhase]} shadow=${r.shadowNodes.join(',')} enforce=${r.waveNodes.join(',')}`;
      if (phases.at(-1) !== p) phases.push(p);
    }
    return r?.changeRevision === good && r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED;
  }, 60_000, context);
  t.deepEqual(phases, ['0:WAVE_PHASE_SHADOW shadow=sh-1 enforce=', '0:WAVE_PHASE_ENFORCING shadow= enforce=sh-1', '1:WAVE_PHASE_ENFORCING shadow= enforce=sh-1,sh-2,sh-3'], 'the canary shadowed, then the same node enforced, then every node');
  const status = (await rollout('web'))!;
  const reading = status.shadowReadings.find((x) => x.node === 'sh-1')!;
  t.true(reading.classified >= 20n);
  t.is(reading.wouldDrop, 0n);
  t.deepEqual(status.shadowSamples, [], 'no packet\'s verdict would have changed');
  const done = status.rollout!.resourceVersion;
  for (const n of NODES) await until(`${n} at the final revision`, async () => (await cp.nodeStatus(n))?.appliedRevision === done, 15_000, context);
  for (const [n, dp] of datapaths) t.true(denies(dp.ruleSet!, 24), `${n} enforces the change`);
  t.is(datapaths.get('sh-1')!.readShadow(), null, 'the canary stopped shadowing once it enforced');
});

test.serial('shadow wave - shadow counters a node sends for another node are refused; its own are kept', async (t) => {
  const before = (await rollout('web'))!;
  const candidate = `web@${before.rollout!.changeRevision}`;
  const identity = identities.find((i) => i.credentials.nodeName === 'sh-3')!;
  /** Sends a hello as sh-3 (its own certificate) and one counter report whose shadow names `node`; resolves with how the stream ended. */
  const send = (node: string): Promise<grpc.ServiceError | null> =>
    new Promise((resolve) => {
      const client = new AgentServiceClient(cp.address, identity.channelCredentials());
      const stream = client.connect();
      let ended = false;
      const end = (err: grpc.ServiceError | null): void => {
        if (ended) return;
        ended = true;
        client.close();
        resolve(err);
      };
      stream.on('error', (err: grpc.ServiceError) => end(err));
      stream.on('data', (m: { message?: { $case: string } }) => {
        if (m.message?.$case !== 'welcome') return;
        const forged: ConnectRequest = {
          message: {
            $case: 'counters',
            counters: { startTime: undefined, endTime: undefined, rules: [], interfaces: [], appliedRevision: 0n, conntrack: [], blocklists: [], loadBalancer: undefined, shadow: { node, candidate, classified: 1000n, wouldDrop: 900n, wouldAllow: 0n, defaultActionPackets: 0n, rules: [], samples: [] } },
          },
        };
        stream.write(forged);
        // A heartbeat after it: its echo says the report was taken.
        stream.write({ message: { $case: 'heartbeat', heartbeat: { sequence: 1n, time: new Date() } } });
        stream.on('data', (r: { message?: { $case: string } }) => {
          if (r.message?.$case === 'heartbeat') {
            stream.end();
            end(null);
          }
        });
      });
      stream.write({ message: { $case: 'hello', hello: { nodeName: 'sh-3', labels: identity.credentials.labels, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 'forger', conditions: [], appliedUnknown: false, lastReport: undefined } } });
    });
  const refused = await send('sh-1');
  t.is(refused?.code, grpc.status.PERMISSION_DENIED, 'sh-3 may not report for sh-1');
  t.regex(refused?.details ?? '', /node sh-3 sent shadow counters of node "sh-1"/);
  const after = (await rollout('web'))!;
  t.deepEqual(after.shadowReadings.find((x) => x.node === 'sh-1'), before.shadowReadings.find((x) => x.node === 'sh-1'), 'sh-1\'s figures are untouched');
  t.falsy(after.shadowReadings.find((x) => x.node === 'sh-3'));

  // The same report about itself is taken (so the refusal above is about the node it names).
  t.is(await send('sh-3'), null);
  await until('sh-3\'s own report kept', async () => (await rollout('web'))?.shadowReadings.some((x) => x.node === 'sh-3' && x.wouldDrop === 900n) === true, 15_000, context);
  t.pass();
});
