// XDP attach, detach and query through netlink (bpf_xdp_*). Attachments belong to the interface,
// not to this process: they survive closing every fd and the process exiting, which is what a
// fail-static datapath needs. See https://docs.kernel.org/bpf/ and include/uapi/linux/if_link.h.
import { check } from './check.js';
import { errnoError, NotSupportedError } from './errors.js';
import * as native from './native.js';
import type { Program } from './program.js';

// XDP_FLAGS_* (linux/if_link.h).
const XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0;
const XDP_FLAGS_SKB_MODE = 1 << 1;
const XDP_FLAGS_DRV_MODE = 1 << 2;
const XDP_FLAGS_HW_MODE = 1 << 3;
const XDP_FLAGS_REPLACE = 1 << 4;

/** Where an XDP program runs: in the driver, on the generic (skb) path, or on the NIC. */
export type XdpMode = 'native' | 'generic' | 'offload';

const modeFlags: Record<XdpMode, number> = { native: XDP_FLAGS_DRV_MODE, generic: XDP_FLAGS_SKB_MODE, offload: XDP_FLAGS_HW_MODE };
// XDP_ATTACHED_* (linux/if_link.h), as bpf_xdp_query reports attach_mode.
const attachedModes: Record<number, XdpMode | 'multi'> = { 1: 'native', 2: 'generic', 3: 'offload', 4: 'multi' };

/** Options of attachXdp(). */
export interface XdpAttachOptions {
  /** 'auto' tries native, then generic if the driver lacks native XDP. */
  mode: 'native' | 'generic' | 'auto';
  /**
   * The program expected to be attached now (a Program or its fd): it is swapped for the new one
   * atomically (XDP_FLAGS_REPLACE), and the call fails with EEXIST if another one is attached.
   * Without it the call fails with EBUSY if any program is attached (XDP_FLAGS_UPDATE_IF_NOEXIST).
   */
  replace?: Program | number;
}

/** An XDP attachment as made. */
export interface XdpAttachment {
  readonly ifindex: number;
  readonly mode: 'native' | 'generic';
  readonly progId: number;
}

/** What is attached at an interface's XDP hook. */
export interface XdpState {
  /** The attached program's id (for 'multi', the first of native, generic, offload). */
  readonly progId: number;
  readonly mode: XdpMode | 'multi';
  readonly nativeProgId?: number;
  readonly genericProgId?: number;
  readonly offloadProgId?: number;
}

/**
 * Attaches `program` to the XDP hook of interface `ifindex` (in the calling thread's network
 * namespace). The attachment persists beyond this process and beyond closing `program`.
 * @returns the mode used and the program id.
 * @throws LibbpfError EBUSY when a program is attached and `replace` is not given, EEXIST when
 * `replace` is not the attached program (or the other mode is in use); NotSupportedError when the
 * driver lacks the mode; LibbpfError ENODEV for an unknown interface.
 */
export function attachXdp(program: Program, ifindex: number, options: XdpAttachOptions): XdpAttachment {
  const oldFd = options.replace === undefined ? -1 : typeof options.replace === 'number' ? options.replace : options.replace.fd;
  let mode = options.mode;
  if (mode === 'auto' && oldFd >= 0) {
    // Replacing must happen in the mode the current program runs in.
    const current = queryXdp(ifindex)?.mode;
    if (current === 'native' || current === 'generic') mode = current;
  }
  const attach = (m: 'native' | 'generic'): XdpAttachment => {
    const flags = modeFlags[m] | (oldFd >= 0 ? XDP_FLAGS_REPLACE : XDP_FLAGS_UPDATE_IF_NOEXIST);
    check(`attach xdp ifindex=${ifindex} program=${program.name} mode=${m}`, () => native.attachXdp(ifindex, program.fd, flags, oldFd >= 0 ? oldFd : 0));
    return { ifindex, mode: m, progId: program.id };
  };
  if (mode !== 'auto') return attach(mode);
  try {
    return attach('native');
  } catch (error) {
    if (!(error instanceof NotSupportedError)) throw error;
    return attach('generic');
  }
}

/** Options of detachXdp(). */
export interface XdpDetachOptions {
  /** The mode to detach from; default: the mode the attached program runs in. */
  mode?: XdpMode;
  /** Detach only if this program is the attached one (else EEXIST). */
  expected?: Program;
}

/**
 * Detaches the XDP program of interface `ifindex`.
 * @returns false if nothing was attached, true otherwise.
 * @throws LibbpfError EEXIST if `expected` is not the attached program.
 */
export function detachXdp(ifindex: number, options: XdpDetachOptions = {}): boolean {
  let mode = options.mode;
  if (mode === undefined) {
    const current = queryXdp(ifindex);
    if (current === undefined) return false;
    mode = current.mode === 'multi' ? 'native' : current.mode;
  }
  const expectedFd = options.expected?.fd;
  const flags = modeFlags[mode] | (expectedFd === undefined ? 0 : XDP_FLAGS_REPLACE);
  check(`detach xdp ifindex=${ifindex} mode=${mode}`, () => native.detachXdp(ifindex, flags, expectedFd ?? 0));
  return true;
}

/**
 * Reports the XDP program(s) attached to interface `ifindex` (bpf_xdp_query).
 * @returns undefined when none is attached.
 * @throws LibbpfError (ENODEV for an unknown interface).
 */
export function queryXdp(ifindex: number): XdpState | undefined {
  native.clearMessages();
  const result = native.queryXdp(ifindex);
  if (typeof result === 'number') throw errnoError(`query xdp ifindex=${ifindex}`, result, { details: native.takeMessages() });
  const mode = attachedModes[result.attach_mode];
  if (mode === undefined) return undefined;
  const progId = result.prog_id || result.drv_prog_id || result.skb_prog_id || result.hw_prog_id;
  return {
    progId,
    mode,
    ...(result.drv_prog_id ? { nativeProgId: result.drv_prog_id } : {}),
    ...(result.skb_prog_id ? { genericProgId: result.skb_prog_id } : {}),
    ...(result.hw_prog_id ? { offloadProgId: result.hw_prog_id } : {}),
  };
}
