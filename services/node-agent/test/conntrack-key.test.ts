// The direction-independent key of the connection tables (layout 3, bpf/CONNTRACK.md "The key")
// and the layout 2 -> 3 conversion of a table element. Pure: no kernel. The kernel's side of the
// same key is checked by conntrack-differential.test.ts (against the model, which uses this key)
// and datapath-upgrade.test.ts (a real layout-2 table converted).
import test from 'ava';
import { encode } from 'libbpf-ts';
import { parseAddress } from '@edgeplane/proto';
import { CT_FLAG_ORIG_B, ctKeyOfFlow, ctKeyOfTuple, originalTuple, reverseKey, type CtKey } from '../src/datapath/conntrack-key.js';
import { relayoutCtElement, relayoutLbBackend } from '../src/datapath/conntrack-upgrade.js';
import { epCtEntry, epCtKey, epLbBackend, NO_CT_NAT } from '../src/datapath/table-codecs.js';

function tuple(src: string, sport: number, dst: string, dport: number, proto = 6): CtKey {
  const pad = (text: string): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(parseAddress(text) as Uint8Array);
    return out;
  };
  return { family: src.includes(':') ? 6 : 4, proto, sport, dport, src: pad(src), dst: pad(dst) };
}
const id = (key: CtKey): string => `${Buffer.from(key.src).toString('hex')}:${key.sport}>${Buffer.from(key.dst).toString('hex')}:${key.dport}`;

test('ctKeyOfTuple - both directions of a TCP or UDP flow give one key, the lower endpoint first', (t) => {
  for (const [a, b] of [
    [tuple('10.0.0.1', 40000, '10.0.0.2', 80), tuple('10.0.0.2', 80, '10.0.0.1', 40000)],
    [tuple('192.0.2.1', 53, '10.9.9.9', 5353, 17), tuple('10.9.9.9', 5353, '192.0.2.1', 53, 17)],
    [tuple('2001:db8::2', 1, 'fd00::1', 2), tuple('fd00::1', 2, '2001:db8::2', 1)],
  ] as const) {
    const one = ctKeyOfTuple(a);
    const other = ctKeyOfTuple(b);
    t.is(id(one.key), id(other.key));
    t.not(one.srcIsB, other.srcIsB);
  }
  // Address bytes first (10.0.0.2 < 10.0.1.1 though its last byte is larger), then the port.
  t.false(ctKeyOfTuple(tuple('10.0.0.2', 9, '10.0.1.1', 1)).srcIsB);
  t.true(ctKeyOfTuple(tuple('10.0.0.1', 9, '10.0.0.1', 1)).srcIsB);
  t.false(ctKeyOfTuple(tuple('10.0.0.1', 1, '10.0.0.1', 1)).srcIsB, 'a flow to itself: the source is side a');
});

test('ctKeyOfTuple - an ICMP echo is keyed by its requester, so a request each way is its own flow', (t) => {
  const request = tuple('10.0.0.9', 7, '10.0.0.1', 7, 1);
  const reply = reverseKey(request);
  t.deepEqual(ctKeyOfTuple(request), { key: request, srcIsB: false });
  t.is(id(ctKeyOfTuple(reply, true).key), id(request));
  t.true(ctKeyOfTuple(reply, true).srcIsB);
  // The peer's own request with the same identifier: another key.
  t.not(id(ctKeyOfTuple(reply).key), id(request));
});

test('originalTuple - rebuilds the original direction from the key and EP_CT_F_ORIG_B', (t) => {
  for (const flow of [tuple('10.0.0.2', 80, '10.0.0.1', 40000), tuple('10.0.0.1', 40000, '10.0.0.2', 80), tuple('10.0.0.9', 7, '10.0.0.1', 7, 1)]) {
    const { key, origFlag } = ctKeyOfFlow(flow);
    t.is(id(originalTuple(key, origFlag | 0x01)), id(flow));
  }
  t.is(ctKeyOfFlow(tuple('10.0.0.2', 80, '10.0.0.1', 40000)).origFlag, CT_FLAG_ORIG_B);
});

