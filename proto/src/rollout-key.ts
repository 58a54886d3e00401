import { RolloutKind, type Rollout } from '../gen/edgeplane/v1/rollout.js';

/**
 * The key of a rollout record among all of them: a policy's rollout by the policy's name (as
 * records were keyed before rollouts named their kind), a service's by `service/NAME`. Names are
 * DNS labels (no `/`), so a policy and a service of the same name never share a key. Pure.
 */
export function rolloutKey(kind: RolloutKind, name: string): string {
  return kind === RolloutKind.ROLLOUT_KIND_SERVICE ? `service/${name}` : name;
}

/** The key of one rollout record ({@link rolloutKey} of its kind and name). */
export function rolloutKeyOf(rollout: Pick<Rollout, 'kind' | 'name'>): string {
  return rolloutKey(rollout.kind, rollout.name);
}

/** Whether a rollout record changes a service (otherwise a policy: UNSPECIFIED is a policy). */
export function isServiceRollout(rollout: Pick<Rollout, 'kind'>): boolean {
  return rollout.kind === RolloutKind.ROLLOUT_KIND_SERVICE;
}

/** The lower-case word for a rollout's kind, for messages and tables: `policy` or `service`. */
export function rolloutKindName(kind: RolloutKind): 'policy' | 'service' {
  return kind === RolloutKind.ROLLOUT_KIND_SERVICE ? 'service' : 'policy';
}

/**
 * The name a node's shadow candidate carries for one rollout (ShadowReport.candidate): its key
 * and change revision, "KEY@REVISION". The agent names what it shadows with it, the controller
 * accepts shadow counters for a rollout only under it. A node shadowing several rollouts at once
 * joins theirs with "," (sorted). Pure.
 */
export function shadowCandidateOf(rollout: Pick<Rollout, 'kind' | 'name' | 'changeRevision'>): string {
  return `${rolloutKeyOf(rollout)}@${rollout.changeRevision}`;
}

/** Whether a shadow candidate's name (as a ShadowReport carries it) covers `rollout`. Linear in the name. */
export function shadowCandidateCovers(candidate: string, rollout: Pick<Rollout, 'kind' | 'name' | 'changeRevision'>): boolean {
  return candidate.split(',').includes(shadowCandidateOf(rollout));
}
