import type { KeyObject } from 'node:crypto';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import {
  HistoryReset,
  LOG_FORMAT_PATCHES,
  LOG_FORMAT_WHOLE,
  LOG_FORMAT_BLOCKLIST,
  type BlocklistChange,
  LogEntry,
  type Policy,
  PolicyPatch,
  applyPolicyPatch,
  policyPatchOf,
  encodedPolicySize,
  openHistoryReset,
  signLogHead,
  rawPublicKey,
  type SignedHistoryReset,
  openLogEntry,
  signLogEntry,
  signSnapshot,
  type Change,
  type TraceContext,
  type TrustedKeys,
} from '@edgeplane/proto';
import { ChainError, ChainFollower, ConflictError, type ChainFollowerStats, type IntentChain, type IntentLog, type PolicyChange } from '@edgeplane/intent-log';
import { CompactedError, PreconditionError, UnavailableError, ValidationError } from './errors.js';

const tracer = trace.getTracer('@edgeplane/controller');

/** Options of {@link IntentStore}. */
export interface IntentStoreOptions {
  controllerId: string;
  /** The fleet written into every entry and snapshot; the store follows only entries of it. Unset: none (tests). */
  fleetId?: string;
  signingKey: KeyObject;
  /** Keys accepted when reading the log (this controller's own, and its peers'). */
  trusted: TrustedKeys;
  /** Operator reset keys: when given, a history reset must verify with one (agents check it anyway). */
  resetKeys?: TrustedKeys;
  /** Publish the signed log head (agents' freeze detection) every this many ms (0 = never). Default 5000. */
  headIntervalMs?: number;
  /** Write a snapshot every this many revisions (0 = never). Default 1000. */
  snapshotEvery?: number;
  /** After a snapshot, keep at least this many entries below it for catching-up readers. Default 10000. */
  retainEntries?: number;
  /**
   * Write a policy upsert as a patch against the version the log holds (log format 2) when the
   * patch is at most this share of the whole policy's bytes; 0: always whole policies (a fleet
   * whose agents predate format 2 skip its entries: they stay on their last revision, alarmed,
   * until a snapshot covers it). Default 0.5.
   */
  patchRatio?: number;
  /** How many times a write is retried after another writer got in first. Default 20. */
  maxConflictRetries?: number;
  /** Receives errors of background work (live follow, snapshots). */
  onError?: (message: string, err: unknown) => void;
  /** Receives what the follower skipped or rebuilt (messages that did not verify, a rewound log). */
  onWarning?: (message: string, fields: Record<string, string>) => void;
}

/** What a successful write returns. */
export interface WriteResult {
  revision: bigint;
  entry: LogEntry;
  /** The policies the entry upserts, whole as stored (those written as patches included). */
  policies: Policy[];
}

/** Listener for applied changes: called once per entry, in revision order. */
export type ChangeListener = (revision: bigint, changes: PolicyChange[]) => void;

/**
 * The controller's view of the intent: an {@link IntentChain} kept current from the JetStream
 * log, and the only writer path to it. Writes are serialized in this process and use the
 * log's expected-last-sequence check across processes; on a conflict the store catches up and
 * the caller's change is rebuilt against the new state. Owns its subscription: close() ends it.
 */
export class IntentStore {
  #log: IntentLog;
  #options: IntentStoreOptions;
  #follower: ChainFollower;
  #tail: Promise<unknown> = Promise.resolve();
  #listeners = new Set<ChangeListener>();
  #lastSnapshot = 0n;
  #closed = false;
  #headTimer: NodeJS.Timeout | undefined;
  #signingKey: KeyObject;

