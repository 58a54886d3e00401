import {
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { headers as natsHeaders, PermissionViolationError, RequestError, TimeoutError, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import {
  INTENT_LIVE_SUBJECT,
  INTENT_STREAM,
  INTENT_SUBJECT,
  SNAPSHOT_BUCKET,
  SNAPSHOT_KEY,
  FLEET_ID_KEY,
  INTENT_HEAD_SUBJECT,
  SignedLogHead,
  HISTORY_RESET_KEY,
  SignedHistoryReset,
  SignedSnapshot,
  decodeSignedLogEntry,
  encodeSignedLogEntry,
  type SignedLogEntry,
} from '@edgeplane/proto';
import { ConflictError, EntryTooLargeError, LogUnavailableError } from './errors.js';

/** Options of {@link IntentLog.open}. */
export interface IntentLogOptions {
  /** Create the stream and snapshot bucket if missing (the controller); readers pass false. */
  create: boolean;
  /** Stream replicas when creating (1 on one server, 3 in a cluster). Default 1. */
  replicas?: number;
  /** Override the stream name (tests). Default INTENT_STREAM. */
  stream?: string;
  /** Override the subject (tests). Default INTENT_SUBJECT. */
  subject?: string;
  /** Override the live (republished) subject (tests). Default INTENT_LIVE_SUBJECT. */
  liveSubject?: string;
  /** Override the heartbeat subject (tests). Default INTENT_HEAD_SUBJECT. */
  headSubject?: string;
  /** Override the snapshot bucket (tests). Default SNAPSHOT_BUCKET. */
  snapshotBucket?: string;
  /** Request timeout for JetStream API calls, ms. Default 5000. */
  timeoutMs?: number;
}

/** An entry read back from the stream, with the sequence it is stored at. */
export interface StoredEntry {
  revision: bigint;
  signed: SignedLogEntry;
}

/**
 * One message read back from the stream: the decoded envelope, or why it does not decode (a
 * message that is not a log entry at all, published by someone with publish rights on the log
 * subject). Not verified either way: see IntentChain.open.
 */
export type StoredMessage = { revision: bigint; signed: SignedLogEntry; error?: undefined } | { revision: bigint; signed?: undefined; error: Error };

/** Per-request timeout of the log's retried idempotent reads (bounds), ms. */
const QUICK_TIMEOUT_MS = 500;

/** Ranges of fewer entries than this are read by direct gets, longer ones by an ordered consumer. */
const DIRECT_READ_MAX = 64n;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A request that may be answered if sent again: timed out, or nobody listening yet (JetStream still recovering its streams after a restart). */
function notReady(err: unknown): boolean {
  return err instanceof TimeoutError || (err instanceof RequestError && err.isNoResponders());
}

/** A request this connection may not make (its user's permissions). */
function refused(err: unknown): boolean {
  return err instanceof PermissionViolationError || (err instanceof Error && err.cause instanceof PermissionViolationError);
}

/** A stored message as a log entry, or as the error it does not decode with. */
function decodeStored(revision: bigint, data: Uint8Array): StoredMessage {
  try {
    return { revision, signed: decodeSignedLogEntry(data) };
  } catch (error) {
    return { revision, error: error as Error };
  }
}

/** The stream's bounds: entries first..last are readable (none when last < first). */
export interface LogBounds {
  first: bigint;
  last: bigint;
}

/**
 * The intent log on NATS JetStream: one stream (file storage) whose sequence is the fleet
 * revision, plus a key-value bucket holding the newest signed snapshot. Does not own the
 * NATS connection: closing the connection is the caller's job.
 */
export class IntentLog {
  readonly stream: string;
  readonly subject: string;
  readonly liveSubject: string;
  readonly headSubject: string;
  #nc: NatsConnection;
  #js: JetStreamClient;
  #jsm: JetStreamManager;
  /** The same with a short request timeout, for idempotent reads retried within #timeoutMs. */
  #quickJsm: JetStreamManager;
  #timeoutMs: number;
  /**
   * Whether reads may use direct gets (the stream allows them, and none was refused yet): the
   * stream answers those itself, while stream info and consumers go through the JetStream API,
   * which 10,000 followers catching up at once after a nats-server restart kept saturated (each
   * request timed out and was sent again; the fleet never caught up).
   */
  #direct: boolean;
  #kv: KV;

  private constructor(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, quickJsm: JetStreamManager, timeoutMs: number, kv: KV, stream: string, subject: string, liveSubject: string, headSubject: string, direct: boolean) {
    this.headSubject = headSubject;
    this.#nc = nc;
    this.#js = js;
    this.#jsm = jsm;
    this.#quickJsm = quickJsm;
    this.#timeoutMs = timeoutMs;
    this.#kv = kv;
    this.#direct = direct;
    this.stream = stream;
    this.subject = subject;
    this.liveSubject = liveSubject;
  }

  /**
   * Opens (and with `create`, creates or verifies) the stream and snapshot bucket.
   * @throws LogUnavailableError if JetStream is not reachable, or the stream is missing and
   *   `create` is false, or an existing stream's configuration conflicts with the log's needs.
   */
  static async open(nc: NatsConnection, options: IntentLogOptions): Promise<IntentLog> {
    const stream = options.stream ?? INTENT_STREAM;
    const subject = options.subject ?? INTENT_SUBJECT;
    const live = options.liveSubject ?? INTENT_LIVE_SUBJECT;
    const bucket = options.snapshotBucket ?? SNAPSHOT_BUCKET;
    const timeout = options.timeoutMs ?? 5000;
    try {
      const jsm = await jetstreamManager(nc, { timeout });
      const js = jetstream(nc, { timeout });
      let info;
      try {
        info = await jsm.streams.info(stream);
      } catch (err) {
        if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) || !options.create) throw err;
        info = await jsm.streams.add({
          name: stream,
          subjects: [subject],
          storage: StorageType.File,
          retention: RetentionPolicy.Limits,
          // The log is never trimmed by limits: only compaction (purge below a snapshot) removes entries.
          discard: DiscardPolicy.New,
          num_replicas: options.replicas ?? 1,
          duplicate_window: 2 * 60 * 1_000_000_000,
          allow_direct: true,
          deny_delete: true,
          // Live readers get only what the stream stored (see INTENT_LIVE_SUBJECT).
          republish: { src: subject, dest: live },
        });
      }
      if (!info.config.subjects?.includes(subject)) {
        throw new LogUnavailableError(`open intent log stream=${stream}: it does not capture subject ${subject}`);
      }
      if (info.config.republish?.dest !== live) {
        if (!options.create) throw new LogUnavailableError(`open intent log stream=${stream}: it does not republish to ${live}`);
        info = await jsm.streams.update(stream, { ...info.config, republish: { src: subject, dest: live } });
      }
      const kvm = new Kvm(nc);
      const kv = options.create ? await kvm.create(bucket, { history: 1, replicas: options.replicas ?? 1 }) : await kvm.open(bucket);
      // The API was checked by the manager above: no second account-info round trip.
      const quickJsm = await jetstreamManager(nc, { timeout: Math.min(QUICK_TIMEOUT_MS, timeout), checkAPI: false });
      return new IntentLog(nc, js, jsm, quickJsm, timeout, kv, stream, subject, live, options.headSubject ?? INTENT_HEAD_SUBJECT, info.config.allow_direct === true);
    } catch (cause) {
      if (cause instanceof LogUnavailableError) throw cause;
      throw new LogUnavailableError(`open intent log stream=${stream}: ${(cause as Error).message}`, { cause });
    }
  }

  /**
   * Returns the readable bounds of the log: by direct gets when the stream allows them (a
   * replica of a replicated stream may answer those a moment behind its leader), by stream info
   * (the leader's) when `exact` is set or they cannot tell.
   * @throws LogUnavailableError if the stream cannot be read.
   */
  async bounds(options: { exact?: boolean } = {}): Promise<LogBounds> {
    // Right after a (re)connect to a restarted server, JetStream answers only once it has
    // recovered its streams (~0.3 s here); a request sent before that is lost, and one request
    // with the full timeout held every write for 5 s. Short requests, retried within the
    // timeout, find the log as soon as it is back; a pause between them (jittered) keeps a fleet
    // of followers from sending a saturated server twice what it cannot answer.
    const deadline = Date.now() + this.#timeoutMs;
    for (;;) {
      try {
        const direct = options.exact ? undefined : await this.#directBounds();
        if (direct) return direct;
        const info = await this.#quickJsm.streams.info(this.stream);
        return { first: BigInt(info.state.first_seq), last: BigInt(info.state.last_seq) };
      } catch (cause) {
        if (!notReady(cause) || Date.now() >= deadline) throw new LogUnavailableError(`read intent log bounds stream=${this.stream}`, { cause });
        await sleep(Math.min(Math.max(0, deadline - Date.now()), 100 + Math.random() * 400));
      }
    }
  }

  /**
   * The bounds by two direct gets (the last message, the first one), or undefined when they
   * cannot tell: direct gets not allowed, or no message stored (an empty log, or one compacted
   * whole, whose last sequence only stream info knows). Nobody answering is not a refusal: right
   * after a nats-server restart the stream is not listening yet.
   */
  async #directBounds(): Promise<LogBounds | undefined> {
    if (!this.#direct) return undefined;
    let last, first;
    try {
      last = await this.#quickJsm.direct.getMessage(this.stream, { last_by_subj: this.subject });
      if (!last) return undefined;
      first = await this.#quickJsm.direct.getMessage(this.stream, { seq: 1, next_by_subj: this.subject });
    } catch (err) {
      if (!refused(err)) throw err;
      // Not allowed for this user: stream info and consumers from now on.
      this.#direct = false;
      return undefined;
    }
    return { first: BigInt((first ?? last).seq), last: BigInt(last.seq) };
  }

  /**
   * Appends one signed entry, which must be for revision `expectedLast + 1`: the stream stores
   * it only if its last sequence is still `expectedLast`, so two writers can never fork the log.
   * Storing and delivering to live subscribers are one step. `msgId` makes a retried publish
   * idempotent within the stream's duplicate window.
   * @returns the revision (stream sequence) it was stored at.
   * @throws ConflictError if another writer appended first.
   * @throws LogUnavailableError if NATS did not confirm the write (it may or may not be stored).
   * @throws EntryTooLargeError if the entry is larger than the server accepts (nothing sent).
   */
  async append(signed: SignedLogEntry, expectedLast: bigint, options: { msgId?: string; traceparent?: string } = {}): Promise<bigint> {
    const bytes = encodeSignedLogEntry(signed);
    this.#checkSize('log entry', bytes.length);
    const h = natsHeaders();
    if (options.traceparent) h.set('traceparent', options.traceparent);
    try {
      const ack = await this.#js.publish(this.subject, bytes, {
        expect: { lastSequence: Number(expectedLast) },
        headers: h,
        ...(options.msgId ? { msgID: options.msgId } : {}),
      });
      if (ack.duplicate) {
        throw new ConflictError(`append intent entry: duplicate of the entry stored at ${ack.seq}`);
      }
      return BigInt(ack.seq);
    } catch (cause) {
      if (cause instanceof ConflictError) throw cause;
      if (cause instanceof JetStreamApiError && (cause.code === JetStreamApiCodes.StreamWrongLastSequence || cause.code === 10164)) {
        // The server says where the stream is: "wrong last sequence: N".
        const m = /wrong last sequence: (\d+)/.exec(cause.message);
        throw new ConflictError(`append intent entry: the log moved past revision ${expectedLast}`, { cause, ...(m ? { actualLast: BigInt(m[1]!) } : {}) });
      }
      throw new LogUnavailableError(`append intent entry after revision ${expectedLast}: ${(cause as Error).message}`, { cause });
    }
  }

  /** The largest message the connected server accepts, bytes (headers need a little of it). */
  get maxPayload(): number {
    return this.#nc.info?.max_payload ?? 1024 * 1024;
  }

  #checkSize(what: string, size: number): void {
    const limit = this.maxPayload - 4096;
    if (size > limit) throw new EntryTooLargeError(`${what} of ${size} bytes exceeds what the NATS server accepts (max_payload ${this.maxPayload}; raise it in the server configuration)`, size, limit);
  }

  /**
   * Reads entries `from`..`to` (inclusive) in order through an ordered consumer. Entries
   * purged by compaction are skipped: check {@link bounds} first.
   * @throws LogUnavailableError if the stream cannot be read; SignatureError (from
   *   @edgeplane/proto) if a stored message is not a log entry: followers use {@link messages},
   *   which yields such messages instead of failing.
   */
  async *read(from: bigint, to: bigint): AsyncGenerator<StoredEntry> {
    for await (const m of this.messages(from, to)) {
      if (m.error) throw m.error;
      yield m;
    }
  }

  /**
   * Reads messages `from`..`to` (inclusive) in order, like {@link read}, but yields a message
   * that does not decode as `{ revision, error }` and goes on: one junk message must not stop
   * anyone from reading past it.
   * @throws LogUnavailableError if the stream cannot be read.
   */
  async *messages(from: bigint, to: bigint): AsyncGenerator<StoredMessage> {
    if (to < from) return;
    if (this.#direct && to - from < DIRECT_READ_MAX) {
      const read = yield* this.#directMessages(from, to);
      if (read) return;
    }
    let consumer;
    try {
      consumer = await this.#js.consumers.get(this.stream, {
        // No subject filter: the stream holds only the log subject, and nats-server 2.9
        // rejects filter_subjects on ordered consumers.
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: Number(from),
      });
    } catch (cause) {
      throw new LogUnavailableError(`read intent log from ${from}: ${(cause as Error).message}`, { cause });
    }
    const messages = await consumer.consume({ max_messages: 512 });
    try {
      for await (const m of messages) {
        const revision = BigInt(m.seq);
        yield decodeStored(revision, m.data);
        if (revision >= to) break;
      }
    } finally {
      await messages.close();
      await consumer.delete().catch(() => false);
    }
  }

  /**
   * Reads a short range by direct gets, each the next message at or after a sequence (so
   * compacted sequences are skipped as a consumer skips them): no consumer to create and
   * delete. @returns false, having yielded nothing, when direct gets are refused.
   */
  async *#directMessages(from: bigint, to: bigint): AsyncGenerator<StoredMessage, boolean> {
    for (let seq = from; seq <= to; ) {
      let m;
      try {
        m = await this.#jsm.direct.getMessage(this.stream, { seq: Number(seq), next_by_subj: this.subject });
      } catch (cause) {
        if (refused(cause) && seq === from) {
          this.#direct = false;
          return false;
        }
        throw new LogUnavailableError(`read intent log at ${seq}: ${(cause as Error).message}`, { cause });
      }
      if (!m || BigInt(m.seq) > to) return true;
      const revision = BigInt(m.seq);
      yield decodeStored(revision, m.data);
      seq = revision + 1n;
    }
    return true;
  }

  /**
   * Subscribes to entries as the stream stores them: the stream's republished copies, which
   * carry their sequence (never the raw subject, which also carries rejected publishes).
   * Messages that do not decode are passed to `onError`. The returned subscription is the
   * caller's to unsubscribe.
   */
  subscribe(onEntry: (signed: SignedLogEntry, revision: bigint) => void, onError: (err: Error) => void): Subscription {
    return this.#nc.subscribe(this.liveSubject, {
      callback: (err, msg) => {
        if (err) return onError(err);
        try {
          const seq = msg.headers?.get('Nats-Sequence');
          // Bounded before parsing: a header is believed only once the entry verifies.
          if (!seq || !/^[0-9]{1,20}$/.test(seq)) throw new LogUnavailableError(`live intent message on ${msg.subject} has no valid Nats-Sequence header`);
          onEntry(decodeSignedLogEntry(msg.data), BigInt(seq));
        } catch (e) {
          onError(e as Error);
        }
      },
    });
  }

  /** Publishes a signed heartbeat (plain NATS: not stored). Never throws: a lost heartbeat is what the next one is for. */
  publishHead(head: SignedLogHead): void {
    try {
      this.#nc.publish(this.headSubject, SignedLogHead.encode(head).finish());
    } catch {
      // the connection is closed or reconnecting
    }
  }

  /**
   * Subscribes to heartbeats; messages that do not decode go to `onError`. The subscription
   * is the caller's to unsubscribe.
   */
  subscribeHeads(onHead: (head: SignedLogHead) => void, onError: (err: Error) => void): Subscription {
    return this.#nc.subscribe(this.headSubject, {
      callback: (err, msg) => {
        if (err) return onError(err);
        try {
          onHead(SignedLogHead.decode(msg.data));
        } catch (e) {
          onError(new LogUnavailableError(`heartbeat on ${msg.subject} does not decode`, { cause: e }));
        }
      },
    });
  }

  /**
   * Returns the newest snapshot, or undefined if none was written.
   * @throws LogUnavailableError if the bucket cannot be read.
   */
  async readSnapshot(): Promise<SignedSnapshot | undefined> {
    try {
      const e = await this.#kv.get(SNAPSHOT_KEY);
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      return SignedSnapshot.decode(e.value);
    } catch (cause) {
      throw new LogUnavailableError('read intent snapshot', { cause });
    }
  }

  /**
   * Returns the fleet id stored beside the snapshot; when none is stored, stores `proposed`
   * (an atomic create: of two controllers starting at once, one id wins and both return it).
   * @throws LogUnavailableError
   */
  async fleetId(proposed: string): Promise<string> {
    try {
      for (let attempt = 0; attempt < 3; attempt++) {
        const e = await this.#kv.get(FLEET_ID_KEY);
        if (e && e.operation === 'PUT' && e.value.length > 0) return new TextDecoder().decode(e.value);
        try {
          await this.#kv.create(FLEET_ID_KEY, new TextEncoder().encode(proposed));
          return proposed;
        } catch {
          // Another controller created it first: read it.
        }
      }
      throw new Error('the fleet id neither reads nor creates');
    } catch (cause) {
      throw new LogUnavailableError(`read or create the fleet id: ${(cause as Error).message}`, { cause });
    }
  }

  /**
   * Returns the newest operator-signed history reset, or undefined (not verified: see
   * openHistoryReset in @edgeplane/proto).
   * @throws LogUnavailableError
   */
  async readHistoryReset(): Promise<SignedHistoryReset | undefined> {
    try {
      const e = await this.#kv.get(HISTORY_RESET_KEY);
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      return SignedHistoryReset.decode(e.value);
    } catch (cause) {
      throw new LogUnavailableError('read history reset', { cause });
    }
  }

  /** Stores the newest history reset (after its log entry was written). @throws LogUnavailableError */
  async writeHistoryReset(reset: SignedHistoryReset): Promise<void> {
    try {
      await this.#kv.put(HISTORY_RESET_KEY, SignedHistoryReset.encode(reset).finish());
    } catch (cause) {
      throw new LogUnavailableError('write history reset', { cause });
    }
  }

  /** Stores a snapshot as the newest. @throws LogUnavailableError */
  async writeSnapshot(snapshot: SignedSnapshot): Promise<void> {
    const bytes = SignedSnapshot.encode(snapshot).finish();
    this.#checkSize('snapshot', bytes.length);
    try {
      await this.#kv.put(SNAPSHOT_KEY, bytes);
    } catch (cause) {
      throw new LogUnavailableError('write intent snapshot', { cause });
    }
  }

  /**
   * Removes entries below `keepFrom` (they must be covered by a stored snapshot). Revisions
   * continue: the stream's sequence is not reset.
   * @throws LogUnavailableError
   */
  async compact(keepFrom: bigint): Promise<void> {
    try {
      await this.#jsm.streams.purge(this.stream, { seq: Number(keepFrom) });
    } catch (cause) {
      throw new LogUnavailableError(`compact intent log below ${keepFrom}`, { cause });
    }
  }
}
