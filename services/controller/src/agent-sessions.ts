import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import {
  quote,
  type AgentHello,
  type AgentSettings,
  type ConnectionsAnswer,
  type ConnectionsQuery,
  type FieldViolation,
  type ConnectRequest,
  type ConnectResponse,
  type BackendHealthReport,
  type Service,
  type TrustedKey,
} from '@edgeplane/proto';
import { validateBackendHealthReport, validateConditionReport, validateConnectionsAnswer, validateCounterReport, validateHello, validateRevisionReport } from './agent-input.js';
import type { CounterStore } from './counter-store.js';
import { DeadlineExceededError, PermissionDeniedError, PreconditionError, UnavailableError, ValidationError } from './errors.js';
import type { NodeRegistry } from './node-registry.js';
import { hasBackend, type ServiceHealthStore } from './service-health-store.js';

/** The controller's half of one agent stream, independent of gRPC. */
export interface AgentStream {
  /**
   * Called once, by serve: from then on every message from the agent goes to `message`, in
   * order, and `end` is called when the agent closed its side or the transport ended the stream
   * (more than once is fine).
   */
  listen(message: (m: ConnectRequest) => void, end: () => void): void;
  send(message: ConnectResponse): void;
  /** Ends the stream; with an error, the agent sees it as the status. */
  end(err?: Error): void;
  /**
   * Checks that the caller may speak for the node its hello names, with the labels it reports;
   * returns the labels to record for the node (the enrolled ones) or throws
   * (PermissionDeniedError) to refuse. Unset: any name, the hello's labels (in-process use).
   */
  checkHello?(nodeName: string, labels: Record<string, string>): Promise<Record<string, string>>;
}

/** Options of {@link AgentSessions}. */
export interface AgentSessionsOptions {
  controllerId: string;
  keys: TrustedKey[];
  settings: AgentSettings;
  /** The newest revision, sent in the welcome. */
  currentRevision: () => bigint;
  /** How long an agent has to say hello. Default 10 s. */
  helloTimeoutMs?: number;
  /** Silence after which a stream is considered half-open and closed. Default 3 heartbeat intervals. */
  idleTimeoutMs?: number;
  /**
   * Where backend health reports go, and the intent's services they are checked against. Unset:
   * backend health reports are refused like unknown services.
   */
  serviceHealth?: {
    store: ServiceHealthStore;
    /** The service of that name in the intent now, or undefined. */
    service(name: string): Service | undefined;
    /** Told of every report refused for naming a service or backend the intent does not have. */
    refused?(node: string, reason: string): void;
  };
  /**
   * Told after the node's status, counters or backend health changed here (a hello, a report,
   * counters, conditions, backend health, the stream's end; not heartbeats): what replicas share.
   * `status` is false when only counters or backend health changed; `counters` is true when only
   * counters changed (a counter report: routine, what replicas may share in batches).
   */
  onNodeChanged?(node: string, status: boolean, counters?: boolean): void;
}

/**
 * Messages an agent may send after its hello while the hello is being checked (an agent waits for
 * the welcome before it sends more than a few): past it the stream ends, and nothing piles up.
 */
export const MAX_MESSAGES_BEFORE_WELCOME = 64;

/** Queries one node may have in flight on its stream (a query walks the node's whole table). */
export const MAX_QUERIES_PER_NODE = 4;

/** A query waiting for its agent's answer. */
interface PendingQuery {
  limit: number;
  resolve(answer: ConnectionsAnswer): void;
  reject(err: Error): void;
}

/** Thrown to end a stream that stayed silent: the connection is presumed half-open. */
export class IdleStreamError extends Error {
  override name = 'IdleStreamError';
}

/** Throws ValidationError (the stream ends INVALID_ARGUMENT, nothing of the message kept) if there are problems. */
function reject(what: string, problems: FieldViolation[]): void {
  if (problems.length > 0) throw new ValidationError(`${what}: ${problems[0]!.field}: ${problems[0]!.description}`, problems);
}

function durationMs(d: { seconds: bigint; nanos: number } | undefined, fallback: number): number {
  return d ? Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6) : fallback;
}