  constructor(log: IntentLog, options: IntentStoreOptions) {
    this.#log = log;
    this.#options = options;
    this.#signingKey = options.signingKey;
    // The writer rebuilds from what is stored: the stream is what it must write after.
    this.#follower = new ChainFollower(log, {
      trusted: options.trusted,
      ...(options.fleetId ? { fleetId: options.fleetId } : {}),
      onDivergence: 'rebuild',
      events: {
        advanced: (_revision, entries, changes) => this.#notify(entries, changes),
        rejected: (reason, claimed) => options.onWarning?.('skipped a log message that does not verify', { reason, ...(claimed === undefined ? {} : { sequence: String(claimed) }) }),
        resynced: (from, to, reason) => options.onWarning?.('rebuilt the intent from the stored log', { from: String(from), to: String(to), reason }),
        error: (message, err) => options.onError?.(message, err),
      },
    });
  }

  /** The chain: current revision, hash and policies. Read-only for callers; read it again after awaits (a rebuild replaces it). */
  get chain(): IntentChain {
    return this.#follower.chain;
  }

  /** What the follower did (catch-ups, rebuilds, skipped messages). */
  get followerStats(): ChainFollowerStats {
    return this.#follower.stats;
  }

  /**
   * Rebuilds the state from the newest snapshot (when the stream was compacted) and the
   * entries after it, then follows the log live.
   * @throws LogUnavailableError if the log cannot be read; ChainError if it was compacted
   *   beyond its snapshot.
   */
  async start(): Promise<void> {
    await this.#follower.start();
    this.#lastSnapshot = this.chain.revision;
    const every = this.#options.headIntervalMs ?? 5000;
    if (every > 0 && !this.#closed) {
      this.publishHead();
      this.#headTimer = setInterval(() => this.publishHead(), every);
    }
  }

  /**
   * Publishes the signed head of the log as this controller holds it (fleet, revision, hash,
   * time): agents raise intent-stale when they have not seen one for a while. Never throws.
   */
  publishHead(): void {
    const chain = this.chain;
    try {
      this.#log.publishHead(signLogHead({ fleetId: this.#options.fleetId ?? '', revision: chain.revision, hash: Buffer.from(chain.lastHash), time: new Date(), controllerId: this.#options.controllerId }, this.#signingKey));
    } catch (err) {
      this.#options.onError?.('publish log head', err);
    }
  }

  /** Registers a listener for applied changes; returns the function that removes it. */
  onChange(listener: ChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Calls the listeners once per applied entry, in revision order. */
  #notify(entries: LogEntry[], changes: PolicyChange[]): void {
    let i = 0;
    for (const entry of entries) {
      const mine: PolicyChange[] = [];
      while (i < changes.length && changes[i]!.revision === entry.revision) mine.push(changes[i++]!);
      for (const l of this.#listeners) {
        try {
          l(entry.revision, mine);
        } catch (err) {
          this.#options.onError?.('change listener', err);
        }
      }
    }
  }

  /**
   * Reads every entry the log holds beyond the current revision. Concurrent calls share one read.
   * @throws LogUnavailableError if the log cannot be read.
   */
  catchUp(): Promise<void> {
    return this.#follower.catchUp();
  }

  /**
   * Appends one change built from the current state. `build` runs against the newest state
   * (again after a conflict) and may throw to refuse the write, or return undefined to write
   * nothing. Writes in this process are serialized.
   * @returns the revision and entry, or undefined if `build` returned undefined.
   * @throws whatever `build` throws; UnavailableError if the log cannot be written.
   */
  write(build: (chain: IntentChain) => Change | undefined, trace?: TraceContext, now: () => Date = () => new Date()): Promise<WriteResult | undefined> {
    return this.#serialized(build, trace, now, {});
  }

  /**
   * Appends one change to prefix lists and blocks (a format 3 entry with an empty Change), built
   * from the current state as write() does. The entry's revision becomes the resource_version of
   * every list and block in it, and the id ("blk-" + revision) of each block without one.
   * @returns the revision and entry, or undefined if `build` returned undefined.
   * @throws whatever `build` throws; UnavailableError if the log cannot be written.
   */
  writeBlocklist(build: (chain: IntentChain) => BlocklistChange | undefined, trace?: TraceContext, now: () => Date = () => new Date()): Promise<WriteResult | undefined> {
    let pending: BlocklistChange | undefined;
    const change = (chain: IntentChain): Change | undefined => {
      pending = build(chain);
      return pending ? { upserts: [], deletes: [], rollouts: [], serviceUpserts: [], serviceDeletes: [], policyPatches: [] } : undefined;
    };
    return this.#serialized(change, trace, now, {}, undefined, () => pending);
  }

  #serialized(build: (chain: IntentChain) => Change | undefined, trace: TraceContext | undefined, now: () => Date, extra: Partial<Pick<LogEntry, 'historyReset' | 'keyRotation'>>, nextKey?: KeyObject, blocklist?: () => BlocklistChange | undefined): Promise<WriteResult | undefined> {
    const run = this.#tail.then(() => this.#write(build, trace, now, extra, nextKey, blocklist));
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Writes an operator-signed history reset into the log (an entry with no change that carries
   * it), then stores it beside the snapshot for agents that miss the entry. The controller
   * cannot sign a reset: it checks what it can (it decodes, names this fleet, and its epoch is
   * above the newest stored reset's) and, when given reset keys, the signature.
   * @returns the revision of the entry.
   * @throws ValidationError if the reset does not decode, names another fleet or does not
   *   verify; PreconditionError (EPOCH) if its epoch is not above the newest; UnavailableError.
   */
  async resetHistory(signed: SignedHistoryReset, trace?: TraceContext): Promise<bigint> {
    let reset: HistoryReset;
    try {
      reset = this.#options.resetKeys ? openHistoryReset(signed, this.#options.resetKeys) : HistoryReset.decode(signed.reset);
    } catch (err) {
      throw new ValidationError(`history reset: ${(err as Error).message}`, [{ field: 'reset', description: (err as Error).message }]);
    }
    if (signed.signature.length === 0 || !signed.keyId) throw new ValidationError('history reset: it is not signed', [{ field: 'reset.signature', description: 'required: sign it with an operator reset key' }]);
    if ((this.#options.fleetId ?? '') !== reset.fleetId) throw new ValidationError(`history reset: it names fleet ${JSON.stringify(reset.fleetId.slice(0, 64))}, this is ${JSON.stringify(this.#options.fleetId ?? '')}`, [{ field: 'reset.fleet_id', description: 'must be this fleet' }]);
    const newest = await this.#log.readHistoryReset();
    if (newest) {
      const epoch = HistoryReset.decode(newest.reset).epoch;
      if (reset.epoch <= epoch) throw new PreconditionError(`history reset: epoch ${reset.epoch} is not above the newest reset's ${epoch}`, 'EPOCH');
    }
    const written = await this.#serialized(() => ({ upserts: [], deletes: [], rollouts: [], serviceUpserts: [], serviceDeletes: [], policyPatches: [] }), trace, () => new Date(), { historyReset: signed });
    await this.#log.writeHistoryReset(signed);
    return written!.revision;
  }

  /**
   * Rotates the log signing key: writes an entry introducing `next`, signed by the current key
   * (followers trust `next` from then on, along the chain and across snapshots), then signs
   * everything after it with `next`. The caller persists `next` first.
   * @returns the revision of the rotation entry.
   * @throws UnavailableError if the log cannot be written.
   */
  async rotateKey(next: KeyObject, trace?: TraceContext): Promise<bigint> {
    // The key switches inside the write, once the entry is stored: the next write signs with it.
    const written = await this.#serialized(() => ({ upserts: [], deletes: [], rollouts: [], serviceUpserts: [], serviceDeletes: [], policyPatches: [] }), trace, () => new Date(), { keyRotation: { publicKey: Buffer.from(rawPublicKey(next)) } }, next);
    return written!.revision;
  }

  async #write(build: (chain: IntentChain) => Change | undefined, trace: TraceContext | undefined, now: () => Date, extra: Partial<Pick<LogEntry, 'historyReset' | 'keyRotation'>>, nextKey?: KeyObject, blocklist?: () => BlocklistChange | undefined): Promise<WriteResult | undefined> {
    if (this.#closed) throw new UnavailableError('the controller is shutting down');
    const retries = this.#options.maxConflictRetries ?? 20;
    for (let attempt = 0; attempt <= retries; attempt++) {
      await this.catchUp();
      const chain = this.chain;
      const change = build(chain);
      if (!change) return undefined;
      // The next stream sequence: above the newest valid entry and above any message that did
      // not verify (it occupies a sequence); the entry links to the newest valid one.
      const expectedLast = this.#follower.position;
      const revision = expectedLast + 1n;
      // The entry is a copy of what build() made (the versions below are set on it), but for
      // the policies' rules: those are never modified, and a large policy's are most of a write.
      const rules = change.upserts.map((p) => p.spec?.rules);
      const entry = LogEntry.fromPartial({
        revision,
        previousHash: Buffer.from(chain.lastHash),
        createTime: now(),
        change: { ...change, upserts: change.upserts.map((p) => (p.spec ? { ...p, spec: { ...p.spec, rules: [] } } : p)) },
        traceContext: trace,
        controllerId: this.#options.controllerId,
        fleetId: this.#options.fleetId ?? '',
        ...extra,
        blocklistChange: blocklist?.(),
      });
      for (const c of entry.blocklistChange?.prefixLists ?? []) {
        c.metadata!.resourceVersion = revision;
        if (c.baseResourceVersion === 0n) c.metadata!.createRevision = revision;
      }
      for (const b of entry.blocklistChange?.blocks ?? []) {
        if (b.id === '') b.id = `blk-${revision}`;
        b.resourceVersion = revision;
      }
      entry.change!.upserts.forEach((p, i) => {
        if (p.spec) p.spec.rules = [...rules[i]!];
        p.metadata!.resourceVersion = revision;
      });
      for (const s of entry.change!.serviceUpserts) s.metadata!.resourceVersion = revision;
      for (const r of entry.change!.rollouts) r.resourceVersion = revision;
      const policies = [...entry.change!.upserts];
      const format = entry.blocklistChange ? LOG_FORMAT_BLOCKLIST : this.#patch(entry.change!, chain);
      const signed = signLogEntry(entry, this.#signingKey, format);
      try {
        const stored = await tracer.startActiveSpan('edgeplane.intent.publish', { kind: SpanKind.PRODUCER, attributes: { 'edgeplane.revision': Number(revision), 'messaging.system': 'nats' } }, async (span) => {
          try {
            return await this.#log.append(signed, expectedLast, trace?.traceparent ? { traceparent: trace.traceparent } : {});
          } catch (err) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
            throw err;
          } finally {
            span.end();
          }
        });
        if (stored !== revision) throw new ChainError(`the log stored revision ${revision} at sequence ${stored}`);
        // The live subscription may have delivered it already (then this is a duplicate); if a
        // catch-up is running it is applied when that ends, before the next write builds.
        this.#follower.offer(signed, stored);
        if (nextKey) this.#signingKey = nextKey;
        this.#maybeSnapshot();
        return { revision, entry, policies };
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
        // Another writer (or a message that is not an entry) took the sequence: the catch-up at
        // the top of the loop reads it. Back off a little when the server did not say where it is.
        if (err.actualLast === undefined || err.actualLast <= this.#follower.position) await new Promise((r) => setTimeout(r, 5 + Math.random() * 20 * (attempt + 1)));
      }
    }
    throw new UnavailableError(`write gave up after ${retries} conflicts with other writers`);
  }

  /**
   * Moves each upsert of `change` whose patch against the version `chain` holds is at most
   * patchRatio of its bytes into policy_patches (not when the change carries rollout records:
   * a staged rollout's entry keeps its policies whole beside the record). Each patch is checked
   * by applying it as followers will. @returns the log format the change needs.
   */
  #patch(change: Change, chain: IntentChain): number {
    const ratio = this.#options.patchRatio ?? 0.5;
    if (ratio <= 0 || change.rollouts.length > 0 || change.deletes.length > 0) return LOG_FORMAT_WHOLE;
    const whole: Policy[] = [];
    for (const policy of change.upserts) {
      const base = chain.policies.get(policy.metadata?.name ?? '');
      const patch = base ? policyPatchOf(base, policy) : undefined;
      if (patch && PolicyPatch.encode(patch).finish().length <= ratio * encodedPolicySize(policy) && this.#applies(base!, patch)) change.policyPatches.push(patch);
      else whole.push(policy);
    }
    change.upserts = whole;
    return change.policyPatches.length > 0 ? LOG_FORMAT_PATCHES : LOG_FORMAT_WHOLE;
  }

  /** Whether `patch` applies to `base` as a follower applies it (its digest included). */
  #applies(base: Policy, patch: PolicyPatch): boolean {
    try {
      applyPolicyPatch(base, patch);
      return true;
    } catch (err) {
      this.#options.onError?.('write a policy patch: it does not apply to its own base; writing the policy whole', err);
      return false;
    }
  }

  #maybeSnapshot(): void {
    const every = BigInt(this.#options.snapshotEvery ?? 1000);
    if (every === 0n || this.chain.revision - this.#lastSnapshot < every) return;
    this.#lastSnapshot = this.chain.revision;
    void this.snapshotNow().catch((err: unknown) => this.#options.onError?.('write snapshot', err));
  }

  /** Writes a snapshot of the current state and compacts the log below it, keeping retainEntries. */
  async snapshotNow(): Promise<bigint> {
    const snapshot = this.chain.snapshot();
    await this.#log.writeSnapshot(signSnapshot(snapshot, this.#signingKey));
    const keepFrom = snapshot.revision - BigInt(this.#options.retainEntries ?? 10_000) + 1n;
    if (keepFrom > 1n) await this.#log.compact(keepFrom);
    return snapshot.revision;
  }

  /**
   * Reads the entries from..to from the log (verified) — for watchers that start in the past.
   * @throws PreconditionError-worthy ChainError if from is below what compaction kept.
   */
  async *history(from: bigint, to: bigint): AsyncGenerator<LogEntry> {
    const { first } = await this.#log.bounds();
    if (from < first) throw new CompactedError(`revisions before ${first} were compacted; watch from revision 0 to get the current state`);
    for await (const m of this.#log.messages(from, to)) {
      if (m.error) continue;
      let entry: LogEntry;
      try {
        entry = openLogEntry(m.signed, this.chain.trusted);
      } catch {
        continue; // not an entry of this log: the follower counted and reported it
      }
      if (entry.revision === m.revision) yield entry;
    }
  }

  /** Stops following the log; waits for the write in progress. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#headTimer);
    this.#follower.close();
    await this.#tail;
  }
}
