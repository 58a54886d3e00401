// AgentSessions takes each message in the transport's callback (no async iteration): what came
// while the hello was still being checked waits, in order, and the stream's end waits for it.
import test from 'ava';
import { ConnectRequest, RevisionOutcome, type ConnectResponse } from '@edgeplane/proto';
import { AgentSessions, MAX_MESSAGES_BEFORE_WELCOME, type AgentStream } from '../src/agent-sessions.js';
import { CounterStore } from '../src/counter-store.js';
import { PermissionDeniedError } from '../src/errors.js';
import { NodeRegistry } from '../src/node-registry.js';

const hello = (node: string): ConnectRequest =>
  ConnectRequest.fromPartial({ message: { $case: 'hello', hello: { nodeName: node, receivedRevision: 1n, appliedRevision: 1n, sessionId: 's' } } });
const ack = (revision: bigint): ConnectRequest =>
  ConnectRequest.fromPartial({ message: { $case: 'report', report: { revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: revision } } });
const counterReport = (packets: bigint): ConnectRequest =>
  ConnectRequest.fromPartial({ message: { $case: 'counters', counters: { appliedRevision: 2n, interfaces: [{ interface: 'eth0', passedPackets: packets }] } } });

/** A stream whose hello check waits until the test settles it. */
function playedStream(): {
  stream: AgentStream;
  deliver(m: ConnectRequest): void;
  agentEnds(): void;
  allow(): void;
  refuse(err: Error): void;
  sent: ConnectResponse[];
  endedWith: (Error | undefined)[];
} {
  let deliver: (m: ConnectRequest) => void = () => undefined;
  let agentEnds: () => void = () => undefined;
  let allow!: () => void;
  let refuse!: (err: Error) => void;
  const sent: ConnectResponse[] = [];
  const endedWith: (Error | undefined)[] = [];
  const stream: AgentStream = {
    listen: (message, end) => {
      deliver = message;
      agentEnds = end;
    },
    send: (m) => void sent.push(m),
    end: (err) => void endedWith.push(err),
    checkHello: (_name, labels) =>
      new Promise((resolve, reject) => {
        allow = () => resolve({ ...labels, enrolled: 'yes' });
        refuse = reject;
      }),
  };
  return { stream, deliver: (m) => deliver(m), agentEnds: () => agentEnds(), allow: () => allow(), refuse: (e) => refuse(e), sent, endedWith };
}

function sessions(): { sessions: AgentSessions; registry: NodeRegistry; counters: CounterStore; changes: string[] } {
  const changes: string[] = [];
  const registry = new NodeRegistry({ load: async () => [], save: async () => undefined }, { batchMs: 10 });
  const counters = new CounterStore();
  const s = new AgentSessions(registry, counters, {
    controllerId: 'c',
    keys: [],
    settings: { counterInterval: undefined, heartbeatInterval: { seconds: 60n, nanos: 0 }, logStream: '', logSubject: '' },
    currentRevision: () => 2n,
    onNodeChanged: (node, status, counters) => void changes.push(`${node}:${status ? 'status' : counters ? 'counters' : 'other'}`),
  });
  return { sessions: s, registry, counters, changes };
}

test('messages that come while the hello is checked are handled after the welcome, in order', async (t) => {
  const { sessions: s, registry, counters, changes } = sessions();
  const p = playedStream();
  const served = s.serve(p.stream);
  p.deliver(hello('edge-1'));
  p.deliver(ack(2n));
  p.deliver(counterReport(5n));
  p.deliver(counterReport(7n));
  // Nothing of the node is known before its hello is allowed.
  t.is(registry.get('edge-1'), undefined);
  t.deepEqual(p.sent, []);
  p.allow();
  await new Promise((r) => setImmediate(r));
  t.is(p.sent[0]?.message?.$case, 'welcome');
  const node = registry.get('edge-1');
  t.is(node?.labels.enrolled, 'yes', 'the labels the check returned are recorded');
  t.is(node?.status?.lastOutcomeRevision, 2n, 'the ACK held back during the check was kept');
  t.is(counters.nodeInterfaces('edge-1')[0]?.passedPackets, 12n, 'both counter reports were added');
  // What replicas are told: the hello and the ACK are status; counter reports alone may be batched.
  t.deepEqual(changes, ['edge-1:status', 'edge-1:status', 'edge-1:counters', 'edge-1:counters']);
  t.is(s.size, 1);
  p.agentEnds();
  await served;
  t.deepEqual(p.endedWith, [undefined], 'ended once, with an OK status');
  t.is(s.size, 0);
  t.false(registry.get('edge-1')?.status?.connected);
});