/**
 * AgentService's behaviour: the hello/welcome handshake, ACK/NACK, condition and counter reports
 * into the registry and counter store, heartbeat echo, and the idle timeout that notices half-open
 * connections.
 */
export class AgentSessions {
  #registry: NodeRegistry;
  #counters: CounterStore;
  #options: AgentSessionsOptions;
  /** Each open stream, and what ends it. */
  #open = new Map<AgentStream, (err?: Error) => void>();
  #byNode = new Map<string, Set<AgentStream>>();
  /** The newest welcomed stream of each node: the one queries go to. */
  #current = new Map<string, AgentStream>();
  /** Queries sent on each stream and not answered yet, by request id. */
  #pending = new Map<AgentStream, Map<string, PendingQuery>>();

  constructor(registry: NodeRegistry, counters: CounterStore, options: AgentSessionsOptions) {
    this.#registry = registry;
    this.#counters = counters;
    this.#options = options;
  }

  /** Number of open streams. */
  get size(): number {
    return this.#open.size;
  }

  /**
   * Serves one stream until it ends. Resolves when it has ended (never rejects): protocol errors
   * end the stream with a status instead.
   */
  serve(stream: AgentStream): Promise<void> {
    const sessionId = randomUUID();
    let node: string | undefined;
    const idleMs = this.#options.idleTimeoutMs ?? 3 * durationMs(this.#options.settings.heartbeatInterval, 5000);
    let timer: NodeJS.Timeout | undefined;
    /** Messages seen on this stream: the idle check compares it before and after reading pending input. */
    let heard = 0;
    /** When the newest message came (performance.now()), the silence allowed, and what to say when it is over. */
    let lastAt = 0;
    let spanMs = 0;
    let why = '';
    /** Set once the stream ended (by either side): later messages are dropped. */
    let done = false;
    /** The agent closed its side while its hello was being checked: end once the held messages are handled. */
    let agentEnded = false;
    /** Messages that came while the hello was being checked (checkHello is asynchronous), in order. */
    let held: ConnectRequest[] | undefined;
    let resolve!: () => void;
    const ended = new Promise<void>((r) => (resolve = r));

    /** Ends the stream (with `err` as the agent's status) and forgets it; only the first call counts. */
    const finish = (err?: Error): void => {
      if (done) return;
      done = true;
      held = undefined;
      clearTimeout(timer);
      this.#open.delete(stream);
      stream.end(err);
      for (const q of this.#pending.get(stream)?.values() ?? []) q.reject(new UnavailableError(`node ${node} disconnected before it answered; retry`));
      this.#pending.delete(stream);
      if (node && this.#current.get(node) === stream) {
        this.#current.delete(node);
        // Its verdicts are unknown from now on; the next stream's welcome brings the whole state again.
        this.#options.serviceHealth?.store.forget(node);
      }
      if (node) {
        const set = this.#byNode.get(node);
        set?.delete(stream);
        if (set?.size === 0) this.#byNode.delete(node);
        this.#registry.disconnect(node, sessionId);
        this.#options.onNodeChanged?.(node, true);
      }
      resolve();
    };
    // One timer per span of silence, not one per message: a message only notes its time, and the
    // timer, when it fires, waits again for the rest of a span from the newest message (at 10,000
    // agents a timer replaced per heartbeat and counter report was a cost of its own).
    const wait = (ms: number, graced: boolean): void => {
      const due = performance.now() + ms;
      const seen = heard;
      timer = setTimeout(() => {
        const now = performance.now();
        // A timer that fires late means this process stalled (a long GC, CPU starvation): the
        // peer's messages may be waiting unread in the socket, and timers run before input is
        // read. So decide only after this turn's input (setImmediate runs after the poll phase),
        // and give a peer one fresh span when the lateness was ours.
        if (!graced && now - due > Math.min(1000, spanMs / 3)) return wait(spanMs, true);
        if (heard !== seen) return wait(Math.max(1, lastAt + spanMs - now), false);
        setImmediate(() => {
          if (heard === seen) finish(new IdleStreamError(why));
          else wait(Math.max(1, lastAt + spanMs - performance.now()), false);
        });
      }, ms);
    };
    const hear = (): void => {
      heard++;
      lastAt = performance.now();
    };
    /** Starts a new span of `ms` (the hello's, then the stream's). */
    const arm = (ms: number, reason: string): void => {
      clearTimeout(timer);
      hear();
      spanMs = ms;
      why = reason;
      wait(ms, false);
    };
    const welcome = (hello: AgentHello, labels: Record<string, string>): void => {
      node = hello.nodeName;
      let set = this.#byNode.get(node);
      if (!set) this.#byNode.set(node, (set = new Set()));
      set.add(stream);
      this.#current.set(node, stream);
      this.#registry.hello({ ...hello, labels }, sessionId);
      stream.send({
        message: {
          $case: 'welcome',
          welcome: { controllerId: this.#options.controllerId, keys: this.#options.keys, settings: this.#options.settings, currentRevision: this.#options.currentRevision(), enrolledLabels: labels },
        },
      });
      arm(idleMs, `node ${node} silent for ${idleMs} ms`);
      this.#options.onNodeChanged?.(node, true);
    };
    // Each message is handled as it arrives, in the transport's callback: at 10,000 agents one
    // counter report every 5 s each, a promise or two per message (an async iteration) was a
    // measured share of the controller's telemetry cost (see BENCHMARKS.md).
    const receive = (req: ConnectRequest): void => {
      if (done) return;
      if (held) {
        if (held.length < MAX_MESSAGES_BEFORE_WELCOME) return void held.push(req);
        return finish(new ValidationError(`more than ${MAX_MESSAGES_BEFORE_WELCOME} messages before the welcome`, [{ field: 'message', description: `at most ${MAX_MESSAGES_BEFORE_WELCOME} messages may follow the hello before the welcome`, reason: 'TOO_MANY_MESSAGES' }]));
      }
      const m = req.message;
      if (!m) return;
      try {
        if (!node) {
          if (m.$case !== 'hello') throw new ValidationError('the first message must be a hello', [{ field: 'hello', description: 'required first', reason: 'REQUIRED' }]);
          reject('invalid hello', validateHello(m.hello));
          if (!stream.checkHello) return welcome(m.hello, m.hello.labels);
          const hello = m.hello;
          held = [];
          stream.checkHello(hello.nodeName, hello.labels).then(
            (labels) => {
              if (done) return;
              try {
                welcome(hello, labels);
              } catch (err) {
                return finish(err as Error);
              }
              const later = held ?? [];
              held = undefined;
              for (const r of later) receive(r);
              if (agentEnded) finish();
            },
            (err: Error) => finish(err),
          );
          return;
        }
        hear();
        if (m.$case !== 'heartbeat' && m.$case !== 'connections') this.#options.onNodeChanged?.(node, m.$case === 'report' || m.$case === 'conditions', m.$case === 'counters');
        switch (m.$case) {
          case 'report':
            reject('invalid revision report', validateRevisionReport(m.report));
            this.#registry.report(node, m.report);
            break;
          case 'counters':
            reject('invalid counter report', validateCounterReport(m.counters));
            // A node speaks only for itself (DESIGN.md, Trust): shadow counters that describe
            // another node are refused, and end the stream, before anything is kept.
            if (m.counters.shadow && m.counters.shadow.node !== node) {
              throw new PermissionDeniedError(`node ${node} sent shadow counters of node ${quote(m.counters.shadow.node)}: a node reports only its own`, 'FOREIGN_NODE');
            }
            this.#counters.add(node, m.counters);
            this.#registry.seen(node);
            break;
          case 'conditions':
            reject('invalid condition report', validateConditionReport(m.conditions));
            this.#registry.conditions(node, m.conditions);
            break;
          case 'backendHealth':
            reject('invalid backend health report', validateBackendHealthReport(m.backendHealth));
            this.#registry.seen(node);
            // Only the node's newest stream speaks for it (an older one may still be draining).
            if (this.#current.get(node) === stream) this.#backendHealth(node, m.backendHealth);
            break;
          case 'heartbeat':
            this.#registry.seen(node);
            stream.send({ message: { $case: 'heartbeat', heartbeat: { sequence: m.heartbeat.sequence, time: new Date() } } });
            break;
          case 'connections': {
            const pending = this.#pending.get(stream);
            const waiting = pending?.get(m.connections.requestId);
            // A late answer (the query timed out) is dropped; a stream cannot answer what it was not asked.
            if (!waiting) break;
            pending!.delete(m.connections.requestId);
            const problems = validateConnectionsAnswer(m.connections, waiting.limit);
            if (problems.length > 0) {
              waiting.reject(new UnavailableError(`node ${node} sent an invalid answer: ${problems[0]!.field}: ${problems[0]!.description}`));
              reject('invalid connections answer', problems);
            }
            waiting.resolve(m.connections);
            break;
          }
          case 'hello':
            throw new ValidationError('hello sent twice', [{ field: 'hello', description: 'only the first message may be a hello', reason: 'NOT_ALLOWED' }]);
        }
      } catch (err) {
        finish(err as Error);
      }
    };
    this.#open.set(stream, finish);
    arm(this.#options.helloTimeoutMs ?? 10_000, 'no hello in time');
    stream.listen(receive, () => {
      if (held) agentEnded = true;
      else finish();
    });
    return ended;
  }

  /**
   * Keeps a structurally valid report if every entry names a backend of a service of the intent
   * now. Otherwise the whole report is refused (nothing of it is kept, the stream stays open): an
   * agent a revision behind or ahead of this replica may name a service just deleted or created,
   * and it sends its whole state again once it applied the revision that changed its probes.
   */
  #backendHealth(node: string, report: BackendHealthReport): void {
    const h = this.#options.serviceHealth;
    for (const b of report.backends) {
      const service = h?.service(b.service);
      const why = !service ? `service ${b.service} is not in the intent` : !hasBackend(service, b.address, b.port) ? `service ${b.service} has no backend ${b.address}:${b.port}` : undefined;
      if (why) {
        h?.refused?.(node, why);
        return;
      }
    }
    h?.store.add(node, report);
  }

  /**
   * Asks a node's agent, over its newest open stream, for the entries of its connection tables
   * that match `query` (a new request id is set here).
   * @returns the agent's answer (its `error` empty).
   * @throws PreconditionError (NODE_NOT_CONNECTED) when the node has no open stream to this
   *   controller; UnavailableError when MAX_QUERIES_PER_NODE are in flight, the stream ends
   *   first, or the agent answers with an error or an invalid answer; DeadlineExceededError
   *   when no answer comes within `timeoutMs`.
   */
  queryConnections(node: string, query: Omit<ConnectionsQuery, 'requestId'>, timeoutMs: number): Promise<ConnectionsAnswer> {
    const stream = this.#current.get(node);
    if (!stream) return Promise.reject(new PreconditionError(`node ${node} is not connected to this controller`, 'NODE_NOT_CONNECTED'));
    let pending = this.#pending.get(stream);
    if (!pending) this.#pending.set(stream, (pending = new Map()));
    if (pending.size >= MAX_QUERIES_PER_NODE) return Promise.reject(new UnavailableError(`node ${node} has ${pending.size} connection queries in flight; retry`));
    const requestId = randomUUID();
    const map = pending;
    return new Promise<ConnectionsAnswer>((resolve, reject) => {
      const timer = setTimeout(() => {
        map.delete(requestId);
        reject(new DeadlineExceededError(`node ${node} did not answer the connections query within ${timeoutMs} ms`));
      }, timeoutMs);
      map.set(requestId, {
        limit: query.countOnly ? 0 : query.limit,
        resolve: (answer) => {
          clearTimeout(timer);
          if (answer.error) reject(new UnavailableError(`node ${node}: ${answer.error}`));
          else resolve(answer);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      stream.send({ message: { $case: 'listConnections', listConnections: { ...query, requestId } } });
    });
  }

  /** Ends the open streams of one node (revocation); returns how many. */
  closeNode(node: string, err: Error): number {
    const set = [...(this.#byNode.get(node) ?? [])];
    for (const s of set) this.#open.get(s)?.(err);
    return set.length;
  }

  /** Ends every open stream (on shutdown); agents reconnect elsewhere or later. */
  closeAll(err?: Error): void {
    for (const finish of [...this.#open.values()]) finish(err);
  }
}