test('relayoutCtElement - a layout-2 element becomes its flow key with the originator flag and a zero NAT; converting twice is converting once', (t) => {
  const flow = tuple('10.0.0.2', 80, '10.0.0.1', 40000);
  const key2 = encode(epCtKey, { ...flow, pad: 0 });
  // Layouts 2 and 3 had no struct ep_ct_nat: their 64-byte values are the first 64 bytes of layout 4's.
  const value2 = encode(epCtEntry, { expiresNs: 99n, createdNs: 7n, packets: [3n, 2n], bytes: [300n, 200n], ruleId: 5, epoch: 4, state: 3, flags: 0x01 | 0x08, pad0: 0, pad1: 0, nat: NO_CT_NAT }).slice(0, 64);
  const once = relayoutCtElement(key2, value2);
  t.is(once.value.length, epCtEntry.size);
  const k = epCtKey.decode(once.key);
  t.deepEqual([k.sport, k.dport, [...k.src.subarray(0, 4)].join('.'), [...k.dst.subarray(0, 4)].join('.')], [40000, 80, '10.0.0.1', '10.0.0.2']);
  t.deepEqual(epCtEntry.decode(once.value), { ...epCtEntry.decode(once.value), expiresNs: 99n, createdNs: 7n, packets: [3n, 2n], bytes: [300n, 200n], ruleId: 5, epoch: 4, state: 3, flags: 0x01 | 0x08 | CT_FLAG_ORIG_B, pad0: 0, pad1: 0 });
  t.deepEqual(epCtEntry.decode(once.value).nat, { ...NO_CT_NAT, addr: new Uint8Array(16) });
  const twice = relayoutCtElement(once.key, once.value);
  t.deepEqual([...twice.key], [...once.key]);
  t.deepEqual([...twice.value], [...once.value]);
  // Already in order: unchanged.
  const ordered = relayoutCtElement(once.key, encode(epCtEntry, { ...epCtEntry.decode(once.value), flags: 0x01 }));
  t.deepEqual([...ordered.key], [...once.key]);
  t.is(epCtEntry.decode(ordered.value).flags, 0x01);
});

test('relayoutCtElement and relayoutLbBackend - layout 4 -> 5: an entry keeps its NAT and a backend its address and port, the new fields zero; converting twice is converting once', (t) => {
  const flow = tuple('10.0.0.1', 40000, '10.0.0.2', 80);
  const key = encode(epCtKey, { ...flow, pad: 0 });
  const vip = Uint8Array.from({ length: 16 }, (_, i) => (i < 4 ? [192, 0, 2, 10][i]! : 0));
  const nat = { ...NO_CT_NAT, addr: vip, port: 443, flags: 0x2, svcId: 77 };
  // Layout 4's 88-byte entry: the first 88 bytes of layout 5's, its NAT's first 24.
  const value4 = encode(epCtEntry, { expiresNs: 9n, createdNs: 1n, packets: [1n, 1n], bytes: [60n, 60n], ruleId: 2, epoch: 3, state: 3, flags: 0x01, pad0: 0, pad1: 0, nat }).slice(0, 88);
  const once = relayoutCtElement(key, value4);
  t.is(once.value.length, epCtEntry.size);
  t.deepEqual(epCtEntry.decode(once.value).nat, nat);
  t.deepEqual([...relayoutCtElement(once.key, once.value).value], [...once.value]);
  // A layout-4 backend (20 bytes: family, flags, port, address) gets a zero source address and MTU.
  const backend4 = Uint8Array.from([4, 0, 0x1f, 0x90, 10, 0, 0, 7, ...new Array<number>(12).fill(0)]);
  const converted = relayoutLbBackend(encode(epCtKey, { ...flow, pad: 0 }).subarray(0, 4), backend4);
  t.is(converted.value.length, epLbBackend.size);
  t.like(epLbBackend.decode(converted.value), { family: 4, flags: 0, port: 8080, mtu: 0, pad: 0 });
  t.deepEqual([...epLbBackend.decode(converted.value).addr.subarray(0, 4)], [10, 0, 0, 7]);
  t.deepEqual([...epLbBackend.decode(converted.value).saddr], new Array<number>(16).fill(0));
  t.deepEqual([...relayoutLbBackend(converted.key, converted.value).value], [...converted.value]);
});
