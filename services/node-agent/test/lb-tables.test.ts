// One generation of the load-balancing maps (lb-tables.ts): a small golden layout decoded back
// and compared, capacity errors, and new-flow selection from those bytes (lb-reference.ts)
// checked against first principles: shares by weight, affinity, drained and unhealthy backends,
// misses. Pure: no kernel. Counts over seeded tuples, never time.
import test from 'ava';
import fc from 'fast-check';
import { ForwardingMode, Protocol, SessionAffinity, parseAddress, type Service } from '@edgeplane/proto';
import { CapacityError } from '../src/datapath/errors.js';
import { clientHash, flowHash, maglevSlot, type FlowTuple } from '../src/datapath/flow-hash.js';
import { LbReference, type LbSelection } from '../src/datapath/lb-reference.js';
import { DEFAULT_LB_CAPACITY, layoutLbTables, lbSizes, lbSvcFlags, type LbTablesSpec } from '../src/datapath/lb-tables.js';
import { compileServices, type BackendHealthView, type BackendRouteView, type LbSpec } from '../src/datapath/service-compile.js';
import { epLbBackend, epLbBlock, epLbSvc, epLbVipKey } from '../src/datapath/table-codecs.js';
import { prng } from './datapath-helpers.js';
import { service, servicesArb } from './lb-helpers.js';

const compile = (services: Service[], health?: BackendHealthView): LbSpec => compileServices(services, health ? { labels: {}, health } : { labels: {} });
const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

// The golden case: an IPv4 TCP service, an IPv6 UDP one with affinity and DSR, and one whose
// backends are all drained.
const golden = [
  service('web', { vip: '192.0.2.10', backends: [{ address: '10.0.0.2' }, { address: '10.0.0.1', port: 8443, weight: 3 }] }),
  service('dns', {
    vip: '2001:db8::53',
    protocol: Protocol.PROTOCOL_UDP,
    port: 53,
    backends: [{ address: '2001:db8::2' }],
    sessionAffinity: SessionAffinity.SESSION_AFFINITY_CLIENT_IP,
    forwardingMode: ForwardingMode.FORWARDING_MODE_DSR,
  }),
  service('off', { vip: '192.0.2.9', port: 80, backends: [{ address: '10.0.0.3', weight: 0 }] }),
];

/** The node's route to every backend in the golden case (only the DSR service's backends ask for it). */
const NODE6 = '2001:db8::fffe';
const routes: BackendRouteView = () => ({ source: parseAddress(NODE6)!, mtu: 1480 });

