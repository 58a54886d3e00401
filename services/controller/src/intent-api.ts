import {
  ApplyPolicyResponse,
  DEFAULT_POLICY_LIMITS,
  MAX_INTENT_BYTES,
  MAX_POLICIES,
  Policy,
  PolicyEventType,
  Rollout,
  RolloutState,
  PolicySpec,
  checkDnsLabel,
  countViolations,
  quote,
  matchesLabelSelector,
  validatePolicy,
  type ApplyPolicyRequest,
  type DeletePolicyRequest,
  type DeletePolicyResponse,
  type GetPolicyRequest,
  type GetPolicyResponse,
  type ListPoliciesRequest,
  type ListPoliciesResponse,
  type PolicyLimits,
  type ResetHistoryRequest,
  type ResetHistoryResponse,
  type TraceContext,
  type WatchPoliciesRequest,
  type WatchPoliciesResponse,
} from '@edgeplane/proto';
import type { IntentChain, PolicyChange } from '@edgeplane/intent-log';
import { NotFoundError, PreconditionError, ValidationError, VersionConflictError } from './errors.js';
import type { IntentStore } from './intent-store.js';
import { paginate } from './page-token.js';
import { selectorParam } from './selector-param.js';
import { isActive, revertChange, waveMembers, type PlanNode } from './rollout-plan.js';

/** Options of {@link IntentApi}. */
export interface IntentApiOptions {
  limits?: PolicyLimits;
  /**
   * A write that grows a policy past this many rules (and adds rules) needs
   * allow_large_growth. Default 10,000.
   */
  ruleGrowthGuard?: number;
  now?: () => Date;
  /** The registered nodes, for the first wave of a staged rollout. */
  nodes?: () => readonly PlanNode[];
  /** Policies the intent may hold; a create beyond it is refused (default MAX_POLICIES). */
  maxPolicies?: number;
  /** Encoded bytes of all policies together; a write beyond it is refused (default MAX_INTENT_BYTES). */
  maxIntentBytes?: number;
}

/** Encoded sizes of stored policies: they are never mutated once in the chain, so their size is computed once. */
const encodedSizes = new WeakMap<Policy, number>();
function encodedSize(p: Policy): number {
  let n = encodedSizes.get(p);
  if (n === undefined) encodedSizes.set(p, (n = Policy.encode(p).finish().length));
  return n;
}

/** What an operator can do to a rollout. */
export type RolloutAction = 'pause' | 'resume' | 'promote' | 'abort';

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function sameMap(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}


function checkName(name: string, field: string): void {
  const problem = checkDnsLabel(name);
  if (problem) throw new ValidationError(`invalid ${field}`, [{ field, description: `${quote(name)} ${problem}`, reason: name ? 'INVALID_NAME' : 'REQUIRED' }]);
}

/**
 * IntentService's behaviour, independent of gRPC: validation, optimistic concurrency, the
 * rule-growth guard, pagination and watches, over an {@link IntentStore}.
 */
export class IntentApi {
  #store: IntentStore;
  #limits: PolicyLimits;
  #guard: number;
  #now: () => Date;
  #nodes: () => readonly PlanNode[];
  #maxPolicies: number;
  #maxIntentBytes: number;

  constructor(store: IntentStore, options: IntentApiOptions = {}) {
    this.#maxPolicies = options.maxPolicies ?? MAX_POLICIES;
    this.#maxIntentBytes = options.maxIntentBytes ?? MAX_INTENT_BYTES;
    this.#nodes = options.nodes ?? (() => []);
    this.#store = store;
    this.#limits = options.limits ?? DEFAULT_POLICY_LIMITS;
    this.#guard = options.ruleGrowthGuard ?? 10_000;
    this.#now = options.now ?? (() => new Date());
  }

