import test from 'ava';
import { Action, ConnectionTracking_EstablishedOnDeny as OnDeny, InterfaceRole, Policy, Protocol, type DeepPartial } from '@edgeplane/proto';
import { compileIntent, ruleId } from '../src/agent/compile.js';

type Spec = DeepPartial<NonNullable<Policy['spec']>>;

function policy(name: string, spec: Spec): Policy {
  return Policy.fromPartial({
    metadata: { name },
    spec: {
      rules: [
        { priority: 10, action: Action.ACTION_ALLOW, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 22 }] },
        { priority: 20, action: Action.ACTION_DENY, protocol: Protocol.PROTOCOL_UDP },
        { priority: 30, action: Action.ACTION_RATE_LIMIT, protocol: Protocol.PROTOCOL_ICMP, rateLimit: { packetsPerSecond: 10, burst: 10 } },
      ],
      ...spec,
    },
  });
}

const stateful = (onDeny = OnDeny.ESTABLISHED_ON_DENY_UNSPECIFIED): Spec['connectionTracking'] => ({ stateful: true, establishedOnDeny: onDeny });

test('compile conntrack - a stateless intent compiles to the rule set it did before tracking (no flags at all)', (t) => {
  const c = compileIntent([policy('a', { defaultAction: Action.ACTION_DENY })], {});
  for (const role of ['uplink', 'workload'] as const) {
    const rs = c[role].ruleSet;
    t.false('trackEgress' in rs || 'cutOnDeny' in rs || 'trackDefault' in rs, role);
    t.true(rs.rules.every((r) => !('track' in r)), role);
  }
});

test('compile conntrack - allow rules of a stateful policy track; deny and rate-limit rules do not; the role tracks egress', (t) => {
  const c = compileIntent([policy('a', { defaultAction: Action.ACTION_DENY, connectionTracking: stateful() })], {});
  const rs = c.uplink.ruleSet;
  t.deepEqual(rs.rules.map((r) => [r.action, r.track === true]), [['allow', true], ['deny', false], ['rate_limit', false]]);
  t.true(rs.trackEgress);
  t.falsy(rs.cutOnDeny, 'KEEP is the default');
  t.falsy(rs.trackDefault, 'a deny default creates nothing');
});

test('compile conntrack - only the stateful policy\'s rules track when policies are mixed', (t) => {
  const c = compileIntent([policy('a', { connectionTracking: stateful() }), policy('b', {})], {});
  const rs = c.uplink.ruleSet;
  const byId = new Map(rs.rules.map((r) => [r.id, r]));
  t.true(byId.get(ruleId('a', 10))?.track);
  t.falsy(byId.get(ruleId('b', 10))?.track);
  t.true(rs.trackEgress);
});

test('compile conntrack - CUT on any stateful policy of a role sets cutOnDeny for that role only', (t) => {
  const c = compileIntent(
    [
      policy('keep', { interfaceRole: InterfaceRole.INTERFACE_ROLE_ALL, connectionTracking: stateful(OnDeny.ESTABLISHED_ON_DENY_KEEP) }),
      policy('cut', { interfaceRole: InterfaceRole.INTERFACE_ROLE_WORKLOAD, connectionTracking: stateful(OnDeny.ESTABLISHED_ON_DENY_CUT) }),
    ],
    {},
  );
  t.falsy(c.uplink.ruleSet.cutOnDeny);
  t.true(c.workload.ruleSet.cutOnDeny);
  t.true(c.uplink.ruleSet.trackEgress);
  t.true(c.workload.ruleSet.trackEgress);
});

test('compile conntrack - a role with no stateful policy has no flags even when another role does', (t) => {
  const c = compileIntent([policy('up', { interfaceRole: InterfaceRole.INTERFACE_ROLE_UPLINK, connectionTracking: stateful(OnDeny.ESTABLISHED_ON_DENY_CUT) }), policy('wl', { interfaceRole: InterfaceRole.INTERFACE_ROLE_WORKLOAD })], {});
  t.true(c.uplink.ruleSet.trackEgress);
  t.true(c.uplink.ruleSet.cutOnDeny);
  t.falsy(c.workload.ruleSet.trackEgress);
  t.falsy(c.workload.ruleSet.cutOnDeny);
});

test('compile conntrack - the default tracks only when it is allow and a stateful policy asked for allow', (t) => {
  const allow = compileIntent([policy('a', { defaultAction: Action.ACTION_ALLOW, connectionTracking: stateful() })], {});
  t.is(allow.uplink.ruleSet.defaultAction, 'allow');
  t.true(allow.uplink.ruleSet.trackDefault);
  // A deny default of any policy wins: nothing passes by the default, so it tracks nothing.
  const denied = compileIntent([policy('a', { defaultAction: Action.ACTION_ALLOW, connectionTracking: stateful() }), policy('b', { defaultAction: Action.ACTION_DENY })], {});
  t.is(denied.uplink.ruleSet.defaultAction, 'deny');
  t.falsy(denied.uplink.ruleSet.trackDefault);
  // A stateful policy without an opinion on the default does not make a stateless allow default track.
  const noOpinion = compileIntent([policy('a', { connectionTracking: stateful() }), policy('b', { defaultAction: Action.ACTION_ALLOW })], {});
  t.is(noOpinion.uplink.ruleSet.defaultAction, 'allow');
  t.falsy(noOpinion.uplink.ruleSet.trackDefault);
});

test('compile conntrack - a policy that does not select the node contributes no flags', (t) => {
  const c = compileIntent([policy('a', { nodeSelector: { matchLabels: { site: 'ams1' } }, connectionTracking: stateful(OnDeny.ESTABLISHED_ON_DENY_CUT) })], { site: 'fra2' });
  t.falsy(c.uplink.ruleSet.trackEgress);
  t.falsy(c.uplink.ruleSet.cutOnDeny);
  t.deepEqual(c.selected, []);
});

test('compile conntrack - an invalid tracking setting fails the compile (nothing applied)', (t) => {
  const err = t.throws(() => compileIntent([policy('a', { connectionTracking: { stateful: false, establishedOnDeny: OnDeny.ESTABLISHED_ON_DENY_CUT } })], {}));
  t.regex(err?.message ?? '', /connection_tracking\.established_on_deny/);
});
