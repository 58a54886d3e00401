/**
 * Bounds on everything a request, a log entry or an agent report may carry: the one place
 * their values are chosen. Controller and agents enforce them (through policy validation,
 * the selector parser and the AgentService handlers); the CLI checks the ones a manifest can
 * break before it sends anything. Each value says why it is what it is.
 *
 * Label syntax follows Kubernetes
 * (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set);
 * the counts are edgeplane's own.
 */

import { MAGLEV_MIN_SLOTS_PER_BACKEND, MAGLEV_TABLE_SIZES } from './maglev-sizes.js';

/** Characters of a label-selector text (`role=edge,site in (a,b)`). 64 terms of a 63-character key and value fit in 8 KiB. */
export const MAX_SELECTOR_LENGTH = 8 * 1024;

/** Terms of one selector: match_labels pairs and match_expressions together. */
export const MAX_SELECTOR_TERMS = 64;

/** Values of one `in` / `notin` term (or one match expression). */
export const MAX_SELECTOR_VALUES_PER_TERM = 256;

/** Values of one selector over all its terms. */
export const MAX_SELECTOR_VALUES = 1024;

/** Labels on one object (policy or node). Kubernetes sets no count; 64 keeps a node's hello small. */
export const MAX_LABELS = 64;

/** Characters of a label key's optional DNS-subdomain prefix (Kubernetes). */
export const MAX_LABEL_PREFIX_LENGTH = 253;

/** Characters of a label key's name part, and of a label value (Kubernetes). */
export const MAX_LABEL_NAME_LENGTH = 63;

/**
 * Bytes a controller replica puts in one ReplicaFleetState message (a delta, or one part of its
 * snapshot): nodes are packed until the next would pass it (a single larger node goes alone, up
 * to the NATS max_payload of 8 MiB). 1 MiB is the NATS default max_payload, so the fleet state
 * also passes servers left at their default, and one part is one KV write of bounded size.
 */
export const MAX_REPLICA_STATE_BYTES = 1024 * 1024;

/** Rules in one policy: what one node's datapath holds per interface role. */
export const MAX_RULES_PER_POLICY = 65_536;

/**
 * Bytes of one encoded Policy. A log entry that starts a rollout carries the policy and the
 * one it replaces; both must fit the NATS max_payload the controller runs with (8 MiB). A
 * 65,536-rule policy with a CIDR and a port per rule is about 1.4 MiB.
 */
export const MAX_POLICY_BYTES = 3 * 1024 * 1024;

/**
 * Splices of one policy patch (Change.policy_patches). The controller writes one (the span
 * between the first and the last rule that changed); a follower applies them in one pass over
 * the base's rules, so the bound keeps a hostile entry's checks small, not the pass linear.
 */
export const MAX_SPLICES_PER_PATCH = 64;

/** Rules one policy digest chunk hashes (policyDigest): a one-rule change rehashes this many, not the policy. */
export const POLICY_DIGEST_CHUNK_RULES = 512;

/** Waves of one staged rollout. */
export const MAX_ROLLOUT_WAVES = 32;

/**
 * Sampled packets a node's shadow candidate keeps and reports (ShadowReport.samples; issue 18):
 * enough to show an operator which flows a change would have broken, few enough that a report
 * of them stays a few KiB per node, and RolloutStatus (every node of a wave) stays small.
 */
export const MAX_SHADOW_SAMPLES = 32;

/**
 * Characters of a shadow candidate's name (ShadowReport.candidate): one "KEY@revision" (a
 * rollout key is at most `service/` and a 63-character name, a revision at most 20 digits) for
 * each rollout a node shadows at once, joined by ",": room for a dozen concurrent shadow waves.
 */
export const MAX_SHADOW_CANDIDATE_LENGTH = 1024;

/**
 * Gate readings a finished rollout keeps in its record (Rollout.final_gate_readings), the
 * reading over the limit first: the record is rewritten in the log and every snapshot, so it
 * carries the readings that explain the decision, not one per node of a 10,000-node wave.
 */
export const MAX_RECORDED_GATE_READINGS = 64;

/**
 * Counter marks kept per node (ReplicaNodeState.counter_marks): one per applied revision the
 * node reported counters under, the oldest dropped. A wave's gate reads the mark of the first
 * revision at or after the wave's record; 16 covers that many unrelated changes applied during
 * one wave, and keeps a node's share of the replica state small.
 */
export const MAX_COUNTER_MARKS = 16;

/**
 * Backends of one service: the largest Maglev table (MAGLEV_TABLE_SIZES' last, 131,071 slots)
 * divided by the 100 slots each backend needs for an imbalance near 1 % (the Maglev paper's
 * section 3.4). More backends could not be given a table that balances them.
 */
