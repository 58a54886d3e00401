// compileIntent's roles: when every selected policy applies to both interface roles they share
// one compiled rule set (compiled once); a policy for one role only gives each role its own.
import test from 'ava';
import { Action, InterfaceRole, Policy, Protocol } from '@edgeplane/proto';
import { compileIntent, ruleId } from '../src/agent/compile.js';

function policy(name: string, interfaceRole: InterfaceRole, port: number): Policy {
  return Policy.fromPartial({
    metadata: { name },
    spec: { interfaceRole, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: port, name: `deny-${port}`, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: port }], action: Action.ACTION_DENY }] },
  });
}

test('compile roles - policies for every role compile once: both roles share the rule set and the origins', (t) => {
  const c = compileIntent([policy('a', InterfaceRole.INTERFACE_ROLE_UNSPECIFIED, 22), policy('b', InterfaceRole.INTERFACE_ROLE_ALL, 23)], {});
  t.is(c.workload.ruleSet, c.uplink.ruleSet);
  t.is(c.workload.origins, c.uplink.origins);
  t.deepEqual(c.uplink.ruleSet.rules.map((r) => r.dstPorts[0]?.from), [22, 23]);
  t.not(c.workload, c.uplink, 'each role keeps its own record: the uplink alone gets services');
});

test('compile roles - a policy for one role gives each role its own rule set, with only its rules', (t) => {
  const c = compileIntent([policy('all', InterfaceRole.INTERFACE_ROLE_ALL, 22), policy('up', InterfaceRole.INTERFACE_ROLE_UPLINK, 23), policy('wl', InterfaceRole.INTERFACE_ROLE_WORKLOAD, 24)], {});
  t.not(c.workload.ruleSet, c.uplink.ruleSet);
  t.deepEqual(c.uplink.ruleSet.rules.map((r) => r.dstPorts[0]?.from), [22, 23]);
  t.deepEqual(c.workload.ruleSet.rules.map((r) => r.dstPorts[0]?.from), [22, 24]);
  t.deepEqual([...c.uplink.origins.values()].map((o) => o.policy), ['all', 'up']);
  t.deepEqual([...c.workload.origins.values()].map((o) => o.policy), ['all', 'wl']);
});

test('ruleId - FNV-1a of the UTF-8 bytes of "policy NUL priority", as every earlier agent computed it: ids (counters, rate-limit buckets, connection entries) follow a rule across an upgrade', (t) => {
  const fnv = (text: string): number => {
    let h = 0x811c9dc5;
    for (const byte of Buffer.from(text)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
    return h;
  };
  // Values the agent has always given these rules (FNV-1a over the bytes, computed once with a
  // Buffer, as ruleId did before it skipped the buffer for ASCII names).
  t.is(ruleId('deny-telnet', 10), 2_409_883_863);
  t.is(ruleId('bench-rules', 1), 2_917_673_720);
  t.is(ruleId('pölicy', 7), 955_798_844);
  for (const policy of ['a', 'bench-rules', 'x'.repeat(63), 'pölicy', '日本', '\u{1f600}x']) {
    for (const priority of [0, 1, 10, 65_535, 4_294_967_295]) {
      const h = fnv(`${policy}\u0000${priority}`);
      t.is(ruleId(policy, priority), h >= 0xfffffffe ? 0 : h, `${policy} ${priority}`);
    }
  }
});
