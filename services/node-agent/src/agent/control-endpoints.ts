// The agent's control-plane endpoints (the controller's gRPC address and the NATS servers), as
// the datapath's control bypass wants them: packets from these addresses and ports always pass
// the uplink, whatever the policy and however full the connection table (bpf/CONNTRACK.md, step 2).
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { ControlEndpoint } from '../datapath/conntrack.js';
import { MAX_CONTROL_ENDPOINTS } from '../datapath/conntrack.js';

/** A host and TCP port the agent connects to. */
export interface ControlTarget {
  readonly host: string;
  readonly port: number;
}

/**
 * The controller's "HOST:PORT" (IPv6 in brackets; or every replica's) and the NATS URLs (nats://, tls://; default
 * port 4222) as host/port pairs. Entries that do not parse are skipped: the agent's own
 * connections would fail on them anyway and say why.
 */
export function controlTargets(controller: string | readonly string[], natsServers: readonly string[]): ControlTarget[] {
  const out: ControlTarget[] = [];
  for (const c of typeof controller === 'string' ? [controller] : controller) {
    const hostPort = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(c);
    if (hostPort) out.push({ host: hostPort[1]!, port: Number(hostPort[2]) });
  }
  for (const server of natsServers) {
    try {
      const url = new URL(server.includes('://') ? server : `nats://${server}`);
      out.push({ host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port ? Number(url.port) : 4222 });
    } catch {
      // not a URL: skipped (see above)
    }
  }
  return out.filter((t) => t.port > 0 && t.port < 65_536);
}

/**
 * Resolves every target to its addresses (literal IPs as they are) into TCP control endpoints,
 * de-duplicated, at most MAX_CONTROL_ENDPOINTS.
 * @throws the resolver's error when a name does not resolve.
 */
export async function resolveControlEndpoints(targets: readonly ControlTarget[]): Promise<ControlEndpoint[]> {
  const seen = new Map<string, ControlEndpoint>();
  for (const { host, port } of targets) {
    const addrs = isIP(host) ? [{ address: host, family: isIP(host) }] : await lookup(host, { all: true });
    for (const a of addrs) {
      const family = a.family === 6 ? 6 : 4;
      // An IPv4-mapped IPv6 address reaches the wire as IPv4.
      const mapped = family === 6 ? /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a.address) : null;
      const e: ControlEndpoint = mapped ? { family: 4, proto: 'tcp', addr: mapped[1]!, port } : { family, proto: 'tcp', addr: a.address, port };
      seen.set(`${e.family}/${e.addr}/${e.port}`, e);
    }
  }
  return [...seen.values()].slice(0, MAX_CONTROL_ENDPOINTS);
}
