// The fleet the staged-rollout tests (rollout, service-rollout) roll out over: nodes node-1..N
// on a FleetNetwork, each the real agent enrolled with the test control plane, node-1 the canary.
import { until, type TestControlPlane } from './control-plane.js';
import type { FleetNetwork, FleetNode } from './fleet.js';
import { call } from './grpc.js';

/**
 * Adds nodes node-1..node-`count` to `net` and starts each one's agent enrolled with `cp`,
 * labelled role=edge and node=node-I, node-1 also canary=true, with `extra(node)` agent flags;
 * resolves with the nodes once the controller lists all of them connected. `net` owns the nodes
 * (net.remove() stops them). @throws after 60 s with the controller's output.
 */
export async function startRolloutFleet(net: FleetNetwork, cp: TestControlPlane, count: number, extra: (node: FleetNode) => string[] = () => []): Promise<FleetNode[]> {
  const nodes: FleetNode[] = [];
  for (let i = 1; i <= count; i++) {
    const node = net.addNode(i, `node-${i}`);
    nodes.push(node);
    await node.startAgent(cp, { role: 'edge', node: `node-${i}`, ...(i === 1 ? { canary: 'true' } : {}) }, extra(node));
  }
  const c = cp.api;
  await until(
    `${count} nodes connected`,
    async () => (await call(c.fleet, c.fleet.listNodes, { pageSize: 0, pageToken: '', labelSelector: '' })).nodes.filter((n) => n.status?.connected).length === count,
    60_000,
    () => cp.controller.output,
  );
  return nodes;
}
