// The reference model of connection tracking on its own, row by row of bpf/CONNTRACK.md, so the
// oracle of test/conntrack-differential.test.ts is itself pinned down. No kernel.
import test from 'ava';
import { parseAddress } from '@edgeplane/proto';
import {
  ConntrackModel,
  ctDirectMark,
  ctFlags,
  ctGeneration,
  ctStates,
  DEFAULT_CT_TIMEOUTS,
  keyId,
  parseCtPacket,
  reverseKey,
  tcpTransition,
  type CtConfig,
  type CtEntry,
  type CtHook,
  type CtKey,
  type CtState,
} from '../src/datapath/conntrack-model.js';
import { RuleSetError } from '../src/datapath/errors.js';
import { buildFrame, tcpFlags, type FrameSpec } from '../src/datapath/packet.js';
import { DEFAULT_RULE_ID, EGRESS_RULE_ID, type RuleSetSpec } from '../src/datapath/rule-set.js';
import { eventFrame, flowKey, randomScenario, type CtFlow, type CtScenarioGeneration } from './conntrack-sequences.js';
import { prng } from './datapath-helpers.js';

const { fin, syn, rst, ack } = tcpFlags;
const S = 1_000_000_000n;
const T0 = 1_000n * S;
const timeouts = { tcpSyn: 60n * S, tcpEstablished: 21_600n * S, tcpClosing: 10n * S, udp: 61n * S, icmp: 62n * S };

/**
 * A model without ep_ct4: these tests of ep_ct's and ep_ct_new's rules use IPv4 flows, which
 * ep_ct4 would take (the rules hold for every flow it does not: IPv6, ICMP, a full window); the
 * tests named "ep_ct4" below give it one.
 */
const newModel = (options: ConstructorParameters<typeof ConntrackModel>[0] = {}): ConntrackModel => new ConntrackModel({ v4Slots: 0, ...options });

const A = '10.0.0.1';
const B = '10.0.0.2';
const A6 = '2001:db8::1';
const B6 = '2001:db8::2';

// Allow everything to 10.0.0.2 and 2001:db8::2 and echo requests (tracked), deny the rest.
const ruleSet: RuleSetSpec = {
  rules: [
    { id: 1, srcCidrs: [], dstCidrs: ['10.0.0.2/32', '2001:db8::2/128'], protocol: 'any', dstPorts: [], action: 'allow' },
    { id: 2, srcCidrs: [], dstCidrs: ['10.0.0.3/32'], protocol: 'any', dstPorts: [], action: 'allow' },
    { id: 3, srcCidrs: ['10.0.0.9/32'], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' },
  ],
  defaultAction: 'deny',
};

interface GenerationOptions {
  ruleSet: RuleSetSpec;
  trackedRuleIds: number[];
  trackDefault: boolean;
  trackEgress: boolean;
  cut: boolean;
  epoch: number;
}

function config(options: Partial<GenerationOptions> = {}, control: CtConfig['control'] = []): CtConfig {
  const o: GenerationOptions = { ruleSet, trackedRuleIds: [1], trackDefault: false, trackEgress: true, cut: false, epoch: 1, ...options };
  const spec: RuleSetSpec = {
    rules: o.ruleSet.rules.map((rule) => ({ ...rule, track: o.trackedRuleIds.includes(rule.id) })),
    defaultAction: o.ruleSet.defaultAction,
    trackDefault: o.trackDefault,
    trackEgress: o.trackEgress,
    cutOnDeny: o.cut,
  };
  return { generation: ctGeneration(spec, o.epoch), timeouts, control };
}

const tcp = (src: string, dst: string, sport: number, dport: number, flags: number): Uint8Array =>
  buildFrame({ src, dst, protocol: 'tcp', srcPort: sport, dstPort: dport, tcpFlags: flags, payloadLength: 0 });
const udp = (src: string, dst: string, sport: number, dport: number): Uint8Array => buildFrame({ src, dst, protocol: 'udp', srcPort: sport, dstPort: dport });
const icmp = (src: string, dst: string, type: number, id: number, quote?: FrameSpec): Uint8Array =>
  buildFrame({ src, dst, protocol: 'icmp', icmpType: type, icmpId: id, ...(quote === undefined ? {} : { icmpQuote: quote }) });

function key(src: string, dst: string, proto: number, sport: number, dport: number): CtKey {
  const pad = (text: string): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(parseAddress(text) as Uint8Array);
    return out;
  };
  return { family: src.includes(':') ? 6 : 4, proto, sport, dport, src: pad(src), dst: pad(dst) };
}

function entry(state: CtState, flags = 0, fields: Partial<CtEntry> = {}): CtEntry {
  return { expiresNs: T0 + 5n * S, createdNs: T0 - S, packets: [1n, 0n], bytes: [60n, 0n], ruleId: 1, epoch: 1, state, flags, ...fields };
}

const tcpKey = key(A, B, 6, 40000, 80);
const names = Object.fromEntries(Object.entries(ctStates).map(([name, value]) => [value, name]));

