// A controller that starts beside a JetStream cluster still forming (deploy/compose starts the
// three servers and the controllers together) is refused stream placement until enough servers
// have joined: "no suitable peers for placement" for a log of 3 replicas while 2 servers know each
// other, "temporarily unavailable" while the meta group elects its leader, a timeout before that,
// and (seen once in CI, as the third server joined) "error creating store for stream".
// Those pass by themselves; every other error (JetStream not enabled, permissions, a conflicting
// stream) is the operator's to see at once.
import { TimeoutError } from '@nats-io/transport-node';
import { JetStreamApiError } from '@nats-io/jetstream';

/** JetStream API error codes of a cluster that is forming (nats-server's errors.json). */
const FORMING_CLUSTER_CODES = new Set([
  10005, // JSClusterNoPeersErrF: no suitable peers for placement
  10008, // JSClusterNotAvailErr: JetStream system temporarily unavailable
  10009, // JSClusterNotLeaderErr: JetStream cluster can not handle request (no meta leader yet)
]);

/**
 * JSStreamCreateErrF, which carries the reason in its description. One reason passed by itself
 * once in CI as the third server joined: a peer could not create its store for the placed stream
 * (the server's log has why). The meta leader then deletes the new assignment (nats-server
 * processStreamAssignmentResults, within 5 s of its creation), so a create again starts afresh. A
 * store that can never be created (permissions, a full disk) is retried until the timeout, each
 * refusal logged with its reason.
 */
const STREAM_CREATE_ERR = 10049;
const STORE_FAILED = 'error creating store for stream';

/** True for an error (or a cause in its chain) that a forming JetStream cluster answers with. */
export function isFormingClusterError(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof JetStreamApiError) return FORMING_CLUSTER_CODES.has(e.code) || (e.code === STREAM_CREATE_ERR && e.message === STORE_FAILED);
    if (e instanceof TimeoutError) return true;
  }
  return false;
}

export interface JetStreamReadyOptions {
  /** How long to keep trying (ms); the last error is thrown after it. */
  timeoutMs: number;
  /** Told of each refusal that will be retried (once per attempt). */
  onRetry: (what: string, err: Error, attempt: number) => void;
}

/**
 * Runs `open` until it succeeds, retrying only the refusals of a JetStream cluster that is still
 * forming (isFormingClusterError) until `timeoutMs` has passed. `open` must be idempotent (a
 * create that finds what an earlier attempt made).
 * @throws the first error that is not a forming cluster's, or the last one after the timeout.
 */
export async function whenJetStreamReady<T>(what: string, open: () => Promise<T>, o: JetStreamReadyOptions): Promise<T> {
  const deadline = Date.now() + o.timeoutMs;
  // 250 ms first, doubled up to 2 s.
  let pause = 250;
  for (let attempt = 1; ; attempt++) {
    try {
      return await open();
    } catch (err) {
      if (!isFormingClusterError(err) || Date.now() + pause >= deadline) throw err;
      o.onRetry(what, err as Error, attempt);
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 2000);
    }
  }
}
