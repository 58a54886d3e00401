// BpfObject: an ELF object loaded into the kernel, with its programs and maps.
import { checkPointer } from './check.js';
import { errnoError, LibbpfError, NotFoundError, VerifierError } from './errors.js';
import { BpfMap, invalidateBorrowedMap } from './map.js';
import * as native from './native.js';
import { mapHandles, mapShape, programHandles, type MapShape, type ObjectSpec } from './object-spec.js';
import { invalidateBorrowedProgram, Program } from './program.js';

const ENOENT = 2;
const EINVAL = 22;
const DEFAULT_LOG_SIZE = 1 << 20;

/** Options of loadObject(). */
export interface LoadOptions {
  /**
   * Directory (on a bpffs) for maps declared with `__uint(pinning, LIBBPF_PIN_BY_NAME)`: each is
   * pinned at `<pinRoot>/<map name>` on load, and if a compatible map is already pinned there it
   * is reused instead (same map, same contents) — how a restarted agent re-adopts its state.
   * Default: libbpf's /sys/fs/bpf.
   */
  pinRoot?: string;
  /**
   * Use these existing maps instead of creating the named ones (bpf_map__reuse_fd; the object
   * takes its own fd, the caller keeps owning the given map): the programs read and write the
   * very map given, contents included. Its type, key size, value size and flags must be the
   * declared ones (max_entries may differ). A replaced map declared LIBBPF_PIN_BY_NAME is still
   * pinned under pinRoot.
   */
  mapReplacements?: Record<string, BpfMap>;
  /** Override max_entries of the named maps before they are created. */
  mapMaxEntries?: Record<string, number>;
  /**
   * Verifier log level: 0 (default) asks for a log only when a load fails, 1 always logs,
   * 2 logs every instruction's state.
   */
  logLevel?: number;
  /** Bytes of verifier log kept per program. Default 1 MiB. */
  logSize?: number;
}

/**
 * An ELF object loaded into the kernel: its programs and maps are live. It owns their fds.
 * close() releases them; programs attached through netlink (XDP, TC) stay attached and keep
 * running, and pinned maps and programs stay pinned, since those hold their own references in
 * the kernel.
 */
export class BpfObject {
  /** The spec this object was loaded from. */
  readonly spec: ObjectSpec;
  /** The programs by C function name; borrowed from this object. */
  readonly programs: ReadonlyMap<string, Program>;
  /** The maps by name (including libbpf's internal .data/.rodata/.bss maps); borrowed. */
  readonly maps: ReadonlyMap<string, BpfMap>;
  #handle: native.Handle | undefined;

  /** Takes ownership of a loaded bpf_object handle. Use loadObject(). */
  constructor(spec: ObjectSpec, handle: native.Handle, programs: ReadonlyMap<string, Program>, maps: ReadonlyMap<string, BpfMap>) {
    this.spec = spec;
    this.#handle = handle;
    this.programs = programs;
    this.maps = maps;
  }

  /**
   * @returns the program named `name` (the C function name), borrowed from this object.
   * @throws NotFoundError naming the missing program and listing those that exist.
   */
  program(name: string): Program {
    const program = this.programs.get(name);
    if (program === undefined) {
      throw new NotFoundError(`program name=${name}`, ENOENT, { details: [`${this.spec.path} has programs: ${[...this.programs.keys()].join(', ') || 'none'}`] });
    }
    return program;
  }

  /**
   * @returns the map named `name`, borrowed from this object.
   * @throws NotFoundError naming the missing map and listing those that exist.
   */
  map(name: string): BpfMap {
    const map = this.maps.get(name);
    if (map === undefined) {
      throw new NotFoundError(`map name=${name}`, ENOENT, { details: [`${this.spec.path} has maps: ${[...this.maps.keys()].join(', ') || 'none'}`] });
    }
    return map;
  }

