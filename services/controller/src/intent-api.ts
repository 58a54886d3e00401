import {
  ApplyPolicyResponse,
  ApplyServiceResponse,
  DEFAULT_POLICY_LIMITS,
  MAX_INTENT_BYTES,
  MAX_POLICIES,
  MAX_SERVICES,
  Policy,
  Service,
  ServiceSpec,
  PolicyEventType,
  Rollout,
  RolloutKind,
  RolloutState,
  rolloutKey,
  rolloutKindName,
  Protocol,
  checkDnsLabel,
  countViolations,
  quote,
  applyPolicyPatch,
  encodedPolicySize,
  samePolicySpec,
  withBaseRules,
  matchesLabelSelector,
  validatePolicy,
  validateService,
  type ApplyPolicyRequest,
  type ApplyServiceRequest,
  type DeleteServiceRequest,
  type DeleteServiceResponse,
  type GetServiceRequest,
  type GetServiceResponse,
  type ListServicesRequest,
  type ListServicesResponse,
  type ObjectMeta,
  type DeletePolicyRequest,
  type DeletePolicyResponse,
  type GetPolicyRequest,
  type GetPolicyResponse,
  type ListPoliciesRequest,
  type ListPoliciesResponse,
  type PolicyLimits,
  type ResetHistoryRequest,
  type ResetHistoryResponse,
  type Change,
  type TraceContext,
  type WatchPoliciesRequest,
  type WatchPoliciesResponse,
} from '@edgeplane/proto';
import type { IntentChain, PolicyChange } from '@edgeplane/intent-log';
import { NotFoundError, PreconditionError, ValidationError, VersionConflictError } from './errors.js';
import type { IntentStore } from './intent-store.js';
import { paginate } from './page-token.js';
import { selectorParam } from './selector-param.js';
import { checkRolloutKind, isActive, revertChange, startRollout, type PlanNode } from './rollout-plan.js';

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
  /** What the record of an aborted rollout keeps (RolloutManager.ending): the nodes that enforced the change, the last gate readings. */
  rolloutEnding?: (r: Rollout) => Pick<Rollout, 'enforcedNodes' | 'finalGateReadings'>;
  /** Policies the intent may hold; a create beyond it is refused (default MAX_POLICIES). */
  maxPolicies?: number;
  /** Services the intent may hold; a create beyond it is refused (default MAX_SERVICES). */
  maxServices?: number;
  /** Encoded bytes of all policies and services together; a write beyond it is refused (default MAX_INTENT_BYTES). */
  maxIntentBytes?: number;
}

/** Encoded sizes of stored resources: they are never mutated once in the chain, so their size is computed once. */
const encodedSizes = new WeakMap<object, number>();
function encodedSize<T extends object>(r: T, size: (r: T) => number): number {
  let n = encodedSizes.get(r);
  if (n === undefined) encodedSizes.set(r, (n = size(r)));
  return n;
}
const serviceSize = (s: Service): number => Service.encode(s).finish().length;

/**
 * Refuses a write that would bring the encoded bytes of every policy and service past `max`:
 * what a snapshot and an agent's catch-up carry. `replaced` is the size of the stored version
 * the write replaces (0 for a create); `bytes` the incoming one's.
 * @throws PreconditionError (INTENT_TOO_LARGE)
 */
function checkIntentBytes(chain: IntentChain, kind: string, name: string, replaced: number, bytes: number, max: number): void {
  let total = 0;
  for (const p of chain.policies.values()) total += encodedSize(p, encodedPolicySize);
  for (const s of chain.services.values()) total += encodedSize(s, serviceSize);
  // The stored resource adds versions and times to what came in: 64 bytes cover them.
  const grown = total - replaced + bytes + 64;
  if (grown > max) {
    throw new PreconditionError(`${kind} ${name} would bring the intent to about ${grown} bytes, past its bound of ${max}; delete or shrink policies or services first`, 'INTENT_TOO_LARGE');
  }
}

/**
 * Optimistic concurrency: refuses the write unless the stored resource is at `expected`
 * (0: it must not exist). No expectation accepts any version.
 * @throws VersionConflictError
 */
function checkExpectedVersion(kind: string, name: string, existing: { metadata?: ObjectMeta | undefined } | undefined, expected: bigint | undefined): void {
  const current = existing?.metadata?.resourceVersion ?? 0n;
  if (expected !== undefined && expected !== current) {
    throw new VersionConflictError(existing ? `${kind} ${name} is at resource_version ${current}, not ${expected}` : `${kind} ${name} does not exist (expected resource_version ${expected})`);
  }
}

