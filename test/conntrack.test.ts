// Connection tracking end to end, everything real: nats-server, the controller process (mutual
// TLS), an enrolled agent in a network namespace enforcing a stateful policy with the eBPF
// datapath, traffic from the fleet's "internet" namespace, and `edgeplane conntrack` reading the
// node's connection table through the controller.
import test from 'ava';
import { Action, ConnectionTracking_EstablishedOnDeny, InterfaceRole, Policy, Protocol } from '@edgeplane/proto';
import { cliAsAdmin, type CliResult } from './support/cli.js';
import { TestControlPlane, until } from './support/control-plane.js';
import { FleetNetwork, type FleetNode } from './support/fleet.js';
import { call } from './support/grpc.js';

let cp: TestControlPlane;
let net: FleetNetwork;
let node: FleetNode;

test.before(async () => {
  net = new FleetNetwork();
  cp = await TestControlPlane.start();
  node = net.addNode(1, 'ct-e2e-1');
  await node.startAgent(cp, { role: 'edge' });
  await until('a connected agent', async () => (await cp.nodeStatus(node.name))?.connected === true, 20_000, output);
});

test.after.always(async () => {
  await net?.remove();
  await cp?.close();
});

function output(): string {
  return [node?.agent?.output ?? '', cp.controller.output].join('\n');
}

/** `edgeplane ARGS` against the test controller as admin. @throws when it exits non-zero. */
async function edgeplane(args: string[]): Promise<CliResult> {
  const r = await cliAsAdmin(cp, args, 20_000);
  if (r.code !== 0) throw new Error(`edgeplane ${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
  return r;
}

interface JsonConnection {
  role: string;
  protocol: string;
  source: string;
  destination: string;
  state: string;
  table: string;
  admittedBy: string;
  egress: boolean;
  seenReply: boolean;
  rule?: { policy: string; priority: number };
}

test.serial('conntrack e2e - a stateful uplink policy: allowed pings and outbound flows are tracked and listed through the controller', async (t) => {
  const policy = Policy.fromPartial({
    metadata: { name: 'ct-stateful' },
    spec: {
      interfaceRole: InterfaceRole.INTERFACE_ROLE_UPLINK,
      defaultAction: Action.ACTION_DENY,
      connectionTracking: { stateful: true, establishedOnDeny: ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_KEEP },
      rules: [{ priority: 10, name: 'ping-from-1', sourceCidrs: [`${node.sources[0]}/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_ALLOW }],
    },
  });
  const revision = await cp.apply(policy);
  await until('the policy applied', async () => (await cp.nodeStatus(node.name))?.appliedRevision === revision, 20_000, output);

  t.is(await node.ping(0), 3, 'the allowed source pings the node');
  t.is(await node.ping(1), 0, 'another source is denied by default');
  // Outbound from the node: the default denies inbound, but egress tracking lets the replies in.
  t.is(await net.topo.ping(node.ns, node.sources[1], { count: 2, intervalS: 0.1, waitS: 1 }), 2, 'outbound ping replies pass by egress tracking');

  const { stdout } = await edgeplane(['conntrack', 'list', node.name, '--proto', 'icmp', '-o', 'json']);
  const listed = JSON.parse(stdout) as { matched: number; truncated: boolean; connections: JsonConnection[] };
  const inbound = listed.connections.find((c) => c.source === node.sources[0] && c.destination === node.uplinkIp);
  t.truthy(inbound, stdout);
  t.like(inbound, { role: 'uplink', protocol: 'icmp', state: 'icmp', admittedBy: 'rule', rule: { policy: 'ct-stateful', priority: 10 }, seenReply: true, table: 'established' });
  const outbound = listed.connections.find((c) => c.source === node.uplinkIp && c.destination === node.sources[1]);
  t.like(outbound, { admittedBy: 'egress', egress: true, seenReply: true }, stdout);
  t.false(listed.connections.some((c) => c.source === node.sources[1] && c.destination === node.uplinkIp), 'the denied source created nothing');

  const count = await edgeplane(['conntrack', 'count', node.name, '--proto', 'icmp']);
  t.is(Number(count.stdout.trim()), listed.matched);
  t.true(listed.matched >= 2);
  const filtered = await edgeplane(['conntrack', 'list', node.name, '--address', `${node.sources[0]}`]);
  t.regex(filtered.stdout, new RegExp(`^icmp\\s+1\\s+\\d+ src=${node.sources[0].replace(/\./g, '\\.')} dst=${node.uplinkIp.replace(/\./g, '\\.')} id=\\d+ packets=\\d+ bytes=\\d+ src=.* \\[ASSURED\\] role=uplink table=established admitted=ct-stateful/10$`, 'm'));
  t.false(filtered.stdout.includes(`dst=${node.sources[1]} `), 'the address filter keeps only flows of that address');
  t.regex(filtered.stderr, /flow entries shown/);
  const none = await edgeplane(['conntrack', 'count', node.name, '--proto', 'tcp']);
  t.is(none.stdout.trim(), '0');
});

