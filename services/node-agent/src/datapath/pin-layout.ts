// The layout version of a pin directory: which agent's tables and programs it holds. An agent
// adopts a pin directory of its own version as it is, upgrades an older one in place
// (datapath-install.ts) and refuses a newer one. bpf/README.md, "Upgrades and the pinned
// layout", gives the whole procedure and why each step is crash-safe.
import { existsSync, renameSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, encode, u32 } from 'libbpf-ts';
import { DatapathError } from './errors.js';

/**
 * The layout this agent writes: EP_LAYOUT_VERSION of bpf/include/ep_tables.h (the layout test
 * checks that they agree). Version 1 is the object before connection tracking: it wrote no
 * marker, so a pin directory with pinned programs and no marker is version 1.
 */
export const LAYOUT_VERSION = 6;

/**
 * The marker: a pinned ARRAY map of one u32, the layout version. A map rather than a file,
 * because a bpffs holds only pins and directories, and the marker must live and die with the
 * pins it describes (a file in the state directory would outlive a reboot that empties /run).
 * It is pinned last, by an atomic rename, so it never describes pins that are not all there.
 */
export const LAYOUT_MARKER = 'ep_layout';

/**
 * Beside the marker: which object's programs the pins hold, so that an agent of the same layout
 * version with other programs (a fix in BPF code, no map changed) loads its own instead of
 * adopting the pinned ones. A pinned ARRAY[1] of { u32 marker map id; u8 sha256[32] of the
 * object file }. It is pinned just before the marker and names the marker's kernel map id, so
 * it describes only the marker written with it: a marker written without one (an older agent,
 * or a crash between the two renames) leaves it naming a map id that is not the marker's, and
 * the programs count as unknown. bpffs has no atomic rename of two pins; the binding stands in.
 */
export const PROGRAMS_MARKER = 'ep_layout_progs';
const PROGRAMS_VALUE_SIZE = 4 + 32;

/** Where a pin is staged before it is renamed into place (bpffs refuses '.' in names). */
export const NEXT_SUFFIX = '-next';
/** Where the previous programs stay pinned during an upgrade, until every hook is switched. */
export const PREVIOUS_SUFFIX = '-prev';

/**
 * The layout version of the datapath pinned under `pinRoot`.
 * @returns the marker's version; 1 when programs are pinned without a marker (the object before
 * connection tracking, or an upgrade that stopped before its last step); undefined when no
 * program is pinned there (nothing enforces from this directory).
 * @throws DatapathError if the marker is not a marker (another shape, or version 0).
 */
export function readLayoutVersion(pinRoot: string, programName = 'edge_xdp'): number | undefined {
  const path = join(pinRoot, LAYOUT_MARKER);
  if (!existsSync(path)) {
    const programPinned = existsSync(join(pinRoot, programName)) || existsSync(join(pinRoot, programName + PREVIOUS_SUFFIX));
    return programPinned ? 1 : undefined;
  }
  let marker: BpfMap | undefined;
  try {
    marker = BpfMap.openPinned(path);
    if (marker.type !== 'array' || marker.keySize !== 4 || marker.valueSize !== 4 || marker.maxEntries !== 1) {
      throw new DatapathError(`read layout marker path=${path}: a ${marker.type} map of key ${marker.keySize}, value ${marker.valueSize}, ${marker.maxEntries} entries is not a layout marker (array of one u32)`);
    }
    const version = u32.decode(marker.get(encode(u32, 0)) ?? new Uint8Array(4));
    if (version === 0) throw new DatapathError(`read layout marker path=${path}: version 0 is not a layout version`);
    return version;
  } catch (cause) {
    if (cause instanceof DatapathError) throw cause;
    throw new DatapathError(`read layout marker path=${path}`, { cause });
  } finally {
    marker?.close();
  }
}

