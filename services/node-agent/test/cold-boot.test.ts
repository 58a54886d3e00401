// Fail-static from the first packet, on the real kernel: a node that booted without pins (the
// programs and maps died with the reboot) and holds a state file that denies a port, under a
// flood to that port. The real agent process starts in a namespace topology; not one datagram
// of the flood may reach the listener behind the uplink once the agent's program is attached.
// Until the agent attaches, a deny-everything XDP program of the test holds the uplink (the
// agent replaces it atomically), so whatever the listener receives passed the agent's program.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { Action, LogEntry, Policy, Protocol, keyIdOf, signLogEntry } from '@edgeplane/proto';
import { IntentChain, freePort } from '@edgeplane/intent-log';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { StateFile } from '../src/agent/state-file.js';
import { FleetNetwork, type FleetNode } from '../../../test/support/fleet.js';
import { Supervised } from '../../../test/support/supervisor.js';
import { mountBpffs } from './datapath-helpers.js';

const DENIED = 7777;
const ALLOWED = 7778;
const LABELS = { role: 'edge' };

let net: FleetNetwork;
let node: FleetNode;
let bpffs: ReturnType<typeof mountBpffs> | undefined;
let blocker: EbpfDatapath | undefined;
const children: Supervised[] = [];

test.before(() => {
  net = new FleetNetwork();
  node = net.addNode(1, 'cold-1');
});

test.after.always(async () => {
  for (const c of children) await c.stop(2000).catch(() => undefined);
  await net?.remove();
  blocker?.close();
  bpffs?.unmount();
});

async function until(what: string, pred: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${children.map((c) => c.output).join('\n')}\n${node.agent?.output ?? ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A python process in `ns` (unbuffered, so every line arrives as it is printed). */
function python(name: string, ns: string, script: string, readyEvent?: string): Promise<Supervised> {
  return Supervised.start(name, { command: 'ip', args: ['netns', 'exec', ns, 'python3', '-u', '-c', script], ...(readyEvent ? { readyEvent } : {}) }).then((s) => {
    children.push(s);
    return s;
  });
}

test.serial('cold boot - no pins, a state file denying a port, a flood to it: 0 datagrams pass from the moment the program is attached', async (t) => {
  // The state file: revision 1 denies UDP to DENIED on every node, signed as the controller would.
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const chain = new IntentChain(new Map([[keyIdOf(publicKey), publicKey]]));
  const policy = Policy.fromPartial({
    metadata: { name: 'no-flood' },
    spec: { defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 10, name: 'deny-flood', protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: DENIED, last: 0 }], action: Action.ACTION_DENY }] },
  });
  chain.append(signLogEntry(LogEntry.fromPartial({ revision: 1n, previousHash: Buffer.from(chain.lastHash), change: { upserts: [policy], deletes: [] } }), privateKey), 1n);
  new StateFile(join(node.stateDir, 'applied.json')).write({ snapshot: chain.snapshot(), labels: LABELS });

  // Until the agent attaches, a deny-everything program holds the uplink (ARP still passes).
  bpffs = mountBpffs();
  blocker = await EbpfDatapath.open({ pinRoot: bpffs.path });
  await blocker.apply({ rules: [], defaultAction: 'deny' });
  execFileSync('ip', ['netns', 'exec', node.ns, process.execPath, '--import=tsx', join(import.meta.dirname, 'datapath-netns-attach.ts'), 'attach', bpffs.path, 'up0', 'uplink']);
  await until('the blocker attached', () => node.xdpProgramId() === blocker!.xdpProgram.id);

  // The listener behind the uplink prints the port of every datagram it receives.
  const received = { [DENIED]: 0, [ALLOWED]: 0 } as Record<number, number>;
  const listener = await python(
    'listener',
    node.ns,
    `import json, select, socket
socks = []
for port in (${DENIED}, ${ALLOWED}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', port)); socks.append(s)
print(json.dumps({'event': 'ready'}))
while True:
    for s in select.select(socks, [], [])[0]:
        s.recv(2048); print(s.getsockname()[1])`,
    'ready',
  );
  listener.onLine((line) => {
    const port = Number(line.trim());
    if (port in received) received[port]!++;
  });

  // The flood, from the internet side, to the denied port.
  const flood = await python(
    'flood',
    net.inet,
    `import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    for _ in range(20):
        s.sendto(b'x' * 32, ('${node.uplinkIp}', ${DENIED}))
    time.sleep(0.001)`,
  );
  const blocked = (): number => blocker!.readCounters().defaultAction.packets;
  await until('the flood reaching the uplink', () => blocked() > 1000);

  // Cold boot: no pins, NATS and controller unreachable (nothing listens there).
  const cp = { natsPort: await freePort('0.0.0.0'), grpcPort: await freePort('0.0.0.0'), publicKeyB64: Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url').toString('base64') };
  const agent = await node.startAgent(cp, LABELS);
  t.false(agent.ready.adopted as boolean, 'nothing was pinned: the programs were loaded fresh');
  const programId = Number(agent.ready.xdpProgramId);
  await until('the agent program attached', () => node.xdpProgramId() === programId);

  // The flood now meets the agent's program: let it count a good share of it.
  const own = await EbpfDatapath.open({ pinRoot: join(node.pinRoot, 'uplink') });
  t.teardown(() => own.close());
  const deniedByAgent = (): number => [...own.readCounters().rules.values()].reduce((sum, c) => sum + c.packets, 0);
  await until('the agent dropping the flood', () => deniedByAgent() > 2000);
  await flood.stop(2000);

  // The listener is still there and hears allowed traffic: send some and wait for it, so every
  // flood datagram that got through (if any) has been read before we look.
  await python('allowed', net.inet, `import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(5): s.sendto(b'y', ('${node.uplinkIp}', ${ALLOWED}))`);
  await until('the allowed datagrams', () => received[ALLOWED]! >= 5);

  t.is(received[DENIED], 0, `datagrams to the denied port passed the agent's program\n${agent.output}`);
  t.is(own.readCounters().unconfigured.packets, 0, 'no packet met the program before its tables were filled');
  t.regex(agent.output, /enforcing the state file[\s\S]*"msg":"attached","interface":"up0"/, 'tables first, attach second');
});
