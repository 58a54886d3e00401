import test from 'ava';
import { Action, FleetServiceService, Node, NodeEventType, Policy, Protocol, REUSED_WRITER_MAX_BYTES, RevisionOutcome, WatchNodesResponse, encodeBuffer, encodeBytes } from '@edgeplane/proto';

const node = (name: string, outcome: number = RevisionOutcome.REVISION_OUTCOME_ACK): Node =>
  Node.fromPartial({
    name,
    labels: { zone: 'z3', rack: 'r12' },
    status: { connected: true, connectTime: new Date(1_800_000_000_000), receivedRevision: 1234n, appliedRevision: 1234n, lastOutcomeRevision: 1234n, lastOutcome: outcome },
  });

const event = (n: Node): WatchNodesResponse => ({ type: NodeEventType.NODE_EVENT_TYPE_MODIFIED, node: n });

/** A policy whose encoding is larger than the writer is kept for. */
function largePolicy(): Policy {
  const rules = Array.from({ length: 10_000 }, (_, i) => ({ name: `rule-${i}`, action: Action.ACTION_ALLOW, protocol: Protocol.PROTOCOL_TCP, sourceCidrs: [`10.${i >> 8}.${i & 255}.0/24`], destinationPorts: [{ first: 1000 + i, last: 1000 + i }] }));
  return Policy.fromPartial({ metadata: { name: 'large' }, spec: { rules } });
}

test('encodeBytes - the bytes encode().finish() gives, small and large messages in any order', (t) => {
  const large = largePolicy();
  const largeBytes = Policy.encode(large).finish();
  t.true(largeBytes.length > REUSED_WRITER_MAX_BYTES, `the large policy is ${largeBytes.length} bytes`);
  const cases: [unknown, () => Uint8Array, () => Uint8Array][] = [
    ['empty', () => WatchNodesResponse.encode({ type: 0, node: undefined }).finish(), () => encodeBytes(WatchNodesResponse, { type: 0, node: undefined })],
    ['node', () => WatchNodesResponse.encode(event(node('a'))).finish(), () => encodeBytes(WatchNodesResponse, event(node('a')))],
    ['large', () => largeBytes, () => encodeBytes(Policy, large)],
    ['node after large', () => Node.encode(node('b')).finish(), () => encodeBytes(Node, node('b'))],
  ];
  for (const [name, want, got] of cases) t.deepEqual(Buffer.from(got()), Buffer.from(want()), String(name));
});

test('encodeBytes - what it returned is not changed by later encodes', (t) => {
  const first = encodeBytes(Node, node('first-node-with-a-longer-name'));
  const kept = Buffer.from(first);
  encodeBytes(Node, node('second'));
  encodeBytes(Policy, largePolicy());
  t.deepEqual(Buffer.from(first), kept);
});

test('encodeBytes - a refused value throws as encode does and leaves nothing behind for the next message', (t) => {
  // lastOutcome is an enum (int32): out of range, refused inside the nested Node's open fork.
  const bad = event(node('bad', 2 ** 40));
  const want = t.throws(() => WatchNodesResponse.encode(bad).finish());
  const got = t.throws(() => encodeBytes(WatchNodesResponse, bad));
  t.is(got?.message, want?.message);
  t.deepEqual(Buffer.from(encodeBytes(WatchNodesResponse, event(node('good')))), Buffer.from(WatchNodesResponse.encode(event(node('good'))).finish()));
});

test('the generated gRPC serializers encode with it: the same bytes, a Buffer of their own each', (t) => {
  const serialize = FleetServiceService.watchNodes.responseSerialize;
  const one = serialize(event(node('one')));
  const kept = Buffer.from(one);
  const two = serialize(event(node('two')));
  t.true(Buffer.isBuffer(one));
  t.deepEqual(one, kept);
  t.deepEqual(two, encodeBuffer(WatchNodesResponse, event(node('two'))));
  t.deepEqual(two, Buffer.from(WatchNodesResponse.encode(event(node('two'))).finish()));
  t.deepEqual(FleetServiceService.watchNodes.responseDeserialize(one), event(node('one')));
});
