// The per-interface settings IPv4 DSR and full NAT need on the node's uplinks (bpf/LB.md, "What
// the node needs"), set by the agent before it applies such a service and restored when the last
// one goes:
// - `net.ipv4.conf.<uplink>.accept_local = 1`: the packet the uplink's hook hands the stack (DSR's
//   outer header, full NAT's translated packet) carries one of the node's own addresses as its
//   source, which fib_validate_source (net/ipv4/fib_frontend.c) drops as a martian otherwise.
// - `net.ipv4.conf.<uplink>.rp_filter = 2` when the effective value (the larger of `all` and the
//   interface's) is 1, strict: that address may sit on another interface (DSR's source towards a
//   backend behind a workload link), which strict reverse-path filtering refuses; loose (2) takes
//   it. Off (0) and loose are left as they are.
// The value found before the first change is kept in a file of the state directory, so an agent
// restarted while a service needs the setting still restores the operator's value when the
// service goes. A value the operator changed since the agent wrote it is left alone (and
// forgotten). IPv6 needs nothing: its input path does not check a source against local addresses.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LbSpec } from '../datapath/service-compile.js';
import { writeFileDurably } from './durable-file.js';
import type { AgentLogger } from './node-agent.js';

/** Options of {@link UplinkSysctls}. */
export interface UplinkSysctlsOptions {
  /** The uplink interfaces (the agent's `--interface NAME=uplink`). */
  readonly uplinks: readonly string[];
  /** Where the values found before the agent's changes are kept (a JSON file in the state directory). */
  readonly savedFile: string;
  readonly log: AgentLogger;
  /** The sysctl tree of the agent's network namespace. Default /proc/sys (tests: the same, in their namespace). */
  readonly procSys?: string;
}

/** One setting the agent changed: the key under procSys, the value it found and the one it wrote. */
interface Changed {
  readonly key: string;
  readonly found: string;
  readonly wrote: string;
}

/** Does the spec have a service whose packets the uplink's hook sends with a node address as source (IPv4 DSR or full NAT)? */
export function needsLocalSource(lb: LbSpec | undefined): boolean {
  return lb?.services.some((s) => s.family === 4 && (s.forwarding === 'dsr' || s.forwarding === 'fullnat')) ?? false;
}

/**
 * Sets and restores the uplinks' settings as the applied services need them (see the header).
 * Not thread-safe (nothing in the agent is). Holds no resource: nothing to close (the settings
 * outlive the agent on purpose: its programs go on enforcing the services after it exits).
 */
export class UplinkSysctls {
  readonly #o: UplinkSysctlsOptions;
  readonly #procSys: string;
  #changed: Changed[];

  constructor(options: UplinkSysctlsOptions) {
    this.#o = options;
    this.#procSys = options.procSys ?? '/proc/sys';
    this.#changed = readSaved(options.savedFile, options.log);
  }

  /** The settings the agent changed and will restore: key (under procSys) -> the value found before. */
  get changed(): ReadonlyMap<string, string> {
    return new Map(this.#changed.map((c) => [c.key, c.found]));
  }

  /**
   * Makes the uplinks' settings what `lb` needs: set when it has an IPv4 DSR or full-NAT service,
   * restored otherwise. Called before every apply of the uplink's services. Never throws: a
   * setting that cannot be written is logged (the service then drops those packets as martians).
   */
  follow(lb: LbSpec | undefined): void {
    if (needsLocalSource(lb)) this.#set();
    else this.#restore();
  }

  #set(): void {
    const before = this.#changed.length;
    for (const dev of this.#o.uplinks) {
      this.#ensure(`net/ipv4/conf/${dev}/accept_local`, () => '1');
      // Strict reverse-path filtering (the larger of all and the interface's) becomes loose.
      const all = this.#read('net/ipv4/conf/all/rp_filter');
      this.#ensure(`net/ipv4/conf/${dev}/rp_filter`, (v) => (Math.max(Number(all ?? 0), Number(v)) === 1 ? '2' : undefined));
    }
    if (this.#changed.length !== before) this.#save();
  }

  /** Writes what `want(current)` says (undefined: nothing) unless the agent already did. */
  #ensure(key: string, want: (current: string) => string | undefined): void {
    if (this.#changed.some((c) => c.key === key)) return;
    const current = this.#read(key);
    if (current === undefined) return;
    const wrote = want(current);
    if (wrote === undefined || wrote === current) return;
    if (!this.#write(key, wrote)) return;
    this.#changed.push({ key, found: current, wrote });
    this.#o.log('info', 'uplink setting changed for IPv4 DSR / full NAT', { setting: key.replaceAll('/', '.'), from: current, to: wrote });
  }

  #restore(): void {
    if (this.#changed.length === 0) return;
    for (const c of this.#changed) {
      const current = this.#read(c.key);
      if (current !== c.wrote) {
        this.#o.log('info', 'uplink setting left as the operator changed it', { setting: c.key.replaceAll('/', '.'), value: current ?? 'absent' });
        continue;
      }
      if (this.#write(c.key, c.found)) this.#o.log('info', 'uplink setting restored: no IPv4 DSR / full-NAT service left', { setting: c.key.replaceAll('/', '.'), to: c.found });
    }
    this.#changed = [];
    this.#save();
  }

  #read(key: string): string | undefined {
    try {
      return readFileSync(join(this.#procSys, key), 'utf8').trim();
    } catch {
      return undefined;
    }
  }

  #write(key: string, value: string): boolean {
    try {
      writeFileSync(join(this.#procSys, key), value);
      return true;
    } catch (err) {
      this.#o.log('warn', 'uplink setting: cannot write', { setting: key.replaceAll('/', '.'), value, error: (err as Error).message });
      return false;
    }
  }

  #save(): void {
    try {
      writeFileDurably(this.#o.savedFile, JSON.stringify({ changed: this.#changed }) + '\n');
    } catch (err) {
      this.#o.log('warn', 'uplink settings: cannot record the values to restore', { file: this.#o.savedFile, error: (err as Error).message });
    }
  }
}

/** The changes a previous agent recorded (none when the file is absent or unreadable). */
function readSaved(file: string, log: AgentLogger): Changed[] {
  if (!existsSync(file)) return [];
  try {
    const body = JSON.parse(readFileSync(file, 'utf8')) as { changed?: unknown };
    if (!Array.isArray(body.changed)) return [];
    return body.changed.filter(
      (c): c is Changed => typeof c === 'object' && c !== null && ['key', 'found', 'wrote'].every((k) => typeof (c as Record<string, unknown>)[k] === 'string') && /^net\/ipv4\/conf\/[\w.@:-]{1,15}\/(accept_local|rp_filter)$/.test((c as Changed).key),
    );
  } catch (err) {
    log('warn', 'uplink settings: cannot read the values to restore', { file, error: (err as Error).message });
    return [];
  }
}