// Every row of "TCP state machine", each state it names. [state, flags, direction, packet flags,
// next state, next flags, deadline after T0+1s].
const closingKeep = T0 + 5n * S; // the entry's own deadline (earlier than now + closing)
const rows: [CtState, number, 'orig' | 'reply', number, CtState, number, bigint][] = [
  // any | RST (either d) -> CLOSED, closing
  ...Object.values(ctStates)
    .filter((s) => s !== ctStates.none && s !== ctStates.udp && s !== ctStates.icmp)
    .flatMap((s): [CtState, number, 'orig' | 'reply', number, CtState, number, bigint][] => [
      [s, 0, 'orig', rst, ctStates.closed, 0, timeouts.tcpClosing],
      [s, 0, 'reply', rst | ack, ctStates.closed, ctFlags.seenReply, timeouts.tcpClosing],
    ]),
  // SYN_SENT | orig SYN -> SYN_SENT, syn
  [ctStates.synSent, 0, 'orig', syn, ctStates.synSent, 0, timeouts.tcpSyn],
  // SYN_SENT | reply SYN+ACK -> SYN_RECV, syn
  [ctStates.synSent, 0, 'reply', syn | ack, ctStates.synRecv, ctFlags.seenReply, timeouts.tcpSyn],
  // SYN_RECV | orig ACK without SYN -> ESTABLISHED, established
  [ctStates.synRecv, ctFlags.seenReply, 'orig', ack, ctStates.established, ctFlags.seenReply, timeouts.tcpEstablished],
  // CLOSED, CLOSING | orig SYN without ACK -> SYN_SENT, flags cleared but EGRESS kept, syn
  [ctStates.closed, ctFlags.seenReply | ctFlags.finOrig | ctFlags.egress, 'orig', syn, ctStates.synSent, ctFlags.egress, timeouts.tcpSyn],
  [ctStates.closing, ctFlags.seenReply | ctFlags.finOrig | ctFlags.finReply, 'orig', syn, ctStates.synSent, 0, timeouts.tcpSyn],
  // ESTABLISHED, SYN_*, FIN_WAIT | FIN from d -> FIN_d; both -> CLOSING (closing) else FIN_WAIT (established)
  [ctStates.established, ctFlags.seenReply, 'orig', fin | ack, ctStates.finWait, ctFlags.seenReply | ctFlags.finOrig, timeouts.tcpEstablished],
  [ctStates.established, ctFlags.seenReply, 'reply', fin | ack, ctStates.finWait, ctFlags.seenReply | ctFlags.finReply, timeouts.tcpEstablished],
  [ctStates.synSent, 0, 'orig', fin, ctStates.finWait, ctFlags.finOrig, timeouts.tcpEstablished],
  [ctStates.synRecv, ctFlags.seenReply, 'reply', fin, ctStates.finWait, ctFlags.seenReply | ctFlags.finReply, timeouts.tcpEstablished],
  [ctStates.finWait, ctFlags.seenReply | ctFlags.finOrig, 'reply', fin | ack, ctStates.closing, ctFlags.seenReply | ctFlags.finOrig | ctFlags.finReply, timeouts.tcpClosing],
  [ctStates.finWait, ctFlags.seenReply | ctFlags.finReply, 'orig', fin | ack, ctStates.closing, ctFlags.seenReply | ctFlags.finOrig | ctFlags.finReply, timeouts.tcpClosing],
  // out-of-order: FIN again from the same side keeps FIN_WAIT
  [ctStates.finWait, ctFlags.seenReply | ctFlags.finOrig, 'orig', fin | ack, ctStates.finWait, ctFlags.seenReply | ctFlags.finOrig, timeouts.tcpEstablished],
  // otherwise | any -> unchanged, the state's timeout
  [ctStates.synSent, 0, 'orig', ack, ctStates.synSent, 0, timeouts.tcpSyn],
  [ctStates.synSent, 0, 'reply', ack, ctStates.synSent, ctFlags.seenReply, timeouts.tcpSyn],
  [ctStates.synRecv, ctFlags.seenReply, 'orig', syn, ctStates.synRecv, ctFlags.seenReply, timeouts.tcpSyn],
  [ctStates.synRecv, ctFlags.seenReply, 'reply', syn | ack, ctStates.synRecv, ctFlags.seenReply, timeouts.tcpSyn],
  [ctStates.established, ctFlags.seenReply, 'orig', ack, ctStates.established, ctFlags.seenReply, timeouts.tcpEstablished],
  [ctStates.established, ctFlags.seenReply, 'reply', syn | ack, ctStates.established, ctFlags.seenReply, timeouts.tcpEstablished],
  [ctStates.finWait, ctFlags.finOrig, 'reply', ack, ctStates.finWait, ctFlags.finOrig | ctFlags.seenReply, timeouts.tcpEstablished],
  [ctStates.closing, ctFlags.finOrig | ctFlags.finReply, 'orig', fin | ack, ctStates.closing, ctFlags.finOrig | ctFlags.finReply, closingKeep],
  [ctStates.closing, ctFlags.finOrig | ctFlags.finReply, 'reply', syn, ctStates.closing, ctFlags.finOrig | ctFlags.finReply | ctFlags.seenReply, closingKeep],
  [ctStates.closed, 0, 'orig', syn | ack, ctStates.closed, 0, closingKeep],
  [ctStates.closed, 0, 'reply', syn, ctStates.closed, ctFlags.seenReply, closingKeep],
  [ctStates.closed, 0, 'orig', fin, ctStates.closed, 0, closingKeep],
];

