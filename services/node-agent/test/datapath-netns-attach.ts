// Run under `ip netns exec <ns>` by datapath-traffic.test.ts: adopts the pinned datapath and
// attaches (or detaches) it to an interface of that namespace. Attachments are per namespace,
// while the programs and maps are global, so the test process keeps applying and counting.
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';

const [command, pinRoot, iface, role] = process.argv.slice(2) as ['attach' | 'detach', string, string, 'uplink' | 'workload'];
const datapath = await EbpfDatapath.open({ pinRoot });
try {
  if (command === 'attach') datapath.attach(iface, role, { xdpMode: 'auto' });
  else datapath.detach(iface, role);
} finally {
  datapath.close();
}
