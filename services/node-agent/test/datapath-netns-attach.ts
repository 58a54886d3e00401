// Run under `ip netns exec <ns>` by datapath-traffic.test.ts and datapath-tc-mode.test.ts: adopts
// the pinned datapath and attaches (or detaches) it to an interface of that namespace, or prints
// whether it is attached in each uplink mode, or ('foreign') puts a program not its edge_tc (its
// edge_tc_egress) at TC ingress where another owner's program would sit: first in the tcx chain
// and at our clsact handle. Attachments are per namespace, while the programs and maps are
// global, so the test process keeps applying and counting.
import { attachTc, attachTcx, ifindex as interfaceIndex } from 'libbpf-ts';
import { EbpfDatapath, type UplinkMode } from '../src/datapath/ebpf-datapath.js';
import type { TcAttachKind } from '../src/datapath/tc-hooks.js';

const [command, pinRoot, iface, role, mode = 'auto', tcAttach] = process.argv.slice(2) as ['attach' | 'detach' | 'query' | 'foreign', string, string, 'uplink' | 'workload', UplinkMode?, TcAttachKind?];
const datapath = await EbpfDatapath.open({ pinRoot, ...(tcAttach ? { tcAttach } : {}) });
try {
  if (command === 'attach') datapath.attach(iface, role, { xdpMode: mode });
  else if (command === 'detach') process.stdout.write(`${JSON.stringify({ removed: datapath.detach(iface, role) })}\n`);
  else if (command === 'foreign') {
    attachTcx(datapath.tcEgressProgram, interfaceIndex(iface), 'ingress');
    attachTc(datapath.tcEgressProgram, interfaceIndex(iface), { direction: 'ingress', handle: 0xe9, priority: 1, replace: true });
  }
  else process.stdout.write(`${JSON.stringify({ tc: datapath.isAttached(iface, role, { xdpMode: 'tc' }), xdp: datapath.isAttached(iface, role, { xdpMode: 'auto' }) })}\n`);
} finally {
  datapath.close();
}