  /**
   * Creates or updates a policy. Writes nothing when validate_only, or when the request equals
   * the stored policy.
   * @throws ValidationError, VersionConflictError, PreconditionError, UnavailableError
   */
  async apply(req: ApplyPolicyRequest, trace?: TraceContext): Promise<ApplyPolicyResponse> {
    const violations = validatePolicy(req.policy, 'policy', this.#limits);
    if (violations.length > 0) throw new ValidationError(`invalid policy: ${countViolations(violations)} problem(s), first: ${violations[0]!.field}: ${violations[0]!.description}`, violations);
    const incoming = req.policy!;
    const name = incoming.metadata!.name;
    let outcome: { policy: Policy; created: boolean; unchanged: boolean } | undefined;
    let rollout: Rollout | undefined;
    const build = (chain: IntentChain): Policy | undefined => {
      const existing = chain.policies.get(name);

      const current = existing?.metadata?.resourceVersion ?? 0n;
      if (req.expectedResourceVersion !== undefined && req.expectedResourceVersion !== current) {
        throw new VersionConflictError(
          existing
            ? `policy ${name} is at resource_version ${current}, not ${req.expectedResourceVersion}`
            : `policy ${name} does not exist (expected resource_version ${req.expectedResourceVersion})`,
        );
      }
      const before = existing?.spec?.rules.length ?? 0;
      const after = incoming.spec!.rules.length;
      if (after > this.#guard && after > before && !req.allowLargeGrowth) {
        throw new PreconditionError(
          `policy ${name} would grow from ${before} to ${after} rules, past the guard of ${this.#guard}; set allow_large_growth to apply it`,
          'RULE_GROWTH_GUARD',
        );
      }
      if (
        existing &&
        sameBytes(PolicySpec.encode(existing.spec!).finish(), PolicySpec.encode(incoming.spec!).finish()) &&
        sameMap(existing.metadata!.labels, incoming.metadata!.labels) &&
        sameMap(existing.metadata!.annotations, incoming.metadata!.annotations)
      ) {
        outcome = { policy: existing, created: false, unchanged: true };
        return undefined;
      }
      // Only a real change waits for a rollout in progress; the same apply again is a no-op.
      const running = chain.rollouts.get(name);
      if (isActive(running)) {
        throw new PreconditionError(`policy ${name} has a rollout in progress (wave ${running.currentWave + 1} of ${running.strategy?.waves.length ?? 0}); wait for it, or abort it`, 'ROLLOUT_IN_PROGRESS');
      }
      if (!existing && chain.policies.size >= this.#maxPolicies) {
        throw new PreconditionError(`the intent holds ${chain.policies.size} policies, the most it may; delete one to create ${name}`, 'TOO_MANY_POLICIES');
      }
      let total = 0;
      for (const p of chain.policies.values()) total += encodedSize(p);
      // The stored policy adds versions and times to what came in: 64 bytes cover them.
      const grown = total - (existing ? encodedSize(existing) : 0) + Policy.encode(incoming).finish().length + 64;
      if (grown > this.#maxIntentBytes) {
        throw new PreconditionError(`policy ${name} would bring the intent to about ${grown} bytes, past its bound of ${this.#maxIntentBytes}; delete or shrink policies first`, 'INTENT_TOO_LARGE');
      }
      const now = this.#now();
      const policy = Policy.fromPartial({
        metadata: {
          name,
          labels: incoming.metadata!.labels,
          annotations: incoming.metadata!.annotations,
          resourceVersion: chain.revision + 1n,
          createRevision: existing?.metadata?.createRevision ?? chain.revision + 1n,
          createTime: existing?.metadata?.createTime ?? now,
          updateTime: now,
        },
        spec: incoming.spec!,
      });
      outcome = { policy, created: !existing, unchanged: false };
      const staged = incoming.spec!.rolloutStrategy?.strategy;
      rollout = undefined;
      if (staged?.$case === 'staged') {
        const revision = chain.revision + 1n;
        const selected = this.#nodes().filter((n) => matchesLabelSelector(incoming.spec!.nodeSelector, n.labels));
        rollout = Rollout.fromPartial({
          name,
          changeRevision: revision,
          ...(existing ? { previous: existing } : {}),
          strategy: staged.staged,
          state: RolloutState.ROLLOUT_STATE_PROGRESSING,
          currentWave: 0,
          waveNodes: waveMembers(staged.staged, revision, selected, 0),
          waveStartTime: now,
          traceContext: trace,
          resourceVersion: revision,
          promotedWave: -1,
          createTime: now,
          updateTime: now,
        });
      }
      return policy;
    };
    if (req.validateOnly) {
      await this.#store.catchUp();
      const policy = build(this.#store.chain);
      return ApplyPolicyResponse.fromPartial({ policy: policy ?? outcome!.policy, revision: 0n, created: outcome!.created, unchanged: outcome!.unchanged });
    }
    const written = await this.#store.write((chain) => {
      const policy = build(chain);
      return policy ? { upserts: [policy], deletes: [], rollouts: rollout ? [rollout] : [], serviceUpserts: [], serviceDeletes: [] } : undefined;
    }, trace);
    const stored = written ? (written.entry.change!.upserts[0] ?? outcome!.policy) : outcome!.policy;
    return ApplyPolicyResponse.fromPartial({ policy: stored, revision: written?.revision ?? 0n, created: outcome!.created, unchanged: outcome!.unchanged });
  }

