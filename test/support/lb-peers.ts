// The load balancers edgeplane is compared with (issue 14), run in the rig's node namespace
// (test/support/lb-rig.ts): IPVS in NAT (masquerade) mode through ipvsadm, and iptables DNAT as
// kube-proxy's iptables mode writes it (a chain per service, a chain per endpoint, `statistic
// --mode random` with the probability that makes the choice uniform, or proportional to weight).
// The rig's self-test and bench/lb.ts use these, so both put the same load balancer in front of
// the same backends.
import { execFileSync } from 'node:child_process';
import { sh } from './topology.js';

/** One backend of a service: address (IPv4 or IPv6, the VIP's family), port, weight (0 drains). */
export interface RigServiceBackend {
  readonly address: string;
  readonly port: number;
  readonly weight: number;
}

/** A service as every peer takes it: VIP, port and protocol to weighted backends. */
export interface RigService {
  readonly vip: string;
  readonly port: number;
  readonly protocol: 'tcp' | 'udp';
  readonly backends: readonly RigServiceBackend[];
}

/** A load balancer in a namespace. */
export interface LbPeer {
  readonly name: string;
  /** Why this peer cannot run here (a kernel without IPVS, say), or undefined when it can. */
  unavailable(): string | undefined;
  /**
   * Makes `services` the whole configuration, as the peer's own control plane would: the first
   * call installs, later ones change only what differs (established connections stay as the peer
   * keeps them). @throws Error from the peer's tool (rejects).
   */
  apply(services: readonly RigService[]): Promise<void>;
  /** Removes everything apply() installed. Idempotent; never throws. */
  remove(): void;
}

const family = (address: string): 4 | 6 => (address.includes(':') ? 6 : 4);
const hostPort = (address: string, port: number): string => (family(address) === 6 ? `[${address}]:${port}` : `${address}:${port}`);
const serviceKey = (s: RigService): string => `${s.protocol} ${hostPort(s.vip, s.port)}`;

function restore(ns: string, command: string, args: string[], text: string): void {
  try {
    execFileSync('ip', ['netns', 'exec', ns, command, ...args], { input: text, stdio: ['pipe', 'ignore', 'pipe'], maxBuffer: 1 << 28 });
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`${command} in ${ns}: ${stderr || (error as Error).message}`, { cause: error });
  }
}

/**
 * kube-proxy's iptables mode (pkg/proxy/iptables/proxier.go): nat PREROUTING jumps to one
 * services chain that matches each (VIP, protocol, port) in turn; a service's chain picks an
 * endpoint chain with `statistic --mode random --probability w_i / (w_i + ... + w_n)` (the last
 * unconditionally), and the endpoint chain DNATs. Drained (weight 0) and removed backends leave
 * the chains; their established connections keep their conntrack entry, as with kube-proxy. Each
 * apply is one iptables-legacy-restore (ip6tables for IPv6) of the whole nat table: atomic.
 */
export class IptablesPeer implements LbPeer {
  readonly name = 'iptables';
  readonly #ns: string;
  #applied = false;

  constructor(ns: string) {
    this.#ns = ns;
  }

