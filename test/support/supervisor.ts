import { spawn, type ChildProcess } from 'node:child_process';

/** Options of {@link Supervised.start}. */
export interface SuperviseOptions {
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** Resolve start() when a stdout JSON line has this `event` (e.g. "ready"). Unset: as soon as spawned. */
  readyEvent?: string;
  /** Default {@link READY_TIMEOUT_MS}. */
  readyTimeoutMs?: number;
  /** Wrap the command, e.g. ['nsenter', '--net=/run/netns/x', '--'] to run it in a network namespace. */
  prefix?: string[];
}

/**
 * How long a child may take to say it is ready. An agent loads and verifies its eBPF programs
 * before it enrolls: on a 2-core machine shared with other test runs (load 20-30) that alone
 * took 40-180 s, so 60 s failed healthy starts. Waiting longer changes only how late a real
 * failure is reported.
 */
export const READY_TIMEOUT_MS = 300_000;

/**
 * A child process the tests start, kill -9, and restart, keeping its output so a failing test
 * can show it (attach `supervised.output` to the failure message).
 */
export class Supervised {
  #options: SuperviseOptions;
  #child: ChildProcess | undefined;
  #output: string[] = [];
  #ready: Record<string, unknown> | undefined;
  #listeners = new Set<(line: string) => void>();
  readonly name: string;

  constructor(name: string, options: SuperviseOptions) {
    this.name = name;
    this.#options = options;
  }

  /** Starts the process (and waits for the ready event when one is configured). */
  static async start(name: string, options: SuperviseOptions): Promise<Supervised> {
    const s = new Supervised(name, options);
    await s.start();
    return s;
  }

  /** The ready line's fields. */
  get ready(): Record<string, unknown> {
    return this.#ready ?? {};
  }

  get pid(): number | undefined {
    return this.#child && this.#child.exitCode === null && this.#child.signalCode === null ? this.#child.pid : undefined;
  }

  /** The newest output lines, prefixed with the process name. */
  get output(): string {
    return this.#output.slice(-300).map((l) => `[${this.name}] ${l}`).join('\n');
  }

  /**
   * Calls `listener` with every output line (stdout and stderr) from now on, across restarts:
   * `output` keeps only the newest lines, a listener sees them all. Returns the unsubscribe.
   */
  onLine(listener: (line: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Starts (again) with the same options. */
  async start(): Promise<void> {
    const o = this.#options;
    const [cmd, ...args] = [...(o.prefix ?? []), o.command, ...o.args];
    const child = spawn(cmd!, args, { env: { ...process.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    this.#ready = undefined;
    const lines: ((line: string) => void)[] = [];
    const feed = (stream: NodeJS.ReadableStream, tag: string): void => {
      let buf = '';
      stream.on('data', (chunk: Buffer) => {
        buf += chunk.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          this.#output.push(`${tag} ${line}`);
          if (this.#output.length > 2000) this.#output.splice(0, 1000);
          for (const l of lines) l(line);
          for (const l of this.#listeners) l(line);
        }
      });
    };
    feed(child.stdout!, 'out');
    feed(child.stderr!, 'err');
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('spawn', () => resolve());
    });
    if (!o.readyEvent) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no "${o.readyEvent}" within ${o.readyTimeoutMs ?? READY_TIMEOUT_MS} ms\n${this.output}`)), o.readyTimeoutMs ?? READY_TIMEOUT_MS);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (code ${code}, signal ${signal}) before "${o.readyEvent}"\n${this.output}`));
      });
      lines.push((line) => {
        if (!line.startsWith('{')) return;
        try {
          const j = JSON.parse(line) as Record<string, unknown>;
          if (j.event === o.readyEvent) {
            this.#ready = j;
            clearTimeout(timer);
            resolve();
          }
        } catch {
          // not JSON
        }
      });
    });
  }

  /** Sends a signal (default SIGKILL) and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return { code: child?.exitCode ?? null, signal: child?.signalCode ?? null };
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, sig) => r({ code, signal: sig })));
    child.kill(signal);
    return exited;
  }

  /** kill -9, then start again. */
  async restart(): Promise<void> {
    await this.kill('SIGKILL');
    await this.start();
  }

  /** Graceful stop: SIGTERM, SIGKILL after `graceMs`. Idempotent. */
  async stop(graceMs = 10_000): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await this.kill('SIGTERM');
    clearTimeout(timer);
  }
}