  /**
   * Deletes a policy.
   * @throws ValidationError, NotFoundError (unless allow_missing), VersionConflictError, UnavailableError
   */
  async delete(req: DeletePolicyRequest, trace?: TraceContext): Promise<DeletePolicyResponse> {
    checkName(req.name, 'name');
    const build = (chain: IntentChain): boolean => {
      const existing = chain.policies.get(req.name);
      if (!existing) {
        if (req.allowMissing && (req.expectedResourceVersion === undefined || req.expectedResourceVersion === 0n)) return false;
        throw new NotFoundError(`policy ${req.name} not found`);
      }
      const current = existing.metadata?.resourceVersion ?? 0n;
      if (req.expectedResourceVersion !== undefined && req.expectedResourceVersion !== current) {
        throw new VersionConflictError(`policy ${req.name} is at resource_version ${current}, not ${req.expectedResourceVersion}`);
      }
      return true;
    };
    if (req.validateOnly) {
      await this.#store.catchUp();
      build(this.#store.chain);
      return { revision: 0n };
    }
    const written = await this.#store.write((chain) => (build(chain) ? { upserts: [], deletes: [req.name], rollouts: [], serviceUpserts: [], serviceDeletes: [] } : undefined), trace);
    return { revision: written?.revision ?? 0n };
  }

  /**
   * Writes an operator-signed history reset (admin only: the gRPC layer authorizes the caller).
   * @throws ValidationError, PreconditionError (EPOCH), UnavailableError
   */
  async resetHistory(req: ResetHistoryRequest, trace?: TraceContext): Promise<ResetHistoryResponse> {
    if (!req.reset) throw new ValidationError('reset is required', [{ field: 'reset', description: 'required' }]);
    return { revision: await this.#store.resetHistory(req.reset, trace) };
  }

  /**
   * Pauses, resumes, promotes (skips the current wave's bake) or aborts (reverts) a rollout.
   * @throws ValidationError, NotFoundError, PreconditionError (not in a state that allows it)
   */
  async rolloutAction(name: string, action: RolloutAction, reason: string, trace?: TraceContext): Promise<{ rollout: Rollout; revision: bigint }> {
    checkName(name, 'name');
    let result: Rollout | undefined;
    const written = await this.#store.write((chain) => {
      const r = chain.rollouts.get(name);
      if (!r) throw new NotFoundError(`policy ${name} has no rollout`);
      const now = this.#now();
      const state = r.state;
      const not = (what: string): never => {
        throw new PreconditionError(`rollout of ${name} is ${RolloutState[state].replace('ROLLOUT_STATE_', '').toLowerCase()}: cannot ${what}`, 'ROLLOUT_STATE');
      };
      if (action === 'abort') {
        if (!isActive(r)) not('abort');
        const change = revertChange(r, RolloutState.ROLLOUT_STATE_ABORTED, reason || 'aborted by an operator', now);
        result = change.rollouts[0];
        return change;
      }
      let next: Rollout;
      if (action === 'pause') {
        if (state !== RolloutState.ROLLOUT_STATE_PROGRESSING) not('pause');
        next = { ...r, state: RolloutState.ROLLOUT_STATE_PAUSED, reason: reason || 'paused by an operator' };
      } else if (action === 'resume') {
        if (state !== RolloutState.ROLLOUT_STATE_PAUSED) not('resume');
        next = { ...r, state: RolloutState.ROLLOUT_STATE_PROGRESSING, reason: '' };
      } else {
        if (!isActive(r)) not('promote');
        next = { ...r, promotedWave: r.currentWave };
      }
      next = Rollout.fromPartial({ ...next, resourceVersion: chain.revision + 1n, updateTime: now });
      result = next;
      return { upserts: [], deletes: [], rollouts: [next], serviceUpserts: [], serviceDeletes: [] };
    }, trace);
    return { rollout: result!, revision: written?.revision ?? 0n };
  }

