import test from 'ava';
import { AgentConfigError, parseAgentConfig, parseTimeout, type AgentConfig } from '../src/agent/config.js';
import { controlTargets, resolveControlEndpoints } from '../src/agent/control-endpoints.js';
import { DEFAULT_CONNTRACK_CONFIG } from '../src/datapath/conntrack.js';

const KEY = Buffer.alloc(32, 7).toString('base64');
const base = ['--trusted-key', KEY, '--insecure'];
const parse = (...args: string[]): AgentConfig => parseAgentConfig([...base, ...args], {}) as AgentConfig;

test('agent config - connection tracking defaults are CONNTRACK.md\'s', (t) => {
  const c = parse();
  t.deepEqual(c.conntrack, DEFAULT_CONNTRACK_CONFIG);
  t.is(c.ctEntries, 262_144);
  t.is(c.ctNewEntries, 65_536);
  t.is(c.ct4Slots, 262_144);
});

test('agent config - timeouts take the shared duration syntax (N, Ns, Nm, Nh, Nd, 1h30m, 1.5h) from 1s to 30d; table sizes are bounded', (t) => {
  const c = parse('--ct-timeout-tcp-established', '2h', '--ct-timeout-udp', '90', '--ct-timeout-icmp', '1m', '--ct-timeout-tcp-syn', '30s', '--ct-timeout-tcp-closing', '1d', '--ct-entries', '1000', '--ct-new-entries', '16');
  t.deepEqual(c.conntrack, { tcpSynMs: 30_000, tcpEstablishedMs: 7_200_000, tcpClosingMs: 86_400_000, udpMs: 90_000, icmpMs: 60_000 });
  t.is(c.ctEntries, 1000);
  t.is(c.ctNewEntries, 16);
  t.is(parse('--ct-timeout-udp', '1.5h').conntrack.udpMs, 5_400_000);
  t.is(parse('--ct-timeout-udp', '1h30m').conntrack.udpMs, 5_400_000);
  for (const bad of ['0', '0s', '999ms', '31d', '5x', '-3', 'h', '1h 30m', '9'.repeat(60)]) {
    const e = t.throws(() => parse(`--ct-timeout-udp=${bad}`), { instanceOf: AgentConfigError });
    t.true(e!.message.startsWith('--ct-timeout-udp:'), e!.message);
    t.true(e!.message.length < 200);
  }
  t.throws(() => parse('--ct-entries', '15'), { instanceOf: AgentConfigError, message: /--ct-entries: 15 is outside/ });
  t.throws(() => parse('--ct-entries', '99999999'), { instanceOf: AgentConfigError });
  t.is(parse('--ct4-slots', '1048576').ct4Slots, 1_048_576);
  t.is((parseAgentConfig([...base], { EDGEPLANE_CT4_SLOTS: '8' }) as AgentConfig).ct4Slots, 8);
  for (const bad of ['4', '1000', '33554432']) t.throws(() => parse('--ct4-slots', bad), { instanceOf: AgentConfigError, message: new RegExp(`--ct4-slots: ${bad} is not a power of two in 8 .. 16777216`) });
  t.is(parseTimeout('x', undefined, 5000), 5000);
});

test('control endpoints - the controller address and NATS URLs, resolved, de-duplicated', async (t) => {
  const targets = controlTargets('[::1]:7443', ['nats://127.0.0.1:4222', 'tls://localhost:4223', 'nats://127.0.0.1', '127.0.0.1:4222', 'not a url ::']);
  t.deepEqual(targets.slice(0, 4), [
    { host: '::1', port: 7443 },
    { host: '127.0.0.1', port: 4222 },
    { host: 'localhost', port: 4223 },
    { host: '127.0.0.1', port: 4222 },
  ]);
  const endpoints = await resolveControlEndpoints(targets);
  t.deepEqual(endpoints.find((e) => e.port === 7443), { family: 6, proto: 'tcp', addr: '::1', port: 7443 });
  t.is(endpoints.filter((e) => e.addr === '127.0.0.1' && e.port === 4222).length, 1);
  t.true(endpoints.some((e) => e.port === 4223), 'localhost resolved');
  t.deepEqual(controlTargets('no-port', []), []);
  await t.throwsAsync(resolveControlEndpoints([{ host: 'does-not-exist.invalid', port: 1 }]));
});

test('agent config - --xdp-mode takes native, generic, auto or tc (default auto); anything else names all four', (t) => {
  t.is(parse().xdpMode, 'auto');
  for (const mode of ['native', 'generic', 'auto', 'tc'] as const) t.is(parse('--xdp-mode', mode).xdpMode, mode);
  const e = t.throws(() => parse('--xdp-mode', 'offload'), { instanceOf: AgentConfigError });
  t.is(e!.message, '--xdp-mode "offload": expected native, generic, auto or tc');
});

test('agent config - --controller (and EDGEPLANE_CONTROLLER) take the controller replicas in order; the control bypass lets each through', (t) => {
  t.deepEqual(parse('--controller', 'ctl-1:7443, ctl-2:7443,[::1]:7443').controllers, ['ctl-1:7443', 'ctl-2:7443', '[::1]:7443']);
  t.deepEqual((parseAgentConfig(base, { EDGEPLANE_CONTROLLER: 'a:1,b:2' }) as AgentConfig).controllers, ['a:1', 'b:2']);
  t.deepEqual(parse().controllers, ['127.0.0.1:7443']);
  t.throws(() => parse('--controller', ' , '), { instanceOf: AgentConfigError, message: /HOST:PORT, or several separated by commas/ });
  t.deepEqual(controlTargets(['ctl-1:7443', '[::1]:7444'], []), [{ host: 'ctl-1', port: 7443 }, { host: '::1', port: 7444 }]);
});
