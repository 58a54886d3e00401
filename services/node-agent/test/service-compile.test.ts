// The node's load-balancing spec (service-compile.ts): which services a node fronts, their
// defaults resolved, health as weight 0, the table cache (builds counted, not timed), and that
// two nodes given the same services in any order lay out the same bytes. Pure: no kernel.
import test from 'ava';
import fc from 'fast-check';
import {
  defaultMaglevTableSize,
  ForwardingMode,
  LabelSelectorRequirement_Operator,
  Protocol,
  Service,
  SessionAffinity,
  type DeepPartial,
  type ServiceSpec,
} from '@edgeplane/proto';
import { ServiceCompileError } from '../src/datapath/errors.js';
import { layoutLbTables } from '../src/datapath/lb-tables.js';
import { backendKey, buildMaglevTable } from '../src/datapath/maglev.js';
import { compileServices, MaglevTableCache, type LbServiceSpec } from '../src/datapath/service-compile.js';
import { service, servicesArb } from './lb-helpers.js';

const params = { seed: 20261201, numRuns: 60 };

const byName = (services: readonly LbServiceSpec[], name: string): LbServiceSpec => {
  const found = services.find((s) => s.name === name);
  if (!found) throw new Error(`no service ${name}`);
  return found;
};

/** Slots per backend key in a compiled service's table. */
function slotsByKey(s: LbServiceSpec): Map<string, number> {
  const counts = new Map<string, number>(s.backends.map((b) => [b.key, 0]));
  for (const i of s.table) counts.set(s.backends[i]!.key, counts.get(s.backends[i]!.key)! + 1);
  return counts;
}

const labels = { site: 'ams1', tier: 'edge' };

test('compileServices - keeps the services whose node_selector matches the node, by the selector matcher policies use', (t) => {
  const spec = compileServices(
    [
      service('everywhere', { vip: '192.0.2.1' }),
      service('ams', { vip: '192.0.2.2', nodeSelector: { matchLabels: { site: 'ams1' } } }),
      service('fra', { vip: '192.0.2.3', nodeSelector: { matchLabels: { site: 'fra1' } } }),
      service('edge-in', { vip: '192.0.2.4', nodeSelector: { matchExpressions: [{ key: 'tier', operator: LabelSelectorRequirement_Operator.OPERATOR_IN, values: ['edge', 'core'] }] } }),
      service('not-edge', { vip: '192.0.2.5', nodeSelector: { matchExpressions: [{ key: 'tier', operator: LabelSelectorRequirement_Operator.OPERATOR_NOT_IN, values: ['edge'] }] } }),
    ],
    { labels },
  );
  t.deepEqual(spec.services.map((s) => s.name), ['everywhere', 'ams', 'edge-in']);
  t.deepEqual(compileServices([service('fra', { nodeSelector: { matchLabels: { site: 'fra1' } } })], { labels }).services, []);
});

test('compileServices - resolves every default: weight 1, port 0 is the service port, table size 0 the smallest that fits, UNSPECIFIED enums their documented defaults', (t) => {
  const { services } = compileServices(
    [
      service('plain', { backends: [{ address: '10.0.0.2', port: 0 }, { address: '10.0.0.1', port: 8443, weight: 0 }, { address: '10.0.0.3', weight: 7 }] }),
      service('explicit', {
        vip: '2001:db8::10',
        protocol: Protocol.PROTOCOL_UDP,
        port: 53,
        backends: [{ address: '2001:db8::1' }],
        maglevTableSize: 4093,
        sessionAffinity: SessionAffinity.SESSION_AFFINITY_CLIENT_IP,
        forwardingMode: ForwardingMode.FORWARDING_MODE_DSR,
      }),
      service('said-none', { vip: '192.0.2.11', sessionAffinity: SessionAffinity.SESSION_AFFINITY_NONE, forwardingMode: ForwardingMode.FORWARDING_MODE_NAT }),
    ],
    { labels },
  );
  const plain = byName(services, 'plain');
  // Backends in key order, whatever the spec's order; ports resolved; weights defaulted.
  t.deepEqual(
    plain.backends.map((b) => [b.key, b.port, b.weight, b.effectiveWeight, b.healthy]),
    [
      ['10.0.0.1:8443', 8443, 0, 0, true],
      ['10.0.0.2:443', 443, 1, 1, true],
      ['10.0.0.3:443', 443, 7, 7, true],
    ],
  );
  t.is<number | undefined, number | undefined>(plain.m, defaultMaglevTableSize(3));
  t.is(plain.m, 509);
  t.is(plain.table.length, 509);
  t.like(plain, { family: 4, protocol: 6, port: 443, affinity: 'none', forwarding: 'nat', vipText: '192.0.2.10' });
  t.deepEqual([...plain.vip], [192, 0, 2, 10]);
  // The drained backend takes no slot; the others share 1 : 7.
  const slots = slotsByKey(plain);
  t.is(slots.get('10.0.0.1:8443'), 0);
  t.true(Math.abs(slots.get('10.0.0.3:443')! / 509 - 7 / 8) < 0.02);
  t.like(byName(services, 'explicit'), { family: 6, protocol: 17, port: 53, m: 4093, affinity: 'client-ip', forwarding: 'dsr' });
  t.is(byName(services, 'explicit').backends[0]!.key, '[2001:db8::1]:53');
  t.like(byName(services, 'said-none'), { affinity: 'none', forwarding: 'nat' });
  // The unspecified enums compile to exactly what the explicit defaults do.
  const unspecified = compileServices([service('x')], { labels }).services[0]!;
  const explicit = compileServices([service('x', { scheduler: 1, sessionAffinity: SessionAffinity.SESSION_AFFINITY_NONE, forwardingMode: ForwardingMode.FORWARDING_MODE_NAT })], { labels }).services[0]!;
  t.deepEqual(unspecified, explicit);
});

