// What the load-balancing end-to-end tests (test/lb*.test.ts) share besides the rig: the rig's
// agents started with a control plane and stopped with it, a Service of rig backends, its writes through the controller waited for on the nodes, and the backend the
// datapath must pick for a tuple by the project's own oracle (LbReference over the tables the
// agent would lay out for that Service).
import { ApplyServiceRequest, HealthCheck_Type, parseAddress, Protocol, Service } from '@edgeplane/proto';
import { compileServices, layoutLbTables, LbReference } from '@edgeplane/node-agent';
import { TestControlPlane, until } from './control-plane.js';
import { call } from './grpc.js';
import { LbRig, type RigBackend } from './lb-rig.js';

/** The port every rig backend serves on; a Service's VIP port is another one, so the DNAT changes both. */
export const BACKEND_PORT = 8080;
export const VIP_PORT = 80;

/** Options of {@link rigService}. */
export interface RigServiceOptions {
  /** A TCP health check of the backends' port, every intervalS seconds, one failure takes a backend out. */
  healthIntervalS?: number;
}

/**
 * Service `name` on VIP `vip` (k, 0-based, of LbRig.vip) in `family`, TCP port VIP_PORT, selecting
 * nodes labelled role=edge, with `members`: rig backend index -> weight (0 drains), in index order.
 */
export function rigService(rig: LbRig, name: string, vip: number, family: 4 | 6, members: ReadonlyMap<number, number>, options: RigServiceOptions = {}): Service {
  const backends = [...members.entries()].sort(([a], [b]) => a - b).map(([i, weight]) => {
    const b: RigBackend | undefined = rig.backends[i];
    if (b === undefined) throw new RangeError(`no rig backend ${i}`);
    return { address: family === 4 ? b.v4 : b.v6, port: BACKEND_PORT, weight };
  });
  const interval = options.healthIntervalS;
  return Service.fromPartial({
    metadata: { name },
    spec: {
      nodeSelector: { matchLabels: { role: 'edge' } },
      vip: LbRig.vip(vip, family),
      protocol: Protocol.PROTOCOL_TCP,
      port: VIP_PORT,
      backends,
      ...(interval === undefined
        ? {}
        : { healthCheck: { type: HealthCheck_Type.TYPE_TCP, interval: { seconds: BigInt(interval), nanos: 0 }, timeout: { seconds: 0n, nanos: 500_000_000 }, unhealthyThreshold: 1, healthyThreshold: 1 } }),
    },
  });
}

/**
 * Applies `service` through the controller's IntentService.ApplyService (as admin) and waits until
 * every node in `nodes` reports the entry's revision (or a later one) applied. Returns the revision
 * (0 when nothing changed). @throws after `ms` with `context()` in the message.
 */
export async function applyServiceOn(cp: TestControlPlane, service: Service, nodes: string[], context: () => string, ms = 20_000): Promise<bigint> {
  const { revision } = await call(cp.api.intent, cp.api.intent.applyService, ApplyServiceRequest.fromPartial({ service }));
  if (revision === 0n) return revision;
  for (const node of nodes) {
    await until(`revision ${revision} applied on ${node}`, async () => ((await cp.nodeStatus(node))?.appliedRevision ?? 0n) >= revision, ms, context);
  }
  return revision;
}

/**
 * The backend name (`b<index>` of the rig) that the datapath must give a new TCP flow from
 * client:sport to the service's VIP, by LbReference over layoutLbTables(compileServices([service]))
 * with every backend healthy; undefined when the reference passes or drops the flow.
 */
export function referenceBackends(rig: LbRig, service: Service): (client: string, sport: number) => string | undefined {
  const reference = new LbReference(layoutLbTables(compileServices([service], { labels: { role: 'edge' } })));
  const spec = service.spec!;
  const vip = parseAddress(spec.vip)!;
  const family = vip.length === 4 ? 4 : 6;
  const byAddress = new Map(rig.backends.flatMap((b) => [[b.v4, b.name], [b.v6, b.name]]));
  return (client, sport) => {
    const selection = reference.select({ family, proto: 6, src: parseAddress(client)!, dst: vip, sport, dport: spec.port });
    return selection.kind === 'backend' ? byAddress.get(selection.address) : undefined;
  };
}

/**
 * Starts the rig's backends on BACKEND_PORT, a test control plane, and the real agent `names[k]`
 * in the rig's node k (labelled role=edge); resolves with the control plane once every agent is
 * connected at the controller. On a failure it stops what it started (the agents, the control
 * plane) and throws; the caller owns the rig, and with success the control plane (see
 * {@link closeLbAgents}).
 */
export async function startLbAgents(rig: LbRig, names: readonly string[]): Promise<TestControlPlane> {
  await rig.startBackends([BACKEND_PORT]);
  const cp = await TestControlPlane.start();
  try {
    for (const [k, name] of names.entries()) await rig.startAgent(k, name, cp, { role: 'edge' });
    for (const name of names) await until(`${name} connected`, async () => (await cp.nodeStatus(name))?.connected === true, 30_000, () => lbOutput(rig, cp));
    return cp;
  } catch (e) {
    await rig.stopAgents();
    await cp.close();
    throw e;
  }
}

/** Stops the rig's agents, removes the rig and closes the control plane, whichever of them exist. */
export async function closeLbAgents(rig: LbRig | undefined, cp: TestControlPlane | undefined): Promise<void> {
  await rig?.stopAgents();
  rig?.remove();
  await cp?.close();
}

/** The rig's agents' output and the controller's, for a failure's message. */
export function lbOutput(rig: LbRig | undefined, cp: TestControlPlane | undefined): string {
  return [rig?.agentOutput() ?? '', cp?.controller.output ?? ''].join('\n');
}