test('an agent that ends its side during the hello check has its held messages handled, then the stream ends', async (t) => {
  const { sessions: s, registry } = sessions();
  const p = playedStream();
  const served = s.serve(p.stream);
  p.deliver(hello('edge-2'));
  p.deliver(ack(2n));
  p.agentEnds();
  t.deepEqual(p.endedWith, [], 'not ended before the check settles');
  p.allow();
  await served;
  t.deepEqual(p.endedWith, [undefined]);
  t.is(registry.get('edge-2')?.status?.lastOutcomeRevision, 2n);
  t.false(registry.get('edge-2')?.status?.connected);
  t.is(s.size, 0);
});

test('a refused hello ends the stream with the refusal, and nothing held is kept', async (t) => {
  const { sessions: s, registry, counters } = sessions();
  const p = playedStream();
  const served = s.serve(p.stream);
  p.deliver(hello('edge-3'));
  p.deliver(counterReport(5n));
  p.refuse(new PermissionDeniedError('not yours', 'FOREIGN_NODE'));
  await served;
  t.is(p.endedWith.length, 1);
  t.true(p.endedWith[0] instanceof PermissionDeniedError);
  t.is(registry.get('edge-3'), undefined);
  t.deepEqual(counters.nodeInterfaces('edge-3'), []);
  // Messages after the end change nothing.
  p.deliver(counterReport(9n));
  t.deepEqual(counters.nodeInterfaces('edge-3'), []);
  t.is(p.sent.length, 0);
});

test('an invalid message ends the stream at once; what follows it is dropped', async (t) => {
  const { sessions: s, registry } = sessions();
  const p = playedStream();
  const served = s.serve(p.stream);
  p.deliver(hello('edge-4'));
  p.allow();
  await new Promise((r) => setImmediate(r));
  p.deliver(hello('edge-4'));
  await served;
  t.is(p.endedWith.length, 1);
  t.regex(String(p.endedWith[0]?.message), /hello sent twice/);
  p.deliver(ack(3n));
  t.is(registry.get('edge-4')?.status?.lastOutcomeRevision, 0n);
  t.false(registry.get('edge-4')?.status?.connected);
});

test('closeNode ends and forgets the node\'s streams without waiting for the transport', async (t) => {
  const { sessions: s, registry } = sessions();
  const p = playedStream();
  const served = s.serve(p.stream);
  p.deliver(hello('edge-5'));
  p.allow();
  await new Promise((r) => setImmediate(r));
  t.true(registry.get('edge-5')?.status?.connected);
  // The played transport never reports its end on its own: the session must not need it.
  t.is(s.closeNode('edge-5', new PermissionDeniedError('revoked', 'REVOKED')), 1);
  await served;
  t.is(s.size, 0);
  t.false(registry.get('edge-5')?.status?.connected);
  t.true(p.endedWith[0] instanceof PermissionDeniedError);
  t.is(s.closeNode('edge-5', new Error('again')), 0);
});

test('a stream that floods messages while its hello is checked is ended, and nothing of it is kept', async (t) => {
  const { sessions: s, registry, counters } = sessions();
  const p = playedStream();
  const served = s.serve(p.stream);
  p.deliver(hello('edge-6'));
  for (let i = 0; i < MAX_MESSAGES_BEFORE_WELCOME; i++) p.deliver(counterReport(1n));
  t.deepEqual(p.endedWith, [], 'up to the bound, messages wait');
  p.deliver(counterReport(1n));
  await served;
  t.regex(String(p.endedWith[0]?.message), /more than 64 messages before the welcome/);
  p.allow();
  await new Promise((r) => setImmediate(r));
  t.is(registry.get('edge-6'), undefined, 'no welcome after the end');
  t.deepEqual(counters.nodeInterfaces('edge-6'), []);
  t.deepEqual(p.sent, []);
});
