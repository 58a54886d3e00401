import { randomUUID } from 'node:crypto';
import {
  type AgentSettings,
  type FieldViolation,
  type ConnectRequest,
  type ConnectResponse,
  type TrustedKey,
} from '@edgeplane/proto';
import { validateConditionReport, validateCounterReport, validateHello, validateRevisionReport } from './agent-input.js';
import type { CounterStore } from './counter-store.js';
import { ValidationError } from './errors.js';
import type { NodeRegistry } from './node-registry.js';

/** The controller's half of one agent stream, independent of gRPC. */
export interface AgentStream {
  /** Messages from the agent; ends when the agent closes its side. */
  messages: AsyncIterable<ConnectRequest>;
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
  #open = new Set<AgentStream>();
  #byNode = new Map<string, Set<AgentStream>>();

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
  async serve(stream: AgentStream): Promise<void> {
    const sessionId = randomUUID();
    let node: string | undefined;
    const idleMs = this.#options.idleTimeoutMs ?? 3 * durationMs(this.#options.settings.heartbeatInterval, 5000);
    let timer: NodeJS.Timeout | undefined;
    const arm = (ms: number, why: string): void => {
      clearTimeout(timer);
      timer = setTimeout(() => stream.end(new IdleStreamError(why)), ms);
    };
    this.#open.add(stream);
    arm(this.#options.helloTimeoutMs ?? 10_000, 'no hello in time');
    try {
      for await (const req of stream.messages) {
        const m = req.message;
        if (!m) continue;
        if (!node) {
          if (m.$case !== 'hello') throw new ValidationError('the first message must be a hello', [{ field: 'hello', description: 'required first', reason: 'REQUIRED' }]);
          reject('invalid hello', validateHello(m.hello));
          const labels = stream.checkHello ? await stream.checkHello(m.hello.nodeName, m.hello.labels) : m.hello.labels;
          node = m.hello.nodeName;
          let set = this.#byNode.get(node);
          if (!set) this.#byNode.set(node, (set = new Set()));
          set.add(stream);
          this.#registry.hello({ ...m.hello, labels }, sessionId);
          stream.send({
            message: {
              $case: 'welcome',
              welcome: { controllerId: this.#options.controllerId, keys: this.#options.keys, settings: this.#options.settings, currentRevision: this.#options.currentRevision(), enrolledLabels: labels },
            },
          });
          arm(idleMs, `node ${node} silent for ${idleMs} ms`);
          continue;
        }
        arm(idleMs, `node ${node} silent for ${idleMs} ms`);
        switch (m.$case) {
          case 'report':
            reject('invalid revision report', validateRevisionReport(m.report));
            this.#registry.report(node, m.report);
            break;
          case 'counters':
            reject('invalid counter report', validateCounterReport(m.counters));
            this.#counters.add(node, m.counters);
            this.#registry.seen(node);
            break;
          case 'conditions':
            reject('invalid condition report', validateConditionReport(m.conditions));
            this.#registry.conditions(node, m.conditions);
            break;
          case 'heartbeat':
            this.#registry.seen(node);
            stream.send({ message: { $case: 'heartbeat', heartbeat: { sequence: m.heartbeat.sequence, time: new Date() } } });
            break;
          case 'hello':
            throw new ValidationError('hello sent twice', [{ field: 'hello', description: 'only the first message may be a hello', reason: 'NOT_ALLOWED' }]);
        }
      }
      stream.end();
    } catch (err) {
      stream.end(err as Error);
    } finally {
      clearTimeout(timer);
      this.#open.delete(stream);
      if (node) {
        const set = this.#byNode.get(node);
        set?.delete(stream);
        if (set?.size === 0) this.#byNode.delete(node);
        this.#registry.disconnect(node, sessionId);
      }
    }
  }

  /** Ends the open streams of one node (revocation); returns how many. */
  closeNode(node: string, err: Error): number {
    const set = [...(this.#byNode.get(node) ?? [])];
    for (const s of set) s.end(err);
    return set.length;
  }

  /** Ends every open stream (on shutdown); agents reconnect elsewhere or later. */
  closeAll(err?: Error): void {
    for (const s of this.#open) s.end(err);
  }
}
