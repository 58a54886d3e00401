// Prints, as one JSON line, the programs at every interface's hooks in this process's network
// namespace (run it with `ip netns exec NS`): per interface name, the XDP program's id and the TC
// hooks' programs in the order they run (the tcx chain, then our clsact filter). bpftool 7.1
// (Debian 12) does not show tcx attachments.
import { interfaces, queryTcx, queryXdp } from 'libbpf-ts';
import { tcHookPrograms } from '../src/datapath/tc-hooks.js';

/** One interface's hooks. */
export interface InterfaceHooks {
  xdp?: number;
  'tc-ingress': number[];
  'tc-egress': number[];
  /** The tcx chains alone (the rest of each TC list is our clsact filter). */
  'tcx-ingress': number[];
  'tcx-egress': number[];
}

const out: Record<string, InterfaceHooks> = {};
for (const { name, index } of interfaces()) {
  const xdp = queryXdp(index)?.progId;
  const hooks: InterfaceHooks = { 'tc-ingress': tcHookPrograms(index, 'ingress'), 'tc-egress': tcHookPrograms(index, 'egress'), 'tcx-ingress': queryTcx(index, 'ingress'), 'tcx-egress': queryTcx(index, 'egress') };
  if (xdp !== undefined) hooks.xdp = xdp;
  if (hooks.xdp !== undefined || hooks['tc-ingress'].length > 0 || hooks['tc-egress'].length > 0) out[name] = hooks;
}
process.stdout.write(`${JSON.stringify(out)}\n`);