  unavailable(): string | undefined {
    try {
      sh('ip', ['netns', 'exec', this.#ns, 'iptables-legacy', '-t', 'nat', '-L', '-n']);
      return undefined;
    } catch (error) {
      return (error as Error).message;
    }
  }

  /** The iptables-restore text for `services` of one family. */
  static rules(services: readonly RigService[], fam: 4 | 6): string {
    const chains = [':PREROUTING ACCEPT [0:0]', ':INPUT ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ':POSTROUTING ACCEPT [0:0]', ':EP-SERVICES - [0:0]'];
    const rules = ['-A PREROUTING -j EP-SERVICES'];
    const prefix = fam === 4 ? 32 : 128;
    services.forEach((s, k) => {
      if (family(s.vip) !== fam) return;
      const svc = `EP-SVC-${k}`;
      chains.push(`:${svc} - [0:0]`);
      rules.push(`-A EP-SERVICES -d ${s.vip}/${prefix} -p ${s.protocol} -m ${s.protocol} --dport ${s.port} -j ${svc}`);
      const live = s.backends.filter((b) => b.weight > 0);
      let rest = live.reduce((sum, b) => sum + b.weight, 0);
      live.forEach((b, j) => {
        const sep = `EP-SEP-${k}-${j}`;
        chains.push(`:${sep} - [0:0]`);
        const probability = b.weight / rest;
        rest -= b.weight;
        rules.push(j === live.length - 1 ? `-A ${svc} -j ${sep}` : `-A ${svc} -m statistic --mode random --probability ${probability.toFixed(10)} -j ${sep}`);
        rules.push(`-A ${sep} -p ${s.protocol} -m ${s.protocol} -j DNAT --to-destination ${hostPort(b.address, b.port)}`);
      });
    });
    return ['*nat', ...chains, ...rules, 'COMMIT', ''].join('\n');
  }

  async apply(services: readonly RigService[]): Promise<void> {
    restore(this.#ns, 'iptables-legacy-restore', [], IptablesPeer.rules(services, 4));
    restore(this.#ns, 'ip6tables-legacy-restore', [], IptablesPeer.rules(services, 6));
    this.#applied = true;
  }

  remove(): void {
    if (!this.#applied) return;
    this.#applied = false;
    for (const [command, fam] of [['iptables-legacy-restore', 4], ['ip6tables-legacy-restore', 6]] as const) {
      try {
        restore(this.#ns, command, [], IptablesPeer.rules([], fam));
      } catch {
        // The namespace is gone: so are its tables.
      }
    }
  }
}

/**
 * IPVS in NAT mode (`ipvsadm -m`, masquerading), kube-proxy's IPVS mode: a virtual service per
 * (VIP, protocol, port) with the `rr` scheduler (kube-proxy's default; `mh`, IPVS's Maglev, with
 * `scheduler`), weighted real servers. IPVS answers only for local addresses, so the VIPs go on a
 * dummy interface (kube-proxy's kube-ipvs0). A drain is weight 0 (IPVS keeps the connections);
 * a removal deletes the real server, and IPVS then drops the packets of its connections
 * (net.ipv4.vs.expire_nodest_conn=0, the default): what kube-proxy avoids by draining first.
 */
export class IpvsPeer implements LbPeer {
  readonly name = 'ipvs';
  readonly #ns: string;
  readonly #scheduler: string;
  #current = new Map<string, RigService>();
  #vips = new Set<string>();
  #dummy = false;

  constructor(ns: string, options: { scheduler?: string } = {}) {
    this.#ns = ns;
    this.#scheduler = options.scheduler ?? 'rr';
  }

  unavailable(): string | undefined {
    try {
      sh('ip', ['netns', 'exec', this.#ns, 'ipvsadm', '-Ln']);
      return undefined;
    } catch (error) {
      // "Can't initialize ipvs: Protocol not available": the kernel has no IP_VS.
      const said = (error as Error).message.replace(/^.*?ipvsadm -Ln: /, '').split('\n')[0];
      return `ipvsadm: ${said}${/Protocol not available/.test(said ?? '') ? ' (this kernel has no IPVS: CONFIG_IP_VS)' : ''}`;
    }
  }

  /** The ipvsadm-restore commands that turn `from` into `to`. */
  static commands(from: ReadonlyMap<string, RigService>, to: readonly RigService[], scheduler: string): string[] {
    const out: string[] = [];
    const flag = (s: RigService): string => (s.protocol === 'tcp' ? '-t' : '-u');
    const wanted = new Map(to.map((s) => [serviceKey(s), s]));
    for (const [key, s] of from) if (!wanted.has(key)) out.push(`-D ${flag(s)} ${hostPort(s.vip, s.port)}`);
    for (const [key, s] of wanted) {
      const virtual = `${flag(s)} ${hostPort(s.vip, s.port)}`;
      const before = from.get(key);
      if (before === undefined) out.push(`-A ${virtual} -s ${scheduler}`);
      const had = new Map((before?.backends ?? []).map((b) => [hostPort(b.address, b.port), b]));
      const has = new Map(s.backends.map((b) => [hostPort(b.address, b.port), b]));
      for (const real of had.keys()) if (!has.has(real)) out.push(`-d ${virtual} -r ${real}`);
      for (const [real, b] of has) {
        const was = had.get(real);
        if (was === undefined) out.push(`-a ${virtual} -r ${real} -m -w ${b.weight}`);
        else if (was.weight !== b.weight) out.push(`-e ${virtual} -r ${real} -m -w ${b.weight}`);
      }
    }
    return out;
  }

  async apply(services: readonly RigService[]): Promise<void> {
    if (!this.#dummy) {
      sh('ip', ['-n', this.#ns, 'link', 'add', 'ep-ipvs0', 'type', 'dummy']);
      sh('ip', ['-n', this.#ns, 'link', 'set', 'ep-ipvs0', 'up']);
      this.#dummy = true;
    }
    const vips = new Set(services.map((s) => s.vip));
    const batch: string[] = [];
    for (const vip of vips) if (!this.#vips.has(vip)) batch.push(`addr add ${vip}/${family(vip) === 4 ? 32 : 128} dev ep-ipvs0${family(vip) === 6 ? ' nodad' : ''}`);
    for (const vip of this.#vips) if (!vips.has(vip)) batch.push(`addr del ${vip}/${family(vip) === 4 ? 32 : 128} dev ep-ipvs0`);
    if (batch.length > 0) restore(this.#ns, 'ip', ['-batch', '-'], `${batch.join('\n')}\n`);
    this.#vips = vips;
    const commands = IpvsPeer.commands(this.#current, services, this.#scheduler);
    if (commands.length > 0) restore(this.#ns, 'ipvsadm-restore', [], `${commands.join('\n')}\n`);
    this.#current = new Map(services.map((s) => [serviceKey(s), s]));
  }

  remove(): void {
    try {
      if (this.#current.size > 0) sh('ip', ['netns', 'exec', this.#ns, 'ipvsadm', '-C']);
      if (this.#dummy) sh('ip', ['-n', this.#ns, 'link', 'del', 'ep-ipvs0']);
    } catch {
      // The namespace is gone: so is its IPVS table.
    }
    this.#current.clear();
    this.#vips.clear();
    this.#dummy = false;
  }
}
