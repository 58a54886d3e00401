import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestFn } from 'ava';
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { NatsServer, type NatsServerOptions } from '@edgeplane/intent-log';

/** Options of {@link natsServerFixture}. */
export interface NatsServerFixtureOptions {
  /** Server options besides its data directory (a temporary one). */
  server?: Omit<NatsServerOptions, 'dataDir'>;
  /** Options of the connection `nc` (its servers are the fixture's). */
  connect?: Omit<NodeConnectionOptions, 'servers'>;
}

/** The nats-server of one test file, and a connection to it; see {@link natsServerFixture}. */
export interface NatsServerFixture {
  /** The temporary directory (the server's JetStream store is in it). */
  readonly dir: string;
  /** The server; read it in tests and hooks, after the fixture's `test.before` ran. */
  readonly server: NatsServer;
  /** A connection opened when the server started. */
  readonly nc: NatsConnection;
  /** Opens another connection to the server; the fixture closes it at the end. */
  connect(options?: Omit<NodeConnectionOptions, 'servers'>): Promise<NatsConnection>;
  /**
   * Runs `fn` once the server started and `nc` is open, in the fixture's `test.before` (ava runs
   * a file's before hooks concurrently: a hook of the file's own could run before the server is up).
   */
  atStart(fn: () => Promise<unknown> | unknown): void;
  /**
   * Runs `fn` at the end, before the connections and the server close, in the order given (for
   * the same reason: the file's own after hooks would run beside the fixture's). Its errors are
   * ignored: the clean-up goes on.
   */
  atEnd(fn: () => Promise<unknown> | unknown): void;
}

/**
 * One nats-server with JetStream for the tests of a file (DESIGN.md: a server on a free port per
 * test file; anonymous clients, as the tests of the log and the replica code want), in a
 * temporary directory named after `name`. Registers `test.before` (start it, connect `nc`, then
 * what `atStart` was given) and `test.after.always` (what `atEnd` was given, then the connections,
 * then the server, then the directory; also when a test or the start failed). A test that kills or restarts a server starts
 * its own (the others in its file share this one).
 */
export function natsServerFixture(test: TestFn, name: string, options: NatsServerFixtureOptions = {}): NatsServerFixture {
  const dir = mkdtempSync(join(tmpdir(), `${name}-`));
  let server: NatsServer | undefined;
  let nc: NatsConnection | undefined;
  const opened: NatsConnection[] = [];
  const starts: (() => Promise<unknown> | unknown)[] = [];
  const ends: (() => Promise<unknown> | unknown)[] = [];
  const started = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`natsServerFixture ${name}: ${what} is read before test.before started the server`);
    return value;
  };
  const fixture: NatsServerFixture = {
    dir,
    get server() {
      return started(server, 'the server');
    },
    get nc() {
      return started(nc, 'the connection');
    },
    async connect(more = {}) {
      const c = await connect({ ...more, servers: started(server, 'the server').url });
      opened.push(c);
      return c;
    },
    atStart(fn) {
      starts.push(fn);
    },
    atEnd(fn) {
      ends.push(fn);
    },
  };
  test.before(async () => {
    server = await NatsServer.start({ ...options.server, dataDir: dir });
    nc = await fixture.connect(options.connect);
    for (const fn of starts) await fn();
  });
  test.after.always(async () => {
    for (const fn of ends) await Promise.resolve().then(fn).catch(() => undefined);
    for (const c of opened) await c.close().catch(() => undefined);
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return fixture;
}