for (const [state, flags, direction, packet, next, nextFlags, timeout] of rows) {
  const title = `${names[state]} flags=${flags} ${direction} tcp=0x${packet.toString(16)} -> ${names[next]} flags=${nextFlags}`;
  test(`tcp table - ${title}`, (t) => {
    const model = newModel();
    model.put('established', tcpKey, entry(state, flags));
    const now = T0 + S;
    const frame = direction === 'orig' ? tcp(A, B, 40000, 80, packet) : tcp(B, A, 80, 40000, packet);
    const result = model.step(frame, 'edge_xdp', now, config());
    t.is(result.verdict, 'pass');
    t.is(result.reason, 'established');
    t.is(result.direction, direction);
    t.is(result.entry?.state, next);
    t.is(result.entry?.flags, nextFlags);
    t.is(result.entry?.expiresNs, timeout === closingKeep ? closingKeep : now + timeout);
    t.deepEqual(result.entry?.packets, direction === 'orig' ? [2n, 0n] : [1n, 1n]);
    t.deepEqual(result.entry?.bytes, direction === 'orig' ? [60n + BigInt(frame.length), 0n] : [60n, BigInt(frame.length)]);
    t.is(model.stats().established, 1);
  });
}

test('tcp table - a closing deadline already later than now + closing is brought in, never extended', (t) => {
  const model = newModel();
  model.put('established', tcpKey, entry(ctStates.closed, 0, { expiresNs: T0 + 100n * S }));
  t.is(model.step(tcp(A, B, 40000, 80, ack), 'edge_xdp', T0, config()).entry?.expiresNs, T0 + timeouts.tcpClosing);
});

// Creation: SYN without ACK -> SYN_SENT; RST -> none; anything else -> ESTABLISHED, then FIN.
const creations: [string, number, CtState | undefined, number, bigint][] = [
  ['syn', syn, ctStates.synSent, 0, timeouts.tcpSyn],
  ['syn+fin', syn | fin, ctStates.synSent, 0, timeouts.tcpSyn],
  ['rst', rst, undefined, 0, 0n],
  ['syn+rst', syn | rst, undefined, 0, 0n],
  ['rst+ack', rst | ack, undefined, 0, 0n],
  ['ack (loose pickup)', ack, ctStates.established, 0, timeouts.tcpEstablished],
  ['syn+ack (loose pickup)', syn | ack, ctStates.established, 0, timeouts.tcpEstablished],
  ['no flags', 0, ctStates.established, 0, timeouts.tcpEstablished],
  ['fin+ack (loose pickup, then FIN)', fin | ack, ctStates.finWait, ctFlags.finOrig, timeouts.tcpEstablished],
];
for (const [name, flags, state, entryFlags, timeout] of creations) {
  test(`create - tcp ${name} by a tracking rule -> ${state === undefined ? 'no entry' : names[state]}`, (t) => {
    const model = newModel();
    const result = model.step(tcp(A, B, 40000, 80, flags), 'edge_xdp', T0, config());
    t.is(result.verdict, 'pass');
    if (state === undefined) {
      t.is(result.reason, 'rule');
      t.is(model.get(tcpKey), undefined);
      t.is(model.stats().created, 0);
      return;
    }
    t.is(result.reason, 'created');
    t.deepEqual(model.get(tcpKey), { table: 'established', entry: { expiresNs: T0 + timeout, createdNs: T0, packets: [1n, 0n], bytes: [BigInt(54 + 0), 0n], ruleId: 1, epoch: 1, state, flags: entryFlags } });
    t.is(model.stats().created, 1);
  });
}

test('create - udp and icmp echo request start UDP and ICMP with their timeouts; an echo reply creates nothing', (t) => {
  const model = newModel();
  t.is(model.step(udp(A, B, 5000, 53), 'edge_tc', T0, config()).entry?.state, ctStates.udp);
  t.is(model.get(key(A, B, 17, 5000, 53))?.entry.expiresNs, T0 + timeouts.udp);
  const echo = model.step(icmp(A6, B6, 128, 77), 'edge_tc', T0, config());
  t.is(echo.entry?.state, ctStates.icmp);
  t.deepEqual(echo.key, key(A6, B6, 58, 77, 77));
  t.is(echo.entry?.expiresNs, T0 + timeouts.icmp);
  const reply = model.step(icmp(A, B, 0, 5), 'edge_tc', T0, config());
  t.is(reply.reason, 'rule');
  t.is(reply.entry, undefined);
  t.is(model.entries('established').length, 2);
});

test('create - only tracking rules create; a non-tracking allow passes; drops create nothing; the default tracks with trackDefault', (t) => {
  const model = newModel();
  t.is(model.step(tcp(A, '10.0.0.3', 1, 2, syn), 'edge_xdp', T0, config()).reason, 'rule');
  t.is(model.step(tcp('10.0.0.9', B, 1, 2, syn), 'edge_xdp', T0, config()).verdict, 'pass'); // rule 1 matches first
  const denied = model.step(tcp(A, '10.0.0.4', 1, 2, syn), 'edge_xdp', T0, config());
  t.deepEqual([denied.verdict, denied.reason], ['drop', 'default']);
  t.is(model.entries('established').length, 1);
  const open: RuleSetSpec = { rules: [], defaultAction: 'allow' };
  const byDefault = model.step(tcp(A, '10.0.0.4', 1, 2, syn), 'edge_xdp', T0, config({ ruleSet: open, trackedRuleIds: [], trackDefault: true }));
  t.is(byDefault.reason, 'created');
  t.is(byDefault.entry?.ruleId, DEFAULT_RULE_ID);
});

test('counters - rules count only packets without an entry', (t) => {
  const model = newModel();
  model.step(tcp(A, B, 40000, 80, syn), 'edge_xdp', T0, config());
  model.step(tcp(B, A, 80, 40000, syn | ack), 'edge_xdp', T0, config());
  model.step(tcp(A, B, 40000, 80, ack), 'edge_xdp', T0, config());
  t.is(model.counters().get(1)?.packets, 1);
  t.is(model.stats().established, 2);
});

