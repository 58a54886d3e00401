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
export const LAYOUT_VERSION = 5;

/**
 * The marker: a pinned ARRAY map of one u32, the layout version. A map rather than a file,
 * because a bpffs holds only pins and directories, and the marker must live and die with the
 * pins it describes (a file in the state directory would outlive a reboot that empties /run).
 * It is pinned last, by an atomic rename, so it never describes pins that are not all there.
 */
export const LAYOUT_MARKER = 'ep_layout';

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
 * Pins a marker holding `version` under `pinRoot`, replacing any marker there in one rename.
 * @throws DatapathError; the previous marker (if any) then stays.
 */
export function writeLayoutMarker(pinRoot: string, version: number): void {
  const marker = BpfMap.create({ type: 'array', name: LAYOUT_MARKER, keySize: 4, valueSize: 4, maxEntries: 1 });
  try {
    marker.set(encode(u32, 0), encode(u32, version));
    pinReplacing(marker, pinRoot, LAYOUT_MARKER);
  } catch (cause) {
    throw new DatapathError(`write layout marker pinRoot=${pinRoot} version=${version}`, { cause });
  } finally {
    marker.close();
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
