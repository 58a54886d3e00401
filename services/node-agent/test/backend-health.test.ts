// BackendHealth against real sockets on loopback: TCP servers that listen, close and come back,
// HTTP servers that answer 200, 503 or nothing, and a server that counts concurrent probes.
import test from 'ava';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { BackendHealth, probeTargetKey, type HealthProbeSpec, type ProbeTarget } from '../src/agent/backend-health.js';

const fast = (kind: 'tcp' | 'http', extra: Partial<HealthProbeSpec> = {}): HealthProbeSpec => ({ kind, httpPath: '/healthz', intervalMs: 40, timeoutMs: 30, healthyThreshold: 2, unhealthyThreshold: 2, ...extra });

interface Change {
  key: string;
  healthy: boolean;
  reason: string;
}

/** A monitor whose changes can be awaited. */
function monitor(maxConcurrent?: number): { health: BackendHealth; changes: Change[]; next(pred: (c: Change) => boolean): Promise<Change> } {
  const changes: Change[] = [];
  const waiters: { pred: (c: Change) => boolean; resolve: (c: Change) => void }[] = [];
  const health = new BackendHealth({
    ...(maxConcurrent === undefined ? {} : { maxConcurrent }),
    onChange: (key, _target, healthy, reason) => {
      const c = { key, healthy, reason };
      changes.push(c);
      for (const w of waiters.splice(0)) {
        if (w.pred(c)) w.resolve(c);
        else waiters.push(w);
      }
    },
  });
  return {
    health,
    changes,
    next: (pred) => {
      const seen = changes.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve) => waiters.push({ pred, resolve }));
    },
  };
}

async function listen(server: Server | HttpServer, port = 0): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

const closeServer = (server: Server | HttpServer): Promise<void> => new Promise((resolve) => server.close(() => resolve()));

test('BackendHealth - a TCP backend that stops listening goes unhealthy with the reason, and healthy again when it is back', async (t) => {
  const m = monitor();
  t.teardown(() => m.health.close());
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  };
  let server = createServer(track);
  const port = await listen(server);
  const target: ProbeTarget = { address: '127.0.0.1', port, probe: fast('tcp') };
  const key = probeTargetKey(target);
  m.health.setTargets([target]);
  // Healthy from the start, and probes pass (they connect).
  while ((m.health.health(key)?.probes ?? 0) < 3) await new Promise((r) => setTimeout(r, 20));
  t.like(m.health.health(key), { healthy: true, reason: '' });
  t.deepEqual(m.changes, [], 'no change while it passes');

  await closeServer(server);
  for (const s of sockets) s.destroy();
  const down = await m.next((c) => c.key === key && !c.healthy);
  t.regex(down.reason, /ECONNREFUSED/);
  t.like(m.health.health(key), { healthy: false });

  server = createServer(track);
  await listen(server, port);
  t.teardown(() => closeServer(server));
  await m.next((c) => c.key === key && c.healthy);
  t.like(m.health.health(key), { healthy: true, reason: '' });
  t.is(m.changes.length, 2);
});

test('BackendHealth - an HTTP probe GETs its path; a 503 takes the backend out, and an answer that never comes times out', async (t) => {
  let status = 200;
  let hang = false;
  const paths: string[] = [];
  const server = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    paths.push(req.url ?? '');
    if (hang) return; // never answers
    res.writeHead(status);
    res.end('ok');
  });
  const port = await listen(server);
  t.teardown(() => {
    server.closeAllConnections();
    return closeServer(server);
  });
  const m = monitor();
  t.teardown(() => m.health.close());
  // A timeout a loaded machine's HTTP answer always beats (at 30 ms a 503 was once "no answer").
  const target: ProbeTarget = { address: '127.0.0.1', port, probe: fast('http', { httpPath: '/healthz?deep=1', intervalMs: 600, timeoutMs: 500 }) };
  const key = probeTargetKey(target);
  m.health.setTargets([target]);
  while ((m.health.health(key)?.probes ?? 0) < 2) await new Promise((r) => setTimeout(r, 20));
  t.true(paths.length >= 2);
  t.true(paths.every((p) => p === '/healthz?deep=1'), 'the configured path');

  status = 503;
  t.is((await m.next((c) => !c.healthy)).reason, 'HTTP 503');
  status = 204;
  await m.next((c) => c.healthy);
  hang = true;
  const timedOut = await m.next((c) => !c.healthy && c !== m.changes[0]);
  t.regex(timedOut.reason, /no answer within 500 ms/);
});

