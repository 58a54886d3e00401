// A veth pair for attach tests: `host` stays in the root namespace (so this process can attach to
// it by ifindex), `peer` lives in a fresh network namespace from which traffic is sent.
import { ifindex } from '../../src/index.js';
import { runSuffix, sh } from './fixtures.js';

/** The topology; remove() deletes the namespace and the veth pair. */
export interface VethPair {
  readonly namespace: string;
  readonly host: string;
  readonly peer: string;
  readonly hostIfindex: number;
  readonly hostAddress: string;
  readonly peerAddress: string;
  /** Runs a command inside the namespace. */
  exec(command: string, args: string[]): Promise<string>;
  /** Sends `count` UDP datagrams from the peer to hostAddress:port. */
  sendUdp(port: number, count: number): Promise<void>;
  /** The kernel's interface counters of the host end (ip -s link). */
  hostStats(): Promise<{ rxPackets: number; rxDropped: number; txPackets: number }>;
  remove(): Promise<void>;
}

/** Creates namespace + veth with unique names and a random 10.x.y.0/30. */
export async function createVethPair(): Promise<VethPair> {
  const suffix = runSuffix();
  const namespace = `libbpf-ts-${suffix}`;
  const host = `lbh${suffix}`;
  const peer = `lbp${suffix}`;
  const net = `10.${100 + Math.floor(Math.random() * 100)}.${Math.floor(Math.random() * 250)}`;
  const hostAddress = `${net}.1`;
  const peerAddress = `${net}.2`;
  const remove = async (): Promise<void> => {
    await sh('ip', ['link', 'del', host]).catch(() => undefined);
    await sh('ip', ['netns', 'del', namespace]).catch(() => undefined);
  };
  try {
    await sh('ip', ['netns', 'add', namespace]);
    await sh('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', peer]);
    await sh('ip', ['link', 'set', peer, 'netns', namespace]);
    await sh('ip', ['addr', 'add', `${hostAddress}/30`, 'dev', host]);
    await sh('ip', ['link', 'set', host, 'up']);
    await sh('ip', ['-n', namespace, 'addr', 'add', `${peerAddress}/30`, 'dev', peer]);
    await sh('ip', ['-n', namespace, 'link', 'set', peer, 'up']);
    await sh('ip', ['-n', namespace, 'link', 'set', 'lo', 'up']);
  } catch (error) {
    await remove();
    throw error;
  }
  const exec = (command: string, args: string[]): Promise<string> => sh('ip', ['netns', 'exec', namespace, command, ...args]);
  return {
    namespace,
    host,
    peer,
    hostIfindex: ifindex(host),
    hostAddress,
    peerAddress,
    exec,
    async sendUdp(port, count) {
      const script = `import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(${count}):\n    s.sendto(b'x' * 32, ('${hostAddress}', ${port}))\n`;
      await exec('python3', ['-c', script]);
    },
    async hostStats() {
      const [link] = JSON.parse(await sh('ip', ['-s', '-j', 'link', 'show', 'dev', host])) as { stats64: { rx: { packets: number; dropped: number }; tx: { packets: number } } }[];
      if (link === undefined) throw new Error(`no link ${host}`);
      return { rxPackets: link.stats64.rx.packets, rxDropped: link.stats64.rx.dropped, txPackets: link.stats64.tx.packets };
    },
    remove,
  };
}