for (const belowMark of [true, false]) {
  const where = belowMark ? 'created in ep_ct below the direct mark, never moved' : 'created in ep_ct_new at the direct mark, moved to ep_ct on the first reply';
  test(`handshake - SYN, SYN-ACK, ACK, FIN, FIN: ${where}`, (t) => {
    // ep_ct of 4: its mark is 2, so two entries there put a new flow in ep_ct_new.
    const model = newModel({ entries: 4 });
    if (!belowMark) for (const port of [1, 2]) model.put('established', key(A, B, 17, port, port), entry(ctStates.udp));
    const c = config();
    const first = belowMark ? 'established' : 'new';
    const steps: [Uint8Array, CtState, 'new' | 'established'][] = [
      [tcp(A, B, 40000, 80, syn), ctStates.synSent, first],
      [tcp(A, B, 40000, 80, syn), ctStates.synSent, first],
      [tcp(B, A, 80, 40000, syn | ack), ctStates.synRecv, 'established'],
      [tcp(A, B, 40000, 80, ack), ctStates.established, 'established'],
      [tcp(B, A, 80, 40000, fin | ack), ctStates.finWait, 'established'],
      [tcp(A, B, 40000, 80, fin | ack), ctStates.closing, 'established'],
      [tcp(A, B, 40000, 80, syn), ctStates.synSent, 'established'],
    ];
    for (const [frame, state, table] of steps) {
      const result = model.step(frame, 'edge_xdp', T0, c);
      t.is(result.entry?.state, state);
      t.is(result.table, table);
    }
    t.is(model.entries('new').length, 0);
    t.like(model.stats(), { created: 1, promoted: belowMark ? 0 : 1, established: 6 });
  });
}

test('tables - the direct mark is half of ep_ct rounded down, expired entries counted; below it new flows go to ep_ct, at it to ep_ct_new', (t) => {
  t.deepEqual([0, 1, 2, 3, 16, 262_144].map(ctDirectMark), [0, 0, 1, 1, 8, 131_072]);
  const model = newModel({ entries: 5 });
  const c = config();
  model.put('established', key(A, B, 17, 1, 1), entry(ctStates.udp, 0, { expiresNs: T0 - 1n }));
  t.like(model.step(udp(A, B, 2, 2), 'edge_tc', T0, c), { reason: 'created', table: 'established' });
  // Two entries (one expired, not yet met): at the mark.
  t.like(model.step(udp(A, B, 3, 3), 'edge_tc', T0, c), { reason: 'created', table: 'new' });
  t.like(model.step(tcp(A, B, 4, 4, syn), 'edge_tc_egress', T0, c), { reason: 'created', table: 'new' });
  // Meeting the expired entry deletes it (a reply the default denies: nothing is created): below the mark again.
  t.like(model.step(udp(B, A, 1, 1), 'edge_tc', T0, c), { verdict: 'drop' });
  t.like(model.step(udp(A, B, 5, 5), 'edge_tc', T0, c), { reason: 'created', table: 'established' });
  // Replies still move entries into the room above the mark, up to the capacity.
  for (const port of [3, 4]) t.like(model.step(port === 3 ? udp(B, A, port, port) : tcp(B, A, port, port, syn | ack), 'edge_tc', T0, c), { table: 'established' });
  t.deepEqual(model.entries('established').map((e) => e.key.sport).sort(), [2, 3, 4, 5]);
  t.like(model.stats(), { created: 4, promoted: 2, expired: 1 });
});

test('lookup - ep_ct before ep_ct_new, orig before reply; a tuple that collides with a reversed entry is its reply', (t) => {
  const model = newModel();
  // Two entries whose keys are each other's reverse: the packet's own tuple (orig) in ep_ct wins.
  model.put('new', tcpKey, entry(ctStates.synSent));
  model.put('established', reverseKey(tcpKey), entry(ctStates.established, ctFlags.seenReply, { ruleId: 9 }));
  const a = model.step(tcp(A, B, 40000, 80, ack), 'edge_xdp', T0, config());
  t.deepEqual([a.table, a.direction, a.entry?.ruleId], ['established', 'reply', 9]);
  const b = model.step(tcp(B, A, 80, 40000, ack), 'edge_xdp', T0, config());
  t.deepEqual([b.table, b.direction, b.entry?.ruleId], ['established', 'orig', 9]);
  t.is(model.get(tcpKey)?.entry.state, ctStates.synSent);
  // A flow to itself (the key is its own reverse) is always orig.
  const self = key(A, A, 17, 7, 7);
  model.put('established', self, entry(ctStates.udp));
  t.is(model.step(udp(A, A, 7, 7), 'edge_tc', T0, config()).direction, 'orig');
  // ICMP echo: the type gives the direction. A request the other way with the same id is not a
  // reply (classified: default deny here), nor is a reply the original way round.
  model.step(icmp(A, B, 8, 42), 'edge_tc', T0, config());
  t.deepEqual(model.step(icmp(B, A, 8, 42), 'edge_tc', T0, config()).reason, 'default');
  t.deepEqual(model.step(icmp(A, B, 0, 42), 'edge_tc', T0, config()).reason, 'rule');
  const back = model.step(icmp(B, A, 0, 42), 'edge_tc', T0, config());
  t.deepEqual([back.reason, back.direction, back.table], ['established', 'reply', 'established']);
  t.like(model.step(icmp(A, B, 8, 42), 'edge_tc', T0, config()), { reason: 'established', direction: 'orig' });
});

