// Run under `ip netns exec NS` by conntrack-access.ts: attaches the pinned uplink programs to an
// interface's tcx hooks (edge_tc at ingress, edge_tc_egress at egress, first in each chain, as the
// agent's tcx attach puts them), takes every program off those hooks, or prints the chains as one
// JSON line. ip and tc (iproute2 6.1) cannot attach at tcx, and bpftool 7.1 does not show it.
import { join } from 'node:path';
import { attachTcx, clearTcx, ifindex, Program, queryTcx } from 'libbpf-ts';

const [command, pinRoot, dev] = process.argv.slice(2) as ['attach' | 'detach' | 'query', string, string];
const index = ifindex(dev);
if (command === 'attach') {
  for (const [name, direction] of [['edge_tc_egress', 'egress'], ['edge_tc', 'ingress']] as const) {
    const program = Program.openPinned(join(pinRoot, name));
    try {
      attachTcx(program, index, direction);
    } finally {
      program.close();
    }
  }
} else if (command === 'detach') {
  for (const direction of ['ingress', 'egress'] as const) clearTcx(index, direction);
} else process.stdout.write(`${JSON.stringify({ ingress: queryTcx(index, 'ingress'), egress: queryTcx(index, 'egress') })}\n`);
