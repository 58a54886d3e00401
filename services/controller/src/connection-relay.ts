// Connection queries across controller replicas (issue 15). ListConnections needs the node's own
// agent stream, which exactly one replica holds. A replica asked for a node connected elsewhere
// relays the query over NATS to that replica (ReplicaFleetSync knows which one told it the node's
// newest state), which asks its agent and answers in parts of at most
// MAX_RELAYED_CONNECTIONS_PER_MESSAGE rows, then an empty message. The subject is
// controller-only: node credentials can neither publish nor subscribe to it (nats-authority.ts).
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { headers } from '@nats-io/transport-node';
import {
  ConnectionsAnswer,
  FLEET_CONNECTIONS_SUBJECT_PREFIX,
  ListConnectionsRequest,
  MAX_RELAYED_CONNECTIONS_PER_MESSAGE,
  MAX_RELAYED_QUERIES_IN_FLIGHT,
  checkDnsLabel,
  effectiveConnectionLimit,
  validateConnectionQuery,
  type ConnectionsQuery,
} from '@edgeplane/proto';
import { DeadlineExceededError, PreconditionError, UnavailableError } from './errors.js';
import type { ConnectionQuerier } from './fleet-api.js';

/** The header of a relayed answer that failed: the kind of failure (see {@link toHeader}). */
const ERROR_HEADER = 'Edgeplane-Error';
/** The header of a relayed query: how long the serving replica may wait for its agent, in ms. */
const TIMEOUT_HEADER = 'Edgeplane-Timeout-Ms';
/** Characters of an error message relayed back (the asker's status is cut at 512 anyway). */
const MAX_RELAYED_ERROR_LENGTH = 512;

/** Options of {@link ConnectionRelay}. */
export interface ConnectionRelayOptions {
  /** This replica's instance id (ReplicaFleetSync.replica): the subject it serves. */
  replica: string;
  /** The replica whose agent stream holds `node` now, as this replica last heard (undefined: none). */
  ownerOf(node: string): string | undefined;
  /** How much longer than the agent's deadline the asking replica waits for the relayed answer. Default 2 s. */
  marginMs?: number;
  onError?: (message: string, err: unknown) => void;
}

type Failure = 'NODE_NOT_CONNECTED' | 'DEADLINE_EXCEEDED' | 'UNAVAILABLE';

function failureOf(err: unknown): Failure {
  if (err instanceof PreconditionError && err.reason === 'NODE_NOT_CONNECTED') return 'NODE_NOT_CONNECTED';
  if (err instanceof DeadlineExceededError) return 'DEADLINE_EXCEEDED';
  return 'UNAVAILABLE';
}

function errorOf(kind: string | undefined, message: string): Error {
  if (kind === 'NODE_NOT_CONNECTED') return new PreconditionError(message, 'NODE_NOT_CONNECTED');
  if (kind === 'DEADLINE_EXCEEDED') return new DeadlineExceededError(message);
  return new UnavailableError(message);
}

/**
 * A ConnectionQuerier for the whole fleet: a node connected to this replica is asked over its
 * stream (`local`, AgentSessions); a node connected to another replica through that replica, on
 * its NATS subject, with the same deadline plus a margin. Serves the other replicas' queries for
 * the nodes connected here, at most MAX_RELAYED_QUERIES_IN_FLIGHT at once.
 * Owns a subscription: close() (idempotent) ends it; queries in flight still get their answers.
 */
export class ConnectionRelay implements ConnectionQuerier {
  #nc: NatsConnection;
  #local: ConnectionQuerier;
  #o: ConnectionRelayOptions;
  #sub: Subscription | undefined;
  #serving = 0;
  #closed = false;

  constructor(nc: NatsConnection, local: ConnectionQuerier, options: ConnectionRelayOptions) {
    this.#nc = nc;
    this.#local = local;
    this.#o = options;
  }