test('expiry - a passed deadline deletes the entry, counts EXPIRED, and the packet is classified afresh', (t) => {
  const model = newModel();
  model.put('established', tcpKey, entry(ctStates.established, ctFlags.seenReply, { expiresNs: T0 - 1n }));
  model.put('new', tcpKey, entry(ctStates.synSent, 0, { expiresNs: T0 - 1n }));
  const result = model.step(tcp(A, B, 40000, 80, ack), 'edge_xdp', T0, config());
  t.is(result.reason, 'created');
  t.is(result.entry?.state, ctStates.established);
  t.is(model.stats().expired, 2);
  t.is(model.get(tcpKey)?.table, 'established');
  // A deadline equal to now has not passed.
  const fresh = newModel();
  fresh.put('new', tcpKey, entry(ctStates.synSent, 0, { expiresNs: T0 }));
  t.is(fresh.step(tcp(A, B, 40000, 80, syn), 'edge_xdp', T0, config()).reason, 'established');
});

test('icmp errors - an error quoting a tracked flow (either way) passes as related, changes nothing', (t) => {
  const model = newModel();
  model.put('new', tcpKey, entry(ctStates.synSent));
  const before = model.get(tcpKey);
  const router = '10.9.9.9';
  const quote: FrameSpec = { src: A, dst: B, protocol: 'tcp', srcPort: 40000, dstPort: 80 };
  // From the far side (quoting our original packet), deny-listed source: passes anyway.
  const related = model.step(icmp('10.0.0.9', A, 3, 0, quote), 'edge_xdp', T0, config());
  t.deepEqual([related.verdict, related.reason, related.direction], ['pass', 'related', 'orig']);
  const reversed = model.step(icmp(router, B, 11, 0, { ...quote, src: B, dst: A, srcPort: 80, dstPort: 40000 }), 'edge_xdp', T0, config());
  t.deepEqual([reversed.reason, reversed.direction], ['related', 'reply']);
  t.deepEqual(model.get(tcpKey), before);
  t.is(model.stats().related, 2);
  // An error quoting an unknown flow is classified (default deny); ICMPv6 packet too big likewise.
  t.deepEqual(model.step(icmp(router, A, 3, 0, { ...quote, dstPort: 81 }), 'edge_xdp', T0, config()).reason, 'default');
  model.step(udp(A6, B6, 5000, 53), 'edge_xdp', T0, config());
  t.is(model.step(icmp('2001:db8::99', A6, 2, 0, { src: A6, dst: B6, protocol: 'udp', srcPort: 5000, dstPort: 53 }), 'edge_xdp', T0, config()).reason, 'related');
  // Echo quoted: its id forms the tuple.
  model.step(icmp(A, B, 8, 9), 'edge_xdp', T0, config());
  t.is(model.step(icmp(router, A, 11, 0, { src: A, dst: B, protocol: 'icmp', icmpType: 8, icmpId: 9 }), 'edge_xdp', T0, config()).reason, 'related');
  // Not an error type (a redirect, 5): classified.
  t.is(model.step(icmp(router, A, 5, 0, quote), 'edge_xdp', T0, config()).reason, 'default');
});

test('parse - tuples, flags, echo ids and quotes; untracked fragments and short headers', (t) => {
  const p = parseCtPacket(tcp(A, B, 1, 2, syn | ack));
  t.like(p, { kind: 'ip', tcpFlags: syn | ack, ports: { src: 1, dst: 2 } });
  t.deepEqual(p.kind === 'ip' ? p.tuple : null, key(A, B, 6, 1, 2));
  const fragment = parseCtPacket(buildFrame({ src: A, dst: B, protocol: 'udp', fragment: { offset: 3 } }));
  t.like(fragment, { kind: 'ip', tuple: null });
  const short = tcp(A, B, 1, 2, syn).slice(0, 14 + 20 + 13);
  t.like(parseCtPacket(short), { kind: 'ip', tuple: null, ports: { src: 1, dst: 2 } });
  // A quote of an IPv6 packet with extension headers is not looked into.
  const quoted = parseCtPacket(
    buildFrame({ src: B6, dst: A6, protocol: 'icmp', icmpType: 1, icmpQuote: { src: A6, dst: B6, protocol: 'udp', srcPort: 1, dstPort: 2, extensionHeaders: [{ type: 'destination' }] } }),
  );
  t.like(quoted, { kind: 'ip', quoted: null });
  t.like(parseCtPacket(buildFrame({ src: B6, dst: A6, protocol: 'icmp', icmpType: 1, icmpQuote: { src: A6, dst: B6, protocol: 'udp', srcPort: 1, dstPort: 2 } })), { quoted: key(A6, B6, 17, 1, 2) });
  t.like(parseCtPacket(buildFrame({ src: A6, dst: B6, protocol: 'icmp', icmpType: 129, icmpId: 3 })), { echoRequest: false });
  t.deepEqual(parseCtPacket(icmp(A, B, 0, 3)).kind === 'ip' ? (parseCtPacket(icmp(A, B, 0, 3)) as { tuple: CtKey }).tuple : null, key(A, B, 1, 3, 3));
  t.like(parseCtPacket(icmp(A, B, 13, 3)), { tuple: null, quoted: null });
});

