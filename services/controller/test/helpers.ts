import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createUser } from '@nats-io/nkeys';
import { natsClientOptions } from '@edgeplane/intent-log';
import { Action, AgentServiceClient, Policy, Protocol, type AgentHello, type ConnectRequest, type ConnectResponse, type PolicySpec } from '@edgeplane/proto';
import { parseConfig, startController, type ControllerConfig, type RunningController, type StartExtras } from '../src/index.js';

/** Starts an in-process controller with an embedded nats-server on free ports and a temp data dir. */
export async function startTestController(extra: string[] = [], extras: StartExtras = {}): Promise<{ controller: RunningController; dataDir: string; stop(): Promise<void> }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'ctl-test-'));
  const config = parseConfig(['--insecure', '--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', dataDir, '--shutdown-grace', '1', ...extra], {}) as ControllerConfig;
  const controller = await startController(config, { log: () => undefined, ...extras });
  return {
    controller,
    dataDir,
    async stop() {
      await controller.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A valid policy with `rules` deny rules on distinct ports. */
export function samplePolicy(name: string, labels: Record<string, string> = {}, rules = 1, spec: Partial<PolicySpec> = {}): Policy {
  return Policy.fromPartial({
    metadata: { name, labels },
    spec: {
      nodeSelector: { matchLabels: { site: 'ams1' } },
      defaultAction: Action.ACTION_ALLOW,
      rules: Array.from({ length: rules }, (_, i) => ({ priority: i + 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1000 + (i % 60000) }], action: Action.ACTION_DENY })),
      ...spec,
    },
  });
}

/**
 * NATS connect options of a node enrolled on `controller` as `nodeName`: a fresh user key and
 * the JWT the controller's NATS authority issues for it (valid an hour).
 */
export async function nodeNatsOptions(controller: RunningController, nodeName: string): Promise<ReturnType<typeof natsClientOptions>> {
  const kp = createUser();
  const jwt = await controller.natsCredentials!.issueNode(nodeName, kp.getPublicKey(), new Date(Date.now() + 3600_000));
  // The embedded nats-server serves TLS from the fleet CA (as an enrolled node sees it).
  return natsClientOptions({ jwt, seed: new TextDecoder().decode(kp.getSeed()), tls: { caPem: controller.caCertPem } });
}

/**
 * A simulated agent: its side of AgentService.Connect (real gRPC, insecure: the controller runs
 * --insecure) with the hello sent, and a queue of what the controller sent. The caller closes it.
 */
export function simulatedAgent(address: string, name: string, labels: Record<string, string>, hello: Partial<Pick<AgentHello, 'conditions' | 'appliedUnknown' | 'appliedRevision'>> = {}) {
  const client = new AgentServiceClient(address, grpc.credentials.createInsecure());
  const stream = client.connect();
  const received: ConnectResponse[] = [];
  const waiters: (() => void)[] = [];
  let ended: grpc.ServiceError | null | undefined;
  stream.on('data', (m: ConnectResponse) => {
    received.push(m);
    waiters.splice(0).forEach((w) => w());
  });
  stream.on('error', (e: grpc.ServiceError) => {
    ended = e;
    waiters.splice(0).forEach((w) => w());
  });
  stream.on('end', () => {
    ended ??= null;
    waiters.splice(0).forEach((w) => w());
  });
  const send = (m: ConnectRequest): void => void stream.write(m);
  send({ message: { $case: 'hello', hello: { nodeName: name, labels, info: { agentVersion: 't', kernelRelease: '6.18', hostname: name, datapath: 'memory', capabilities: { xdpNative: true, xdpGeneric: true, tc: true, maxRules: 65536, ipv6: true } }, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 's', conditions: [], appliedUnknown: false, lastReport: undefined, ...hello } } });
  return {
    send,
    received,
    get ended() {
      return ended;
    },
    async next(pred: (m: ConnectResponse) => boolean, ms = 5000): Promise<ConnectResponse> {
      const deadline = Date.now() + ms;
      for (;;) {
        const hit = received.find(pred);
        if (hit) return hit;
        if (ended !== undefined || Date.now() > deadline) throw new Error(`no matching message (ended: ${ended?.message ?? ended})`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
    },
    close() {
      stream.end();
      client.close();
    },
  };
}
