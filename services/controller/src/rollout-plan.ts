import { createHash } from 'node:crypto';
import {
  Policy,
  Rollout,
  RolloutKind,
  RolloutState,
  Service,
  WavePhase,
  isServiceRollout,
  matchesLabelSelector,
  type Change,
  type LabelSelector,
  type RolloutStrategy_Staged,
  type TraceContext,
} from '@edgeplane/proto';
import type { IntentChain } from '@edgeplane/intent-log';
import { ValidationError } from './errors.js';

/** A node as the plan needs it. */
export interface PlanNode {
  name: string;
  labels: Readonly<Record<string, string>>;
}

/** The stable rank of a node within one change: SHA-256 of "changeRevision:node". */
export function rankKey(changeRevision: bigint, node: string): string {
  return createHash('sha256').update(`${changeRevision}:${node}`).digest('hex');
}

/**
 * Returns the nodes that run the change up to and including wave `upTo` (cumulative), in name
 * order. `nodes` are the nodes the policy selects. Percent waves take the first ceil(p% x N)
 * nodes by {@link rankKey}; selector waves take the selected nodes with those labels. Pure and
 * deterministic: any party with the same node list gets the same answer.
 */
export function waveMembers(strategy: RolloutStrategy_Staged, changeRevision: bigint, nodes: readonly PlanNode[], upTo: number): string[] {
  const ranked = [...nodes].sort((a, b) => (rankKey(changeRevision, a.name) < rankKey(changeRevision, b.name) ? -1 : 1));
  const members = new Set<string>();
  for (let i = 0; i <= upTo && i < strategy.waves.length; i++) {
    const target = strategy.waves[i]!.target;
    if (target?.$case === 'percent') {
      const count = Math.ceil((Math.min(100, Math.max(0, target.percent)) / 100) * ranked.length);
      for (const n of ranked.slice(0, count)) members.add(n.name);
    } else if (target?.$case === 'selector') {
      const sel: LabelSelector = target.selector;
      for (const n of nodes) if (matchesLabelSelector(sel, n.labels)) members.add(n.name);
    }
  }
  return [...members].sort();
}

/** The name of the wave {@link completeWaves} appends. */
export const IMPLICIT_LAST_WAVE = 'rest';

/**
 * The waves a rollout runs: the strategy's, and a last wave of 100 % (named
 * {@link IMPLICIT_LAST_WAVE}, no bake time) when the strategy's last wave is not `percent: 100`,
 * so a rollout that succeeds means every node the change selects runs it (as Argo Rollouts
 * promotes fully after its last step). A last selector wave, even one that matches every node
 * today, gets it too: nodes may join during the rollout. The resource keeps the strategy as
 * written; the rollout record holds the completed one. Pure.
 */
export function completeWaves(strategy: RolloutStrategy_Staged): RolloutStrategy_Staged {
  const last = strategy.waves.at(-1)?.target;
  if (last?.$case === 'percent' && last.percent >= 100) return strategy;
  return { ...strategy, waves: [...strategy.waves, { name: IMPLICIT_LAST_WAVE, target: { $case: 'percent', percent: 100 }, bakeTime: undefined, shadowBakeTime: undefined }] };
}

/** Whether wave `wave` of `strategy` shadows the change before it enforces it (a shadow bake time above 0). */
export function hasShadowPhase(strategy: RolloutStrategy_Staged, wave: number): boolean {
  const t = strategy.waves[wave]?.shadowBakeTime;
  return t !== undefined && (t.seconds > 0n || t.nanos > 0);
}

/** Where a wave's nodes stand in a rollout record (Rollout.wave_nodes, shadow_nodes, wave_phase). */
export type WaveEntry = Pick<Rollout, 'waveNodes' | 'shadowNodes' | 'wavePhase'>;

/**
 * The record's nodes when wave `wave` starts: with a shadow phase ({@link hasShadowPhase}) the
 * wave's new nodes (its members not in `enforcing`, the nodes that enforce already) shadow the
 * change and `enforcing` stays as it is; without one, every member enforces it. Pure.
 */
export function enterWave(strategy: RolloutStrategy_Staged, changeRevision: bigint, nodes: readonly PlanNode[], wave: number, enforcing: readonly string[]): WaveEntry {
  const members = waveMembers(strategy, changeRevision, nodes, wave);
  if (!hasShadowPhase(strategy, wave)) return { waveNodes: members, shadowNodes: [], wavePhase: WavePhase.WAVE_PHASE_ENFORCING };
  const have = new Set(enforcing);
  return { waveNodes: [...enforcing], shadowNodes: members.filter((n) => !have.has(n)), wavePhase: WavePhase.WAVE_PHASE_SHADOW };
}