  /** Starts answering the other replicas' queries. @throws when NATS refuses the subscription. */
  start(): void {
    if (this.#closed || this.#sub) return;
    this.#sub = this.#nc.subscribe(`${FLEET_CONNECTIONS_SUBJECT_PREFIX}.${this.#o.replica}`, {
      callback: (err, msg) => {
        if (err) return this.#o.onError?.('connection query subscription', err);
        void this.#serve(msg);
      },
    });
  }

  /**
   * Asks the node's agent, over this replica's stream to it or through the replica that holds it.
   * @throws as AgentSessions.queryConnections: PreconditionError NODE_NOT_CONNECTED (no replica
   *   holds the node's stream), UnavailableError (that replica does not answer, is busy, or its
   *   agent failed), DeadlineExceededError.
   */
  async queryConnections(node: string, query: Omit<ConnectionsQuery, 'requestId'>, timeoutMs: number): Promise<ConnectionsAnswer> {
    try {
      return await this.#local.queryConnections(node, query, timeoutMs);
    } catch (err) {
      const owner = this.#o.ownerOf(node);
      if (failureOf(err) !== 'NODE_NOT_CONNECTED' || !owner || owner === this.#o.replica) throw err;
      return this.#relay(owner, node, query, timeoutMs);
    }
  }

  async #relay(owner: string, node: string, query: Omit<ConnectionsQuery, 'requestId'>, timeoutMs: number): Promise<ConnectionsAnswer> {
    const limit = query.countOnly ? 0 : query.limit;
    const h = headers();
    h.set(TIMEOUT_HEADER, String(timeoutMs));
    const request = ListConnectionsRequest.encode({ node, filter: query.filter, limit: query.limit, countOnly: query.countOnly }).finish();
    const waitMs = timeoutMs + (this.#o.marginMs ?? 2000);
    const gone = (): UnavailableError => new UnavailableError(`node ${node} is connected to controller replica ${owner}, which does not answer; retry`);
    let replies: AsyncIterable<Msg>;
    try {
      replies = await this.#nc.requestMany(`${FLEET_CONNECTIONS_SUBJECT_PREFIX}.${owner}`, request, { strategy: 'sentinel', maxWait: waitMs, headers: h });
    } catch {
      throw gone();
    }
    const answer: ConnectionsAnswer = { requestId: '', connections: [], matched: 0n, error: '' };
    let ended = false;
    try {
      for await (const m of replies) {
        if (m.headers?.hasError) throw gone(); // no responders: the replica is gone
        if (m.data.length === 0 && !m.headers?.get(ERROR_HEADER)) {
          ended = true;
          break;
        }
        const kind = m.headers?.get(ERROR_HEADER);
        if (kind) throw errorOf(kind, new TextDecoder().decode(m.data).slice(0, MAX_RELAYED_ERROR_LENGTH));
        const part = ConnectionsAnswer.decode(m.data);
        // Bounded like an agent's own answer: never more rows than asked, in bounded parts.
        if (part.connections.length > MAX_RELAYED_CONNECTIONS_PER_MESSAGE || answer.connections.length + part.connections.length > limit) {
          throw new UnavailableError(`controller replica ${owner} answered for node ${node} with more rows than asked`);
        }
        for (const c of part.connections) answer.connections.push(c);
        answer.matched = part.matched;
      }
    } catch (err) {
      if (err instanceof PreconditionError || err instanceof DeadlineExceededError || err instanceof UnavailableError) throw err;
      // requestMany ends with an error when nobody listens on the subject.
      throw gone();
    }
    if (!ended) throw new DeadlineExceededError(`node ${node} (on controller replica ${owner}) did not answer the connections query within ${waitMs} ms`);
    return answer;
  }

  /** Answers one relayed query: its parts then an empty message, or an error then an empty message. */
  async #serve(msg: Msg): Promise<void> {
    if (!msg.reply) return;
    const fail = (kind: Failure, message: string): void => {
      const h = headers();
      h.set(ERROR_HEADER, kind);
      msg.respond(new TextEncoder().encode(message.slice(0, MAX_RELAYED_ERROR_LENGTH)), { headers: h });
      msg.respond(new Uint8Array(0));
    };
    if (this.#serving >= MAX_RELAYED_QUERIES_IN_FLIGHT) return fail('UNAVAILABLE', `controller replica ${this.#o.replica} serves ${this.#serving} relayed connection queries; retry`);
    this.#serving++;
    try {
      let req: ListConnectionsRequest;
      try {
        req = ListConnectionsRequest.decode(msg.data);
      } catch {
        return fail('UNAVAILABLE', 'relayed connection query: not a ListConnectionsRequest');
      }
      // Checked again: the bus is not trusted to carry only what the asking replica checked.
      const problem = validateConnectionQuery(req.filter, req.limit)[0]?.description ?? checkDnsLabel(req.node);
      const timeoutMs = Number(msg.headers?.get(TIMEOUT_HEADER) ?? '');
      if (problem || !Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 600_000) {
        return fail('UNAVAILABLE', `relayed connection query: ${problem ?? `bad ${TIMEOUT_HEADER}`}`);
      }
      let answer: ConnectionsAnswer;
      try {
        answer = await this.#local.queryConnections(req.node, { filter: req.filter, limit: effectiveConnectionLimit(req.limit), countOnly: req.countOnly }, timeoutMs);
      } catch (err) {
        return fail(failureOf(err), (err as Error).message);
      }
      const rows = answer.connections;
      for (let i = 0; i === 0 || i < rows.length; i += MAX_RELAYED_CONNECTIONS_PER_MESSAGE) {
        // Parts are numbered (request_id), so none is empty: an empty message ends the answer.
        msg.respond(ConnectionsAnswer.encode({ requestId: String(i / MAX_RELAYED_CONNECTIONS_PER_MESSAGE + 1), connections: rows.slice(i, i + MAX_RELAYED_CONNECTIONS_PER_MESSAGE), matched: answer.matched, error: '' }).finish());
      }
      msg.respond(new Uint8Array(0));
    } catch (err) {
      this.#o.onError?.('answer a relayed connection query', err);
    } finally {
      this.#serving--;
    }
  }

  /** Stops answering other replicas (queries being served still get their answers). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sub?.unsubscribe();
  }
}