export const MAX_SERVICE_BACKENDS = Math.floor(MAGLEV_TABLE_SIZES[MAGLEV_TABLE_SIZES.length - 1]! / MAGLEV_MIN_SLOTS_PER_BACKEND);

/**
 * A backend's weight at most. Weights are relative shares: 10,000 gives a 0.01 % resolution,
 * and the sum over MAX_SERVICE_BACKENDS backends (13.1 million) stays far inside 32 bits, which
 * the agent's weighted table fill counts in.
 */
export const MAX_BACKEND_WEIGHT = 10_000;

/** Services in the whole intent: as many as policies; their bytes count toward MAX_INTENT_BYTES with the policies'. */
export const MAX_SERVICES = 10_000;

/** Characters of a health check's HTTP path: a request line an agent sends, not a place for data. */
export const MAX_HEALTH_CHECK_PATH_LENGTH = 256;

/** A health check's interval at least (ms): one probe a second per backend per node bounds the probe load. */
export const MIN_HEALTH_CHECK_INTERVAL_MS = 1000;

/** A health check's interval at most (ms): a failed backend leaves new-flow selection within two intervals, so at most ten minutes. */
export const MAX_HEALTH_CHECK_INTERVAL_MS = 5 * 60 * 1000;

/** A health check's healthy and unhealthy thresholds at most: ten probes in a row already take ten intervals. */
export const MAX_HEALTH_CHECK_THRESHOLD = 10;

/**
 * Backend verdicts in one BackendHealthReport. An entry is at most about 400 bytes (a 63-character
 * service name, an IPv6 address as text, a reason of MAX_HEALTH_REASON_LENGTH), so a full message
 * stays near 1.6 MiB: inside MAX_REQUEST_BYTES, which bounds what the controller accepts on an
 * agent stream. A node probing more backends sends its whole state as several messages.
 */
export const MAX_BACKEND_HEALTH_ENTRIES = 4096;

/** Characters of the reason a node gives for an unhealthy backend (the agent cuts its own to this): an errno name or an HTTP status, with room to spare. */
export const MAX_HEALTH_REASON_LENGTH = 256;

/**
 * Backend verdicts the controller keeps per node: 16 whole reports. A node fronting more
 * health-checked backends than that has the rest shown as unknown (and counted as dropped), so
 * an agent cannot grow the controller's memory by inventing backends.
 */
export const MAX_BACKEND_HEALTH_PER_NODE = 16 * MAX_BACKEND_HEALTH_ENTRIES;

/**
 * Services one GetServiceHealth request may name. A service has at most MAX_SERVICE_BACKENDS
 * (1,310) backends of about 80 bytes each without reasons: 16 of them stay near 1.7 MiB, inside
 * a default client's 4 MiB receive limit with the listed reasons added.
 */
export const MAX_SERVICE_HEALTH_NAMES = 16;

/** Unhealthy nodes listed (with reasons) per backend in GetServiceHealth; the rest are counted. */
export const MAX_UNHEALTHY_NODES_LISTED = 10;

/** Unhealthy verdicts listed in one GetServiceHealth response: 1,000 of at most about 400 bytes stay under 400 KiB. */
export const MAX_UNHEALTHY_VERDICTS_LISTED = 1000;

/** Policies in the whole intent. */
export const MAX_POLICIES = 10_000;

/**
 * Distinct prefix lists the rules of one node's rule set (one interface role) may name as source
 * or destination, and the most one rule may name in either field: the datapath looks the packet's
 * addresses up in each list its generation names (bpf/include/ep_lists.h, EP_LIST_REFS).
 */
export const MAX_RULE_SET_PREFIX_LISTS = 16;

/** Bytes of all policies in the intent together (encoded): what a snapshot and an agent's catch-up carry. */
export const MAX_INTENT_BYTES = 64 * 1024 * 1024;

/** Node names one request may name (wave members, per-node queries). */
export const MAX_NODES_PER_REQUEST = 1000;

/** Interfaces a node may describe in its hello. */
export const MAX_NODE_INTERFACES = 256;

/** Conditions a node may report at once (a handful of types exist; see NodeCondition). */
export const MAX_NODE_CONDITIONS = 32;

/** Characters of a condition's message (the agent cuts its own messages to this). */
export const MAX_CONDITION_MESSAGE_LENGTH = 512;

/**
 * Rule entries in one counter report. An entry is at most about 170 bytes, so a full report
 * stays under 1.5 MiB; an agent with more rules that counted sends several reports (the
 * controller sums deltas).
 */
