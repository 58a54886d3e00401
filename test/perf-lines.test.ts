// bench/perf-lines.ts and bench/bpf-line-table.c against the real datapath's programs: the line
// tables name the programs' JITed addresses (checked against /proc/kallsyms) and their source, and
// a perf sample at a line's address is counted on that line.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { EbpfDatapath } from '@edgeplane/node-agent';
import { LINE_TABLE_FILE, lineShares, parseLineTables, writeLineTables } from '../bench/perf-lines.js';
import { mountBpffs } from '../services/node-agent/test/datapath-helpers.js';

test('the line tables place JITed addresses of the datapath programs on their source lines', async (t) => {
  const bpffs = mountBpffs();
  const dir = mkdtempSync(join(tmpdir(), 'edgeplane-perf-lines-'));
  const datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  try {
    const egress = datapath.tcEgressProgram.id;
    writeLineTables(dir, dir, [datapath.tcProgram.id, egress]);
    const text = readFileSync(join(dir, LINE_TABLE_FILE), 'utf8');
    const prog = new RegExp(`^PROG ${egress} edge_tc_egress ([0-9a-f]+)$`, 'm').exec(text);
    t.truthy(prog, 'the egress program named with its address');
    const starts = parseLineTables(text);
    // The programs' code spans inline headers: lines of the connection table's source are there.
    t.true(starts.some((s) => s.where.startsWith('ep_conntrack.h:')));

    // The program's first line starts at its kernel symbol, which /proc/kallsyms names (other
    // tests may load the same programs meanwhile: this one is found by its address).
    const address = prog![1]!;
    const symbol = new RegExp(`^0*${address} t (bpf_prog_[0-9a-f]+_edge_tc_egress)\\b`, 'm').exec(readFileSync('/proc/kallsyms', 'utf8'));
    t.truthy(symbol, 'edge_tc_egress at its address in /proc/kallsyms');
    const entry = starts.find((s) => s.address === BigInt(`0x${address}`));
    t.truthy(entry, 'a line starts at the program symbol');
    t.regex(entry!.where, /^edgeplane\.bpf\.c:\d+ /);

    // Three samples: one in the program's own code two bytes into that line, one in a kernel
    // function the program called, one with no program in its chain (not counted).
    const sym = symbol![1]!;
    const at = (entry!.address + 2n).toString(16);
    const perf = [
      `250000\n\t${at} ${sym}\n\tffffffff81000000 tcx_run\n`,
      `250000\n\tffffffff81000010 lookup_nulls_elem_raw\n\t${at} ${sym}\n`,
      `250000\n\tffffffff81000020 tcp_v4_connect\n\tffffffff81000030 __sys_connect\n`,
    ].join('\n');
    const shares = lineShares([perf], starts);
    t.is(shares.underPrograms, 2);
    t.deepEqual([...shares.leaves].sort(), [
      ['edge_tc_egress', 1],
      ['lookup_nulls_elem_raw', 1],
    ]);
    t.deepEqual([...shares.lines], [[`${'edge_tc_egress'.padEnd(16)} ${entry!.where}`, 1]]);

    // An id that is no program: the helper fails, and so does the call.
    t.throws(() => writeLineTables(dir, dir, [0x7ffffff0]));
  } finally {
    datapath.close();
    bpffs.unmount();
    rmSync(dir, { recursive: true, force: true });
  }
});