test.serial('conntrack e2e - the node\'s table occupancy reaches describe node', async (t) => {
  await until('a conntrack status', async () => {
    const got = await call(cp.api.fleet, cp.api.fleet.getNode, { name: node.name }).catch(() => undefined);
    return (got?.conntrack.find((c) => c.role === 'uplink')?.created ?? 0n) > 0n;
  }, 40_000, output);
  const got = await call(cp.api.fleet, cp.api.fleet.getNode, { name: node.name });
  const uplink = got.conntrack.find((c) => c.role === 'uplink')!;
  t.true(uplink.capacity > 0n && uplink.newCapacity > 0n, 'capacities are the tables\' sizes');
  const { stdout } = await edgeplane(['describe', 'node', node.name]);
  t.regex(stdout, /Connection tracking:\n\s+ROLE\s+ESTABLISHED\s+NEW\s+CREATED/);
  t.regex(stdout, /uplink\s+\d+\/\d+\s+\d+\/\d+\s+[1-9]/);
});

/** The uplink policy `ct-change` allowing (or denying) ICMP from source 0, statefully, with `onDeny`. */
function pingPolicy(action: Action, onDeny: ConnectionTracking_EstablishedOnDeny): Policy {
  return Policy.fromPartial({
    metadata: { name: 'ct-change' },
    spec: {
      interfaceRole: InterfaceRole.INTERFACE_ROLE_UPLINK,
      defaultAction: Action.ACTION_DENY,
      connectionTracking: { stateful: true, establishedOnDeny: onDeny },
      rules: [{ priority: 5, sourceCidrs: [`${node.sources[0]}/32`], protocol: Protocol.PROTOCOL_ICMP, action }],
    },
  });
}

async function applied(policy: Policy): Promise<void> {
  const revision = await cp.apply(policy);
  await until(`revision ${revision} applied`, async () => (await cp.nodeStatus(node.name))?.appliedRevision === revision, 20_000, output);
}

/**
 * Replies to a 60-ping flow from source 0 (one ICMP echo id: one tracked flow) during which the
 * policy changes from allow to deny with `onDeny`, once the flow is in the table.
 */
async function flowAcrossDeny(onDeny: ConnectionTracking_EstablishedOnDeny): Promise<number> {
  await cp.delete('ct-stateful');
  await applied(pingPolicy(Action.ACTION_ALLOW, onDeny));
  const before = Number((await call(cp.api.fleet, cp.api.fleet.listConnections, { node: node.name, filter: undefined, limit: 0, countOnly: true })).matched);
  const replies = net.topo.ping(net.inet, node.uplinkIp, { count: 60, source: node.sources[0], intervalS: 0.2, waitS: 1 });
  await until('the flow is tracked', async () => Number((await call(cp.api.fleet, cp.api.fleet.listConnections, { node: node.name, filter: undefined, limit: 0, countOnly: true })).matched) > before, 10_000, output);
  await applied(pingPolicy(Action.ACTION_DENY, onDeny));
  return replies;
}

test.serial('conntrack e2e - KEEP lets a flow admitted before a denying change run on; CUT ends it at its next packet', async (t) => {
  const kept = await flowAcrossDeny(ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_KEEP);
  t.is(kept, 60, 'KEEP: every ping of the admitted flow was answered after the change');
  t.is(await node.ping(0), 0, 'a new flow from the same source is denied');
  const cut = await flowAcrossDeny(ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_CUT);
  t.true(cut > 0 && cut < 60, `CUT: the flow was answered until the change, then dropped (${cut} of 60)`);
  await until('the cut is counted', async () => ((await call(cp.api.fleet, cp.api.fleet.getNode, { name: node.name })).conntrack.find((c) => c.role === 'uplink')?.cut ?? 0n) > 0n, 20_000, output);
});