  /**
   * Closes every program and map fd of the object; idempotent. Does NOT detach XDP/TC programs
   * (they keep running) and does not unpin anything.
   */
  close(): void {
    if (this.#handle === undefined) return;
    for (const program of this.programs.values()) invalidateBorrowedProgram(program);
    for (const map of this.maps.values()) invalidateBorrowedMap(map);
    native.objectClose(this.#handle);
    this.#handle = undefined;
  }

  /** For `await using`: close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/**
 * Opens the ELF of `spec` again, applies `options` and loads every program and map into the
 * kernel (bpf_object__load).
 * @returns a BpfObject the caller owns and must close.
 * @throws VerifierError (with the verifier log) when the kernel rejects a program;
 * NotFoundError when an option names a map the object lacks; LibbpfError EINVAL when a
 * mapReplacements map's shape differs from the declared one (nothing is loaded); LibbpfError for anything else
 * (EPERM without CAP_BPF, EINVAL for an incompatible pinned map...), its message carrying
 * libbpf's own warnings.
 */
export async function loadObject(spec: ObjectSpec, options: LoadOptions = {}): Promise<BpfObject> {
  const operation = `load object path=${spec.path}`;
  const handle = checkPointer(operation, () => native.openObject(spec.path, { pinRootPath: options.pinRoot }));
  const logs = new Map<string, native.NativeMemory>();
  try {
    const mapsByName = new Map<string, native.Handle>();
    for (const map of mapHandles(handle)) mapsByName.set(native.mapName(map), map);
    const findMap = (name: string, option: string): native.Handle => {
      const map = mapsByName.get(name);
      if (map === undefined) {
        throw new NotFoundError(`${operation} ${option} map=${name}`, ENOENT, { details: [`${spec.path} has maps: ${[...mapsByName.keys()].join(', ')}`] });
      }
      return map;
    };
    for (const [name, replacement] of Object.entries(options.mapReplacements ?? {})) {
      const map = findMap(name, 'mapReplacements');
      // bpf_map__reuse_fd takes the given map's definition as it is: the programs would be
      // verified against it. Refuse a map whose type, key, value or flags differ from the
      // declared ones (max_entries may differ: programs do not depend on it).
      const declared = mapShape(map);
      if (declared.type !== replacement.type || declared.keySize !== replacement.keySize || declared.valueSize !== replacement.valueSize || declared.flags !== replacement.flags) {
        throw new LibbpfError(`${operation} reuse map=${name}`, EINVAL, { details: [`declared ${describeShape(declared)}, given ${describeShape(replacement)}`] });
      }
      const ret = native.mapReuseFd(map, replacement.fd);
      if (ret < 0) throw errnoError(`${operation} reuse map=${name}`, ret, { details: native.takeMessages() });
    }
    for (const [name, maxEntries] of Object.entries(options.mapMaxEntries ?? {})) {
      const ret = native.mapSetMaxEntries(findMap(name, 'mapMaxEntries'), maxEntries);
      if (ret < 0) throw errnoError(`${operation} set max entries map=${name}`, ret);
    }
    // A log buffer per program keeps each verifier log apart; libbpf holds the pointer until load.
    const logSize = options.logSize ?? DEFAULT_LOG_SIZE;
    for (const prog of programHandles(handle)) {
      const log = native.allocNative(logSize);
      logs.set(native.programName(prog), log);
      native.programSetLogBuf(prog, log.pointer, logSize);
      if (options.logLevel !== undefined) native.programSetLogLevel(prog, options.logLevel);
    }

    native.clearMessages();
    const ret = native.objectLoad(handle);
    if (ret < 0) throw loadError(operation, ret, native.takeMessages(), logs);

    const programs = new Map<string, Program>();
    for (const prog of programHandles(handle)) {
      const fd = native.programFd(prog);
      if (fd < 0) continue; // autoload disabled
      const name = native.programName(prog);
      programs.set(name, new Program(fd, { name, type: native.enumName(native.progTypeNames, native.programType(prog)) }, false));
    }
    const maps = new Map<string, BpfMap>();
    // Names as declared: bpf_map__reuse_fd renames a map after the one it reuses.
    for (const [name, map] of mapsByName) {
      const fd = native.mapFd(map);
      if (fd < 0) continue; // autocreate disabled
      maps.set(name, new BpfMap(fd, { name, ...mapShape(map) }, false));
    }
    return new BpfObject(spec, handle, programs, maps);
  } catch (error) {
    native.objectClose(handle);
    throw error;
  } finally {
    for (const log of logs.values()) log.free();
  }
}

function describeShape(shape: MapShape): string {
  return `type=${shape.type} key=${shape.keySize} value=${shape.valueSize} flags=${shape.flags}`;
}

function readLog(log: native.NativeMemory): string {
  const end = log.bytes.indexOf(0);
  return Buffer.from(log.bytes.subarray(0, end < 0 ? log.bytes.length : end)).toString('utf8');
}

// libbpf names the program that failed ("prog 'xdp_bad': failed to load: -13"); its log is the
// one to report. Failures before any program load (maps, BTF) have no verifier log.
function loadError(operation: string, ret: number, messages: string[], logs: Map<string, native.NativeMemory>): Error {
  let failed: string | undefined;
  for (const message of messages) {
    const match = /prog '([^']+)': failed to load/.exec(message);
    if (match?.[1] !== undefined) failed = match[1];
  }
  const candidates = failed === undefined ? [...logs.keys()] : [failed];
  for (const name of candidates) {
    const memory = logs.get(name);
    const log = memory === undefined ? '' : readLog(memory);
    if (log.trim() !== '') return new VerifierError(`${operation} program=${name}`, ret, name, log, { details: messages });
  }
  return errnoError(operation, ret, { details: messages });
}