/** The metadata a write stores: the caller's labels and annotations, versions and times kept from `existing` or started at the next revision. */
function storedMetadata(name: string, incoming: ObjectMeta, existing: ObjectMeta | undefined, revision: bigint, now: Date): ObjectMeta {
  return {
    name,
    labels: incoming.labels,
    annotations: incoming.annotations,
    resourceVersion: revision + 1n,
    createRevision: existing?.createRevision ?? revision + 1n,
    createTime: existing?.createTime ?? now,
    updateTime: now,
  };
}

/** Whether a write's labels and annotations equal the stored ones (with equal specs, the write changes nothing). */
function sameMetadata(stored: ObjectMeta, incoming: ObjectMeta): boolean {
  return sameMap(stored.labels, incoming.labels) && sameMap(stored.annotations, incoming.annotations);
}

/**
 * The response to an ApplyPolicy: the policy itself, not a copy (fromPartial would copy every
 * rule of a stored policy that is never modified, only to be encoded once).
 */
function policyResponse(policy: Policy, revision: bigint, outcome: { created: boolean; unchanged: boolean }): ApplyPolicyResponse {
  const response = ApplyPolicyResponse.fromPartial({ revision, created: outcome.created, unchanged: outcome.unchanged });
  response.policy = policy;
  return response;
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


/**
 * Refuses a change to a resource whose rollout is still in progress.
 * @throws PreconditionError (ROLLOUT_IN_PROGRESS)
 */
function checkNoRollout(chain: IntentChain, kind: RolloutKind, name: string): void {
  const running = chain.rollouts.get(rolloutKey(kind, name));
  if (isActive(running)) {
    throw new PreconditionError(
      `${rolloutKindName(kind)} ${name} has a rollout in progress (wave ${running.currentWave + 1} of ${running.strategy?.waves.length ?? 0}); wait for it, or abort it`,
      'ROLLOUT_IN_PROGRESS',
    );
  }
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
  #rolloutEnding: ((r: Rollout) => Pick<Rollout, 'enforcedNodes' | 'finalGateReadings'>) | undefined;
  #maxPolicies: number;
  #maxServices: number;
  #maxIntentBytes: number;

  constructor(store: IntentStore, options: IntentApiOptions = {}) {
    this.#maxPolicies = options.maxPolicies ?? MAX_POLICIES;
    this.#maxServices = options.maxServices ?? MAX_SERVICES;
    this.#maxIntentBytes = options.maxIntentBytes ?? MAX_INTENT_BYTES;
    this.#nodes = options.nodes ?? (() => []);
    this.#rolloutEnding = options.rolloutEnding;
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
    // The rules equal to the stored version's (of the chain as this replica holds it now) are
    // taken as its rule objects, checked and sized before: a one-rule change to a large policy
    // costs a comparison per rule, and the rest only for what changed.
    const request = req.policy && withBaseRules(this.#store.chain.policies.get(req.policy.metadata?.name ?? ''), req.policy);
    const violations = validatePolicy(request, 'policy', this.#limits);
    if (violations.length > 0) throw new ValidationError(`invalid policy: ${countViolations(violations)} problem(s), first: ${violations[0]!.field}: ${violations[0]!.description}`, violations);
    const incoming = request!;
    const name = incoming.metadata!.name;
    let outcome: { policy: Policy; created: boolean; unchanged: boolean } | undefined;
    let rollout: Rollout | undefined;
    const build = (chain: IntentChain): Policy | undefined => {
      const existing = chain.policies.get(name);

      checkExpectedVersion('policy', name, existing, req.expectedResourceVersion);
      checkPrefixListsExist(incoming, chain);
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
        samePolicySpec(existing.spec!, incoming.spec!) &&
        sameMetadata(existing.metadata!, incoming.metadata!)
      ) {
        outcome = { policy: existing, created: false, unchanged: true };
        return undefined;
      }
      // Only a real change waits for a rollout in progress; the same apply again is a no-op.
      checkNoRollout(chain, RolloutKind.ROLLOUT_KIND_POLICY, name);
      if (!existing && chain.policies.size >= this.#maxPolicies) {
        throw new PreconditionError(`the intent holds ${chain.policies.size} policies, the most it may; delete one to create ${name}`, 'TOO_MANY_POLICIES');
      }
      checkIntentBytes(chain, 'policy', name, existing ? encodedSize(existing, encodedPolicySize) : 0, encodedPolicySize(incoming), this.#maxIntentBytes);
      const now = this.#now();
      // A copy but for the rules: those are the stored version's or copies already (withBaseRules).
      const policy = Policy.fromPartial({ metadata: storedMetadata(name, incoming.metadata!, existing?.metadata, chain.revision, now), spec: { ...incoming.spec!, rules: [] } });
      policy.spec!.rules = incoming.spec!.rules;
      outcome = { policy, created: !existing, unchanged: false };
      const staged = incoming.spec!.rolloutStrategy?.strategy;
      rollout = undefined;
      if (staged?.$case === 'staged') {
        const selected = this.#nodes().filter((n) => matchesLabelSelector(incoming.spec!.nodeSelector, n.labels));
        rollout = startRollout({ kind: RolloutKind.ROLLOUT_KIND_POLICY, previous: existing }, name, staged.staged, chain.revision + 1n, selected, now, trace);
      }
      return policy;
    };
    if (req.validateOnly) {
      await this.#store.catchUp();
      const policy = build(this.#store.chain);
      return policyResponse(policy ?? outcome!.policy, 0n, outcome!);
    }
    const written = await this.#store.write((chain) => {
      const policy = build(chain);
      return policy ? { upserts: [policy], deletes: [], rollouts: rollout ? [rollout] : [], serviceUpserts: [], serviceDeletes: [], policyPatches: [] } : undefined;
    }, trace);
    const stored = written ? (written.policies[0] ?? outcome!.policy) : outcome!.policy;
    return policyResponse(stored, written?.revision ?? 0n, outcome!);
  }

  /**
   * Deletes a policy.
   * @throws ValidationError, NotFoundError (unless allow_missing), VersionConflictError, UnavailableError
   */
  delete(req: DeletePolicyRequest, trace?: TraceContext): Promise<DeletePolicyResponse> {
    return this.#delete('policy', (chain) => chain.policies, req, (name) => ({ upserts: [], deletes: [name], rollouts: [], serviceUpserts: [], serviceDeletes: [], policyPatches: [] }), trace);
  }

  /**
   * Deletes a resource of one kind (policy or service): the name checked, allow_missing,
   * expected_resource_version, validate_only, then one entry with `change`.
   */
  async #delete(
    kind: 'policy' | 'service',
    stored: (chain: IntentChain) => ReadonlyMap<string, { metadata?: ObjectMeta | undefined }>,
    req: { name: string; expectedResourceVersion?: bigint | undefined; validateOnly: boolean; allowMissing: boolean },
    change: (name: string) => Change,
    trace?: TraceContext,
  ): Promise<{ revision: bigint }> {
    checkName(req.name, 'name');
    const build = (chain: IntentChain): boolean => {
      const existing = stored(chain).get(req.name);
      if (!existing) {
        if (req.allowMissing && (req.expectedResourceVersion === undefined || req.expectedResourceVersion === 0n)) return false;
        throw new NotFoundError(`${kind} ${req.name} not found`);
      }
      checkExpectedVersion(kind, req.name, existing, req.expectedResourceVersion);
      return true;
    };
    if (req.validateOnly) {
      await this.#store.catchUp();
      build(this.#store.chain);
      return { revision: 0n };
    }
    const written = await this.#store.write((chain) => (build(chain) ? change(req.name) : undefined), trace);
    return { revision: written?.revision ?? 0n };
  }

  /**
   * Creates or updates a service: validated (validateService), refused when another service
   * has its (vip, port, protocol), and written like a policy (optimistic concurrency, nothing
   * written when validate_only or unchanged). A staged rollout strategy starts a rollout as
   * for a policy; a change while one runs is refused (ROLLOUT_IN_PROGRESS).
   * @throws ValidationError, VersionConflictError, PreconditionError, UnavailableError
   */
  async applyService(req: ApplyServiceRequest, trace?: TraceContext): Promise<ApplyServiceResponse> {
    const violations = validateService(req.service, 'service');
    if (violations.length > 0) throw new ValidationError(`invalid service: ${countViolations(violations)} problem(s), first: ${violations[0]!.field}: ${violations[0]!.description}`, violations);
    const incoming = req.service!;
    const spec = incoming.spec!;
    const name = incoming.metadata!.name;
    let outcome: { service: Service; created: boolean; unchanged: boolean } | undefined;
    let rollout: Rollout | undefined;
    const build = (chain: IntentChain): Service | undefined => {
      const existing = chain.services.get(name);
      checkExpectedVersion('service', name, existing, req.expectedResourceVersion);
      if (existing && sameBytes(ServiceSpec.encode(existing.spec!).finish(), ServiceSpec.encode(spec).finish()) && sameMetadata(existing.metadata!, incoming.metadata!)) {
        outcome = { service: existing, created: false, unchanged: true };
        return undefined;
      }
      // Only a real change waits for a rollout in progress; the same apply again is a no-op.
      checkNoRollout(chain, RolloutKind.ROLLOUT_KIND_SERVICE, name);
      // One (vip, port, protocol) is one service: two would race for the same flows.
      for (const other of chain.services.values()) {
        const o = other.spec!;
        if (other.metadata!.name !== name && o.vip === spec.vip && o.port === spec.port && o.protocol === spec.protocol) {
          throw new ValidationError(`invalid service: ${spec.vip} port ${spec.port} is service ${other.metadata!.name}'s`, [
            { field: 'service.spec.vip', description: `${spec.vip} port ${spec.port} ${Protocol[spec.protocol].replace('PROTOCOL_', '')} is already service ${quote(other.metadata!.name)}'s`, reason: 'VIP_IN_USE' },
          ]);
        }
      }
      if (!existing && chain.services.size >= this.#maxServices) {
        throw new PreconditionError(`the intent holds ${chain.services.size} services, the most it may; delete one to create ${name}`, 'TOO_MANY_SERVICES');
      }
      checkIntentBytes(chain, 'service', name, existing ? encodedSize(existing, serviceSize) : 0, serviceSize(incoming), this.#maxIntentBytes);
      const now = this.#now();
      const service = Service.fromPartial({ metadata: storedMetadata(name, incoming.metadata!, existing?.metadata, chain.revision, now), spec });
      outcome = { service, created: !existing, unchanged: false };
      const staged = spec.rolloutStrategy?.strategy;
      rollout = undefined;
      if (staged?.$case === 'staged') {
        const selected = this.#nodes().filter((n) => matchesLabelSelector(spec.nodeSelector, n.labels));
        rollout = startRollout({ kind: RolloutKind.ROLLOUT_KIND_SERVICE, previous: existing }, name, staged.staged, chain.revision + 1n, selected, now, trace);
      }
      return service;
    };
    if (req.validateOnly) {
      await this.#store.catchUp();
      const service = build(this.#store.chain);
      return ApplyServiceResponse.fromPartial({ service: service ?? outcome!.service, revision: 0n, created: outcome!.created, unchanged: outcome!.unchanged });
    }
    const written = await this.#store.write((chain) => {
      const service = build(chain);
      return service ? { upserts: [], deletes: [], rollouts: rollout ? [rollout] : [], serviceUpserts: [service], serviceDeletes: [], policyPatches: [] } : undefined;
    }, trace);
    const stored = written ? (written.entry.change!.serviceUpserts[0] ?? outcome!.service) : outcome!.service;
    return ApplyServiceResponse.fromPartial({ service: stored, revision: written?.revision ?? 0n, created: outcome!.created, unchanged: outcome!.unchanged });
  }

  /**
   * Deletes a service.
   * @throws ValidationError, NotFoundError (unless allow_missing), VersionConflictError, UnavailableError
   */
  deleteService(req: DeleteServiceRequest, trace?: TraceContext): Promise<DeleteServiceResponse> {
    return this.#delete('service', (chain) => chain.services, req, (name) => ({ upserts: [], deletes: [], rollouts: [], serviceUpserts: [], serviceDeletes: [name], policyPatches: [] }), trace);
  }

  /** Returns one service. @throws ValidationError, NotFoundError */
  getService(req: GetServiceRequest): GetServiceResponse {
    const chain = this.#store.chain;
    return { service: found('service', chain.services, req.name), revision: chain.revision };
  }

  /** Lists services in name order, one page at a time. @throws ValidationError */
  listServices(req: ListServicesRequest): ListServicesResponse {
    const chain = this.#store.chain;
    const page = labelledPage(chain.services, req);
    return { services: page.items, nextPageToken: page.nextPageToken, revision: chain.revision };
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
   * Pauses, resumes, promotes (skips the current wave's bake) or aborts (reverts) the rollout of
   * the policy or service `name` (`kind`: UNSPECIFIED is a policy, as requests were before
   * services had rollouts).
   * @throws ValidationError (a bad name or an unknown kind), NotFoundError, PreconditionError (not in a state that allows it)
   */
  async rolloutAction(name: string, action: RolloutAction, reason: string, trace?: TraceContext, kind: RolloutKind = RolloutKind.ROLLOUT_KIND_POLICY): Promise<{ rollout: Rollout; revision: bigint }> {
    checkName(name, 'name');
    checkRolloutKind(kind);
    let result: Rollout | undefined;
    const written = await this.#store.write((chain) => {
      const r = chain.rollouts.get(rolloutKey(kind, name));
      if (!r) throw new NotFoundError(`${rolloutKindName(kind)} ${name} has no rollout`);
      const now = this.#now();
      const state = r.state;
      const not = (what: string): never => {
        throw new PreconditionError(`rollout of ${rolloutKindName(kind)} ${name} is ${RolloutState[state].replace('ROLLOUT_STATE_', '').toLowerCase()}: cannot ${what}`, 'ROLLOUT_STATE');
      };
      if (action === 'abort') {
        if (!isActive(r)) not('abort');
        const change = revertChange(Rollout.fromPartial({ ...r, ...this.#rolloutEnding?.(r) }), RolloutState.ROLLOUT_STATE_ABORTED, reason || 'aborted by an operator', now);
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
      return { upserts: [], deletes: [], rollouts: [next], serviceUpserts: [], serviceDeletes: [], policyPatches: [] };
    }, trace);
    return { rollout: result!, revision: written?.revision ?? 0n };
  }

  /** Returns one policy. @throws ValidationError, NotFoundError */
  get(req: GetPolicyRequest): GetPolicyResponse {
    const chain = this.#store.chain;
    return { policy: found('policy', chain.policies, req.name), revision: chain.revision };
  }

  /** Lists policies in name order, one page at a time. @throws ValidationError */
  list(req: ListPoliciesRequest): ListPoliciesResponse {
    const chain = this.#store.chain;
    const page = labelledPage(chain.policies, req);
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
          for (const patch of entry.change?.policyPatches ?? []) {
            const name = patch.metadata?.name ?? '';
            const p = applyPolicyPatch(known.get(name) ?? (await this.#policyAt(name, patch.baseResourceVersion)), patch);
            changes.push({ type: 'modified', policy: p, revision: entry.revision });
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

  /**
   * Policy `name` as the entry at `revision` stored it (following its patches back to a whole
   * policy), for replaying history that starts after the policy was last written whole.
   * @throws CompactedError if an entry needed was compacted.
   */
  async #policyAt(name: string, revision: bigint): Promise<Policy | undefined> {
    for await (const entry of this.#store.history(revision, revision)) {
      const whole = entry.change?.upserts.find((p) => p.metadata?.name === name);
      if (whole) return whole;
      const patch = entry.change?.policyPatches.find((p) => p.metadata?.name === name);
      if (patch && patch.baseResourceVersion < revision) return applyPolicyPatch(await this.#policyAt(name, patch.baseResourceVersion), patch);
    }
    return undefined;
  }
}

/** The resource `name` of `kind` in `items`. @throws ValidationError (a bad name), NotFoundError */
function found<T>(kind: string, items: ReadonlyMap<string, T>, name: string): T {
  checkName(name, 'name');
  const item = items.get(name);
  if (!item) throw new NotFoundError(`${kind} ${name} not found`);
  return item;
}

/** One page, in name order, of the resources in `items` whose labels match the request's selector. @throws ValidationError */
function labelledPage<T extends { metadata?: { name: string; labels: Record<string, string> } | undefined }>(
  items: ReadonlyMap<string, T>,
  req: { labelSelector: string; pageSize: number; pageToken: string },
): { items: T[]; nextPageToken: string } {
  const selector = selectorParam(req.labelSelector, 'label_selector');
  const matching = [...items.values()].filter((r) => matchesLabelSelector(selector, r.metadata?.labels ?? {}));
  return paginate(matching, (r) => r.metadata?.name ?? '', req.pageSize, req.pageToken);
}

/**
 * Every prefix list the rules of `policy` name exists in the intent.
 * @throws PreconditionError (PREFIX_LIST_NOT_FOUND) naming the first rule field that names a missing one.
 */
function checkPrefixListsExist(policy: Policy, chain: IntentChain): void {
  const found = firstNamedList(policy, (list) => !chain.prefixLists.has(list));
  if (found) throw new PreconditionError(`policy ${policy.metadata!.name}: ${found.field} names prefix list ${found.list}, which does not exist; create the list first`, 'PREFIX_LIST_NOT_FOUND');
}

/**
 * The first rule field of `policy` naming a list for which `which` holds, as a proto field path
 * under `policy.spec` (e.g. `rules[2].source_prefix_lists[0]`), with the list's name.
 */
export function firstNamedList(policy: Policy | undefined, which: (list: string) => boolean): { field: string; list: string } | undefined {
  const rules = policy?.spec?.rules ?? [];
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i]!;
    for (const [field, names] of [['source_prefix_lists', rule.sourcePrefixLists], ['destination_prefix_lists', rule.destinationPrefixLists]] as const) {
      const j = names.findIndex(which);
      if (j >= 0) return { field: `rules[${i}].${field}[${j}]`, list: names[j]! };
    }
  }
  return undefined;
}
