// Our programs at an interface's TC hooks (ingress, egress). On a kernel with tcx (6.6+) they sit
// in the tcx chain, first; elsewhere they are cls_bpf filters on the clsact qdisc at our fixed
// handle and priority. tcx runs before every clsact filter and costs no qdisc walk or filter
// lookup (BENCHMARKS.md, "tcx"); a program's verdict other than TC_ACT_UNSPEC ends the hook in
// both ways, so ours decides first either way.
//
// Moving between the two is make-before-break: the program is put in its new place first and then
// taken from the old one. A program in the tcx chain runs before the filter, and its verdict is
// final, so from the moment it is there the filter no longer sees a packet (bpf/README.md,
// "tcx"). The first cls_bpf attach on an interface creates the clsact qdisc, which drops what the
// device sends for a moment (bpf/README.md); nothing here deletes the qdisc.
import {
  attachTc,
  attachTcx,
  detachTc,
  detachTcxId,
  NotFoundError,
  Program,
  queryTc,
  queryTcx,
  tcxSupported,
  type TcDirection,
  type TcFilterId,
} from 'libbpf-ts';

/** How a TC program is attached: in the tcx chain, or as a cls_bpf filter on clsact. */
export type TcAttachKind = 'tcx' | 'cls_bpf';

/** Our cls_bpf filters' handle and priority: fixed, so a restarted agent finds and replaces its own. */
const TC_HANDLE = 0xe9;
const TC_PRIORITY = 1;

/** Our cls_bpf filter at `direction`. */
export function tcFilter(direction: TcDirection): TcFilterId {
  return { direction, handle: TC_HANDLE, priority: TC_PRIORITY };
}

/** 'tcx' where the kernel has it, else 'cls_bpf'. */
export function defaultTcAttachKind(): TcAttachKind {
  return tcxSupported() ? 'tcx' : 'cls_bpf';
}

/**
 * The programs at `direction` of `ifindex` that could be ours, in the order they run: the tcx
 * chain (on a kernel with tcx), then the cls_bpf filter at our handle.
 */
export function tcHookPrograms(ifindex: number, direction: TcDirection): number[] {
  const ids = tcxSupported() ? queryTcx(ifindex, direction) : [];
  const filter = queryTc(ifindex, tcFilter(direction));
  return filter === undefined ? ids : [...ids, filter];
}

/**
 * Whether `programId` is at `direction` of `ifindex` as `kind` puts it (tcx: in the chain; cls_bpf:
 * the filter at our handle).
 */
export function tcHookHolds(ifindex: number, direction: TcDirection, programId: number, kind: TcAttachKind): boolean {
  if (kind === 'tcx') return tcxSupported() && queryTcx(ifindex, direction).includes(programId);
  return queryTc(ifindex, tcFilter(direction)) === programId;
}

/**
 * Puts `program` at `direction` of `ifindex` as `kind` says, atomically in place of an earlier
 * program of ours with the same name (an older object's, or this one's from another agent run):
 * in the tcx chain in its place (or first), or as the filter at our handle (replacing whatever is
 * there). Then takes the same-named program from the other kind's place, if one is there.
 * @throws LibbpfError.
 */
export function attachTcHook(program: Program, ifindex: number, direction: TcDirection, kind: TcAttachKind): void {
  if (kind === 'cls_bpf') {
    attachTc(program, ifindex, { ...tcFilter(direction), replace: true });
    if (tcxSupported()) for (const id of queryTcx(ifindex, direction)) if (id === program.id || sameName(id, program)) detachTcxId(id, ifindex, direction);
    return;
  }
  const chain = queryTcx(ifindex, direction);
  if (!chain.includes(program.id)) {
    const earlier = chain.find((id) => sameName(id, program));
    if (earlier === undefined) attachTcx(program, ifindex, direction);
    else {
      const replaced = Program.fromId(earlier);
      try {
        attachTcx(program, ifindex, direction, { replace: replaced });
      } finally {
        replaced.close();
      }
    }
  }
  // The filter an earlier agent (or this one, before tcx) put at our handle no longer runs.
  const filter = queryTc(ifindex, tcFilter(direction));
  if (filter !== undefined && (filter === program.id || sameName(filter, program))) detachFilter(ifindex, direction);
}

/**
 * Takes a program of ours from `direction` of `ifindex`, from the tcx chain and from the filter at
 * our handle, wherever it is: `which` by id, or a Program (it, or a program of its name: an
 * earlier object's). Other programs stay.
 * @returns false if there was none.
 * @throws LibbpfError.
 */
export function detachTcHook(ifindex: number, direction: TcDirection, which: Program | number): boolean {
  const matches = (id: number): boolean => (typeof which === 'number' ? id === which : id === which.id || sameName(id, which));
  let removed = false;
  if (tcxSupported()) for (const id of queryTcx(ifindex, direction)) if (matches(id)) removed = detachTcxId(id, ifindex, direction) || removed;
  const filter = queryTc(ifindex, tcFilter(direction));
  if (filter !== undefined && matches(filter)) removed = detachFilter(ifindex, direction) || removed;
  return removed;
}

function detachFilter(ifindex: number, direction: TcDirection): boolean {
  try {
    detachTc(ifindex, tcFilter(direction));
    return true;
  } catch (error) {
    if (error instanceof NotFoundError) return false;
    throw error;
  }
}

/** Whether program `id` has `program`'s name as the kernel keeps it (BPF_OBJ_NAME_LEN - 1 bytes); false if it is gone. */
function sameName(id: number, program: Program): boolean {
  let other: Program;
  try {
    other = Program.fromId(id);
  } catch {
    return false;
  }
  try {
    return other.name === program.name.slice(0, 15);
  } finally {
    other.close();
  }
}