  /** Returns one policy. @throws ValidationError, NotFoundError */
  get(req: GetPolicyRequest): GetPolicyResponse {
    checkName(req.name, 'name');
    const chain = this.#store.chain;
    const policy = chain.policies.get(req.name);
    if (!policy) throw new NotFoundError(`policy ${req.name} not found`);
    return { policy, revision: chain.revision };
  }

  /** Lists policies in name order, one page at a time. @throws ValidationError */
  list(req: ListPoliciesRequest): ListPoliciesResponse {
    const selector = selectorParam(req.labelSelector, 'label_selector');
    const chain = this.#store.chain;
    const matching = [...chain.policies.values()].filter((p) => matchesLabelSelector(selector, p.metadata?.labels ?? {}));
    const page = paginate(matching, (p) => p.metadata?.name ?? '', req.pageSize, req.pageToken);
    return { policies: page.items, nextPageToken: page.nextPageToken, revision: chain.revision };
  }

  /**
   * Streams changes after start_revision (0: the current policies as ADDED, then changes),
   * calling `send` in revision order, until `signal` aborts.
   * @throws ValidationError (bad selector, a revision in the future), CompactedError
   */
  async watch(req: WatchPoliciesRequest, send: (event: WatchPoliciesResponse) => void, signal: AbortSignal): Promise<void> {
    const selector = selectorParam(req.labelSelector, 'label_selector');
    const chain = this.#store.chain;
    if (req.startRevision > chain.revision) {
      throw new ValidationError('start revision is in the future', [
        { field: 'start_revision', description: `revision ${req.startRevision} does not exist yet (newest is ${chain.revision})`, reason: 'OUT_OF_RANGE' },
      ]);
    }
    const toEvent = (c: PolicyChange): WatchPoliciesResponse => ({
      type: c.type === 'added' ? PolicyEventType.POLICY_EVENT_TYPE_ADDED : c.type === 'modified' ? PolicyEventType.POLICY_EVENT_TYPE_MODIFIED : PolicyEventType.POLICY_EVENT_TYPE_DELETED,
      policy: c.policy,
      revision: c.revision,
    });
    const wanted = (p: Policy): boolean => matchesLabelSelector(selector, p.metadata?.labels ?? {});
    // Live changes are buffered while history is replayed, then drained in order.
    const buffered: [bigint, PolicyChange[]][] = [];
    let sentUpTo = -1n;
    let replaying = true;
    const deliver = (revision: bigint, changes: PolicyChange[]): void => {
      if (revision <= sentUpTo) return;
      for (const c of changes) if (wanted(c.policy)) send(toEvent(c));
      sentUpTo = revision;
    };
    const off = this.#store.onChange((revision, changes) => (replaying ? buffered.push([revision, changes]) : deliver(revision, changes)));
    try {
      const at = chain.revision;
      if (req.startRevision === 0n) {
        for (const p of [...chain.policies.values()].sort((a, b) => (a.metadata!.name < b.metadata!.name ? -1 : 1))) {
          if (wanted(p)) send({ type: PolicyEventType.POLICY_EVENT_TYPE_ADDED, policy: p, revision: at });
        }
        sentUpTo = at;
      } else {
        const known = new Map<string, Policy>();
        for await (const entry of this.#store.history(req.startRevision + 1n, at)) {
          if (signal.aborted) return;
          const changes: PolicyChange[] = [];
          for (const name of entry.change?.deletes ?? []) {
            changes.push({ type: 'deleted', policy: known.get(name) ?? Policy.fromPartial({ metadata: { name } }), revision: entry.revision });
            known.delete(name);
          }
          for (const p of entry.change?.upserts ?? []) {
            const name = p.metadata?.name ?? '';
            changes.push({ type: p.metadata?.createRevision === entry.revision ? 'added' : 'modified', policy: p, revision: entry.revision });
            known.set(name, p);
          }
          deliver(entry.revision, changes);
        }
        sentUpTo = at;
      }
      send({ type: PolicyEventType.POLICY_EVENT_TYPE_BOOKMARK, policy: undefined, revision: at });
      for (const [revision, changes] of buffered) deliver(revision, changes);
      replaying = false;
      await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
    } finally {
      off();
    }
  }
}
