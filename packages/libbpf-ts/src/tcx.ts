// tcx (kernel 6.6+): the TC hooks' multi-program attach points, through BPF_PROG_ATTACH (no link,
// so the attachment belongs to the interface and persists beyond this process, as cls_bpf filters
// and XDP programs do). Programs run in order, before any clsact filter; a verdict other than
// TCX_NEXT (-1, TC_ACT_UNSPEC) ends the hook, so the legacy filters behind it do not run. No
// qdisc, no filter handle: a program is identified by itself. libbpf 1.1.2 predates tcx, so the
// attach types and flags are the kernel's numbers (include/uapi/linux/bpf.h, 6.6).
import { errnoError } from './errors.js';
import * as native from './native.js';
import { Program } from './program.js';
import type { TcDirection } from './tc.js';

// enum bpf_attach_type.
const BPF_TCX_INGRESS = 46;
const BPF_TCX_EGRESS = 47;
// BPF_F_* attach flags.
const BPF_F_REPLACE = 1 << 2;
const BPF_F_BEFORE = 1 << 3;
const EINVAL = 22;
const ENOENT = 2;
/** The kernel allows 64 programs per tcx hook (bpf_mprog_max()). */
const TCX_MAX_PROGRAMS = 64;

const attachTypes: Record<TcDirection, number> = { ingress: BPF_TCX_INGRESS, egress: BPF_TCX_EGRESS };

/** Options of attachTcx(). */
export interface TcxAttachOptions {
  /**
   * A program attached at the hook now: it is swapped for the new one in its place, atomically
   * (BPF_F_REPLACE); ENOENT if it is not there. Without it the program goes first.
   */
  replace?: Program;
}

/**
 * Attaches `program` (type sched_cls) at the tcx `direction` hook of `ifindex`: first in the
 * chain, or in `replace`'s place. Persists beyond this process.
 * @throws LibbpfError EEXIST when the program is attached there already; ENOENT when `replace`
 * is not; EINVAL on a kernel without tcx (before 6.6) or for a program of the wrong type.
 */
export function attachTcx(program: Program, ifindex: number, direction: TcDirection, options: TcxAttachOptions = {}): void {
  const flags = options.replace ? BPF_F_REPLACE : BPF_F_BEFORE;
  const ret = native.progAttach(program.fd, ifindex, attachTypes[direction], flags, options.replace?.fd ?? 0);
  if (ret < 0) throw errnoError(`attach tcx ifindex=${ifindex} direction=${direction} program=${program.name}${options.replace ? ` replace=${options.replace.id}` : ''}`, ret);
}

/**
 * Removes `program` from the tcx `direction` hook of `ifindex`.
 * @returns false if it was not attached there.
 */
export function detachTcx(program: Program, ifindex: number, direction: TcDirection): boolean {
  const ret = native.progDetach(program.fd, ifindex, attachTypes[direction]);
  if (ret === -ENOENT) return false;
  if (ret < 0) throw errnoError(`detach tcx ifindex=${ifindex} direction=${direction} program=${program.name}`, ret);
  return true;
}

/**
 * Removes the program with id `programId` from the tcx `direction` hook of `ifindex`.
 * @returns false if it was not attached there (or is gone).
 */
export function detachTcxId(programId: number, ifindex: number, direction: TcDirection): boolean {
  let program: Program;
  try {
    program = Program.fromId(programId);
  } catch {
    return false;
  }
  try {
    return detachTcx(program, ifindex, direction);
  } finally {
    program.close();
  }
}

/**
 * Removes every program from the tcx `direction` hook of `ifindex` (what a reboot does).
 * @returns how many were removed.
 */
export function clearTcx(ifindex: number, direction: TcDirection): number {
  let removed = 0;
  for (const id of queryTcx(ifindex, direction)) if (detachTcxId(id, ifindex, direction)) removed++;
  return removed;
}

/**
 * @returns the ids of the programs at the tcx `direction` hook of `ifindex`, in the order they run
 * (empty when none).
 * @throws LibbpfError EINVAL on a kernel without tcx; ENODEV for an unknown interface.
 */
export function queryTcx(ifindex: number, direction: TcDirection): number[] {
  const ret = native.progQuery(ifindex, attachTypes[direction], TCX_MAX_PROGRAMS);
  if (typeof ret === 'number') throw errnoError(`query tcx ifindex=${ifindex} direction=${direction}`, ret);
  return ret;
}

let supported: boolean | undefined;

/** Whether this kernel has tcx (a query of the loopback's ingress hook is not EINVAL); asked once. */
export function tcxSupported(): boolean {
  if (supported === undefined) {
    const ret = native.progQuery(1, BPF_TCX_INGRESS, 1);
    supported = ret !== -EINVAL;
  }
  return supported;
}