test('layoutLbTables - golden: the exact bytes of a small generation, and decoded back they are the spec', (t) => {
  const spec = compileServices(golden, { labels: {}, routes });
  const tables = layoutLbTables(spec, DEFAULT_LB_CAPACITY, 1);
  t.deepEqual(lbSizes, { vipKey: 24, svc: 20, backend: 40, block: 64 });
  // Key order: IPv4 before IPv6, then VIP bytes: off (192.0.2.9), web (192.0.2.10), dns.
  t.deepEqual(tables.extents.map((e) => [e.name, e.block, e.blocks, e.backendBase, e.backends]), [
    ['off', 0, 0, 0, 1],
    ['web', 0, 8, 1, 2],
    ['dns', 8, 8, 3, 1],
  ]);
  t.is(tables.vip.count, 3);
  t.is(tables.backendCount, 4);
  t.is(tables.blockCount, 16);
  const ids = Object.fromEntries(spec.services.map((s) => [s.name, s.svcId]));
  // Pinned bytes: key = gen, family, proto, pad, port (host order), pad2, vip[16].
  t.is(hex(tables.vip.keys.subarray(24, 48)), '01040600bb010000' + 'c000020a' + '00'.repeat(12));
  t.is(hex(tables.vip.keys.subarray(48, 72)), '01061100350000002001' + '0db8' + '00'.repeat(10) + '0053');
  // web's value: block 0, m 251, backend_base 1, 2 backends, no flags, its id.
  const idLe = (id: number): string => hex(new Uint8Array(new Uint32Array([id]).buffer));
  t.is(hex(tables.vip.values.subarray(20, 40)), '00000000' + 'fb000000' + '01000000' + '0200' + '0000' + idLe(ids.web!));
  // Backends in each service's key order: 10.0.0.1:8443 before 10.0.0.2:443; ports big endian.
  // A NAT service's backends have no source address or MTU; the DSR one's have the route's.
  t.is(hex(tables.backends.subarray(40, 80)), '0400' + '20fb' + '0a000001' + '00'.repeat(12) + '00'.repeat(16) + '0000' + '0000');
  t.is(hex(tables.backends.subarray(80, 120)), '0400' + '01bb' + '0a000002' + '00'.repeat(12) + '00'.repeat(16) + '0000' + '0000');
  t.is(hex(tables.backends.subarray(120, 160)), '0600' + '0035' + '20010db8' + '00'.repeat(10) + '0002' + '20010db8' + '00'.repeat(10) + 'fffe' + 'c805' + '0000');

  // Decoded back with the codecs, every entry is what the spec says.
  spec.services.forEach((s, i) => {
    const key = epLbVipKey.decode(tables.vip.keys.subarray(i * 24, (i + 1) * 24));
    t.deepEqual({ ...key, vip: [...key.vip] }, { gen: 1, family: s.family, proto: s.protocol, pad: 0, port: s.port, pad2: 0, vip: [...s.vip, ...new Array<number>(16 - s.vip.length).fill(0)] });
    const value = epLbSvc.decode(tables.vip.values.subarray(i * 20, (i + 1) * 20));
    const extent = tables.extents[i]!;
    const flags = (s.affinity === 'client-ip' ? lbSvcFlags.affinity : 0) | (s.forwarding === 'dsr' ? lbSvcFlags.dsr : 0) | (s.forwarding === 'fullnat' ? lbSvcFlags.fullnat : 0);
    t.deepEqual(value, { block: extent.block, m: s.table.length, backendBase: extent.backendBase, backends: s.backends.length, flags, svcId: s.svcId });
    s.backends.forEach((b, j) => {
      const at = (extent.backendBase + j) * 40;
      const be = epLbBackend.decode(tables.backends.subarray(at, at + 40));
      const saddr = s.forwarding === 'nat' ? new Array<number>(16).fill(0) : [...parseAddress(NODE6)!];
      t.deepEqual({ ...be, addr: [...be.addr], saddr: [...be.saddr] }, { family: s.family, flags: 0, port: b.port, addr: [...b.addressBytes, ...new Array<number>(16 - b.addressBytes.length).fill(0)], saddr, mtu: s.forwarding === 'nat' ? 0 : 1480, pad: 0 });
    });
    const slots: number[] = [];
    for (let k = 0; k < extent.blocks; k++) slots.push(...epLbBlock.decode(tables.slots.subarray((extent.block + k) * 64, (extent.block + k + 1) * 64)).backend);
    t.deepEqual(slots.slice(0, s.table.length), [...s.table]);
    t.true(slots.slice(s.table.length).every((x) => x === 0), 'padding slots are zero');
  });
  t.false(Object.values(ids).includes(0));
});

test('layoutLbTables - the generation changes only the keys\' first byte; fingerprints do not depend on it', (t) => {
  const spec = compile(golden);
  const g0 = layoutLbTables(spec, DEFAULT_LB_CAPACITY, 0);
  const g1 = layoutLbTables(spec, DEFAULT_LB_CAPACITY, 1);
  const keys0 = Uint8Array.from(g0.vip.keys);
  for (let i = 0; i < g0.vip.count; i++) {
    t.is(keys0[i * 24], 0);
    t.is(g1.vip.keys[i * 24], 1);
    keys0[i * 24] = 1;
  }
  t.deepEqual(keys0, g1.vip.keys);
  t.deepEqual(g0.vip.values, g1.vip.values);
  t.deepEqual(g0.slots, g1.slots);
  t.deepEqual(g0.fingerprint, g1.fingerprint);
  t.deepEqual(g0.extents, g1.extents);
});

