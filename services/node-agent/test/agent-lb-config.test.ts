// The agent's load-balancing capacity flags (--lb-services, --lb-slots, --lb-backends): defaults
// from DEFAULT_LB_CAPACITY, bounds with clear errors, and the help text that lists them.
import test from 'ava';
import { AGENT_HELP, AgentConfigError, LB_CAPACITY_BOUNDS, parseAgentConfig, type AgentConfig } from '../src/agent/config.js';
import { DEFAULT_LB_CAPACITY } from '../src/datapath/lb-tables.js';

const KEY = Buffer.alloc(32, 7).toString('base64');
const base = ['--trusted-key', KEY, '--insecure'];
const parse = (args: string[], env: NodeJS.ProcessEnv = {}): AgentConfig => parseAgentConfig([...base, ...args], env) as AgentConfig;

test('agent config - the load-balancing capacity defaults to DEFAULT_LB_CAPACITY; flags over environment', (t) => {
  t.deepEqual(parse([]).lbCapacity, DEFAULT_LB_CAPACITY);
  t.deepEqual(parse(['--lb-services', '100', '--lb-slots', '65536', '--lb-backends', '2000']).lbCapacity, { services: 100, slots: 65_536, backends: 2000 });
  const env = { EDGEPLANE_LB_SERVICES: '10', EDGEPLANE_LB_SLOTS: '2560', EDGEPLANE_LB_BACKENDS: '50' };
  t.deepEqual(parse([], env).lbCapacity, { services: 10, slots: 2560, backends: 50 });
  t.is(parse(['--lb-services', '20'], env).lbCapacity.services, 20, 'the flag wins');
  t.deepEqual(parse(['--lb-slots', String(LB_CAPACITY_BOUNDS.slots.min)]).lbCapacity.slots, 256, 'one smallest table');
});

test('agent config - --lb-* out of bounds, not whole numbers, or slots that are not whole blocks: a clear error naming the flag', (t) => {
  const cases: [string[], RegExp][] = [
    [['--lb-services', '0'], /^--lb-services: 0 is outside 1 \.\. 10000$/],
    [['--lb-services', '10001'], /^--lb-services: 10001 is outside 1 \.\. 10000$/],
    [['--lb-slots', '224'], /^--lb-slots: 224 is outside 256 \.\. 67108864$/],
    [['--lb-slots', String(2 ** 27)], /^--lb-slots: 134217728 is outside/],
    [['--lb-slots', '1000'], /^--lb-slots: 1000 is not a multiple of 32 \(tables are laid out in blocks of 32 slots\)$/],
    [['--lb-backends', '0'], /^--lb-backends: 0 is outside 1 \.\. 4194304$/],
    [['--lb-backends=-5'], /^--lb-backends: "-5" is not a whole number$/],
    [['--lb-services', '1.5'], /^--lb-services: "1.5" is not a whole number$/],
    [['--lb-slots', '1e9x'], /^--lb-slots: "1e9x" is not a whole number$/],
  ];
  for (const [args, message] of cases) t.throws(() => parse(args), { instanceOf: AgentConfigError, message }, args.join(' '));
  t.throws(() => parse([], { EDGEPLANE_LB_SLOTS: '300' }), { instanceOf: AgentConfigError, message: /^--lb-slots: 300 is not a multiple of 32/ });
});

test('agent config - --help lists the --lb-* flags with their defaults and environment variables', (t) => {
  for (const flag of ['--lb-services', '--lb-slots', '--lb-backends']) t.true(AGENT_HELP.includes(flag), flag);
  for (const env of ['EDGEPLANE_LB_SERVICES', 'EDGEPLANE_LB_SLOTS', 'EDGEPLANE_LB_BACKENDS']) t.true(AGENT_HELP.includes(env), env);
  t.true(AGENT_HELP.includes(`default ${DEFAULT_LB_CAPACITY.slots}`));
});

test('agent config - --tc-attach: auto by default, tcx or cls_bpf by flag or environment, anything else a clear error', (t) => {
  t.is(parse([]).tcAttach, 'auto');
  t.is(parse(['--tc-attach', 'cls_bpf']).tcAttach, 'cls_bpf');
  t.is(parse([], { EDGEPLANE_TC_ATTACH: 'tcx' }).tcAttach, 'tcx');
  t.is(parse(['--tc-attach', 'cls_bpf'], { EDGEPLANE_TC_ATTACH: 'tcx' }).tcAttach, 'cls_bpf', 'the flag wins');
  t.throws(() => parse(['--tc-attach', 'clsact']), { instanceOf: AgentConfigError, message: '--tc-attach "clsact": expected auto, tcx or cls_bpf' });
  t.true(AGENT_HELP.includes('--tc-attach auto|tcx|cls_bpf') && AGENT_HELP.includes('EDGEPLANE_TC_ATTACH'));
});