/**
 * The identity of the programs pinned under `pinRoot` (PROGRAMS_MARKER), as written with the
 * marker there now.
 * @returns the sha256 of the object they were loaded from; undefined when unknown: no marker,
 * none written beside it, or one written beside another marker (an older agent wrote this one).
 * @throws DatapathError if a pin is there but is not of the marker's shape.
 */
export function readProgramsIdentity(pinRoot: string): Uint8Array | undefined {
  const path = join(pinRoot, PROGRAMS_MARKER);
  if (!existsSync(path) || !existsSync(join(pinRoot, LAYOUT_MARKER))) return undefined;
  const opened: BpfMap[] = [];
  try {
    const identity = BpfMap.openPinned(path);
    opened.push(identity);
    if (identity.type !== 'array' || identity.keySize !== 4 || identity.valueSize !== PROGRAMS_VALUE_SIZE || identity.maxEntries !== 1) {
      throw new DatapathError(`read programs marker path=${path}: a ${identity.type} map of key ${identity.keySize}, value ${identity.valueSize}, ${identity.maxEntries} entries is not a programs marker (array of one { u32; u8[32] })`);
    }
    const marker = BpfMap.openPinned(join(pinRoot, LAYOUT_MARKER));
    opened.push(marker);
    const value = identity.get(encode(u32, 0));
    if (value === undefined || u32.decode(value.subarray(0, 4)) !== marker.id) return undefined;
    return value.slice(4);
  } catch (cause) {
    if (cause instanceof DatapathError) throw cause;
    throw new DatapathError(`read programs marker path=${path}`, { cause });
  } finally {
    for (const map of opened) map.close();
  }
}

/**
 * Pins a marker holding `version` under `pinRoot`, replacing any marker there in one rename;
 * with `programs` (the sha256 of the object whose programs are pinned), the programs marker
 * naming it is pinned first.
 * @throws DatapathError; the previous marker (if any) then stays.
 */
export function writeLayoutMarker(pinRoot: string, version: number, programs?: Uint8Array): void {
  const created: BpfMap[] = [];
  try {
    const marker = BpfMap.create({ type: 'array', name: LAYOUT_MARKER, keySize: 4, valueSize: 4, maxEntries: 1 });
    created.push(marker);
    marker.set(encode(u32, 0), encode(u32, version));
    if (programs !== undefined) {
      if (programs.length !== PROGRAMS_VALUE_SIZE - 4) throw new DatapathError(`write layout marker pinRoot=${pinRoot}: a programs identity is 32 bytes, got ${programs.length}`);
      const identity = BpfMap.create({ type: 'array', name: PROGRAMS_MARKER, keySize: 4, valueSize: PROGRAMS_VALUE_SIZE, maxEntries: 1 });
      created.push(identity);
      const value = new Uint8Array(PROGRAMS_VALUE_SIZE);
      value.set(encode(u32, marker.id));
      value.set(programs, 4);
      identity.set(encode(u32, 0), value);
      pinReplacing(identity, pinRoot, PROGRAMS_MARKER);
    }
    pinReplacing(marker, pinRoot, LAYOUT_MARKER);
  } catch (cause) {
    if (cause instanceof DatapathError) throw cause;
    throw new DatapathError(`write layout marker pinRoot=${pinRoot} version=${version}`, { cause });
  } finally {
    for (const map of created) map.close();
  }
}

/**
 * Pins `object` (a program or a map) at `pinRoot/name`, replacing whatever is pinned there in
 * one step: pinned at `name-next` first, then renamed over `name` (rename(2) on a bpffs
 * replaces the target atomically, as on any filesystem). A reader of `name` sees the old
 * object or the new one, never nothing.
 * @throws the libbpf-ts or fs error.
 */
export function pinReplacing(object: { pin(path: string): void }, pinRoot: string, name: string): void {
  const staged = join(pinRoot, name + NEXT_SUFFIX);
  if (existsSync(staged)) unlinkSync(staged);
  object.pin(staged);
  renameSync(staged, join(pinRoot, name));
}