test('layoutLbTables - a service fingerprint changes with its table or its place, and only then', (t) => {
  const base = layoutLbTables(compile(golden));
  const fp = (tables: LbTablesSpec): Record<string, string> => Object.fromEntries(tables.extents.map((e) => [e.name, hex(e.fingerprint)]));
  // web's backends reweighted: web changes; dns, after it, keeps its place and bytes.
  const reweighted = layoutLbTables(compile([service('web', { vip: '192.0.2.10', backends: [{ address: '10.0.0.2', weight: 2 }, { address: '10.0.0.1', port: 8443, weight: 3 }] }), golden[1]!, golden[2]!]));
  t.notDeepEqual(fp(reweighted).web, fp(base).web);
  t.is(fp(reweighted).dns, fp(base).dns);
  t.is(fp(reweighted).off, fp(base).off);
  // A service added before dns moves it: dns's fingerprint changes though its table did not.
  const added = layoutLbTables(compile([...golden, service('mid', { vip: '192.0.2.200', backends: [{ address: '10.0.0.7' }] })]));
  t.is(fp(added).web, fp(base).web);
  t.not(fp(added).dns, fp(base).dns);
});

test('layoutLbTables - services, slots or backends beyond the capacity are a CapacityError naming need and limit; exactly full fits', (t) => {
  const spec = compile(golden);
  // 3 services, 16 blocks (512 slots), 4 backends.
  t.notThrows(() => layoutLbTables(spec, { services: 3, slots: 512 + 31, backends: 4 }));
  const services = t.throws(() => layoutLbTables(spec, { services: 2, slots: 1 << 20, backends: 100 }), { instanceOf: CapacityError });
  t.is(services!.message, 'capacity lb-services: the 3 services that select this node need 3, the datapath holds at most 2; raise --lb-services (takes --reset-datapath) or select fewer services for this node');
  t.like(services, { limit: 'lb-services', max: 2, needed: 3 });
  // One slot short of 16 blocks: 15 whole blocks.
  const slots = t.throws(() => layoutLbTables(spec, { services: 100, slots: 511, backends: 100 }), { instanceOf: CapacityError });
  t.like(slots, { limit: 'lb-slots', max: 480, needed: 512 });
  t.regex(slots!.message, /^capacity lb-slots: the 3 services that select this node need 512, the datapath holds at most 480; table slots \(blocks of 32\); raise --lb-slots/);
  const backends = t.throws(() => layoutLbTables(spec, { services: 100, slots: 1 << 20, backends: 3 }), { instanceOf: CapacityError });
  t.like(backends, { limit: 'lb-backends', max: 3, needed: 4 });
  // Nothing selects the node: an empty generation.
  const empty = layoutLbTables({ services: [] }, { services: 0, slots: 0, backends: 0 });
  t.like(empty, { backendCount: 0, blockCount: 0 });
  t.is(empty.vip.count, 0);
});

// ---- New-flow selection (lb-reference.ts) ----------------------------------------------------

const v4 = (text: string): Uint8Array => parseAddress(text)!;

/** Random client tuples to a VIP: seeded source addresses and ports. */
function* tuples(seed: number, count: number, vip: string, port: number, proto = 6): Generator<FlowTuple> {
  const random = prng(seed);
  const dst = parseAddress(vip)!;
  const family = dst.length === 4 ? 4 : 6;
  for (let i = 0; i < count; i++) {
    const src = new Uint8Array(dst.length);
    for (let b = 0; b < src.length; b++) src[b] = Math.floor(random() * 256);
    yield { family, proto, src, dst, sport: 1024 + Math.floor(random() * 64_000), dport: port };
  }
}

function backendOf(selection: LbSelection): string {
  if (selection.kind !== 'backend') throw new Error(`not a backend: ${selection.kind}`);
  return selection.family === 4 ? `${selection.address}:${selection.port}` : `[${selection.address}]:${selection.port}`;
}

function counts(reference: LbReference, flows: Iterable<FlowTuple>): Map<string, number> {
  const out = new Map<string, number>();
  for (const flow of flows) {
    const key = backendOf(reference.select(flow));
    out.set(key, (out.get(key) ?? 0) + 1);
  }
  return out;
}