test('BackendHealth - the same probe of one backend from two services is one target; removed targets stop being probed', async (t) => {
  let connections = 0;
  const server = createServer((s) => {
    connections++;
    s.destroy();
  });
  const port = await listen(server);
  t.teardown(() => closeServer(server));
  const m = monitor();
  t.teardown(() => m.health.close());
  const a: ProbeTarget = { address: '127.0.0.1', port, probe: fast('tcp') };
  m.health.setTargets([a, { ...a }]);
  t.is(m.health.entries().length, 1, 'deduplicated');
  while ((m.health.health(probeTargetKey(a))?.probes ?? 0) < 2) await new Promise((r) => setTimeout(r, 20));
  m.health.setTargets([]);
  t.is(m.health.entries().length, 0);
  await new Promise((r) => setTimeout(r, 50)); // a probe in flight lands
  const after = connections;
  await new Promise((r) => setTimeout(r, 200)); // five intervals
  t.is(connections, after, 'no probe after removal');
});

test('BackendHealth - probes in flight never exceed maxConcurrent; the ones that find no slot are skipped, not queued', async (t) => {
  let open = 0;
  let peak = 0;
  const held = new Set<Socket>();
  const server = createServer((s) => {
    open++;
    peak = Math.max(peak, open);
    held.add(s);
    s.resume(); // read, so the client's close is seen
    s.on('close', () => {
      open--;
      held.delete(s);
    });
  });
  const port = await listen(server);
  t.teardown(() => {
    for (const s of held) s.destroy();
    return closeServer(server);
  });
  // HTTP probes to a server that accepts and never answers: each holds its slot until timeout.
  const m = monitor(3);
  t.teardown(() => m.health.close());
  const targets: ProbeTarget[] = Array.from({ length: 12 }, (_, i) => ({ address: '127.0.0.1', port, probe: fast('http', { httpPath: `/t${i}`, intervalMs: 60, timeoutMs: 50 }) }));
  m.health.setTargets(targets);
  let maxInFlight = 0;
  const started = Date.now();
  while (Date.now() - started < 600) {
    maxInFlight = Math.max(maxInFlight, m.health.inFlight);
    await new Promise((r) => setTimeout(r, 5));
  }
  t.true(maxInFlight <= 3, `in flight ${maxInFlight}`);
  // The server learns of a close a moment after the probe freed its slot, so it may count a few
  // closing ones too; without the bound it would see all 12 at once.
  t.true(peak <= 6, `server saw ${peak} at once`);
  const skipped = m.health.entries().reduce((n, [, h]) => n + h.skipped, 0);
  t.true(skipped > 0, 'some probes found no slot');
});

test('BackendHealth - bad probe specs are refused; closing twice is safe and stops probing', (t) => {
  const m = monitor();
  t.throws(() => m.health.setTargets([{ address: '127.0.0.1', port: 80, probe: fast('tcp', { timeoutMs: 100, intervalMs: 50 }) }]), { instanceOf: RangeError, message: /timeout/ });
  t.throws(() => m.health.setTargets([{ address: '127.0.0.1', port: 80, probe: fast('http', { httpPath: 'no-slash' }) }]), { instanceOf: RangeError });
  t.throws(() => m.health.setTargets([{ address: '127.0.0.1', port: 0, probe: fast('tcp') }]), { instanceOf: RangeError });
  t.throws(() => new BackendHealth({ onChange: () => undefined, maxConcurrent: 0 }), { instanceOf: RangeError });
  m.health.setTargets([{ address: '127.0.0.1', port: 9, probe: fast('tcp') }]);
  m.health.close();
  m.health.close();
  t.is(m.health.entries().length, 0);
  m.health.setTargets([{ address: '127.0.0.1', port: 9, probe: fast('tcp') }]);
  t.is(m.health.entries().length, 0, 'a closed monitor takes no targets');
});