test('egress - creates EGRESS entries with trackEgress, always passes, never classifies', (t) => {
  const model = newModel();
  const c = config();
  const out = model.step(tcp(A, '10.0.0.4', 40000, 443, syn), 'edge_tc_egress', T0, c);
  t.deepEqual([out.verdict, out.reason, out.entry?.ruleId, out.entry?.flags], ['pass', 'created', EGRESS_RULE_ID, ctFlags.egress]);
  // The reply comes in on XDP: no rule allows 10.0.0.4, the entry passes it.
  const back = model.step(tcp('10.0.0.4', A, 443, 40000, syn | ack), 'edge_xdp', T0, c);
  t.deepEqual([back.reason, back.entry?.state, back.entry?.flags], ['established', ctStates.synRecv, ctFlags.egress | ctFlags.seenReply]);
  t.is(model.counters().size, 0);
  const off = config({ trackEgress: false });
  const untracked = model.step(udp(A, '10.0.0.4', 1, 2), 'edge_tc_egress', T0, off);
  t.deepEqual([untracked.verdict, untracked.reason], ['pass', 'egress']);
  t.is(model.step(buildFrame({ src: A, dst: B, protocol: 'tcp' }).slice(0, 30), 'edge_tc_egress', T0, c).verdict, 'pass');
  t.is(model.step(tcp(A, B, 1, 2, rst), 'edge_tc_egress', T0, c).reason, 'egress');
  // An ICMP error on egress is not looked up as related.
  t.is(model.step(icmp(A, '10.0.0.4', 3, 0, { src: '10.0.0.4', dst: A, protocol: 'tcp', srcPort: 443, dstPort: 40000 }), 'edge_tc_egress', T0, c).reason, 'egress');
});

test('control - packets from a control endpoint pass first, even when denied; at uplink egress packets to it, creating no entry', (t) => {
  const model = newModel();
  const c = config({}, [{ family: 4, proto: 6, addr: parseAddress('10.0.0.9') as Uint8Array, port: 4222 }]);
  for (const hook of ['edge_xdp', 'edge_tc'] as CtHook[]) t.is(model.step(tcp('10.0.0.9', A, 4222, 5555, ack), hook, T0, c).reason, 'control');
  t.is(model.step(tcp(A, '10.0.0.9', 5555, 4222, syn), 'edge_tc_egress', T0, c).reason, 'control');
  t.is(model.step(tcp('10.0.0.9', A, 4222, 5555, ack), 'edge_tc_egress', T0, c).reason, 'created');
  t.is(model.step(tcp('10.0.0.9', A, 4223, 5555, ack), 'edge_xdp', T0, c).verdict, 'drop');
  t.like(model.step(buildFrame({ src: '10.0.0.9', dst: A, protocol: 'udp', srcPort: 4222 }), 'edge_xdp', T0, c), { verdict: 'drop', reason: 'rule' });
  t.is(model.stats().control, 3);
  t.is(model.entries('established').length, 1);
});

test('cut - a change that denies a tracked flow ends it at its next packet; KEEP keeps it', (t) => {
  const model = newModel();
  const before = config({ cut: true, epoch: 1 });
  model.step(tcp(A, B, 40000, 80, syn), 'edge_xdp', T0, before);
  model.step(tcp(B, A, 80, 40000, syn | ack), 'edge_xdp', T0, before);
  const denyAll: RuleSetSpec = { rules: [], defaultAction: 'deny' };
  // KEEP: the entry runs on; an ingress packet sets the epoch ("otherwise set entry.epoch").
  const keep = config({ ruleSet: denyAll, trackedRuleIds: [], cut: false, epoch: 2 });
  t.like(model.step(tcp(A, B, 40000, 80, ack), 'edge_xdp', T0, keep), { verdict: 'pass', entry: { epoch: 2 } });
  // An egress packet under CUT neither re-checks nor sets the epoch.
  const cut = config({ ruleSet: denyAll, trackedRuleIds: [], cut: true, epoch: 3 });
  t.like(model.step(tcp(A, B, 40000, 80, ack), 'edge_tc_egress', T0, cut), { verdict: 'pass', entry: { epoch: 2 } });
  const dropped = model.step(tcp(B, A, 80, 40000, ack), 'edge_xdp', T0, cut);
  t.deepEqual([dropped.verdict, dropped.reason, dropped.entry], ['drop', 'cut', undefined]);
  t.is(model.get(tcpKey), undefined);
  t.is(model.stats().cut, 1);
  t.is(model.counters().get(DEFAULT_RULE_ID), undefined); // the re-check is not counted
});

test('cut - a rule entry survives when its original tuple is still allowed, and its epoch is set', (t) => {
  const model = newModel();
  model.step(tcp(A, B, 40000, 80, syn), 'edge_xdp', T0, config({ cut: true, epoch: 1 }));
  const narrowed: RuleSetSpec = { rules: [{ id: 5, srcCidrs: ['10.0.0.1/32'], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 80, to: 80 }], action: 'rate_limit', rateLimit: { pps: 1, burst: 1 } }], defaultAction: 'deny' };
  // The reply packet itself (B -> A) would be denied; the original tuple (A -> B:80) is not.
  const kept = model.step(tcp(B, A, 80, 40000, syn | ack), 'edge_xdp', T0, config({ ruleSet: narrowed, trackedRuleIds: [], cut: true, epoch: 7 }));
  t.like(kept, { verdict: 'pass', reason: 'established', entry: { epoch: 7, state: ctStates.synRecv } });
});

test('cut - an egress entry is cut only by an explicit deny rule of its reply tuple', (t) => {
  const model = newModel();
  const base = config({ cut: true, epoch: 1 });
  model.step(udp(A, '10.0.0.4', 5000, 53), 'edge_tc_egress', T0, base);
  // Default deny: kept.
  const denyDefault = config({ ruleSet: { rules: [], defaultAction: 'deny' }, trackedRuleIds: [], cut: true, epoch: 2 });
  t.like(model.step(udp('10.0.0.4', A, 53, 5000), 'edge_xdp', T0, denyDefault), { verdict: 'pass', entry: { epoch: 2 } });
  // A deny rule on the reply tuple (10.0.0.4 -> A:5000): cut.
  const denyRule = config({
    ruleSet: { rules: [{ id: 8, srcCidrs: ['10.0.0.4/32'], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: 5000, to: 5000 }], action: 'deny' }], defaultAction: 'allow' },
    trackedRuleIds: [],
    cut: true,
    epoch: 3,
  });
  t.like(model.step(udp(A, '10.0.0.4', 5000, 53), 'edge_xdp', T0, denyRule), { verdict: 'drop', reason: 'cut' });
});