test('LbReference - new flows spread over the backends by weight', (t) => {
  const weights = [1, 2, 3, 4];
  const spec = compile([service('web', { vip: '192.0.2.10', maglevTableSize: 4093, backends: weights.map((weight, i) => ({ address: `10.0.0.${i + 1}`, weight })) })]);
  const reference = new LbReference(layoutLbTables(spec));
  const n = 40_000;
  const seen = counts(reference, tuples(1, n, '192.0.2.10', 443));
  weights.forEach((w, i) => {
    const share = (seen.get(`10.0.0.${i + 1}:443`) ?? 0) / n;
    // The table's shares are within about 1 % of w / 10; the sample's spread is about 0.2 %.
    t.true(Math.abs(share - w / 10) < 0.015, `10.0.0.${i + 1} weight ${w}: share ${share}`);
  });
});

test('LbReference - the selection from the bytes is the spec\'s table at the flow\'s slot; the same tuple always gets the same backend', (t) => {
  const spec = compile(golden);
  const reference = new LbReference(layoutLbTables(spec));
  const web = spec.services.find((s) => s.name === 'web')!;
  for (const flow of tuples(2, 2000, '192.0.2.10', 443)) {
    const selection = reference.select(flow);
    const slot = maglevSlot(flowHash(flow), web.table.length);
    const backend = web.backends[web.table[slot]!]!;
    t.like(selection, { kind: 'backend', svcId: web.svcId, slot, index: web.table[slot], address: backend.address, port: backend.port, flags: 0 });
    t.deepEqual(reference.select(flow), selection);
  }
});

test('LbReference - with client-IP affinity all flows of a client reach one backend; without it they spread', (t) => {
  const backends = Array.from({ length: 8 }, (_, i) => ({ address: `2001:db8:1::${i + 1}` }));
  const spec = compile([
    service('sticky', { vip: '2001:db8::80', port: 80, backends, sessionAffinity: SessionAffinity.SESSION_AFFINITY_CLIENT_IP }),
    service('loose', { vip: '2001:db8::81', port: 80, backends }),
  ]);
  const reference = new LbReference(layoutLbTables(spec));
  const m = spec.services.find((s) => s.name === 'sticky')!.m;
  const clients = [...tuples(3, 50, '2001:db8::80', 80)].map((f) => f.src);
  const perClient = new Set<string>();
  const all = new Set<string>();
  for (const src of clients) {
    const got = new Set<string>();
    for (const flow of tuples(src[0]! * 256 + src[1]!, 40, '2001:db8::80', 80)) {
      const selection = reference.select({ ...flow, src });
      t.like(selection, { kind: 'backend', flags: lbSvcFlags.affinity, slot: maglevSlot(clientHash(6, src), m) });
      got.add(backendOf(selection));
    }
    t.is(got.size, 1, 'one backend per client');
    perClient.add([...got][0]!);
    const loose = new Set([...tuples(src[0]! * 256 + src[1]!, 40, '2001:db8::81', 80)].map((flow) => backendOf(reference.select({ ...flow, src }))));
    t.true(loose.size > 1, 'without affinity one client\'s flows spread');
    for (const b of loose) all.add(b);
  }
  t.true(perClient.size > 1, 'different clients reach different backends');
  t.is(all.size, 8);
});

