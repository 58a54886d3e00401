// Encoding the messages on the fleet's hot paths (issue 15), side by side in one run, interleaved
// rounds: as before, the generated codec's own `X.encode(m).finish()` (a new writer per message:
// its buffer starts at 128 bytes and doubles as it fills, and finish() copies), which the
// generated gRPC serializers wrapped in `Buffer.from` (a second copy); now, encodeBytes and
// encodeBuffer (proto/src/encode-bytes.ts: one writer reused by the process, no second copy). Messages: a WatchNodes event (the controller, per
// node and watcher per change), a replica's node state with counters (per node and change to the
// other replicas), an agent's ACK (ConnectRequest report, per node and change), a 200-rule policy.
// Prints per message: bytes, us per message each way (median of the rounds), ratio; one JSON line.
// Asserts nothing.
//   node --import=tsx bench/proto-encode.ts [--quick]
import { performance } from 'node:perf_hooks';
import {
  Action,
  ConnectRequest,
  InterfaceRole,
  Node,
  NodeEventType,
  Policy,
  Protocol,
  ReplicaNodeState,
  RevisionOutcome,
  WatchNodesResponse,
  encodeBuffer,
  encodeBytes,
  type MessageEncoder,
} from '@edgeplane/proto';
import { median } from './cpu-ticks.js';

const QUICK = process.argv.includes('--quick');
const ROUNDS = QUICK ? 5 : 11;
/** Encodes per message and round: about 50-100 ms of each side per round. */
const PER_ROUND = QUICK ? 5_000 : 20_000;

const at = new Date(1_800_000_000_000);
const node = Node.fromPartial({
  name: 'sim-node-01234',
  labels: { role: 'edge', site: 'site-3', zone: 'eu-west-3a' },
  info: { agentVersion: '0.1.0', kernelRelease: '6.18.44-fc-v1272', hostname: 'edge-node-01234', capabilities: { xdpNative: true, xdpGeneric: true, tc: true, maxRules: 65_536, ipv6: true }, datapath: 'ebpf' },
  interfaces: [
    { name: 'eth0', ifindex: 2, role: InterfaceRole.INTERFACE_ROLE_UPLINK, attachMode: 'xdp-native', attached: true, programId: 412 },
    { name: 'veth-workload', ifindex: 7, role: InterfaceRole.INTERFACE_ROLE_WORKLOAD, attachMode: 'tcx', attached: true, programId: 413 },
  ],
  status: { connected: true, connectTime: at, lastSeenTime: at, receivedRevision: 1234n, appliedRevision: 1234n, lastOutcomeRevision: 1234n, lastOutcome: RevisionOutcome.REVISION_OUTCOME_ACK },
});

interface Case<T> {
  name: string;
  codec: MessageEncoder<T>;
  message: T;
  /** Sent by a gRPC serializer: before, `Buffer.from(X.encode(m).finish())` (a second copy); now encodeBuffer. Otherwise encode().finish() against encodeBytes. */
  grpc: boolean;
}
const cases: Case<never>[] = [
  { name: 'WatchNodes event', codec: WatchNodesResponse, message: { type: NodeEventType.NODE_EVENT_TYPE_MODIFIED, node }, grpc: true },
  {
    name: 'replica node state',
    codec: ReplicaNodeState,
    message: ReplicaNodeState.fromPartial({ node, rules: Array.from({ length: 8 }, (_, i) => ({ rule: { policy: 'edge', priority: i + 1 }, ruleName: `r${i}`, packets: 1000n * BigInt(i + 1), bytes: 64_000n * BigInt(i + 1) })), statusChanged: true }),
    grpc: false,
  },
  {
    name: 'agent ACK',
    codec: ConnectRequest,
    message: ConnectRequest.fromPartial({ message: { $case: 'report', report: { revision: 1234n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 1234n, time: at, traceContext: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', tracestate: '' }, applyDuration: { seconds: 0n, nanos: 4_200_000 } } } }),
    grpc: true,
  },
  {
    name: '200-rule policy',
    codec: Policy,
    message: Policy.fromPartial({ metadata: { name: 'edge' }, spec: { rules: Array.from({ length: 200 }, (_, i) => ({ name: `r${i}`, action: Action.ACTION_ALLOW, protocol: Protocol.PROTOCOL_TCP, sourceCidrs: [`10.${i}.0.0/16`], destinationPorts: [{ first: 1000 + i, last: 1000 + i }] })) } }),
    grpc: false,
  },
] as unknown as Case<never>[];

/** us per message over `n` encodes. */
function time(encode: () => Uint8Array, n: number): number {
  const t = performance.now();
  let sink = 0;
  for (let i = 0; i < n; i++) sink += encode().length;
  if (sink < 0) throw new Error('unreachable');
  return ((performance.now() - t) * 1000) / n;
}

const rows = cases.map((c) => {
  const fresh = c.grpc ? (): Uint8Array => Buffer.from(c.codec.encode(c.message).finish()) : (): Uint8Array => c.codec.encode(c.message).finish();
  const reused = c.grpc ? (): Uint8Array => encodeBuffer(c.codec, c.message) : (): Uint8Array => encodeBytes(c.codec, c.message);
  if (Buffer.compare(fresh(), reused()) !== 0) throw new Error(`${c.name}: the two encodings differ`);
  const per = c.name === '200-rule policy' ? Math.max(100, PER_ROUND / 100) : PER_ROUND;
  const a: number[] = [];
  const b: number[] = [];
  time(fresh, per);
  time(reused, per);
  for (let r = 0; r < ROUNDS; r++) {
    // Sides alternate which goes first.
    if (r % 2 === 0) {
      a.push(time(fresh, per));
      b.push(time(reused, per));
    } else {
      b.push(time(reused, per));
      a.push(time(fresh, per));
    }
  }
  return { message: c.grpc ? `${c.name} (gRPC)` : c.name, bytes: fresh().length, newWriterUs: median(a), reusedWriterUs: median(b), ratio: median(a) / median(b) };
});

console.log(`\nprotobuf encode, us per message (median of ${ROUNDS} interleaved rounds), node ${process.version}`);
console.log(['message', 'bytes', 'before', 'reused writer', 'before / now'].map((h, i) => (i === 0 ? h.padEnd(24) : h.padStart(15))).join(''));
for (const r of rows) console.log([r.message.padEnd(24), String(r.bytes).padStart(15), r.newWriterUs.toFixed(2).padStart(15), r.reusedWriterUs.toFixed(2).padStart(15), `${r.ratio.toFixed(2)}x`.padStart(15)].join(''));
console.log(JSON.stringify({ bench: 'proto-encode', quick: QUICK, rounds: ROUNDS, rows }));