/** The record's nodes once a wave's shadow phase passed: the same nodes enforce the change. Pure. */
export function passShadow(r: Pick<Rollout, 'waveNodes' | 'shadowNodes'>): WaveEntry {
  return { waveNodes: [...new Set([...r.waveNodes, ...r.shadowNodes])].sort(), shadowNodes: [], wavePhase: WavePhase.WAVE_PHASE_ENFORCING };
}

/** Whether a rollout still governs which nodes run its change. */
export function isActive(r: Rollout | undefined): r is Rollout {
  return r?.state === RolloutState.ROLLOUT_STATE_PROGRESSING || r?.state === RolloutState.ROLLOUT_STATE_PAUSED;
}

/** What a rollout may change: a policy or a service (each has a node selector in its spec). */
export type RolloutResource = { kind: RolloutKind.ROLLOUT_KIND_POLICY; previous: Policy | undefined } | { kind: RolloutKind.ROLLOUT_KIND_SERVICE; previous: Service | undefined };

/**
 * The record that starts a staged rollout of the change written at `revision` to the resource
 * `name` (a policy or a service): the strategy's waves completed to 100 % ({@link completeWaves}),
 * wave 1 computed from `nodes` (its nodes shadowing the change first when it has a shadow phase: {@link enterWave}), the nodes the new version selects. The previous version (undefined: the change creates the resource) is kept in the
 * record, so agents outside the waves and a revert can use it. Pure.
 */
export function startRollout(
  resource: RolloutResource,
  name: string,
  strategy: RolloutStrategy_Staged,
  revision: bigint,
  nodes: readonly PlanNode[],
  now: Date,
  trace: TraceContext | undefined,
): Rollout {
  strategy = completeWaves(strategy);
  return Rollout.fromPartial({
    name,
    kind: resource.kind,
    ...(resource.previous ? (resource.kind === RolloutKind.ROLLOUT_KIND_SERVICE ? { previousService: resource.previous } : { previous: resource.previous }) : {}),
    changeRevision: revision,
    strategy,
    state: RolloutState.ROLLOUT_STATE_PROGRESSING,
    currentWave: 0,
    ...enterWave(strategy, revision, nodes, 0, []),
    waveStartTime: now,
    traceContext: trace,
    resourceVersion: revision,
    promotedWave: -1,
    createTime: now,
    updateTime: now,
  });
}

/**
 * The node selector a rollout's waves choose from: the resource's as stored (the target), or
 * the previous version's once the stored one is gone.
 */
export function rolloutSelector(chain: Pick<IntentChain, 'policies' | 'services'>, r: Rollout): LabelSelector | undefined {
  if (isServiceRollout(r)) return chain.services.get(r.name)?.spec?.nodeSelector ?? r.previousService?.spec?.nodeSelector;
  return chain.policies.get(r.name)?.spec?.nodeSelector ?? r.previous?.spec?.nodeSelector;
}

/**
 * The change that stops a rollout and puts back what was there before it: the previous
 * version of the policy or service (or none, if the rollout created it), and the rollout
 * record in its final state with the reason.
 */
export function revertChange(rollout: Rollout, state: RolloutState.ROLLOUT_STATE_FAILED | RolloutState.ROLLOUT_STATE_ABORTED, reason: string, now: Date): Change {
  const record = Rollout.fromPartial({ ...rollout, state, reason, updateTime: now });
  const change: Change = { upserts: [], deletes: [], rollouts: [record], serviceUpserts: [], serviceDeletes: [], policyPatches: [] };
  if (isServiceRollout(rollout)) {
    // The record goes after the delete in the chain's order, so it survives it.
    if (rollout.previousService) change.serviceUpserts.push(Service.fromPartial({ ...rollout.previousService, metadata: { ...rollout.previousService.metadata, updateTime: now } }));
    else change.serviceDeletes.push(rollout.name);
  } else if (rollout.previous) change.upserts.push(Policy.fromPartial({ ...rollout.previous, metadata: { ...rollout.previous.metadata, updateTime: now } }));
  else change.deletes.push(rollout.name);
  return change;
}

/** Refuses a rollout kind this controller does not know (a newer client's). @throws ValidationError */
export function checkRolloutKind(kind: RolloutKind, field = 'kind'): void {
  if (!(kind in RolloutKind) || kind === RolloutKind.UNRECOGNIZED) {
    throw new ValidationError(`invalid ${field}`, [{ field, description: `unknown rollout kind ${kind}; expected ROLLOUT_KIND_POLICY or ROLLOUT_KIND_SERVICE`, reason: 'INVALID_KIND' }]);
  }
}
