// The sweeper's pacing (a pure function) and its lifecycle, plus the memory datapath's empty
// connection table. The sweep itself runs in the kernel: datapath-conntrack.test.ts.
import test from 'ava';
import { DEFAULT_CONNTRACK_CONFIG } from '../src/datapath/conntrack.js';
import { ConntrackSweeper, nextSweepDelay } from '../src/datapath/conntrack-sweeper.js';
import { MemoryDatapath } from '../src/datapath/memory-datapath.js';

const pace = { intervalMs: 10_000, busyIntervalMs: 100, maxCpuShare: 0.005, busyCpuShare: 0.05 };

test('sweep pace - a cheap run waits the interval, a costly one long enough to stay under the CPU share', (t) => {
  t.is(nextSweepDelay({ ms: 2, full: false, pressure: false }, pace), 10_000);
  // 250 ms per run at 0.5 % of a core: one run per 50 s.
  t.is(nextSweepDelay({ ms: 250, full: false, pressure: false }, pace), 50_000);
});

test('sweep pace - a full budget or new insert failures bring the next run forward, within the busy share', (t) => {
  t.is(nextSweepDelay({ ms: 2, full: true, pressure: false }, pace), 100);
  t.is(nextSweepDelay({ ms: 2, full: false, pressure: true }, pace), 100);
  t.is(nextSweepDelay({ ms: 250, full: true, pressure: false }, pace), 5_000);
});

test('sweeper - runOnce sweeps with its budget and counts; close twice is safe', (t) => {
  const budgets: number[] = [];
  const sweeper = new ConntrackSweeper({ sweepConntrack: (budget) => (budgets.push(budget), 3) }, { budget: 500 });
  t.is(sweeper.runOnce(), 3);
  t.is(sweeper.runOnce(), 3);
  t.deepEqual(budgets, [500, 500]);
  t.deepEqual(sweeper.stats, { deleted: 6, runs: 2 });
  sweeper.close();
  sweeper.close();
});

test('sweeper - refuses a non-positive interval or budget and a CPU share outside (0, 1]', (t) => {
  const target = { sweepConntrack: () => 0 };
  t.throws(() => new ConntrackSweeper(target, { intervalMs: 0 }), { instanceOf: RangeError });
  t.throws(() => new ConntrackSweeper(target, { budget: 1.5 }), { instanceOf: RangeError });
  t.throws(() => new ConntrackSweeper(target, { maxCpuShare: 0 }), { instanceOf: RangeError });
  t.throws(() => new ConntrackSweeper(target, { busyCpuShare: 2 }), { instanceOf: RangeError });
});

test('memory datapath - no connection table: zero counters, empty lists, endpoints validated and kept', async (t) => {
  const datapath = new MemoryDatapath();
  await datapath.apply({ rules: [{ id: 1, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [], action: 'allow', track: true }], defaultAction: 'deny', trackEgress: true });
  t.is(datapath.readCounters().conntrack.established.packets, 0);
  t.deepEqual(datapath.readConntrackOccupancy(), { established: 0, new: 0 });
  t.deepEqual(datapath.listConnections({ proto: 'tcp' }, 10), []);
  t.throws(() => datapath.listConnections({}, 0), { name: 'ConntrackInputError' });
  datapath.setControlEndpoints([{ family: 6, proto: 'udp', addr: 'fd00::1', port: 4222 }]);
  t.throws(() => datapath.setControlEndpoints([{ family: 6, proto: 'udp', addr: '10.0.0.1', port: 4222 }]), { name: 'ConntrackInputError' });
  t.deepEqual(datapath.controlEndpoints, [{ family: 6, proto: 'udp', addr: 'fd00::1', port: 4222 }]);
  t.truthy(DEFAULT_CONNTRACK_CONFIG.tcpEstablishedMs);
});
