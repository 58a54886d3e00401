// Shared by the tests that run the agent's runtime against a real control plane
// (agent-runtime, service-health, agent-service-lb): a node enrolled with a join token as the
// agent process does, the runtime options the agent main builds from it, and backends that are
// real TCP or HTTP listeners on loopback for the agent's health checks.
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { keyIdOf, publicKeyFromRaw } from '@edgeplane/proto';
import type { AgentRuntimeOptions } from '../src/agent/agent-runtime.js';
import { agentNatsOptions } from '../src/agent/nats-connect-options.js';
import { enrollNode, NodeIdentity } from '../src/agent/node-identity.js';
import { StateFile } from '../src/agent/state-file.js';
import type { TestControlPlane } from '../../../test/support/control-plane.js';

/**
 * Enrolls `name` with a join token carrying `labels` (as the agent process does), its state in
 * `stateDir`, and starts its renewal timer. Identity errors go to `log`. The caller closes the
 * identity (after the runtimes that use it).
 */
export async function enrollTestNode(cp: TestControlPlane, name: string, labels: Record<string, string>, stateDir: string, log: (line: string) => void): Promise<NodeIdentity> {
  const args = await cp.agentTrustArgs(name, labels);
  const creds = await enrollNode({ address: cp.address, token: args[1]!, caFingerprint: args[3]!, nodeName: name, stateDir });
  const identity = new NodeIdentity(creds, { address: cp.address, stateDir, onRenewed: () => undefined, onError: (m) => log(`identity ${m}`) });
  identity.start();
  return identity;
}

/**
 * The options the agent main gives AgentRuntime.start for an enrolled `identity` on `cp`: the
 * node's own NATS credentials and TLS verified by its enrolled CA, the controller's signing key
 * trusted, the state file STATE_DIR/applied.json, a memory-datapath hello, 1 s heartbeats and
 * counters, each log line to `log`. Spread more options over it.
 */
export function testRuntimeOptions(cp: TestControlPlane, identity: NodeIdentity, datapaths: AgentRuntimeOptions['datapaths'], stateDir: string, log: (line: string) => void): AgentRuntimeOptions {
  const name = identity.credentials.nodeName;
  const raw = Buffer.from(cp.publicKeyB64, 'base64');
  const natsServers = [`nats://127.0.0.1:${cp.nats.port}`];
  return {
    nodeName: name,
    labels: identity.credentials.labels,
    datapaths,
    stateFile: new StateFile(join(stateDir, 'applied.json')),
    natsServers,
    natsOptions: agentNatsOptions({ nodeName: name, natsServers }, () => identity.credentials).options,
    trustedKeys: new Map([[keyIdOf(raw), publicKeyFromRaw(raw)]]),
    controller: { address: cp.address, credentials: identity.channelCredentials() },
    info: { agentVersion: 'test', kernelRelease: 'test', hostname: name, datapath: 'memory', capabilities: { xdpNative: false, xdpGeneric: false, tc: false, maxRules: 65_536, ipv6: true } },
    sessionId: `${name}-session`,
    heartbeatIntervalMs: 1000,
    counterIntervalMs: 1000,
    log: (level, msg, fields) => log(`${level} ${msg} ${JSON.stringify(fields ?? {})}`),
  };
}

/**
 * A backend on 127.0.0.1. 'tcp' accepts and closes each connection; 'http' answers /healthz with
 * `status` (404 elsewhere) and counts the agent's probes. stop() closes every connection and the
 * listener, so connects fail (ECONNREFUSED) until start(port) again; stopping twice is safe.
 */
export class LoopbackBackend {
  /** What /healthz answers ('http'). */
  status = 200;
  /** Requests from the agent's health checker ('http'). */
  probes = 0;
  port = 0;
  readonly #kind: 'tcp' | 'http';
  #server: Server | undefined;
  #sockets = new Set<Socket>();

  constructor(kind: 'tcp' | 'http') {
    this.#kind = kind;
  }

  async start(port = 0): Promise<void> {
    const server: Server =
      this.#kind === 'tcp'
        ? createTcpServer((socket) => socket.end())
        : createHttpServer((req, res) => {
            if (req.headers['user-agent']?.startsWith('edgeplane-health-check/')) this.probes++;
            res.writeHead(req.url === '/healthz' ? this.status : 404).end();
          });
    server.on('connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', resolve));
    this.#server = server;
    this.port = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    if (!s) return;
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

/** Starts two {@link LoopbackBackend}s of `kind` on free ports, stopped when the test ends. */
export async function startBackendPair(t: { teardown(fn: () => unknown): void }, kind: 'tcp' | 'http'): Promise<[LoopbackBackend, LoopbackBackend]> {
  const a = new LoopbackBackend(kind);
  const b = new LoopbackBackend(kind);
  t.teardown(async () => {
    await a.stop();
    await b.stop();
  });
  await a.start();
  await b.start();
  return [a, b];
}