test('LbReference - a drained backend and an unhealthy one get no new flows; all out is a drop', (t) => {
  const backends = [{ address: '10.0.0.1' }, { address: '10.0.0.2', weight: 0 }, { address: '10.0.0.3' }, { address: '10.0.0.4' }];
  const health: BackendHealthView = (_, address) => address !== '10.0.0.4';
  const reference = new LbReference(layoutLbTables(compile([service('web', { vip: '192.0.2.10', backends })], health)));
  const seen = counts(reference, tuples(4, 20_000, '192.0.2.10', 443));
  t.deepEqual([...seen.keys()].sort(), ['10.0.0.1:443', '10.0.0.3:443']);
  // Healthy again: it takes flows again.
  const healed = counts(new LbReference(layoutLbTables(compile([service('web', { vip: '192.0.2.10', backends })]))), tuples(4, 20_000, '192.0.2.10', 443));
  t.deepEqual([...healed.keys()].sort(), ['10.0.0.1:443', '10.0.0.3:443', '10.0.0.4:443']);
  // Nothing healthy or everything drained: the VIP drops new flows.
  const spec = compile([service('web', { vip: '192.0.2.10', backends }), service('off', { vip: '192.0.2.9', backends: [{ address: '10.0.0.5', weight: 0 }] })], (s) => s !== 'web');
  const dark = new LbReference(layoutLbTables(spec));
  for (const [vip, name] of [['192.0.2.10', 'web'], ['192.0.2.9', 'off']] as const) {
    const svcId = spec.services.find((s) => s.name === name)!.svcId;
    for (const flow of tuples(5, 100, vip, 443)) t.deepEqual(dark.select(flow), { kind: 'drop', svcId });
  }
});

test('LbReference - a tuple that is not a VIP (address, port, protocol or family differ) passes', (t) => {
  const reference = new LbReference(layoutLbTables(compile(golden), DEFAULT_LB_CAPACITY, 1));
  const src = v4('198.51.100.7');
  const flow: FlowTuple = { family: 4, proto: 6, src, dst: v4('192.0.2.10'), sport: 40_000, dport: 443 };
  t.is(reference.select(flow).kind, 'backend');
  for (const miss of [
    { ...flow, dst: v4('192.0.2.11') },
    { ...flow, dport: 444 },
    { ...flow, proto: 17 },
    { ...flow, family: 6 as const, src: parseAddress('2001:db8::7')!, dst: parseAddress('::ffff:192.0.2.10')! },
  ]) {
    t.deepEqual(reference.select(miss), { kind: 'pass' });
  }
  // The IPv6 UDP service: found by its own family and protocol.
  t.is(reference.select({ family: 6, proto: 17, src: parseAddress('2001:db8::7')!, dst: parseAddress('2001:db8::53')!, sport: 5353, dport: 53 }).kind, 'backend');
  t.deepEqual(reference.select({ family: 6, proto: 6, src: parseAddress('2001:db8::7')!, dst: parseAddress('2001:db8::53')!, sport: 5353, dport: 53 }), { kind: 'pass' });
});

test('LbReference - for random services, health and tuples, the selection read from the bytes is the spec\'s: drop without a backend, else the table at the flow\'s slot', (t) => {
  fc.assert(
    fc.property(servicesArb, fc.integer(), fc.array(fc.tuple(fc.nat(), fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.integer({ min: 1, max: 65535 })), { minLength: 1, maxLength: 40 }), (services, salt, flows) => {
      // Health: a backend is down when a salted hash of its key says so (about one in three).
      const health: BackendHealthView = (name, address, port) => (flowHash({ family: 4, proto: 0, src: Buffer.from(`${name}${address}`), dst: new Uint8Array(4), sport: port, dport: salt & 0xffff }) % 3) !== 0;
      const spec = compile(services, health);
      const reference = new LbReference(layoutLbTables(spec, DEFAULT_LB_CAPACITY, (salt & 1) as 0 | 1));
      for (const [pick, src, sport] of flows) {
        const s = spec.services[pick % spec.services.length]!;
        const flow: FlowTuple = { family: s.family, proto: s.protocol, src: src.subarray(0, s.family === 4 ? 4 : 16), dst: s.vip, sport, dport: s.port };
        const selection = reference.select(flow);
        if (s.backends.every((b) => b.effectiveWeight === 0)) {
          t.deepEqual(selection, { kind: 'drop', svcId: s.svcId });
          continue;
        }
        const slot = maglevSlot(s.affinity === 'client-ip' ? clientHash(s.family, flow.src) : flowHash(flow), s.m);
        const backend = s.backends[s.table[slot]!]!;
        t.true(backend.effectiveWeight > 0, 'a backend without weight took a slot');
        t.like(selection, { kind: 'backend', svcId: s.svcId, slot, address: backend.address, port: backend.port });
      }
    }),
    { seed: 20261201, numRuns: 80 },
  );
});
