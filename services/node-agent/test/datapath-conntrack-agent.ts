// Run under `ip netns exec <ns>` by datapath-conntrack.test.ts: plays the agent process that holds
// the datapath. Adopts the pinned datapath, attaches it to an uplink, applies a rule set, prints
// "ready <epoch>" and then idles until it is killed (the test sends SIGKILL).
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';

const [pinRoot, iface, ruleSetJson] = process.argv.slice(2) as [string, string, string];
const datapath = await EbpfDatapath.open({ pinRoot });
datapath.attach(iface, 'uplink', { xdpMode: 'auto' });
const result = await datapath.apply(JSON.parse(ruleSetJson) as RuleSetSpec);
process.stdout.write(`ready ${datapath.epoch} ${result.mode}\n`);
setInterval(() => {}, 60_000);