test('compileServices - an unhealthy backend has effective weight 0: no slot, the same table as draining it; the view is asked with the resolved port', (t) => {
  const backends = [{ address: '10.0.0.1' }, { address: '10.0.0.2', port: 8080, weight: 2 }, { address: '10.0.0.3' }];
  const asked: string[] = [];
  const health = (name: string, address: string, port: number): boolean => {
    asked.push(`${name} ${address} ${port}`);
    return !(name === 'web' && address === '10.0.0.2');
  };
  // One Service object throughout, as the chain carries it from revision to revision.
  const web = service('web', { backends });
  const [sick] = compileServices([web], { labels, health }).services;
  t.deepEqual(asked.sort(), ['web 10.0.0.1 443', 'web 10.0.0.2 8080', 'web 10.0.0.3 443']);
  const b2 = sick!.backends.find((b) => b.address === '10.0.0.2')!;
  t.like(b2, { weight: 2, healthy: false, effectiveWeight: 0 });
  t.is(slotsByKey(sick!).get('10.0.0.2:8080'), 0);
  const [drained] = compileServices([service('web', { backends: backends.map((b) => (b.address === '10.0.0.2' ? { ...b, weight: 0 } : b)) })], { labels }).services;
  t.deepEqual([...sick!.table], [...drained!.table]);
  t.is(sick!.tableFingerprint, drained!.tableFingerprint);
  // Healthy again: the table it had before.
  const [well] = compileServices([web], { labels, health: () => true }).services;
  t.true(slotsByKey(well!).get('10.0.0.2:8080')! > 0);
  t.notDeepEqual([...well!.table], [...sick!.table]);
  // Every backend unhealthy: no backend, an empty table (the datapath drops).
  const [none] = compileServices([web], { labels, health: () => false }).services;
  t.is(none!.table.length, 0);
  t.is(none!.m, 509);
  t.true(none!.backends.every((b) => !b.healthy && b.effectiveWeight === 0));
  t.true(compileServices([web], { labels }).services[0]!.backends.every((b) => b.healthy && b.effectiveWeight === b.weight));
});

test('compileServices - an invalid service refuses the whole revision, naming it, even one that does not select this node (as policies)', (t) => {
  const good = service('good');
  const bad = service('bad', { vip: '192.0.2.99', nodeSelector: { matchLabels: { site: 'elsewhere' } }, backends: [{ address: '10.0.0.1', weight: 10_001 }] });
  const err = t.throws(() => compileServices([good, bad], { labels }), { instanceOf: ServiceCompileError });
  t.is(err!.service, 'bad');
  t.regex(err!.message, /^service bad is invalid: service\.spec\.backends\[0\]\.weight: weight 10001/);
  t.is(err!.violations[0]!.reason, 'OUT_OF_RANGE');
  // A port out of range, a VIP in the wrong family, an unknown enum: each caught on the node.
  for (const spec of [{ port: 70_000 }, { backends: [{ address: '2001:db8::1' }] }, { sessionAffinity: 7 as SessionAffinity }]) {
    t.throws(() => compileServices([service('x', spec)], { labels }), { instanceOf: ServiceCompileError, message: /^service x is invalid/ });
  }
});

test('compileServices - two selected services on one VIP, port and protocol refuse the revision; on other nodes, or another port, they are fine', (t) => {
  const a = service('a', { nodeSelector: { matchLabels: { site: 'ams1' } } });
  const b = service('b', { backends: [{ address: '10.0.0.9' }] });
  t.throws(() => compileServices([a, b], { labels }), { instanceOf: ServiceCompileError, message: 'services a and b both select this node on 192.0.2.10 port 443 TCP; one VIP, port and protocol is one service' });
  t.is(compileServices([a, b], { labels: { site: 'fra1' } }).services.length, 1);
  t.is(compileServices([a, service('b', { port: 80 }), service('c', { protocol: Protocol.PROTOCOL_UDP })], { labels }).services.length, 3);
});

