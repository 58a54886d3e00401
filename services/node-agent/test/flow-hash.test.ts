// The flow hash (flow-hash.ts): pinned values (the compatibility rule; the kernel's twin is held
// to it by flow-hash-differential.test.ts) and its spread over Maglev slots. Pure: no kernel.
import test from 'ava';
import { parseAddress } from '@edgeplane/proto';
import { clientHash, flowHash, jhash2, maglevSlot, type FlowTuple } from '../src/datapath/flow-hash.js';
import { prng } from './datapath-helpers.js';

const address = (text: string): Uint8Array => parseAddress(text) as Uint8Array;

test('flowHash - golden: the values this version computes (the compatibility rule)', (t) => {
  // lookup3's hashword of no words is its initial value: 0xdeadbeef + initval.
  t.is(jhash2([], 0, 0), 0xdeadbeef);
  t.is(jhash2([], 0, 1), 0xdeadbef0);
  t.is(jhash2([1, 2, 3, 4], 4, 0), 0x66491246);
  t.is(jhash2([0xdeadbeef], 1, 7), 0x5ba03182);
  // A change here moves flows on upgrade and splits nodes of different versions (ep_hash.h).
  t.is(flowHash({ family: 4, proto: 6, src: address('192.0.2.10'), dst: address('198.51.100.1'), sport: 40000, dport: 443 }), 0x47479890);
  t.is(flowHash({ family: 6, proto: 17, src: address('2001:db8::10'), dst: address('2001:db8:1::1'), sport: 5353, dport: 53 }), 0x42acc09d);
  t.is(clientHash(4, address('192.0.2.10')), 0xc85a2500);
  t.is(clientHash(6, address('2001:db8::10')), 0x27fcf9a8);
  // An IPv4 address as 16 bytes (the datapath's layout) hashes as its 4.
  const padded = new Uint8Array(16);
  padded.set(address('192.0.2.10'));
  t.is(clientHash(4, padded), 0xc85a2500);
});

test('flowHash - every field of the tuple changes the hash', (t) => {
  const base: FlowTuple = { family: 4, proto: 6, src: address('10.0.0.1'), dst: address('10.0.0.2'), sport: 1000, dport: 80 };
  const h = flowHash(base);
  for (const other of [
    { ...base, family: 6 as const },
    { ...base, proto: 17 },
    { ...base, src: address('10.0.0.3') },
    { ...base, dst: address('10.0.0.3') },
    { ...base, sport: 1001 },
    { ...base, dport: 81 },
    { ...base, sport: 80, dport: 1000 },
  ]) {
    t.not(flowHash(other), h, JSON.stringify(other));
  }
});

/**
 * Pearson's chi-square of `counts` against a uniform spread of `total` over counts.length slots.
 * With d = slots - 1 degrees of freedom its mean is d and its standard deviation sqrt(2d); a
 * uniform hash stays within d + 6 sqrt(2d) (a chance of about 1e-8 to exceed it, and the inputs
 * are seeded, so a pass is repeatable).
 */
function chiSquareBound(counts: Uint32Array, total: number): { chi: number; bound: number } {
  const expected = total / counts.length;
  let chi = 0;
  for (const c of counts) chi += (c - expected) ** 2 / expected;
  const d = counts.length - 1;
  return { chi, bound: d + 6 * Math.sqrt(2 * d) };
}

test('flowHash - slot occupancy is near uniform, for random tuples and for one VIP with clients on sequential ports', (t) => {
  const m = 1021;
  const rng = prng(20261201);
  const byte = (): number => Math.floor(rng() * 256);
  // Random IPv4 and IPv6 tuples.
  const random = new Uint32Array(m);
  const n = 200_000;
  for (let i = 0; i < n; i++) {
    const family = i % 2 === 0 ? 4 : 6;
    const length = family === 4 ? 4 : 16;
    const tuple: FlowTuple = { family, proto: 6, src: Uint8Array.from({ length }, byte), dst: Uint8Array.from({ length }, byte), sport: byte() * 256 + byte(), dport: 443 };
    (random[maglevSlot(flowHash(tuple), m)] as number)++;
  }
  const r = chiSquareBound(random, n);
  t.true(r.chi < r.bound, `random tuples: chi-square ${r.chi.toFixed(0)} >= ${r.bound.toFixed(0)}`);
  // What a VIP sees: one destination and port, 256 clients of one /24, each on sequential
  // ephemeral ports; the structure a weak hash (a sum, a xor of fields) would show.
  const structured = new Uint32Array(m);
  const vip = address('198.51.100.1');
  let count = 0;
  for (let host = 0; host < 256; host++) {
    for (let port = 32768; port < 32768 + 800; port++) {
      (structured[maglevSlot(flowHash({ family: 4, proto: 6, src: Uint8Array.of(10, 0, 0, host), dst: vip, sport: port, dport: 443 }), m)] as number)++;
      count++;
    }
  }
  const s = chiSquareBound(structured, count);
  t.true(s.chi < s.bound, `sequential clients: chi-square ${s.chi.toFixed(0)} >= ${s.bound.toFixed(0)}`);
  // Client affinity: sequential IPv6 clients of one /64 and IPv4 clients of one /16.
  const clients = new Uint32Array(m);
  const v6 = address('2001:db8::');
  for (let i = 0; i < 100_000; i++) {
    const src = new Uint8Array(v6);
    src[13] = (i >> 16) & 255;
    src[14] = (i >> 8) & 255;
    src[15] = i & 255;
    (clients[maglevSlot(clientHash(6, src), m)] as number)++;
    (clients[maglevSlot(clientHash(4, Uint8Array.of(172, 16, (i >> 8) & 255, i & 255)), m)] as number)++;
  }
  const c = chiSquareBound(clients, 200_000);
  t.true(c.chi < c.bound, `sequential client addresses: chi-square ${c.chi.toFixed(0)} >= ${c.bound.toFixed(0)}`);
});
