import type { KeyObject } from 'node:crypto';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import {
  LogEntry,
  openLogEntry,
  signLogEntry,
  signSnapshot,
  type Change,
  type SignedLogEntry,
  type TraceContext,
  type TrustedKeys,
} from '@edgeplane/proto';
import { ChainError, ConflictError, GapError, IntentChain, type IntentLog, type PolicyChange } from '@edgeplane/intent-log';
import { CompactedError, UnavailableError } from './errors.js';

const tracer = trace.getTracer('@edgeplane/controller');

/** Options of {@link IntentStore}. */
export interface IntentStoreOptions {
  controllerId: string;
  signingKey: KeyObject;
  /** Keys accepted when reading the log (this controller's own, and its peers'). */
  trusted: TrustedKeys;
  /** Write a snapshot every this many revisions (0 = never). Default 1000. */
  snapshotEvery?: number;
  /** After a snapshot, keep at least this many entries below it for catching-up readers. Default 10000. */
  retainEntries?: number;
  /** How many times a write is retried after another writer got in first. Default 20. */
  maxConflictRetries?: number;
  /** Receives errors of background work (live follow, snapshots). */
  onError?: (message: string, err: unknown) => void;
}

/** What a successful write returns. */
export interface WriteResult {
  revision: bigint;
  entry: LogEntry;
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
  #chain: IntentChain;
  #tail: Promise<unknown> = Promise.resolve();
  #listeners = new Set<ChangeListener>();
  #unsubscribe: (() => void) | undefined;
  #catchingUp: Promise<void> | undefined;
  #lastSnapshot = 0n;
  #closed = false;

  constructor(log: IntentLog, options: IntentStoreOptions) {
    this.#log = log;
    this.#options = options;
    this.#chain = new IntentChain(options.trusted);
  }

  /** The chain: current revision, hash and policies. Read-only for callers. */
  get chain(): IntentChain {
    return this.#chain;
  }