export const MAX_COUNTER_RULES = 8192;

/**
 * Distinct rules the controller keeps counters for per node: every rule of both interface
 * roles. Reports naming more new rules than that are dropped past the bound, so an agent
 * cannot grow the controller's memory by inventing rule keys.
 */
export const MAX_COUNTED_RULES_PER_NODE = 2 * MAX_RULES_PER_POLICY;

/** Interface entries in one counter report. */
export const MAX_COUNTER_INTERFACES = MAX_NODE_INTERFACES;

/** Characters of a name in a counter report (policy, rule: DNS labels; interface: IFNAMSIZ-1). */
export const MAX_COUNTER_NAME_LENGTH = 63;

/** Characters of free text an agent sends (NACK reason, condition message). */
export const MAX_REPORT_TEXT_LENGTH = 4096;

/**
 * The gRPC server's largest accepted message: the largest valid request is an ApplyPolicy
 * with a policy of MAX_POLICY_BYTES; 64 KiB covers the request's other fields. A larger
 * message fails RESOURCE_EXHAUSTED before it is decoded.
 */
export const MAX_REQUEST_BYTES = MAX_POLICY_BYTES + 64 * 1024;

/** Bytes of one manifest file (or standard input) the CLI reads: a policy of MAX_POLICY_BYTES as YAML is at most a few times larger. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

/**
 * Connections one ListConnections answer carries. A row is at most about 150 bytes (two IPv6
 * addresses as text), so 10,000 rows stay near 1.5 MiB: inside MAX_REQUEST_BYTES, which bounds
 * what the controller accepts on an agent stream, and a default client's 4 MiB receive limit.
 */
export const MAX_CONNECTIONS_LIMIT = 10_000;

/** Connections ListConnections returns when the request names no limit. */
export const DEFAULT_CONNECTIONS_LIMIT = 1000;

/**
 * Connections in one message of a connection query relayed between controller replicas
 * (FLEET_CONNECTIONS_SUBJECT_PREFIX): at about 150 bytes a row, 2,000 rows stay near 300 KiB,
 * well inside the NATS default max_payload of 1 MiB that a whole answer of MAX_CONNECTIONS_LIMIT
 * rows would pass; an answer goes out in at most 5 parts.
 */
export const MAX_RELAYED_CONNECTIONS_PER_MESSAGE = 2000;

/**
 * Relayed connection queries one controller replica serves at once for the others. Each is
 * also bounded per node (4 in flight on a node's stream); this bounds what a burst of queries
 * from other replicas can hold here (answers up to MAX_CONNECTIONS_LIMIT rows each).
 */
export const MAX_RELAYED_QUERIES_IN_FLIGHT = 64;

/** Characters of a ConnectionsQuery request id. */
export const MAX_REQUEST_ID_LENGTH = 64;

/**
 * Prefixes in one prefix list. The threat feeds run to 500,000; twice that leaves room.
 * On a node a list is an LPM trie of about 100 bytes of kernel memory per prefix (lpm_trie_node
 * + key + value, kmalloc-rounded), so a full list costs ~100 MiB, twice that while a whole new
 * list is built beside the live one.
 */
export const MAX_PREFIX_LIST_ENTRIES = 1_000_000;

/**
 * Prefixes added plus removed by one UpdatePrefixList (one log entry). The longest canonical
 * IPv6 prefix is 43 characters, so 50,000 of them encode in under 2.3 MiB: inside
 * MAX_REQUEST_BYTES and the NATS max_payload. A larger list is built by successive updates.
 */
export const MAX_PREFIX_LIST_CHANGE = 50_000;

/**
 * Bytes of a PrefixList manifest's prefixesFile (one prefix per line): MAX_PREFIX_LIST_ENTRIES
 * of the longest canonical prefixes (43 characters and a newline) with room for comments. It is
 * read as a stream, a line at a time; the bound keeps the reader's memory and time bounded.
 */
export const MAX_PREFIXES_FILE_BYTES = 64 * 1024 * 1024;

/**
 * Bytes a client accepts in one BlocklistService answer: GetPrefixList of a full list
 * (MAX_PREFIX_LIST_ENTRIES prefixes of up to 43 characters, 2 bytes of framing each) is ~45 MB,
 * above grpc-js's default 4 MiB.
 */
export const MAX_PREFIX_LIST_RESPONSE_BYTES = 64 * 1024 * 1024;

/** Prefix lists in the fleet: each is a name nodes index; lists are few and large. */
export const MAX_PREFIX_LISTS = 256;

/**
 * Prefixes a node enforces from all its deny lists and blocks together (its tries are sized to
 * them): two full lists. An agent NACKs a revision that would need more.
 */
