// How fast a revoked node is cut off from NATS: a real nats-server in JWT mode with the
// controller's NatsAuthority, N connected node users; each is revoked in turn (account JWT
// update through the system account, full resolver) and the time until its connection is
// closed is printed. Goal (issue 12): within 60 s.
// Usage: node --import=tsx bench/nats-revocation.ts [--nodes N]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { createUser } from '@nats-io/nkeys';
import { NatsServer, natsClientOptions } from '@edgeplane/intent-log';
import { NatsAuthority, natsAccountPusher } from '@edgeplane/controller';

const { values } = parseArgs({ options: { nodes: { type: 'string', default: '20' } } });
const n = Number(values.nodes);
const dir = mkdtempSync(join(tmpdir(), 'bench-revocation-'));
const authority = NatsAuthority.open(join(dir, 'auth'));
const server = await NatsServer.start({ dataDir: join(dir, 'nats'), configFragment: await authority.serverConfig(join(dir, 'nats', 'jwt')) });
try {
  const sys = await connect({ servers: server.url, ...natsClientOptions(await authority.systemCredentials()) });
  authority.usePusher(natsAccountPusher(sys));
  const nodes = [];
  for (let i = 0; i < n; i++) {
    const kp = createUser();
    const jwt = await authority.issueNode(`edge-${i}`, kp.getPublicKey(), new Date(Date.now() + 3600_000));
    nodes.push(await connect({ servers: server.url, reconnect: false, ...natsClientOptions({ jwt, seed: new TextDecoder().decode(kp.getSeed()) }) }));
  }
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    await authority.revokeNode(`edge-${i}`);
    const pushed = performance.now() - start;
    await nodes[i]!.closed();
    times.push(performance.now() - start);
    if (i === 0) console.log(`first revocation: push acknowledged after ${pushed.toFixed(1)} ms`);
  }
  times.sort((a, b) => a - b);
  const q = (p: number): string => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(1);
  console.log(`revoked node cut off (revokeNode -> connection closed), ${n} nodes: min ${q(0)} ms, median ${q(0.5)} ms, p90 ${q(0.9)} ms, max ${q(1)} ms (goal: 60 s)`);
  await sys.close();
} finally {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
}
