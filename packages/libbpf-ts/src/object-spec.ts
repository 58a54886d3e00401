// Inert descriptions of a BPF ELF object: what programs and maps it declares, read with
// bpf_object__open_file() and closed again before anything reaches the kernel.
import { access } from 'node:fs/promises';
import { checkPointer } from './check.js';
import { errnoError } from './errors.js';
import * as native from './native.js';

/** A program as declared in the ELF. */
export interface ProgramSpec {
  /** The C function name. */
  readonly name: string;
  /** The ELF section ('xdp', 'tc', 'xdp.frags'...). */
  readonly section: string;
  /** libbpf's name of the program type ('xdp', 'sched_cls'...). */
  readonly type: string;
  /** libbpf's name of the expected attach type ('xdp', 'cgroup_inet_ingress'...). */
  readonly expectedAttachType: string;
}

/** Where libbpf pins a map at load: nowhere, or `<pinRoot>/<name>` (LIBBPF_PIN_BY_NAME). */
export type MapPinning = 'none' | 'by-name';

/** The shape of a map: type and sizes. */
export interface MapShape {
  /** libbpf's name of the map type ('hash', 'percpu_array', 'lpm_trie', 'array_of_maps'...). */
  readonly type: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  /** BPF_F_* map flags. */
  readonly flags: number;
}

/** A map as declared in the ELF. */
export interface MapSpec extends MapShape {
  readonly name: string;
  readonly pinning: MapPinning;
  /** True for the maps libbpf makes for .data/.rodata/.bss/.kconfig. */
  readonly internal: boolean;
  /** For map-in-map types: the declared shape of the inner maps. */
  readonly innerMap?: MapShape;
}

/** Everything a BPF ELF object declares. Inert: holds no file descriptor. */
export interface ObjectSpec {
  /** The ELF path, as given to loadObjectSpec(). */
  readonly path: string;
  readonly programs: ReadonlyMap<string, ProgramSpec>;
  readonly maps: ReadonlyMap<string, MapSpec>;
}

/** Reads a map's declared shape from an opened (or loaded) bpf_object's map handle. */
export function mapShape(map: native.Handle): MapShape {
  return {
    type: native.enumName(native.mapTypeNames, native.mapType(map)),
    keySize: native.mapKeySize(map),
    valueSize: native.mapValueSize(map),
    maxEntries: native.mapMaxEntries(map),
    flags: native.mapFlags(map),
  };
}

/** Iterates the program handles of an opened bpf_object. */
export function* programHandles(obj: native.Handle): Generator<native.Handle> {
  for (let prog = native.nextProgram(obj, null); prog !== null; prog = native.nextProgram(obj, prog)) yield prog;
}

/** Iterates the map handles of an opened bpf_object. */
export function* mapHandles(obj: native.Handle): Generator<native.Handle> {
  for (let map = native.nextMap(obj, null); map !== null; map = native.nextMap(obj, map)) yield map;
}

function programSpec(prog: native.Handle): ProgramSpec {
  return {
    name: native.programName(prog),
    section: native.programSection(prog),
    type: native.enumName(native.progTypeNames, native.programType(prog)),
    expectedAttachType: native.enumName(native.attachTypeNames, native.programExpectedAttachType(prog)),
  };
}

function mapSpec(map: native.Handle): MapSpec {
  const inner = native.mapInnerMap(map);
  // libbpf sets a pin path at open time exactly for maps declared with LIBBPF_PIN_BY_NAME.
  const pinning: MapPinning = native.mapPinPath(map) === null ? 'none' : 'by-name';
  return {
    name: native.mapName(map),
    ...mapShape(map),
    pinning,
    internal: native.mapIsInternal(map),
    ...(inner === null ? {} : { innerMap: mapShape(inner) }),
  };
}

/**
 * Parses the BPF ELF object at `path` and describes its programs and maps. Nothing is loaded into
 * the kernel and no file descriptor outlives the call.
 *
 * @returns an inert ObjectSpec, owned by the caller.
 * @throws NotFoundError if the file does not exist; LibbpfError (e.g. LIBBPF_ERRNO__FORMAT) if
 * libbpf cannot parse it.
 */
export async function loadObjectSpec(path: string): Promise<ObjectSpec> {
  const operation = `open object path=${path}`;
  // libbpf would report a missing file as a bare ENOENT; check first to keep Node's message.
  await access(path).catch((cause: NodeJS.ErrnoException) => {
    throw errnoError(operation, cause.errno ?? -2 /* ENOENT */, { cause });
  });
  const obj = checkPointer(operation, () => native.openObject(path, {}));
  try {
    const programs = new Map<string, ProgramSpec>();
    for (const prog of programHandles(obj)) {
      const spec = programSpec(prog);
      programs.set(spec.name, spec);
    }
    const maps = new Map<string, MapSpec>();
    for (const map of mapHandles(obj)) {
      const spec = mapSpec(map);
      maps.set(spec.name, spec);
    }
    return { path, programs, maps };
  } finally {
    native.objectClose(obj);
  }
}