/** 32-bit FNV-1a of UTF-8, written again from the definition (http://www.isthe.com/chongo/tech/comp/fnv/). */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(text)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
  return h;
}

/** Two service names whose FNV-1a hashes are equal, in name order (found by a birthday search). */
function collidingNames(): [string, string] {
  const seen = new Map<number, string>();
  for (let i = 0; ; i++) {
    const name = `c${i.toString(36)}`;
    const h = fnv1a(name);
    const other = seen.get(h);
    if (other !== undefined) return other < name ? [other, name] : [name, other];
    seen.set(h, name);
  }
}

test('compileServices - service ids are nonzero, distinct, the same whatever the order and whichever services a node selects', (t) => {
  const services = Array.from({ length: 200 }, (_, i) => service(`svc-${i}`, { vip: `192.0.${i >> 8}.${(i & 255) + 1}` }));
  const one = compileServices(services, { labels }).services;
  const other = compileServices([...services].reverse(), { labels }).services;
  t.deepEqual(one.map((s) => [s.name, s.svcId]), other.map((s) => [s.name, s.svcId]));
  t.is(new Set(one.map((s) => s.svcId)).size, 200);
  t.false(one.some((s) => s.svcId === 0));
  t.is(compileServices([services[7]!], { labels }).services[0]!.svcId, byName(one, 'svc-7').svcId);
  // A node that selects only some services gives them the ids a node that selects all does.
  const some = services.map((s, i) => (i % 3 === 0 ? s : Service.fromPartial({ ...s, spec: { ...s.spec!, nodeSelector: { matchLabels: { site: 'fra1' } } } })));
  const partial = compileServices(some, { labels }).services;
  t.is(partial.length, 67);
  for (const s of partial) t.is(s.svcId, byName(one, s.name).svcId);
  // Two names whose hashes collide: the first in name order keeps the hash, the other probes.
  const [x, y] = collidingNames();
  const pair = compileServices([service(y, { vip: '192.0.2.1' }), service(x, { vip: '192.0.2.2' })], { labels: { site: 'ams1' } }).services;
  t.is(byName(pair, x).svcId, fnv1a(x));
  t.is(byName(pair, y).svcId, (fnv1a(x) + 1) >>> 0);
  // On a node that selects only y, y still has the probed id.
  const onlyY = compileServices([service(y, { vip: '192.0.2.1' }), service(x, { vip: '192.0.2.2', nodeSelector: { matchLabels: { site: 'fra1' } } })], { labels: { site: 'ams1' } }).services;
  t.deepEqual(onlyY.map((s) => [s.name, s.svcId]), [[y, (fnv1a(x) + 1) >>> 0]]);
});

// 10,000 services with distinct backends (so no two share a table), as in LB.md's target.
function fleetOfServices(change?: { index: number; spec: DeepPartial<ServiceSpec> }): Service[] {
  return Array.from({ length: 10_000 }, (_, i) => {
    const vip = `198.18.${i >> 8}.${i & 255}`;
    const spec: DeepPartial<ServiceSpec> = { vip, port: 80, backends: [{ address: `10.${i >> 8}.${i & 255}.1` }, { address: `10.${i >> 8}.${i & 255}.2` }] };
    return service(`svc-${i}`, change?.index === i ? { ...spec, ...change.spec } : spec);
  });
}

test('compileServices - with a table cache, recompiling 10,000 services of which one changed builds one table', (t) => {
  const cache = new MaglevTableCache();
  const first = compileServices(fleetOfServices(), { labels, cache });
  t.is(first.services.length, 10_000);
  t.is(cache.builds, 10_000);
  // The same intent decoded anew (new objects): nothing to build, the same tables.
  const again = compileServices(fleetOfServices(), { labels, cache });
  t.is(cache.builds, 10_000);
  t.is(again.services[1234]!.table, first.services[1234]!.table);
  // One weight changed: one build.
  const changed = compileServices(fleetOfServices({ index: 4321, spec: { backends: [{ address: '10.16.225.1', weight: 3 }, { address: '10.16.225.2' }] } }), { labels, cache });
  t.is(cache.builds, 10_001);
  const svc = byName(changed.services, 'svc-4321');
  t.deepEqual(svc.backends.map((b) => b.weight), [3, 1]);
  t.deepEqual([...svc.table], [...buildMaglevTable(svc.backends.map((b) => ({ key: b.key, weight: b.effectiveWeight })), svc.m)]);
  // One backend unhealthy on this node: one build.
  compileServices(fleetOfServices(), { labels, cache, health: (name, address) => !(name === 'svc-9' && address === '10.0.9.1') });
  t.is(cache.builds, 10_002);
  // A change that leaves the table's inputs alone (the description, the VIP) builds nothing.
  compileServices(fleetOfServices({ index: 5, spec: { description: 'renamed', vip: '198.19.0.5' } }), { labels, cache });
  t.is(cache.builds, 10_002);
});