  /**
   * Rebuilds the state from the newest snapshot and the entries after it, then follows the
   * log live.
   * @throws UnavailableError if the log cannot be read; ChainError if it does not verify.
   */
  async start(): Promise<void> {
    const snapshot = await this.#log.readSnapshot();
    if (snapshot) {
      this.#chain.restore(snapshot);
      this.#lastSnapshot = this.#chain.revision;
    }
    await this.catchUp();
    const sub = this.#log.subscribe(
      (signed, revision) => this.#onLive(signed, revision),
      (err) => this.#options.onError?.('intent log subscription', err),
    );
    this.#unsubscribe = () => sub.unsubscribe();
  }

  /** Registers a listener for applied changes; returns the function that removes it. */
  onChange(listener: ChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #apply(signed: SignedLogEntry, storedAt?: bigint): void {
    const result = this.#chain.append(signed, storedAt);
    if (!result.applied) return;
    for (const l of this.#listeners) {
      try {
        l(result.entry.revision, result.changes);
      } catch (err) {
        this.#options.onError?.('change listener', err);
      }
    }
  }

  #onLive(signed: SignedLogEntry, revision: bigint): void {
    try {
      this.#apply(signed, revision);
    } catch (err) {
      if (err instanceof GapError) void this.catchUp().catch((e: unknown) => this.#options.onError?.('catch up', e));
      else this.#options.onError?.('apply live entry', err);
    }
  }

  /**
   * Reads every entry the log holds beyond the current revision. Concurrent calls share one read.
   * @throws UnavailableError if the log cannot be read; ChainError if the log was rewound.
   */
  catchUp(): Promise<void> {
    this.#catchingUp ??= this.#readAhead().finally(() => (this.#catchingUp = undefined));
    return this.#catchingUp;
  }

  /** Reads entries until the chain holds at least `target` (e.g. what a conflict reported). */
  async #catchUpTo(target: bigint): Promise<void> {
    if (this.#chain.revision >= target) return;
    for await (const { signed, revision } of this.#log.read(this.#chain.revision + 1n, target)) this.#apply(signed, revision);
  }

  async #readAhead(): Promise<void> {
    const { first, last } = await this.#log.bounds();
    // Stream info can lag a just-acknowledged publish by a moment: a last sequence below what
    // this controller holds is not a rewind by itself. (A rewound log shows up as conflicts
    // that never resolve, or as a chain error when its entries are read.)
    if (last <= this.#chain.revision) return;
    if (first > this.#chain.revision + 1n) {
      const snapshot = await this.#log.readSnapshot();
      if (!snapshot) throw new ChainError(`entries before ${first} were compacted but there is no snapshot`);
      this.#chain.restore(snapshot);
    }
    for await (const { signed, revision } of this.#log.read(this.#chain.revision + 1n, last)) this.#apply(signed, revision);
  }

  /**
   * Appends one change built from the current state. `build` runs against the newest state
   * (again after a conflict) and may throw to refuse the write, or return undefined to write
   * nothing. Writes in this process are serialized.
   * @returns the revision and entry, or undefined if `build` returned undefined.
   * @throws whatever `build` throws; UnavailableError if the log cannot be written.
   */
  write(build: (chain: IntentChain) => Change | undefined, trace?: TraceContext, now: () => Date = () => new Date()): Promise<WriteResult | undefined> {
    const run = this.#tail.then(() => this.#write(build, trace, now));
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async #write(build: (chain: IntentChain) => Change | undefined, trace: TraceContext | undefined, now: () => Date): Promise<WriteResult | undefined> {
    if (this.#closed) throw new UnavailableError('the controller is shutting down');
    const retries = this.#options.maxConflictRetries ?? 20;
    for (let attempt = 0; attempt <= retries; attempt++) {
      await this.catchUp();
      const change = build(this.#chain);
      if (!change) return undefined;
      const revision = this.#chain.revision + 1n;
      const entry = LogEntry.fromPartial({
        revision,
        previousHash: Buffer.from(this.#chain.lastHash),
        createTime: now(),
        change,
        traceContext: trace,
        controllerId: this.#options.controllerId,
      });
      for (const p of entry.change!.upserts) p.metadata!.resourceVersion = revision;
      for (const r of entry.change!.rollouts) r.resourceVersion = revision;
      const signed = signLogEntry(entry, this.#options.signingKey);
      try {
        const stored = await tracer.startActiveSpan('edgeplane.intent.publish', { kind: SpanKind.PRODUCER, attributes: { 'edgeplane.revision': Number(revision), 'messaging.system': 'nats' } }, async (span) => {
          try {
            return await this.#log.append(signed, revision - 1n, trace?.traceparent ? { traceparent: trace.traceparent } : {});
          } catch (err) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
            throw err;
          } finally {
            span.end();
          }
        });
        if (stored !== revision) throw new ChainError(`the log stored revision ${revision} at sequence ${stored}`);
        // The live subscription may have delivered it already; append is idempotent.
        this.#apply(signed, stored);
        this.#maybeSnapshot();
        return { revision, entry };
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
        if (err.actualLast !== undefined && err.actualLast > this.#chain.revision) await this.#catchUpTo(err.actualLast);
        else await new Promise((r) => setTimeout(r, 5 + Math.random() * 20 * (attempt + 1)));
      }
    }
    throw new UnavailableError(`write gave up after ${retries} conflicts with other writers`);
  }

  #maybeSnapshot(): void {
    const every = BigInt(this.#options.snapshotEvery ?? 1000);
    if (every === 0n || this.#chain.revision - this.#lastSnapshot < every) return;
    this.#lastSnapshot = this.#chain.revision;
    void this.snapshotNow().catch((err: unknown) => this.#options.onError?.('write snapshot', err));
  }

  /** Writes a snapshot of the current state and compacts the log below it, keeping retainEntries. */
  async snapshotNow(): Promise<bigint> {
    const snapshot = this.#chain.snapshot();
    await this.#log.writeSnapshot(signSnapshot(snapshot, this.#options.signingKey));
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
    for await (const { signed } of this.#log.read(from, to)) yield openLogEntry(signed, this.#options.trusted);
  }

  /** Stops following the log; waits for the write in progress. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe?.();
    await this.#tail;
  }
}
