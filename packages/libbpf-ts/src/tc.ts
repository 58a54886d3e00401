// TC (clsact) attach, detach and query through netlink (bpf_tc_*): cls_bpf filters in
// direct-action mode. libbpf 1.1.2 predates tcx links, so these are classic filters, identified
// by (ifindex, direction, handle, priority). They persist beyond this process.
import { check } from './check.js';
import { errnoError } from './errors.js';
import * as native from './native.js';
import type { Program } from './program.js';

const ENOENT = 2;
const EEXIST = 17;
const EINVAL = 22;
// enum bpf_tc_attach_point, enum bpf_tc_flags (libbpf.h).
const BPF_TC_INGRESS = 1 << 0;
const BPF_TC_EGRESS = 1 << 1;
const BPF_TC_F_REPLACE = 1 << 0;

/** The clsact hook a filter sits on. */
export type TcDirection = 'ingress' | 'egress';

const attachPoints: Record<TcDirection, number> = { ingress: BPF_TC_INGRESS, egress: BPF_TC_EGRESS };

/** Identifies one TC filter. */
export interface TcFilterId {
  direction: TcDirection;
  /** Filter handle, 1..2^32-1. */
  handle: number;
  /** Filter priority, 1..65535. */
  priority: number;
}

/** Options of attachTc(). */
export interface TcAttachOptions {
  direction: TcDirection;
  /** Default 1. Fixed defaults let a restarted agent find and replace its own filter. */
  priority?: number;
  /** Default 1. */
  handle?: number;
  /** Replace the filter at (handle, priority) atomically; without it an existing one is EEXIST. */
  replace?: boolean;
}

/** A TC attachment as made. */
export interface TcAttachment extends TcFilterId {
  readonly ifindex: number;
  readonly progId: number;
}

/**
 * Attaches `program` (type sched_cls) as a direct-action filter on the clsact `direction` hook
 * of `ifindex`, creating the clsact qdisc if it is missing. Persists beyond this process.
 * @returns the filter's handle, priority and program id.
 * @throws LibbpfError EEXIST when a filter exists at (handle, priority) and replace is not set;
 * EINVAL for a program of the wrong type.
 */
export function attachTc(program: Program, ifindex: number, options: TcAttachOptions): TcAttachment {
  const point = attachPoints[options.direction];
  const handle = options.handle ?? 1;
  const priority = options.priority ?? 1;
  const operation = `attach tc ifindex=${ifindex} direction=${options.direction} program=${program.name} handle=${handle} priority=${priority}`;
  native.clearMessages();
  const created = native.createTcHook(ifindex, point);
  if (created < 0 && created !== -EEXIST) throw errnoError(`${operation} create clsact`, created, { details: native.takeMessages() });
  native.clearMessages();
  const result = native.attachTc(ifindex, point, { prog_fd: program.fd, flags: options.replace === true ? BPF_TC_F_REPLACE : 0, prog_id: 0, handle, priority });
  if (typeof result === 'number') throw errnoError(operation, result, { details: native.takeMessages() });
  return { ifindex, direction: options.direction, handle: result.handle, priority: result.priority, progId: result.prog_id };
}

/**
 * Removes the filter `filter` from `ifindex`.
 * @throws NotFoundError if there is no such filter.
 */
export function detachTc(ifindex: number, filter: TcFilterId): void {
  check(`detach tc ifindex=${ifindex} direction=${filter.direction} handle=${filter.handle} priority=${filter.priority}`, () =>
    native.detachTc(ifindex, attachPoints[filter.direction], filter.handle, filter.priority),
  );
}

/**
 * @returns the id of the program in filter `filter` on `ifindex`, or undefined if there is none
 * (or no clsact qdisc).
 */
export function queryTc(ifindex: number, filter: TcFilterId): number | undefined {
  native.clearMessages();
  const result = native.queryTc(ifindex, attachPoints[filter.direction], filter.handle, filter.priority);
  // ENOENT: no such filter; EINVAL: the kernel's answer when the clsact qdisc itself is missing.
  if (result === -ENOENT || result === -EINVAL) return undefined;
  if (typeof result === 'number') throw errnoError(`query tc ifindex=${ifindex} direction=${filter.direction}`, result, { details: native.takeMessages() });
  return result.prog_id;
}

/**
 * Deletes the clsact qdisc of `ifindex` and with it every filter on both hooks.
 * @returns false if there was none.
 */
export function destroyTcHook(ifindex: number): boolean {
  native.clearMessages();
  const ret = native.destroyTcHook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS);
  if (ret === -ENOENT || ret === -EINVAL) return false;
  if (ret < 0) throw errnoError(`destroy tc hook ifindex=${ifindex}`, ret, { details: native.takeMessages() });
  return true;
}