export const MAX_BLOCKLIST_ENTRIES_PER_NODE = 2 * MAX_PREFIX_LIST_ENTRIES;

/** Prefixes in one emergency block: blocks are typed by an operator in an emergency. */
export const MAX_BLOCK_PREFIXES = 1024;

/** Blocks active at once in the fleet: emergency measures, not a second list mechanism. */
export const MAX_ACTIVE_BLOCKS = 1024;

/** Ended (expired or lifted) blocks kept for `get blocks`, newest first; older ones are dropped from snapshots. */
export const MAX_ENDED_BLOCKS_KEPT = 1024;

/** Characters of a block's reason. */
export const MAX_BLOCK_REASON_LENGTH = 1024;

/** Shortest block: one second (the skew tolerance of the nodes' clocks is about that). */
export const MIN_BLOCK_DURATION_MS = 1000;

/** Longest block: 30 days. A block is an emergency measure; a lasting one belongs in a prefix list. */
export const MAX_BLOCK_DURATION_MS = 30 * 24 * 3600 * 1000;

/** Characters of an offending value quoted in an error (then "…"). */
export const MAX_QUOTED_LENGTH = 64;

/**
 * Field violations listed in one error; the rest are counted ("and K more"). With the quoted
 * values bounded, every error stays well inside a default gRPC client's 8 KiB metadata limit.
 */
export const MAX_LISTED_VIOLATIONS = 24;

/** Violations validation collects before it only counts (the error lists MAX_LISTED_VIOLATIONS). */
export const MAX_COLLECTED_VIOLATIONS = 256;

/**
 * Returns `value` JSON-quoted for an error message, cut to MAX_QUOTED_LENGTH characters
 * followed by "…" and the full length. Linear in the quoted prefix only.
 */
export function quote(value: string, max: number = MAX_QUOTED_LENGTH): string {
  if (value.length <= max) return JSON.stringify(value);
  // Do not cut a surrogate pair in half.
  let end = max;
  const c = value.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--;
  return `${JSON.stringify(value.slice(0, end))}… (${value.length} characters)`;
}

/**
 * Characters of a dashboard request's target (path and query string). The longest valid one is
 * a label selector of MAX_SELECTOR_LENGTH characters percent-encoded (3 bytes each) plus the
 * path: anything longer is refused (414) before it is parsed.
 */
export const MAX_DASHBOARD_URL_LENGTH = 64 + 3 * MAX_SELECTOR_LENGTH;

/**
 * Bytes of a dashboard request's request line and headers together (Node's maxHeaderSize; 431
 * past it): the longest target plus 8 KiB of headers (a browser sends 1-2 KiB).
 */
export const MAX_DASHBOARD_HEADER_BYTES = MAX_DASHBOARD_URL_LENGTH + 8 * 1024;

/**
 * Connections the dashboard's HTTPS listener holds at once (past it new ones are closed at
 * accept). Browsers open at most 6 per origin; this serves some 40 viewers without letting one
 * client hold the controller's file descriptors.
 */
export const MAX_DASHBOARD_CONNECTIONS = 256;

/** Live-update (server-sent events) streams open at once, all callers together; more get 503. */
export const MAX_DASHBOARD_STREAMS = 64;

/** Live-update streams open at once per identity (a browser with several tabs); more get 429. */
export const MAX_DASHBOARD_STREAMS_PER_IDENTITY = 8;

/**
 * Bytes a live-update stream may have queued for a client that does not read: past it the
 * stream is closed (the browser's EventSource reconnects and starts from a fresh state), so a
 * stalled reader never makes the controller buffer a fleet's worth of events.
 */
export const MAX_DASHBOARD_STREAM_BUFFER_BYTES = 4 * 1024 * 1024;

/** Samples of the fleet's per-rule counters the dashboard keeps for its charts (at 5 s: 10 minutes). */
export const DASHBOARD_COUNTER_SAMPLES = 120;

/** Rules charted: the busiest by packets over the samples kept (a fleet may have 10,000 policies). */
export const DASHBOARD_CHARTED_RULES = 48;

/** Outcomes (ACK/NACK with the time the controller saw them) kept per node for rollout timelines. */
export const DASHBOARD_OUTCOMES_PER_NODE = 16;

/** Rollouts whose wave start times the dashboard remembers for timelines (the log keeps only the current wave's). */
export const DASHBOARD_TIMELINE_ROLLOUTS = 256;

/** Nodes a rollout timeline lists one by one (a wave of 10,000 nodes is summarised past it). */
export const DASHBOARD_TIMELINE_NODES = 500;