test('MaglevTableCache - keeps a table while the last two compiles used it; a flapping backend finds its table again', (t) => {
  const cache = new MaglevTableCache();
  const backends = [{ address: '10.0.0.1' }, { address: '10.0.0.2' }];
  const sickOne = (_: string, address: string): boolean => address !== '10.0.0.1';
  compileServices([service('web', { backends })], { labels, cache });
  compileServices([service('web', { backends })], { labels, cache, health: sickOne });
  t.is(cache.builds, 2);
  t.is(cache.size, 2);
  compileServices([service('web', { backends })], { labels, cache });
  t.is(cache.builds, 2, 'the healthy table was used one compile ago: kept');
  compileServices([service('web', { backends })], { labels, cache });
  t.is(cache.size, 1, 'the unhealthy table, unused for two compiles, is dropped');
  compileServices([service('web', { backends })], { labels, cache, health: sickOne });
  t.is(cache.builds, 3);
});

test('compileServices + layoutLbTables - two nodes given the same services in different orders (services and backends) lay out identical bytes', (t) => {
  fc.assert(
    fc.property(servicesArb, fc.integer(), (services, seed) => {
      // The other node: services shuffled, each one's backends reversed, and its own cache.
      const shuffled = [...services].sort((a, b) => ((fnvLike(a.metadata!.name, seed) - fnvLike(b.metadata!.name, seed)) | 0));
      const reordered = shuffled.map((s) => Service.fromPartial({ ...s, spec: { ...s.spec!, backends: [...s.spec!.backends].reverse() } }));
      const one = layoutLbTables(compileServices(services, { labels }));
      const other = layoutLbTables(compileServices(reordered, { labels, cache: new MaglevTableCache() }));
      t.deepEqual(other.vip.keys, one.vip.keys);
      t.deepEqual(other.vip.values, one.vip.values);
      t.deepEqual(other.backends, one.backends);
      t.deepEqual(other.slots, one.slots);
      t.deepEqual(other.fingerprint, one.fingerprint);
    }),
    params,
  );
});

// A seeded order of names.
function fnvLike(name: string, seed: number): number {
  let h = seed | 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h;
}

test('compileServices - backend keys are backendKey of the resolved port (the identity the table orders by)', (t) => {
  const [s] = compileServices([service('k', { vip: '2001:db8::10', backends: [{ address: '2001:db8::a', port: 0 }, { address: '2001:db8::b', port: 9000 }] })], { labels }).services;
  t.deepEqual(s!.backends.map((b) => b.key), [backendKey('2001:db8::a', 443), backendKey('2001:db8::b', 9000)]);
});

test('service compile - a full-NAT backend routed through an interface that is not an uplink refuses the revision, naming the service, backend and interface; DSR and NAT take such a backend', (t) => {
  const FULLNAT = ForwardingMode.FORWARDING_MODE_FULLNAT;
  const node = new Uint8Array([10, 0, 255, 254]);
  // 10.0.0.1 is behind the workload link w1, 10.0.0.2 behind the uplink, 10.0.0.3 routed without an interface said.
  const routes = (address: string) =>
    address === '10.0.0.1' ? { source: node, mtu: 1500, device: 'w1', uplink: false } : address === '10.0.0.2' ? { source: node, mtu: 1500, device: 'up0', uplink: true } : { source: node, mtu: 1500 };
  const err = t.throws(() => compileServices([service('full', { forwardingMode: FULLNAT, backends: [{ address: '10.0.0.2' }, { address: '10.0.0.1' }] })], { labels: {}, routes }), { instanceOf: ServiceCompileError });
  t.regex(err.message, /^service full: full-NAT backend 10\.0\.0\.1 is routed through w1, not an uplink/);
  // Through the uplink, or where the interface is not known: compiled with its route.
  const ok = compileServices([service('full', { forwardingMode: FULLNAT, backends: [{ address: '10.0.0.2' }, { address: '10.0.0.3' }] })], { labels: {}, routes });
  t.deepEqual(ok.services[0]!.backends.map((b) => b.route?.source), [node, node]);
  // DSR encapsulates through any interface; NAT's replies cross the uplink's egress whatever the backend's link.
  for (const forwardingMode of [ForwardingMode.FORWARDING_MODE_DSR, ForwardingMode.FORWARDING_MODE_NAT]) {
    t.notThrows(() => compileServices([service('other', { forwardingMode, backends: [{ address: '10.0.0.1', port: 0 }] })], { labels: {}, routes }));
  }
});
