import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { LogUnavailableError } from './errors.js';

/** Options of {@link NatsServer.start}. */
export interface NatsServerOptions {
  /** JetStream storage directory (created if missing). */
  dataDir: string;
  /** Client port; 0 picks a free one. Default 0. */
  port?: number;
  /** Address to listen on. Default 127.0.0.1. */
  host?: string;
  /** nats-server binary. Default `nats-server` on PATH. */
  binary?: string;
  /** How long to wait for the server to accept connections, ms. Default 10000. */
  startTimeoutMs?: number;
  /**
   * Largest message, bytes. Default 8 MiB: one log entry carries a whole policy, and a
   * 65,536-rule policy is over NATS's own 1 MiB default.
   */
  maxPayload?: number;
  /**
   * More server configuration, appended to the generated config file: the authorization (e.g.
   * {@link https://docs.nats.io/running-a-nats-service/configuration/securing_nats/auth_intro/jwt
   * operator, system_account and resolver} from the controller's NATS authority). Without it the
   * server accepts anonymous clients: only tests that check the unauthenticated case want that.
   */
  configFragment?: string;
  /** TLS for client connections (PEM files). With caFile, clients must present a certificate it signed. */
  tls?: NatsServerTls;
  /**
   * Keep the server running: when it exits without close() (a crash, a kill), start it again on
   * the same port and data directory, after 100 ms doubling to 5 s while it keeps dying. The
   * callbacks say what happened (for the owner's log); they must not throw.
   */
  supervise?: { onExit?: (why: string) => void; onRestart?: (pid: number) => void; onRestartFailed?: (err: Error) => void };
}

/** TLS files of {@link NatsServerOptions.tls}. */
export interface NatsServerTls {
  certFile: string;
  keyFile: string;
  /** CA that client certificates must chain to; verification is required when given. */
  caFile?: string;
}

/** Quotes a string for the NATS configuration format (a JSON string is a valid NATS string). */
function confString(s: string): string {
  return JSON.stringify(s);
}

/** util-linux's setpriv, when installed (Debian: always, util-linux is essential). */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));

/**
 * Stops a nats-server that an earlier owner of this data directory left running (killed before
 * it could stop it): the process named by the pid file, if it is a nats-server started with
 * this directory's config. SIGTERM, SIGKILL after 5 s.
 */
