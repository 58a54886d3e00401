import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The ICMP echo sender ping() runs. */
const ECHO_STREAM = join(import.meta.dirname, '../../services/node-agent/test/conntrack-traffic.py');

/** Runs a command and returns stdout; throws with stderr on failure. */
export function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

/** One end of a veth pair. */
export interface VethEnd {
  /** Namespace name, or undefined for the root namespace. */
  ns?: string;
  name: string;
  /** CIDR to assign, e.g. 10.1.0.1/24 */
  address?: string;
  /** More CIDRs to assign, IPv4 or IPv6 (IPv6 ones without duplicate address detection). */
  addresses?: string[];
  /** Keep IPv6 on this end (default: off, so tests that count packets see no autoconfiguration chatter). */
  ipv6?: boolean;
}

/**
 * Network namespaces and veth pairs for a test, with names unique per run (interface names
 * stay within the kernel's 15 characters). remove() deletes everything it created, and is
 * meant for test.after.always so a failing test leaves nothing behind.
 */
export class Topology {
  /** A short id unique to this topology, part of every name it creates. */
  readonly id: string;
  #namespaces: string[] = [];
  #rootLinks: string[] = [];

  constructor() {
    this.id = randomBytes(3).toString('hex');
  }

  /** A name unique to this topology: `${base}${id}` (keep base short for interfaces). */
  name(base: string): string {
    const n = `${base}${this.id}`;
    if (n.length > 15) throw new Error(`interface name ${n} is longer than 15 characters`);
    return n;
  }

  /** Creates a namespace (lo up) and returns its name. */
  namespace(base: string): string {
    const ns = `ep-${base}-${this.id}`;
    sh('ip', ['netns', 'add', ns]);
    this.#namespaces.push(ns);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    return ns;
  }

  /** Creates a veth pair, moves each end into its namespace, assigns addresses, sets them up. */
  veth(a: VethEnd, b: VethEnd): void {
    // Each end is created directly in its namespace, so names like eth0 never meet in the root one.
    sh('ip', ['link', 'add', a.name, ...(a.ns ? ['netns', a.ns] : []), 'type', 'veth', 'peer', 'name', b.name, ...(b.ns ? ['netns', b.ns] : [])]);
    if (!a.ns) this.#rootLinks.push(a.name);
    if (!b.ns) this.#rootLinks.push(b.name);
    for (const end of [a, b]) {
      const ip = end.ns ? ['-n', end.ns] : [];
      // No IPv6 autoconfiguration chatter: tests count packets.
      if (end.ns && end.ipv6 !== true) sh('ip', ['netns', 'exec', end.ns, 'sysctl', '-qw', `net.ipv6.conf.${end.name}.disable_ipv6=1`]);
      // No duplicate detection for the link-local address either: while it is tentative the
      // first datagrams through a router can be lost (neighbour discovery has no source yet).
      if (end.ns && end.ipv6 === true) sh('ip', ['netns', 'exec', end.ns, 'sysctl', '-qw', `net.ipv6.conf.${end.name}.accept_dad=0`]);
      for (const address of [...(end.address ? [end.address] : []), ...(end.addresses ?? [])]) {
        // nodad: an IPv6 address is usable at once, not after a second of duplicate detection.
        sh('ip', [...ip, 'addr', 'add', address, 'dev', end.name, ...(address.includes(':') ? ['nodad'] : [])]);
      }
      sh('ip', [...ip, 'link', 'set', end.name, 'up']);
    }
  }

  /** Runs a command in a namespace and returns stdout. */
  exec(ns: string, cmd: string, args: string[]): string {
    return sh('ip', ['netns', 'exec', ns, cmd, ...args]);
  }

  /** Like exec, asynchronously; resolves with exit code and output (never rejects on a non-zero exit). */
  async execAsync(ns: string, cmd: string, args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run('ip', ['netns', 'exec', ns, cmd, ...args], { timeout: timeoutMs });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
  }

  /** Sets a link up or down. */
  link(ns: string | undefined, name: string, state: 'up' | 'down'): void {
    sh('ip', [...(ns ? ['-n', ns] : []), 'link', 'set', name, state]);
  }

  /**
   * Pings from a namespace: `count` ICMP echoes, `intervalS` apart (conntrack-traffic.py
   * echo-stream). Returns how many got their reply, within `waitS` of the last echo. Not ping(8):
   * once it has had a reply, ping waits only two round trips after its last echo, whatever -W
   * says, so on a loaded machine a late last reply counted as lost.
   */
  async ping(ns: string, target: string, options: { count?: number; source?: string; intervalS?: number; waitS?: number } = {}): Promise<number> {
    const args = [ECHO_STREAM, 'echo-stream', target, String(options.count ?? 3), String(options.intervalS ?? 0.2), String(options.waitS ?? 1), options.source ?? ''];
    const r = await this.execAsync(ns, 'python3', args);
    const m = /"received": (\d+)/.exec(r.stdout);
    return m ? Number(m[1]) : 0;
  }

  /** Deletes every namespace and root-namespace link it created. Idempotent; never throws. */
  remove(): void {
    for (const l of this.#rootLinks.splice(0)) {
      try {
        sh('ip', ['link', 'del', l]);
      } catch {
        // Gone with its peer's namespace already.
      }
    }
    for (const ns of this.#namespaces.splice(0)) {
      try {
        sh('ip', ['netns', 'del', ns]);
      } catch {
        // Already gone.
      }
    }
  }
}
