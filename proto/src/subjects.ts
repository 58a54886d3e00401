/**
 * NATS names edgeplane uses: the one module every service takes them from (STYLE.md).
 * Changing any of them is a breaking change of the deployment, like a proto field number.
 */

/** The JetStream stream that stores the intent log. Sequence = fleet revision. */
export const INTENT_STREAM = 'EDGEPLANE_INTENT';

/**
 * The subject writers publish log entries on; the stream captures it. Readers must NOT
 * subscribe to it: core subscribers of a captured subject also receive publishes that
 * JetStream rejected (a stale expected-last-sequence), i.e. signed entries that were never
 * stored. Readers follow {@link INTENT_LIVE_SUBJECT} instead.
 */
export const INTENT_SUBJECT = 'edgeplane.intent.log';

/**
 * The subject agents follow live: the stream republishes (JetStream RePublish) every entry it
 * stored, and only those, with the Nats-Sequence header equal to the revision.
 */
export const INTENT_LIVE_SUBJECT = 'edgeplane.intent.live';

/** The JetStream key-value bucket holding the compacted snapshot of the intent. */
export const SNAPSHOT_BUCKET = 'EDGEPLANE_SNAPSHOT';

/** The key under SNAPSHOT_BUCKET of the newest snapshot. */
export const SNAPSHOT_KEY = 'latest';

/** The JetStream key-value bucket holding the node registry (survives controller restarts). */
export const NODE_REGISTRY_BUCKET = 'EDGEPLANE_NODES';

/**
 * The NATS message header carrying the W3C traceparent of a publish
 * (https://www.w3.org/TR/trace-context/); the same context is also inside the signed entry.
 */
export const TRACEPARENT_HEADER = 'traceparent';

/**
 * The subject of the controller's signed heartbeat / log head (agents notice a frozen log by
 * it). Agents may subscribe to it; only controllers publish it.
 */
export const INTENT_HEAD_SUBJECT = 'edgeplane.intent.head';

/** Every edgeplane subject: what node credentials may never publish on. */
export const EDGEPLANE_SUBJECTS = 'edgeplane.>';

/** The JetStream stream behind a key-value bucket (how JetStream names it; its API subjects use it). */
export function kvStreamName(bucket: string): string {
  return `KV_${bucket}`;
}

/**
 * The inbox prefix of a node's NATS connection: request replies (JetStream API answers,
 * consumer deliveries) come to `<prefix>.*`. Each node user may subscribe only to its own, so
 * no node reads another's (or the controller's) replies. `userPublicKey` is the node's NATS
 * user nkey (U...), which both the controller (when it issues the JWT) and the agent (from its
 * seed) know.
 */
export function natsInboxPrefix(userPublicKey: string): string {
  return `_INBOX_${userPublicKey}`;
}

/**
 * The controller-only JetStream key-value bucket of trust state: join tokens (`token.<sha256>`,
 * consumed by compare-and-set) and node revocations (`revoked.<node>`, watched by every replica).
 * Agents' NATS credentials must not reach it.
 */
export const TRUST_BUCKET = 'EDGEPLANE_TRUST';
