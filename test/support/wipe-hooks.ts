// Run under `ip netns exec NS`: removes every program from the named interfaces' hooks, as a
// reboot would: XDP, the tcx chains and the clsact qdisc (with its filters).
import { clearTcx, destroyTcHook, detachXdp, ifindex, queryXdp } from 'libbpf-ts';

for (const name of process.argv.slice(2)) {
  const index = ifindex(name);
  if (queryXdp(index) !== undefined) detachXdp(index);
  for (const direction of ['ingress', 'egress'] as const) clearTcx(index, direction);
  destroyTcHook(index);
}