async function stopOrphan(pidFile: string, config: string): Promise<void> {
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 1) return;
  let cmdline: string;
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    rmSync(pidFile, { force: true });
    return; // not running
  }
  const argv = cmdline.split('\0');
  if (!argv.some((a) => a.endsWith('nats-server')) || !argv.includes(config)) return; // the pid was reused
  // The process may be reaped between any two of these steps (ESRCH): then it is gone, as wanted.
  const alive = (): boolean => {
    try {
      return !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
    } catch {
      return false;
    }
  };
  const signal = (name: NodeJS.Signals): void => {
    try {
      process.kill(pid, name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  };
  signal('SIGTERM');
  const deadline = Date.now() + 5000;
  while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (alive()) signal('SIGKILL');
  while (alive()) await new Promise((r) => setTimeout(r, 20));
  rmSync(pidFile, { force: true });
}

/** The largest message the embedded server accepts unless told otherwise. */
export const DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024;

/**
 * Returns a TCP port that was free a moment ago on host. It is taken below the kernel's
 * ephemeral range (net.ipv4.ip_local_port_range) where there is room: a port from that range
 * can be given to any process's outgoing connection between this call and the caller's
 * listen (a CI run lost a controller's gRPC port so). Random within that room, so concurrent
 * callers rarely meet; the kernel's own choice when there is no room or nothing there is free.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const below = ephemeralLow();
  if (below - FIXED_PORTS_FROM >= 1024) {
    for (let attempt = 0; attempt < 32; attempt++) {
      const port = FIXED_PORTS_FROM + Math.floor(Math.random() * (below - FIXED_PORTS_FROM));
      if ((await listenOnce(host, port)) !== undefined) return port;
    }
  }
  const port = await listenOnce(host, 0);
  if (port === undefined) throw new Error(`no free TCP port on ${host}`);
  return port;
}

/** Ports below this are left to services with well-known numbers. */
const FIXED_PORTS_FROM = 10_000;

/** The first port of the kernel's ephemeral range (Linux default when it cannot be read). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 0 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

/** Listens on host:port and closes again: the port bound, or undefined if it was in use. */
function listenOnce(host: string, port: number): Promise<number | undefined> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(undefined) : reject(err)));
    srv.listen({ port, host, exclusive: true }, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/**
 * A nats-server child process with JetStream (file storage in dataDir). Used by the
 * controller when no NATS address is configured, and by tests. Owns the process: close()
 * stops it (SIGTERM, then SIGKILL after a grace period); kill() is the crash a fault test wants.
 */
export class NatsServer {
  readonly host: string;
  readonly port: number;
  readonly dataDir: string;
  #options: NatsServerOptions;
  #child: ChildProcess | undefined;
  #log: string[] = [];
  /** close() or kill() is ending the child: not a crash to recover from. */
  #stopping = false;
  #startedAt = 0;
  #backoffMs = 50;
  #respawnTimer: NodeJS.Timeout | undefined;

  private constructor(options: NatsServerOptions, host: string, port: number) {
    this.#options = options;
    this.host = host;
    this.port = port;
    this.dataDir = options.dataDir;
  }

  /** The client URL, nats://host:port. */
  get url(): string {
    return `${this.#options.tls ? 'tls' : 'nats'}://${this.host}:${this.port}`;
  }

  /** The newest lines the server printed (for test failure messages). */
  get log(): string {
    return this.#log.join('');
  }

  /**
   * Starts nats-server and waits until it accepts connections.
   * @throws LogUnavailableError if it cannot be started (binary missing, port taken...).
   */
  static async start(options: NatsServerOptions): Promise<NatsServer> {
    const host = options.host ?? '127.0.0.1';
    const port = options.port || (await freePort(host));
    const server = new NatsServer(options, host, port);
    await server.#spawn();
    return server;
  }

  async #spawn(): Promise<void> {
    mkdirSync(this.dataDir, { recursive: true });
    // max_payload has no command-line flag: it goes in a config file.
    const config = join(this.dataDir, 'nats-server.conf');
    const tls = this.#options.tls;
    const lines = [
      `max_payload: ${this.#options.maxPayload ?? DEFAULT_MAX_PAYLOAD}`,
      ...(tls
        ? [`tls: { cert_file: ${confString(tls.certFile)}, key_file: ${confString(tls.keyFile)}${tls.caFile ? `, ca_file: ${confString(tls.caFile)}, verify: true` : ''} }`]
        : []),
      this.#options.configFragment ?? '',
    ];
    writeFileSync(config, lines.join('\n') + '\n', { mode: 0o600 });
    const pidFile = join(this.dataDir, 'nats-server.pid');
    await stopOrphan(pidFile, config);
    const args = ['-c', config, '-a', this.host, '-p', String(this.port), '-js', '-sd', join(this.dataDir, 'jetstream'), '--server_name', `edgeplane-${this.port}`, '-P', pidFile];
    const binary = this.#options.binary ?? 'nats-server';
    // The server dies with its owner (PR_SET_PDEATHSIG through util-linux's setpriv, which
    // then execs it in the same process): an owner killed with -9 leaves no orphan holding the
    // port and the store. Without setpriv the pid file lets the next start stop the orphan.
    const child = SETPRIV ? spawn(SETPRIV, ['--pdeathsig', 'TERM', '--', binary, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    // Readiness is this child's own "Server is ready": the log also holds an earlier child's
    // output, which said it too (a restart would otherwise count as ready at once).
    const said = { tail: '', ready: false };
    const keep = (chunk: Buffer): void => {
      const text = chunk.toString();
      this.#log.push(text);
      if (this.#log.length > 200) this.#log.splice(0, this.#log.length - 200);
      if (!said.ready) {
        said.tail = (said.tail + text).slice(-4096);
        said.ready = said.tail.includes('Server is ready');
      }
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    this.#child = child;
    try {
      await spawned;
      // Its own "Server is ready" (printed once it listens), not a probe of the port: another
      // server may hold the port, and this one is then about to exit "address already in use".
      await this.#ready(child, said, Date.now() + (this.#options.startTimeoutMs ?? 10_000));
    } catch (cause) {
      child.kill('SIGKILL');
      this.#child = undefined;
      throw new LogUnavailableError(`start nats-server port=${this.port}: ${(cause as Error).message}\n${this.log}`, { cause });
    }
    this.#startedAt = Date.now();
    child.once('exit', (code, signal) => this.#exited(child, code, signal));
  }

  async #ready(child: ChildProcess, said: { ready: boolean }, deadline: number): Promise<void> {
    while (!said.ready) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nats-server exited (${child.exitCode ?? child.signalCode}) before it was ready`);
      if (Date.now() > deadline) throw new Error('nats-server did not say it was ready in time');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** The child ended. Unless close() or kill() ended it, a supervised server starts again. */
  #exited(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    const supervise = this.#options.supervise;
    if (this.#child !== child || this.#stopping || !supervise) return;
    this.#child = undefined;
    supervise.onExit?.(`nats-server (pid ${child.pid}) exited ${signal ? `on ${signal}` : `with code ${code}`}`);
    // Up for 30 s: start again at once (100 ms); dying soon after a start: back off, to 5 s.
    this.#backoffMs = Date.now() - this.#startedAt > 30_000 ? 100 : Math.min(5000, this.#backoffMs * 2);
    this.#respawnLater(supervise);
  }

  #respawnLater(supervise: NonNullable<NatsServerOptions['supervise']>): void {
    this.#respawnTimer = setTimeout(() => {
      this.#respawnTimer = undefined;
      if (this.#stopping) return;
      this.#log = [];
      this.#spawn().then(
        () => supervise.onRestart?.(this.#child?.pid ?? 0),
        (err: unknown) => {
          supervise.onRestartFailed?.(err as Error);
          if (this.#stopping) return;
          this.#backoffMs = Math.min(5000, this.#backoffMs * 2);
          this.#respawnLater(supervise);
        },
      );
    }, this.#backoffMs);
  }

  /** The server's process id, or undefined when it is not running. */
  get pid(): number | undefined {
    const child = this.#child;
    return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined;
  }

  /** Kills the process with a signal (default SIGKILL) and waits for it to exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    this.#stopping = true;
    child.kill(signal);
    await exited;
    this.#stopping = false;
  }

  /** Starts the server again on the same port and data directory (after kill or close). */
  async restart(): Promise<void> {
    await this.kill();
    this.#stopping = false;
    await this.#spawn();
  }

  /** Stops the server: SIGTERM, then SIGKILL after 5 s. Idempotent. A supervised server stays stopped. */
  async close(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#respawnTimer);
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
