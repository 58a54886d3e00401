// NatsServer's supervision on a real nats-server: a crash is followed by a restart on the same
// port and store; a restart that cannot bind is retried until it can; close() stops it for good;
// a start or restart counts as done only once that server listens.
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NatsServer, freePort } from '../src/index.js';

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');

/** The server's first line to a new client: its INFO, once it listens; a refused connection throws. */
function info(server: NatsServer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(server.port, server.host);
    socket.once('error', reject);
    socket.once('data', (chunk) => {
      socket.destroy();
      resolve(chunk.toString().split(' ')[0]!);
    });
  });
}

async function until(what: string, pred: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('NatsServer - supervised: a killed server comes back on its port; one that cannot bind is retried; close() ends it for good', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nats-supervise-'));
  const events: string[] = [];
  const server = await NatsServer.start({
    dataDir: dir,
    supervise: { onExit: (why) => events.push(`exit ${why}`), onRestart: (pid) => events.push(`restart ${pid}`), onRestartFailed: () => events.push('failed') },
  });
  let squatter: Server | undefined;
  t.teardown(async () => {
    squatter?.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  // A crash: started again on the same port.
  const first = server.pid!;
  process.kill(first, 'SIGKILL');
  await until('a restart', () => events.some((e) => e.startsWith('restart')));
  t.is(await info(server), 'INFO', 'listening when onRestart is called');
  const second = server.pid!;
  t.not(second, first);
  t.true(alive(second));
  t.regex(events[0]!, new RegExp(`exit nats-server \\(pid ${first}\\) exited on SIGKILL`));

  // The port taken while it is down: each start fails ("Server is ready" never comes, the child
  // exits), and it keeps trying until the port is free again.
  events.length = 0;
  process.kill(second, 'SIGKILL');
  await until('the server to be gone', () => !alive(second) && server.pid === undefined);
  squatter = createServer();
  await new Promise<void>((resolve, reject) => {
    squatter!.once('error', reject);
    squatter!.listen(server.port, server.host, () => resolve());
  });
  await until('two failed starts', () => events.filter((e) => e === 'failed').length >= 2);
  await new Promise<void>((r) => squatter!.close(() => r()));
  squatter = undefined;
  await until('a restart once the port is free', () => events.some((e) => e.startsWith('restart')), 30_000);
  const third = server.pid!;
  t.true(alive(third));

  // close(): stopped, and not started again.
  events.length = 0;
  await server.close();
  t.false(alive(third));
  await new Promise((r) => setTimeout(r, 500));
  t.deepEqual(events, [], 'no restart after close');
  t.is(server.pid, undefined);
});

test('NatsServer - unsupervised: a killed server stays down (tests crash it on purpose)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nats-unsupervised-'));
  const server = await NatsServer.start({ dataDir: dir });
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const pid = server.pid!;
  await server.kill();
  t.false(alive(pid));
  await new Promise((r) => setTimeout(r, 500));
  t.is(server.pid, undefined);
  // restart() resolves once this server listens, not because the one before said it was ready.
  for (let i = 0; i < 3; i++) {
    await server.restart();
    t.true(alive(server.pid!));
    t.is(await info(server), 'INFO', `restart ${i + 1}: listening when restart() resolves`);
  }
});

test('freePort - a port below the kernel\'s ephemeral range that can be listened on; distinct picks; a taken one is not given', async (t) => {
  const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  const ports = await Promise.all(Array.from({ length: 8 }, () => freePort()));
  for (const port of ports) t.true(port >= 10_000 && port < low, `${port} outside [10000, ${low})`);
  t.true(new Set(ports).size > 1, 'random picks');
  const servers: Server[] = [];
  try {
    for (const port of ports) {
      const srv = createServer();
      await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(port, '127.0.0.1', resolve));
      servers.push(srv);
    }
    const held = new Set(ports);
    for (let i = 0; i < 32; i++) t.false(held.has(await freePort()), 'a listened port is never returned');
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
});
