// What the load-balancing peers (test/support/lb-peers.ts) write, without a kernel: kube-proxy's
// probability chain for iptables, and the ipvsadm commands that turn one configuration into the
// next (the IPVS peer cannot run on a kernel without IP_VS, so its commands are checked here).
import test from 'ava';
import { IptablesPeer, IpvsPeer, type RigService } from './support/lb-peers.js';

const svc = (vip: string, weights: number[], protocol: 'tcp' | 'udp' = 'tcp'): RigService => ({
  vip,
  port: 80,
  protocol,
  backends: weights.map((weight, i) => ({ address: vip.includes(':') ? `fd00:98::${i + 1}` : `10.98.0.${i + 1}`, port: 8080, weight })),
});

test('iptables peer - equal weights make the uniform chain: 1/4, 1/3, 1/2, then the last unconditionally', (t) => {
  const text = IptablesPeer.rules([svc('10.96.0.1', [1, 1, 1, 1])], 4);
  const picks = text.split('\n').filter((l) => l.startsWith('-A EP-SVC-0 '));
  t.deepEqual(picks, [
    '-A EP-SVC-0 -m statistic --mode random --probability 0.2500000000 -j EP-SEP-0-0',
    '-A EP-SVC-0 -m statistic --mode random --probability 0.3333333333 -j EP-SEP-0-1',
    '-A EP-SVC-0 -m statistic --mode random --probability 0.5000000000 -j EP-SEP-0-2',
    '-A EP-SVC-0 -j EP-SEP-0-3',
  ]);
  t.true(text.includes('-A EP-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j EP-SVC-0'));
  t.true(text.includes('-A EP-SEP-0-3 -p tcp -m tcp -j DNAT --to-destination 10.98.0.4:8080'));
  t.true(text.startsWith('*nat\n') && text.endsWith('COMMIT\n'));
});

test('iptables peer - weights set the probabilities, drained backends leave the chain, each family its own table', (t) => {
  const services = [svc('10.96.0.1', [3, 0, 1]), svc('fd00:96::1', [1, 1], 'udp')];
  const v4 = IptablesPeer.rules(services, 4);
  t.deepEqual(
    v4.split('\n').filter((l) => l.startsWith('-A EP-SVC-0 ')),
    ['-A EP-SVC-0 -m statistic --mode random --probability 0.7500000000 -j EP-SEP-0-0', '-A EP-SVC-0 -j EP-SEP-0-1'],
  );
  t.true(v4.includes('--to-destination 10.98.0.3:8080'), 'the weight-1 backend is the second pick');
  t.false(v4.includes('10.98.0.2'), 'the drained backend takes no new connections');
  t.false(v4.includes('fd00'));
  const v6 = IptablesPeer.rules(services, 6);
  t.true(v6.includes('-A EP-SERVICES -d fd00:96::1/128 -p udp -m udp --dport 80 -j EP-SVC-1'));
  t.true(v6.includes('-j DNAT --to-destination [fd00:98::2]:8080'));
  t.false(v6.includes('10.96'));
});

test('ipvs peer - commands add services and real servers in masquerade mode, then change only what differs', (t) => {
  const first = IpvsPeer.commands(new Map(), [svc('10.96.0.1', [1, 1]), svc('fd00:96::1', [2], 'udp')], 'rr');
  t.deepEqual(first, [
    '-A -t 10.96.0.1:80 -s rr',
    '-a -t 10.96.0.1:80 -r 10.98.0.1:8080 -m -w 1',
    '-a -t 10.96.0.1:80 -r 10.98.0.2:8080 -m -w 1',
    '-A -u [fd00:96::1]:80 -s rr',
    '-a -u [fd00:96::1]:80 -r [fd00:98::1]:8080 -m -w 2',
  ]);
  const before = new Map([
    ['tcp 10.96.0.1:80', svc('10.96.0.1', [1, 1])],
    ['udp [fd00:96::1]:80', svc('fd00:96::1', [2], 'udp')],
  ]);
  // Backend 1 drained, backend 2 removed, backend 3 added; the IPv6 service gone.
  const next: RigService = { ...svc('10.96.0.1', [0]), backends: [{ address: '10.98.0.1', port: 8080, weight: 0 }, { address: '10.98.0.3', port: 8080, weight: 1 }] };
  t.deepEqual(IpvsPeer.commands(before, [next], 'rr'), [
    '-D -u [fd00:96::1]:80',
    '-d -t 10.96.0.1:80 -r 10.98.0.2:8080',
    '-e -t 10.96.0.1:80 -r 10.98.0.1:8080 -m -w 0',
    '-a -t 10.96.0.1:80 -r 10.98.0.3:8080 -m -w 1',
  ]);
  t.deepEqual(IpvsPeer.commands(before, [...before.values()], 'rr'), [], 'nothing changed, nothing sent');
});