test('tables - ep_ct full: the move fails, counts INSERT_FAILED, the entry stays in ep_ct_new and moves later', (t) => {
  // ep_ct of 1: its direct mark is 0, so every new flow goes to ep_ct_new.
  const model = newModel({ entries: 1 });
  const c = config();
  model.put('established', key(A, B, 17, 1, 1), entry(ctStates.udp));
  model.step(udp(A, B, 2, 2), 'edge_tc', T0, c);
  const reply = model.step(udp(B, A, 2, 2), 'edge_tc', T0, c);
  t.like(reply, { table: 'new', entry: { flags: ctFlags.seenReply } });
  t.like(model.stats(), { insertFailed: 1, promoted: 0 });
  t.like(model.step(udp(B, A, 2, 2), 'edge_tc', T0, c), { table: 'new' });
  t.is(model.stats().insertFailed, 2);
  model.step(udp(B, A, 1, 1), 'edge_tc', T0 + 100n * S, c); // the first entry expires
  t.like(model.step(udp(B, A, 2, 2), 'edge_tc', T0 + 100n * S, c), { verdict: 'drop', reason: 'default' }); // expired too
  t.is(model.entries('established').length, 0);
  model.step(udp(A, B, 3, 3), 'edge_tc', T0 + 100n * S, c);
  t.like(model.step(udp(B, A, 3, 3), 'edge_tc', T0 + 100n * S, c), { table: 'established' });
  t.throws(() => model.put('established', key(A, B, 17, 4, 4), entry(ctStates.udp)), { instanceOf: RangeError });
});

test('tables - ep_ct_new evicts its least recently used entry when full', (t) => {
  // ep_ct of 1: its direct mark is 0, so every new flow goes to ep_ct_new.
  const model = newModel({ newEntries: 2, entries: 1 });
  const c = config();
  model.step(udp(A, B, 1, 1), 'edge_tc', T0, c);
  model.step(udp(A, B, 2, 2), 'edge_tc', T0, c);
  model.step(udp(A, B, 1, 1), 'edge_tc', T0, c); // 1 used again: 2 is the oldest
  model.step(udp(A, B, 3, 3), 'edge_tc', T0, c);
  t.deepEqual(
    model.entries('new').map((e) => e.key.sport),
    [1, 3],
  );
});

test('ctGeneration - refuses an epoch of 0 or above u32, and a rule set validateRuleSet refuses', (t) => {
  t.throws(() => ctGeneration(ruleSet, 0), { instanceOf: RuleSetError, message: /epoch/ });
  t.throws(() => ctGeneration(ruleSet, 2 ** 32), { instanceOf: RuleSetError, message: /epoch/ });
  t.throws(() => ctGeneration({ ...ruleSet, cutOnDeny: 'yes' as unknown as boolean }, 1), { instanceOf: RuleSetError, message: /cutOnDeny/ });
  t.is(keyId(tcpKey), keyId(key(A, B, 6, 40000, 80)));
  t.not(keyId(tcpKey), keyId(reverseKey(tcpKey)));
});

test('hooks - non-IP passes, malformed drops on ingress and passes on egress', (t) => {
  const model = newModel();
  const runt = buildFrame({ src: A, dst: B, protocol: 'tcp' }).slice(0, 20);
  t.like(model.step(runt, 'edge_xdp', T0, config()), { verdict: 'drop', reason: 'malformed' });
  t.like(model.step(runt, 'edge_tc_egress', T0, config()), { verdict: 'pass', reason: 'malformed' });
  t.is(DEFAULT_CT_TIMEOUTS.tcpEstablished, 6n * 3600n * S);
});

