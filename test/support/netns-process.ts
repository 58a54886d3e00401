// Processes the tests run inside network namespaces (servers, clients of lb-traffic.py), owned by
// a set that kills what is left when the test's rig is removed.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

/** The standard-library traffic tool the namespace tests run (servers, clients, holders). */
export const TRAFFIC = join(import.meta.dirname, 'lb-traffic.py');
/** A bound for a process to say "ready" (not a measurement: only how long a failure takes to surface). */
const READY_MS = 20_000;

export interface RigProcess {
  readonly child: ChildProcess;
  /** Everything it printed so far. */
  output(): string;
  /** SIGTERM, wait for the exit; its output. Idempotent. */
  stop(): Promise<string>;
  /** SIGKILL, wait for the exit. Idempotent. */
  kill(): Promise<void>;
}

/** What lb-traffic.py's connect and udp report. */
export interface ReachReport {
  /** Connections (datagrams) answered, by backend name. */
  reached: Record<string, number>;
  failed: number;
  /** Failures by kind: refused, reset, timeout, eof, ... */
  failures: Record<string, number>;
}

/** The processes one rig started. */
export class NetnsProcesses {
  #live = new Set<RigProcess>();

  /**
   * Starts `command args` in `ns`. With `ready`, resolves once it printed a line starting with
   * "ready"; with `cpu`, pinned to that CPU. @throws Error if it exits or stays silent (READY_MS) first.
   */
  async spawn(ns: string, command: string, args: string[], options: { ready?: boolean; cpu?: number } = {}): Promise<RigProcess> {
    const argv = options.cpu === undefined ? [command, ...args] : ['taskset', '-c', String(options.cpu), command, ...args];
    const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    // 'close': exited, and its output read to the end (what is still in the pipe at exit too).
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    let done = false;
    void exited.then(() => (done = true));
    const end = async (signal: NodeJS.Signals): Promise<void> => {
      if (!done) child.kill(signal);
      await exited;
      this.#live.delete(proc);
    };
    const proc: RigProcess = {
      child,
      output: () => out,
      stop: async () => {
        await end('SIGTERM');
        return out;
      },
      kill: () => end('SIGKILL'),
    };
    this.#live.add(proc);
    if (options.ready) {
      const ready = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), READY_MS);
        const check = (): void => {
          if (/^ready/m.test(out)) {
            clearTimeout(timer);
            resolve(true);
          }
        };
        child.stdout.on('data', check);
        void exited.then(() => {
          clearTimeout(timer);
          resolve(/^ready/m.test(out));
        });
        check();
      });
      if (!ready) {
        await proc.kill();
        throw new Error(`${command} ${args.join(' ')} in ${ns} did not get ready: ${err.trim() || out.trim() || 'no output'}`);
      }
    }
    return proc;
  }
  /**
   * Runs `lb-traffic.py args` in `ns` to its end: the JSON report it printed last.
   * @throws Error with what it printed if that is not JSON.
   */
  async report<T>(ns: string, args: string[]): Promise<T> {
    const p = await this.spawn(ns, 'python3', [TRAFFIC, ...args]);
    await new Promise<void>((resolve) => p.child.once('close', () => resolve()).once('error', () => resolve()));
    const line = p.output().trim().split('\n').pop() ?? '';
    try {
      return JSON.parse(line) as T;
    } catch {
      throw new Error(`lb-traffic.py ${args.join(' ')} in ${ns} printed ${JSON.stringify(line)}`);
    }
  }

  /** SIGKILLs every process still running. Idempotent; never throws. */
  killAll(): void {
    for (const p of this.#live) {
      try {
        p.child.kill('SIGKILL');
      } catch {
        // Already gone.
      }
    }
    this.#live.clear();
  }
}
