import { createHash } from 'node:crypto';
import { Policy, Rollout, RolloutState, matchesLabelSelector, type Change, type LabelSelector, type RolloutStrategy_Staged } from '@edgeplane/proto';

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


/** Whether a rollout still governs which nodes run its change. */
export function isActive(r: Rollout | undefined): r is Rollout {
  return r?.state === RolloutState.ROLLOUT_STATE_PROGRESSING || r?.state === RolloutState.ROLLOUT_STATE_PAUSED;
}

/**
 * The change that stops a rollout and puts back what was there before it: the previous
 * version of the policy (or no policy, if the rollout created it), and the rollout record in
 * its final state with the reason.
 */
export function revertChange(rollout: Rollout, state: RolloutState.ROLLOUT_STATE_FAILED | RolloutState.ROLLOUT_STATE_ABORTED, reason: string, now: Date): Change {
  const record = Rollout.fromPartial({ ...rollout, state, reason, updateTime: now });
  if (rollout.previous) {
    const previous = Policy.fromPartial({ ...rollout.previous, metadata: { ...rollout.previous.metadata, updateTime: now } });
    return { upserts: [previous], deletes: [], rollouts: [record], serviceUpserts: [], serviceDeletes: [] };
  }
  return { upserts: [], deletes: [rollout.name], rollouts: [record], serviceUpserts: [], serviceDeletes: [] };
}