test('generator - scenarios reach every row of the TCP table and every outcome of the model', (t) => {
  const rng = prng(20261201);
  const rows = new Set<string>();
  const reasons = new Set<string>();
  const model = newModel({ entries: 4 });
  for (let n = 0; n < 1500; n++) {
    const scenario = randomScenario(rng);
    model.clear();
    let epoch = 0;
    let c: CtConfig | undefined;
    let now = T0;
    for (const event of scenario.events) {
      now += 1000n;
      if (event.kind === 'generation') {
        const g = scenario.generations[event.index] as CtScenarioGeneration;
        c = { generation: ctGeneration(g.ruleSet, ++epoch), timeouts, control: [] };
        continue;
      }
      if (c === undefined) throw new Error('a scenario starts with a generation');
      const flow = scenario.flows[event.flow] as CtFlow;
      if (event.kind === 'expire') {
        for (const k of [flowKey(flow, 'a'), flowKey(flow, 'b')]) {
          const found = model.get(k);
          if (found !== undefined) model.put(found.table, k, { ...found.entry, expiresNs: 1n });
        }
        continue;
      }
      const frame = eventFrame(scenario, event);
      const packet = parseCtPacket(frame);
      const tuple = packet.kind === 'ip' ? packet.tuple : null;
      const before = tuple === null ? [] : [model.get(tuple), model.get(reverseKey(tuple))];
      const result = model.step(frame, event.hook, now, c);
      reasons.add(result.reason);
      if (result.reason === 'established' && tuple !== null && tuple.proto === 6 && packet.kind === 'ip') {
        const was = result.direction === 'orig' && keyId(result.key as CtKey) === keyId(tuple) ? before[0] : before[1];
        if (was !== undefined) rows.add(`${names[was.entry.state]}:${tcpTransition(was.entry.state, was.entry.flags, result.direction ?? 'orig', packet.tcpFlags).row}`);
      }
    }
  }
  const tcpStates = ['synSent', 'synRecv', 'established', 'finWait', 'closing', 'closed'];
  const expected = [
    ...tcpStates.flatMap((s) => [`${s}:rst`, `${s}:other`]),
    'synSent:syn-retransmit',
    'synSent:syn-ack',
    'synRecv:ack',
    'closed:reuse',
    'closing:reuse',
    ...['synSent', 'synRecv', 'established', 'finWait'].map((s) => `${s}:fin`),
  ];
  t.deepEqual(
    expected.filter((row) => !rows.has(row)),
    [],
  );
  t.deepEqual(
    ['established', 'related', 'created', 'rule', 'default', 'cut', 'egress'].filter((r) => !reasons.has(r)),
    [],
  );
  const stats = model.stats();
  t.log(`rows ${[...rows].sort().join(' ')}; stats ${JSON.stringify(stats)}`);
  for (const name of ['expired', 'insertFailed', 'promoted', 'related', 'cut'] as const) t.true(stats[name] > 0, name);
});

// ep_ct4 (layout 6): IPv4 TCP/UDP flows in a table of their own, placed as the kernel places them
// (ct4-table.ts; the differential test checks the placement against the kernel, slot by slot).

test('ep_ct4 - an IPv4 TCP or UDP flow lives in ep_ct4; an echo and an IPv6 flow in ep_ct; replies find it there', (t) => {
  const model = new ConntrackModel({ v4Slots: 64 });
  t.is(model.step(tcp(A, B, 40000, 80, syn), 'edge_xdp', T0, config()).table, 'v4');
  t.is(model.step(udp(A, B, 5000, 53), 'edge_xdp', T0, config()).table, 'v4');
  t.is(model.step(icmp(A, B, 8, 7), 'edge_xdp', T0, config()).table, 'established');
  t.is(model.step(udp(A6, B6, 5000, 53), 'edge_xdp', T0, config()).table, 'established');
  const reply = model.step(tcp(B, A, 80, 40000, syn | ack), 'edge_xdp', T0 + S, config());
  t.deepEqual([reply.reason, reply.table, reply.direction, reply.entry?.state], ['established', 'v4', 'reply', ctStates.synRecv]);
  t.deepEqual(model.entries('v4').map((e) => e.key.proto).sort((x, y) => x - y), [6, 17]);
  t.is(model.entries('established').length, 2);
});

test('ep_ct4 - a flow whose eight slots are taken goes to ep_ct; an expired line is taken again and counted EXPIRED', (t) => {
  // One window: the table's eight slots are every flow's window.
  const model = new ConntrackModel({ v4Slots: 8 });
  const tables = Array.from({ length: 10 }, (_, i) => model.step(udp(A, B, 5000 + i, 53), 'edge_tc', T0, config()).table);
  t.deepEqual(tables, [...Array<string>(8).fill('v4'), 'established', 'established']);
  // Flow 0 expires: the next new flow takes its slot (EXPIRED), flows 8 and 9 stay where they are.
  const first = model.entries('v4').find((e) => e.key.sport === 5000);
  model.put('v4', key(A, B, 17, 5000, 53), { ...(first?.entry as CtEntry), expiresNs: T0 });
  const next = model.step(udp(A, B, 6000, 53), 'edge_tc', T0 + S, config());
  t.is(next.table, 'v4');
  t.is(model.entries('v4').find((e) => e.key.sport === 6000)?.slot, first?.slot);
  t.is(model.stats().expired, 1);
  t.is(model.get(key(A, B, 17, 5000, 53)), undefined);
  t.is(model.get(key(A, B, 17, 5008, 53))?.table, 'established');
});

test('ep_ct4 - a cut deletes the line (DEAD): lookups of the flows placed past it still find them', (t) => {
  const model = new ConntrackModel({ v4Slots: 8 });
  for (const port of [53, 54, 55]) t.is(model.step(udp(A, B, 5000, port), 'edge_tc', T0, config({ cut: true })).table, 'v4');
  const deny: RuleSetSpec = { ...ruleSet, rules: [{ id: 9, srcCidrs: [], dstCidrs: ['10.0.0.2/32'], protocol: 'udp', dstPorts: [{ from: 54, to: 54 }], action: 'deny' }, ...ruleSet.rules] };
  const later = config({ ruleSet: deny, cut: true, epoch: 2 });
  const cut = model.step(udp(A, B, 5000, 54), 'edge_tc', T0 + S, later);
  t.deepEqual([cut.verdict, cut.reason, cut.table], ['drop', 'cut', 'v4']);
  t.is(model.get(key(A, B, 17, 5000, 54)), undefined);
  t.deepEqual(model.entries('v4').map((e) => e.key.dport).sort((x, y) => x - y), [53, 55]);
  for (const port of [53, 55]) t.deepEqual(pick(model.step(udp(B, A, port, 5000), 'edge_tc', T0 + S, later)), ['pass', 'established', 'v4']);
  t.is(model.stats().cut, 1);
});

const pick = (result: { verdict: string; reason: string; table?: string }): string[] => [result.verdict, result.reason, result.table ?? ''];
