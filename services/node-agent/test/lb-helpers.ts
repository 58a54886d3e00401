// Shared by the load-balancing tests (service-compile, lb-tables): services to compile, and
// random sets of them for fast-check.
import fc from 'fast-check';
import { Protocol, Service, SessionAffinity, type DeepPartial, type ServiceSpec } from '@edgeplane/proto';

/** A valid service: TCP 192.0.2.10:443 with two backends unless `spec` says otherwise. */
export function service(name: string, spec: DeepPartial<ServiceSpec> = {}): Service {
  return Service.fromPartial({
    metadata: { name },
    spec: { vip: '192.0.2.10', protocol: Protocol.PROTOCOL_TCP, port: 443, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', weight: 3 }], ...spec },
  });
}

/**
 * Random valid sets of services, each selecting every node: 1-12 with distinct names and VIPs,
 * IPv4 or IPv6, TCP or UDP, with or without client-IP affinity, 1-6 backends of mixed ports and
 * weights (unset, 0 = drained, 1-100).
 */
export const servicesArb: fc.Arbitrary<Service[]> = fc
  .uniqueArray(fc.integer({ min: 1, max: 4000 }), { minLength: 1, maxLength: 12 })
  .chain((ids) =>
    fc.tuple(
      ...ids.map((id) =>
        fc.record({
          v6: fc.boolean(),
          udp: fc.boolean(),
          affinity: fc.boolean(),
          backends: fc.uniqueArray(fc.record({ host: fc.integer({ min: 1, max: 250 }), port: fc.constantFrom(0, 80, 8080), weight: fc.option(fc.integer({ min: 0, max: 100 }), { nil: undefined }) }), {
            minLength: 1,
            maxLength: 6,
            selector: (b) => `${b.host} ${b.port === 0 ? 443 : b.port}`,
          }),
        }).map((r) =>
          service(`svc-${id}`, {
            vip: r.v6 ? `2001:db8::${id.toString(16)}` : `192.0.${id >> 8}.${id & 255}`,
            protocol: r.udp ? Protocol.PROTOCOL_UDP : Protocol.PROTOCOL_TCP,
            sessionAffinity: r.affinity ? SessionAffinity.SESSION_AFFINITY_CLIENT_IP : SessionAffinity.SESSION_AFFINITY_UNSPECIFIED,
            backends: r.backends.map((b) => ({ address: r.v6 ? `2001:db8:1::${b.host.toString(16)}` : `10.1.0.${b.host}`, port: b.port, weight: b.weight })),
          }),
        ),
      ),
    ),
  );

