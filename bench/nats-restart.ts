// Write availability after a nats-server restart (issue 15: "writes accepted within 1 s after
// nats-server is back"). nats-server (JetStream, file store) is killed with -9, down for 500 ms,
// started again on the same port and store; from the moment it listens again, two writers try
// every 50 ms until one write lands, side by side on the same restart:
//   controller: ApplyPolicy to the controller process (its NATS connection reconnects on its own;
//               the write first catches up with the log, then appends);
//   raw client: a plain JetStream publish to a stream of the same server, from a connection with
//               the controller's reconnect settings (500 ms wait) and 500 ms per publish — what NATS
//               itself allows.
// Each attempt has a 2 s deadline. Prints the time to the first accepted write per round and
// the medians, and one JSON line.
//
//   npx tsc --build && node --import=tsx bench/nats-restart.ts [--rounds 5] [--quick]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { NatsServer } from '@edgeplane/intent-log';
import { ApplyPolicyRequest, Policy } from '@edgeplane/proto';
import { Supervised } from '../test/support/supervisor.js';
import { call, clients } from '../test/support/grpc.js';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
};
const rounds = Number(arg('--rounds') ?? (process.argv.includes('--quick') ? 3 : 7));
const CONTROLLER = new URL('../services/controller/dist/main.js', import.meta.url).pathname;

const dir = mkdtempSync(join(tmpdir(), 'bench-nats-restart-'));
const nats = await NatsServer.start({ dataDir: join(dir, 'nats') });
const ctl = await Supervised.start('controller', {
  command: process.execPath,
  args: [CONTROLLER, '--insecure', '--listen', '127.0.0.1:0', '--shutdown-grace', '1', '--nats', nats.url, '--nats-anonymous', '--data-dir', join(dir, 'controller')],
  readyEvent: 'ready',
});
const api = clients(ctl.ready.grpc as string);
const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 500 });
const jsm = await jetstreamManager(nc);
await jsm.streams.add({ name: 'BENCH_RAW', subjects: ['bench.raw'] });
// 500 ms per publish, as the controller's retried reads: the raw client is not held by one long wait.
const js = jetstream(nc, { timeout: 500 });

const policy = (i: number): Policy => Policy.fromPartial({ metadata: { name: `restart-${i}` }, spec: { rules: [{ priority: 1, protocol: 3, destinationPorts: [{ first: 1000 + i }], action: 2 }] } });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Tries `write` every 50 ms from `up` on; resolves with ms from up to the first success. */
async function firstWrite(up: number, write: () => Promise<unknown>): Promise<number> {
  for (;;) {
    try {
      await write();
      return Date.now() - up;
    } catch {
      if (Date.now() - up > 60_000) return Infinity;
      await sleep(50);
    }
  }
}

const median = (v: number[]): number => [...v].sort((a, b) => a - b)[v.length >> 1]!;
const results: { controllerMs: number; rawMs: number }[] = [];
try {
  await call(api.intent, api.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: policy(0) }));
  for (let round = 1; round <= rounds; round++) {
    await nats.kill('SIGKILL');
    await sleep(500);
    await nats.restart();
    const up = Date.now();
    const [controllerMs, rawMs] = await Promise.all([
      firstWrite(up, () => call(api.intent, api.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: policy(round) }), 2000)),
      firstWrite(up, () => js.publish('bench.raw', new Uint8Array(8))),
    ]);
    results.push({ controllerMs, rawMs });
    console.log(`round ${round}: first write accepted ${controllerMs} ms (controller) / ${rawMs} ms (raw JetStream client) after nats-server listened again`);
    await sleep(1500);
  }
  console.log(`\nmedian over ${rounds} rounds: controller ${median(results.map((r) => r.controllerMs))} ms, raw JetStream client ${median(results.map((r) => r.rawMs))} ms`);
  console.log(JSON.stringify({ bench: 'nats-restart', rounds, results, median: { controllerMs: median(results.map((r) => r.controllerMs)), rawMs: median(results.map((r) => r.rawMs)) } }));
} finally {
  api.close();
  await nc.close();
  await ctl.stop();
  await nats.close();
  rmSync(dir, { recursive: true, force: true });
}
