// Run by datapath-upgrade.test.ts under `ip netns exec <node namespace>`, in two source trees:
// this one, and a copy of the previous version (the file is copied there, so its relative import
// is that version's EbpfDatapath). It uses only what both versions have: open, apply, attach,
// the program getters, close; the upgrade's report and the install step hook exist only here.
//
// argv[2] is a JSON command:
//   { op: 'open', roles: [{ pinRoot, objectPath?, apply?: RuleSetSpec[], attach?: [{ iface, role }], list? }], crashAt? }
//     opens each pin root, applies each rule set in turn, attaches; list (a ConnectionFilter)
//     reports up to 1,000 connections it matches; crashAt (an install step) kills this process
//     with SIGKILL right after that step, as a crash would.
//   { op: 'reset', pinRoot }
// It prints one JSON line: per role what open() did, what apply() returned, and the ids of
// everything pinned afterwards.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, Program } from 'libbpf-ts';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';

interface RoleCommand {
  pinRoot: string;
  objectPath?: string;
  apply?: RuleSetSpec[];
  attach?: { iface: string; role: 'uplink' | 'workload' }[];
  list?: Record<string, unknown>;
}
type Command = { op: 'open'; roles: RoleCommand[]; crashAt?: string } | { op: 'reset'; pinRoot: string };

const programNames = new Set(['edge_xdp', 'edge_tc', 'edge_tc_egress', 'ep_ct_sweep']);

/** The kernel id of everything pinned under `pinRoot`, by pin name. */
function pinnedIds(pinRoot: string): Record<string, number> {
  const ids: Record<string, number> = {};
  for (const name of readdirSync(pinRoot).sort()) {
    const object = programNames.has(name.replace(/-(prev|next)$/, '')) ? Program.openPinned(join(pinRoot, name)) : BpfMap.openPinned(join(pinRoot, name));
    ids[name] = object.id;
    object.close();
  }
  return ids;
}

const command = JSON.parse(process.argv[2] as string) as Command;
if (command.op === 'reset') {
  const reset = EbpfDatapath.reset(command.pinRoot);
  process.stdout.write(JSON.stringify({ reset }) + '\n');
} else {
  const out = [];
  for (const role of command.roles) {
    const started = process.hrtime.bigint();
    const datapath = await EbpfDatapath.open({
      pinRoot: role.pinRoot,
      ...(role.objectPath === undefined ? {} : { objectPath: role.objectPath }),
      onInstallStep: (step: string) => {
        if (step === command.crashAt) process.kill(process.pid, 'SIGKILL');
      },
    });
    const openMs = Number(process.hrtime.bigint() - started) / 1e6;
    try {
      const applied = [];
      for (const ruleSet of role.apply ?? []) applied.push(await datapath.apply(ruleSet));
      for (const { iface, role: interfaceRole } of role.attach ?? []) datapath.attach(iface, interfaceRole, { xdpMode: 'auto' });
      // The previous version has no connection table: report one only where there is.
      const conntrack = 'readConntrackOccupancy' in datapath ? { ...datapath.readConntrackOccupancy(), counters: datapath.readCounters().conntrack } : undefined;
      const connections = role.list === undefined ? undefined : datapath.listConnections(role.list, 1000);
      out.push({ pinRoot: role.pinRoot, adopted: datapath.adopted, install: datapath.install, openMs, applied, conntrack, connections, xdpProgramId: datapath.xdpProgram.id, tcProgramId: datapath.tcProgram.id, pinned: pinnedIds(role.pinRoot) });
    } finally {
      datapath.close();
    }
  }
  process.stdout.write(JSON.stringify({ roles: out }) + '\n');
}
