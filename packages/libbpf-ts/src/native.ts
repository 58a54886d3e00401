// Every koffi declaration of this package lives here: the libbpf and libc functions, the opts
// structs (laid out as in Debian's libbpf 1.1.2 headers, /usr/include/bpf/{bpf,libbpf}.h, and
// checked against them by test/struct-layout.test.ts), and the libbpf print callback. The rest
// of the package sees plain numbers, strings, bigint handles and Uint8Arrays.
import koffi from 'koffi';

const libbpf = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

/** An opaque `struct bpf_object *`, `struct bpf_program *` or `struct bpf_map *`. */
export type Handle = bigint;

// Opaque libbpf types. koffi 3 represents pointers as bigint and NULL as null.
koffi.opaque('bpf_object');
koffi.opaque('bpf_program');
koffi.opaque('bpf_map');

/** struct bpf_object_open_opts (libbpf.h). */
const ObjectOpenOpts = koffi.struct('bpf_object_open_opts', {
  sz: 'size_t',
  object_name: 'const char *',
  relaxed_maps: 'bool',
  pin_root_path: 'const char *',
  removed_attach_prog_fd: 'uint32_t', // `__u32 :32`, stub of the removed attach_prog_fd
  kconfig: 'const char *',
  btf_custom_path: 'const char *',
  kernel_log_buf: 'void *',
  kernel_log_size: 'size_t',
  kernel_log_level: 'uint32_t',
});

/** struct bpf_map_create_opts (bpf.h). */
const MapCreateOpts = koffi.struct('bpf_map_create_opts', {
  sz: 'size_t',
  btf_fd: 'uint32_t',
  btf_key_type_id: 'uint32_t',
  btf_value_type_id: 'uint32_t',
  btf_vmlinux_value_type_id: 'uint32_t',
  inner_map_fd: 'uint32_t',
  map_flags: 'uint32_t',
  map_extra: 'uint64_t',
  numa_node: 'uint32_t',
  map_ifindex: 'uint32_t',
});

/** struct bpf_map_batch_opts (bpf.h). */
const MapBatchOpts = koffi.struct('bpf_map_batch_opts', {
  sz: 'size_t',
  elem_flags: 'uint64_t',
  flags: 'uint64_t',
});

/** struct bpf_test_run_opts (bpf.h). */
const TestRunOpts = koffi.struct('bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});

/** struct bpf_xdp_attach_opts (libbpf.h). */
const XdpAttachOpts = koffi.struct('bpf_xdp_attach_opts', {
  sz: 'size_t',
  old_prog_fd: 'int',
});

/** struct bpf_xdp_query_opts (libbpf.h). */
const XdpQueryOpts = koffi.struct('bpf_xdp_query_opts', {
  sz: 'size_t',
  prog_id: 'uint32_t',
  drv_prog_id: 'uint32_t',
  hw_prog_id: 'uint32_t',
  skb_prog_id: 'uint32_t',
  attach_mode: 'uint8_t',
});

/** struct bpf_tc_hook (libbpf.h). */
const TcHook = koffi.struct('bpf_tc_hook', {
  sz: 'size_t',
  ifindex: 'int',
  attach_point: 'int', // enum bpf_tc_attach_point
  parent: 'uint32_t',
});

/** struct bpf_tc_opts (libbpf.h). */
const TcOpts = koffi.struct('bpf_tc_opts', {
  sz: 'size_t',
  prog_fd: 'int',
  flags: 'uint32_t',
  prog_id: 'uint32_t',
  handle: 'uint32_t',
  priority: 'uint32_t',
});

/** struct bpf_prog_info (linux/bpf.h), the fields this package reads, padded to full size. */
const ProgInfo = koffi.struct('bpf_prog_info', {
  type: 'uint32_t',
  id: 'uint32_t',
  tag: koffi.array('uint8_t', 8, 'Array'),
  jited_prog_len: 'uint32_t',
  xlated_prog_len: 'uint32_t',
  jited_prog_insns: 'uint64_t',
  xlated_prog_insns: 'uint64_t',
  load_time: 'uint64_t',
  created_by_uid: 'uint32_t',
  nr_map_ids: 'uint32_t',
  map_ids: 'uint64_t',
  name: koffi.array('char', 16, 'String'),
  skipped: koffi.array('uint8_t', 216 - 80, 'Array'),
  verified_insns: 'uint32_t',
  rest: koffi.array('uint8_t', 232 - 220, 'Array'),
});

/** struct bpf_map_info (linux/bpf.h). */
const MapInfo = koffi.struct('bpf_map_info', {
  type: 'uint32_t',
  id: 'uint32_t',
  key_size: 'uint32_t',
  value_size: 'uint32_t',
  max_entries: 'uint32_t',
  map_flags: 'uint32_t',
  name: koffi.array('char', 16, 'String'),
  ifindex: 'uint32_t',
  btf_vmlinux_value_type_id: 'uint32_t',
  netns_dev: 'uint64_t',
  netns_ino: 'uint64_t',
  btf_id: 'uint32_t',
  btf_key_type_id: 'uint32_t',
  btf_value_type_id: 'uint32_t',
  pad: 'uint32_t',
  map_extra: 'uint64_t',
});

/** struct bpf_prog_attach_opts (bpf.h). libbpf 1.1 has no relative_fd or expected_revision: zero. */
const ProgAttachOpts = koffi.struct('bpf_prog_attach_opts', {
  sz: 'size_t',
  flags: 'uint32_t',
  replace_prog_fd: 'int',
});

/** struct bpf_prog_query_opts (bpf.h). */
const ProgQueryOpts = koffi.struct('bpf_prog_query_opts', {
  sz: 'size_t',
  query_flags: 'uint32_t',
  attach_flags: 'uint32_t',
  prog_ids: 'void *',
  prog_cnt: 'uint32_t',
  prog_attach_flags: 'void *',
});

/** Struct types by C name, for the layout test. */
export const structTypes = {
  bpf_object_open_opts: ObjectOpenOpts,
  bpf_map_create_opts: MapCreateOpts,
  bpf_map_batch_opts: MapBatchOpts,
  bpf_test_run_opts: TestRunOpts,
  bpf_xdp_attach_opts: XdpAttachOpts,
  bpf_xdp_query_opts: XdpQueryOpts,
  bpf_tc_hook: TcHook,
  bpf_tc_opts: TcOpts,
  bpf_prog_attach_opts: ProgAttachOpts,
  bpf_prog_query_opts: ProgQueryOpts,
  bpf_prog_info: ProgInfo,
  bpf_map_info: MapInfo,
} as const;

/** Size and field offsets of a declared struct, as koffi lays it out. */
export function structLayout(name: keyof typeof structTypes): { size: number; offsets: Record<string, number> } {
  const type = structTypes[name];
  const offsets: Record<string, number> = {};
  for (const [field, member] of Object.entries(type.members ?? {})) offsets[field] = member.offset;
  return { size: type.size, offsets };
}

// --- libbpf print callback --------------------------------------------------------------------
// libbpf reports through a global print function that receives a va_list. On x86-64 a va_list
// argument is a pointer to a 24-byte __va_list_tag; vsnprintf consumes it, so each vsnprintf
// call gets its own copy (what va_copy does on this ABI).

const VA_LIST_TAG_SIZE = 24;
const PrintFn = koffi.proto('int libbpf_print_fn_t(int level, void *fmt, void *args)');
const libbpfSetPrint = libbpf.func('libbpf_set_print', 'void *', [koffi.pointer(PrintFn)]);
const vsnprintf = libc.func('int vsnprintf(void *buf, size_t size, void *fmt, void *args)');

/** libbpf's message levels (enum libbpf_print_level). */
export type PrintLevel = 'warn' | 'info' | 'debug';
const printLevels: readonly PrintLevel[] = ['warn', 'info', 'debug'];

/** Receives every libbpf message, including debug ones. */
export type PrintListener = (level: PrintLevel, message: string) => void;

let listener: PrintListener | undefined;
// Warnings and info messages of the operation in flight; read by takeMessages().
let recent: string[] = [];
const RECENT_LIMIT = 200;

function formatVaList(fmt: bigint, args: bigint): string {
  const tag = new Uint8Array(koffi.view(args, VA_LIST_TAG_SIZE));
  const length = vsnprintf(null, 0, fmt, Buffer.from(tag)) as number;
  if (length <= 0) return '';
  const out = Buffer.alloc(length + 1);
  vsnprintf(out, out.length, fmt, Buffer.from(tag));
  return out.toString('utf8', 0, length);
}

function onPrint(level: number, fmt: bigint | null, args: bigint | null): number {
  try {
    if (fmt === null || args === null) return 0;
    const name = printLevels[level] ?? 'debug';
    if (name === 'debug' && listener === undefined) return 0;
    const message = formatVaList(fmt, args).trimEnd();
    if (name !== 'debug') {
      recent.push(message);
      if (recent.length > RECENT_LIMIT) recent.shift();
    }
    listener?.(name, message);
  } catch {
    // A throwing listener must not unwind through libbpf.
  }
  return 0;
}

const printCallback = koffi.register(onPrint, koffi.pointer(PrintFn));
libbpfSetPrint(printCallback);

/** Routes libbpf's messages (all levels) to `fn`, or stops doing so with `undefined`. */
export function setPrintListener(fn: PrintListener | undefined): void {
  listener = fn;
}

/** Clears the buffered libbpf warnings; call before an operation whose messages you want. */
export function clearMessages(): void {
  recent = [];
}

/** Returns and clears the libbpf warning/info messages printed since clearMessages(). */
export function takeMessages(): string[] {
  const out = recent;
  recent = [];
  return out;
}

// --- errno --------------------------------------------------------------------------------------

/** errno after the last native call (libbpf's pointer-returning functions set it on NULL). */
export function lastErrno(): number {
  return koffi.errno();
}

const libbpfStrerror = libbpf.func('int libbpf_strerror(int err, _Out_ char *buf, size_t size)');

/** libbpf_strerror(): text for a system errno or one of libbpf's own (4000..4012). */
export function strerror(errno: number): string {
  const buf = Buffer.alloc(256);
  libbpfStrerror(errno, buf, buf.length);
  const end = buf.indexOf(0);
  return buf.toString('utf8', 0, end < 0 ? buf.length : end);
}

/** errno names by number, from the platform table plus kernel-internal codes libbpf passes on. */
export const errnoNames: ReadonlyMap<number, string> = (() => {
  const names = new Map<number, string>();
  for (const [name, value] of Object.entries(koffi.os.errno)) {
    // Prefer the canonical names over aliases (EWOULDBLOCK = EAGAIN, EDEADLOCK = EDEADLK...).
    if (!names.has(value) || name === 'EAGAIN' || name === 'EOPNOTSUPP' || name === 'EDEADLK') names.set(value, name);
  }
  // Kernel-internal codes that leak out of bpf(2) (include/linux/errno.h).
  names.set(512, 'ERESTARTSYS');
  names.set(524, 'ENOTSUPP');
  // libbpf's own error codes (enum libbpf_errno, libbpf.h).
  const libbpfCodes = ['LIBELF', 'FORMAT', 'KVERSION', 'ENDIAN', 'INTERNAL', 'RELOC', 'LOAD', 'VERIFY', 'PROG2BIG', 'KVER', 'PROGTYPE', 'WRNGPID', 'INVSEQ', 'NLPARSE'];
  libbpfCodes.forEach((code, i) => names.set(4000 + i, `LIBBPF_ERRNO__${code}`));
  return names;
})();

// --- libbpf globals -----------------------------------------------------------------------------

const LIBBPF_STRICT_ALL = 0xffffffff;
libbpf.func('int libbpf_set_strict_mode(uint32_t mode)')(LIBBPF_STRICT_ALL);

/** libbpf_num_possible_cpus(): CPUs a per-CPU map holds a value for, or a negative errno. */
export const numPossibleCpus: () => number = libbpf.func('int libbpf_num_possible_cpus(void)');

const progTypeStr = libbpf.func('const char *libbpf_bpf_prog_type_str(int t)');
const mapTypeStr = libbpf.func('const char *libbpf_bpf_map_type_str(int t)');
const attachTypeStr = libbpf.func('const char *libbpf_bpf_attach_type_str(int t)');

function enumNames(fn: (t: number) => string | null): ReadonlyMap<number, string> {
  const names = new Map<number, string>();
  for (let t = 0; t < 256; t++) {
    const name = fn(t);
    if (name === null) break;
    names.set(t, name);
  }
  return names;
}

/** Name of an enum value, or `unknown(<n>)` if this libbpf has no name for it. */
export function enumName(names: ReadonlyMap<number, string>, value: number): string {
  return names.get(value) ?? `unknown(${value})`;
}

/** enum bpf_prog_type values by libbpf's name for them ('xdp', 'sched_cls'...). */
export const progTypeNames = enumNames(progTypeStr);
/** enum bpf_map_type values by libbpf's name for them ('hash', 'percpu_array'...). */
export const mapTypeNames = enumNames(mapTypeStr);
/** enum bpf_attach_type values by libbpf's name for them ('xdp', 'tc_ingress'...). */
export const attachTypeNames = enumNames(attachTypeStr);

// --- objects, programs, maps (libbpf.h) ---------------------------------------------------------

const openFile = libbpf.func('bpf_object *bpf_object__open_file(const char *path, const bpf_object_open_opts *opts)');

/** Options for openObject(); log buffer memory must come from allocNative() and outlive the load. */
export interface OpenObjectOptions {
  pinRootPath?: string | undefined;
  kernelLogLevel?: number | undefined;
}

/** bpf_object__open_file(): a handle, or null with errno set. */
export function openObject(path: string, options: OpenObjectOptions): Handle | null {
  const opts = {
    sz: ObjectOpenOpts.size,
    object_name: null,
    relaxed_maps: false,
    pin_root_path: options.pinRootPath ?? null,
    removed_attach_prog_fd: 0,
    kconfig: null,
    btf_custom_path: null,
    kernel_log_buf: null,
    kernel_log_size: 0,
    kernel_log_level: options.kernelLogLevel ?? 0,
  };
  return openFile(path, opts) as Handle | null;
}

export const objectLoad: (obj: Handle) => number = libbpf.func('int bpf_object__load(bpf_object *obj)');
export const objectClose: (obj: Handle) => void = libbpf.func('void bpf_object__close(bpf_object *obj)');
export const nextProgram: (obj: Handle, prev: Handle | null) => Handle | null = libbpf.func(
  'bpf_program *bpf_object__next_program(const bpf_object *obj, bpf_program *prev)',
);
export const nextMap: (obj: Handle, prev: Handle | null) => Handle | null = libbpf.func(
  'bpf_map *bpf_object__next_map(const bpf_object *obj, bpf_map *prev)',
);

export const programName: (prog: Handle) => string = libbpf.func('const char *bpf_program__name(const bpf_program *prog)');
export const programSection: (prog: Handle) => string = libbpf.func('const char *bpf_program__section_name(const bpf_program *prog)');
export const programType: (prog: Handle) => number = libbpf.func('int bpf_program__type(const bpf_program *prog)');
export const programExpectedAttachType: (prog: Handle) => number = libbpf.func(
  'int bpf_program__expected_attach_type(const bpf_program *prog)',
);
export const programFd: (prog: Handle) => number = libbpf.func('int bpf_program__fd(const bpf_program *prog)');
export const programSetLogLevel: (prog: Handle, level: number) => number = libbpf.func(
  'int bpf_program__set_log_level(bpf_program *prog, uint32_t level)',
);
export const programSetLogBuf: (prog: Handle, buf: bigint, size: number) => number = libbpf.func(
  'int bpf_program__set_log_buf(bpf_program *prog, void *buf, size_t size)',
);

export const mapName: (map: Handle) => string = libbpf.func('const char *bpf_map__name(const bpf_map *map)');
export const mapType: (map: Handle) => number = libbpf.func('int bpf_map__type(const bpf_map *map)');
export const mapKeySize: (map: Handle) => number = libbpf.func('uint32_t bpf_map__key_size(const bpf_map *map)');
export const mapValueSize: (map: Handle) => number = libbpf.func('uint32_t bpf_map__value_size(const bpf_map *map)');
export const mapMaxEntries: (map: Handle) => number = libbpf.func('uint32_t bpf_map__max_entries(const bpf_map *map)');
export const mapFlags: (map: Handle) => number = libbpf.func('uint32_t bpf_map__map_flags(const bpf_map *map)');
export const mapPinPath: (map: Handle) => string | null = libbpf.func('const char *bpf_map__pin_path(const bpf_map *map)');
export const mapIsInternal: (map: Handle) => boolean = libbpf.func('bool bpf_map__is_internal(const bpf_map *map)');
export const mapInnerMap: (map: Handle) => Handle | null = libbpf.func('bpf_map *bpf_map__inner_map(bpf_map *map)');
export const mapFd: (map: Handle) => number = libbpf.func('int bpf_map__fd(const bpf_map *map)');
export const mapReuseFd: (map: Handle, fd: number) => number = libbpf.func('int bpf_map__reuse_fd(bpf_map *map, int fd)');
export const mapSetMaxEntries: (map: Handle, n: number) => number = libbpf.func(
  'int bpf_map__set_max_entries(bpf_map *map, uint32_t max_entries)',
);

// --- raw syscall wrappers (bpf.h) ---------------------------------------------------------------

const mapCreate = libbpf.func(
  'int bpf_map_create(int map_type, const char *map_name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, const bpf_map_create_opts *opts)',
);

/** bpf_map_create(): an fd or a negative errno. */
export function createMap(
  type: number,
  name: string | null,
  keySize: number,
  valueSize: number,
  maxEntries: number,
  flags: number,
  innerMapFd: number,
): number {
  const opts = {
    sz: MapCreateOpts.size,
    btf_fd: 0,
    btf_key_type_id: 0,
    btf_value_type_id: 0,
    btf_vmlinux_value_type_id: 0,
    inner_map_fd: innerMapFd,
    map_flags: flags,
    map_extra: 0n,
    numa_node: 0,
    map_ifindex: 0,
  };
  return mapCreate(type, name, keySize, valueSize, maxEntries, opts) as number;
}

export const mapLookup: (fd: number, key: Uint8Array, value: Uint8Array) => number = libbpf.func(
  'int bpf_map_lookup_elem(int fd, const void *key, void *value)',
);
export const mapUpdate: (fd: number, key: Uint8Array, value: Uint8Array, flags: bigint) => number = libbpf.func(
  'int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)',
);
export const mapDelete: (fd: number, key: Uint8Array) => number = libbpf.func('int bpf_map_delete_elem(int fd, const void *key)');
export const mapNextKey: (fd: number, key: Uint8Array | null, next: Uint8Array) => number = libbpf.func(
  'int bpf_map_get_next_key(int fd, const void *key, void *next_key)',
);

const mapUpdateBatch = libbpf.func(
  'int bpf_map_update_batch(int fd, const void *keys, const void *values, _Inout_ uint32_t *count, const bpf_map_batch_opts *opts)',
);

/** bpf_map_update_batch(): 0 or a negative errno, and how many elements the kernel took. */
export function updateBatch(fd: number, keys: Uint8Array, values: Uint8Array, count: number, elemFlags: bigint): { ret: number; done: number } {
  const inout = [count];
  const ret = mapUpdateBatch(fd, keys, values, inout, { sz: MapBatchOpts.size, elem_flags: elemFlags, flags: 0n }) as number;
  return { ret, done: inout[0] ?? 0 };
}

const mapLookupBatch = libbpf.func(
  'int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, _Inout_ uint32_t *count, const bpf_map_batch_opts *opts)',
);

/**
 * bpf_map_lookup_batch(): 0 or a negative errno (-ENOENT once the walk reached the end), and how
 * many elements the kernel copied out. `inBatch` null starts from the first element.
 */
export function lookupBatch(
  fd: number,
  inBatch: Uint8Array | null,
  outBatch: Uint8Array,
  keys: Uint8Array,
  values: Uint8Array,
  count: number,
): { ret: number; done: number } {
  const inout = [count];
  const ret = mapLookupBatch(fd, inBatch, outBatch, keys, values, inout, { sz: MapBatchOpts.size, elem_flags: 0n, flags: 0n }) as number;
  return { ret, done: inout[0] ?? 0 };
}

export const objPin: (fd: number, path: string) => number = libbpf.func('int bpf_obj_pin(int fd, const char *pathname)');
export const objGet: (path: string) => number = libbpf.func('int bpf_obj_get(const char *pathname)');
export const progFdById: (id: number) => number = libbpf.func('int bpf_prog_get_fd_by_id(uint32_t id)');
export const mapFdById: (id: number) => number = libbpf.func('int bpf_map_get_fd_by_id(uint32_t id)');

const objGetInfoByFd = libbpf.func('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *info_len)');

/** The fields of struct bpf_prog_info this package uses. */
export interface ProgInfoFields {
  type: number;
  id: number;
  tag: number[];
  name: string;
  verified_insns: number;
}

/** bpf_obj_get_info_by_fd() for a program: the info, or a negative errno. */
export function progInfo(fd: number): ProgInfoFields | number {
  const buf = Buffer.alloc(ProgInfo.size);
  const ret = objGetInfoByFd(fd, buf, [buf.length]) as number;
  if (ret < 0) return ret;
  const info = koffi.decode(buf, ProgInfo) as ProgInfoFields;
  return { type: info.type, id: info.id, tag: info.tag, name: info.name, verified_insns: info.verified_insns };
}

/** The fields of struct bpf_map_info this package uses. */
export interface MapInfoFields {
  type: number;
  id: number;
  key_size: number;
  value_size: number;
  max_entries: number;
  map_flags: number;
  name: string;
}

/** bpf_obj_get_info_by_fd() for a map: the info, or a negative errno. */
export function mapInfo(fd: number): MapInfoFields | number {
  const buf = Buffer.alloc(MapInfo.size);
  const ret = objGetInfoByFd(fd, buf, [buf.length]) as number;
  if (ret < 0) return ret;
  return koffi.decode(buf, MapInfo) as MapInfoFields;
}

const testRunOpts = libbpf.func('int bpf_prog_test_run_opts(int prog_fd, _Inout_ bpf_test_run_opts *opts)');

/** Result of testRun(): ret is 0 or a negative errno. */
export interface TestRunResult {
  ret: number;
  retval: number;
  durationNs: number;
  data: Uint8Array;
}

/**
 * bpf_prog_test_run_opts() with data in/out and an optional context in. Empty data and a zero
 * dataSizeOut pass NULL buffers: BPF_PROG_TYPE_SYSCALL programs refuse any (bpf_prog_test_run_syscall
 * in net/bpf/test_run.c).
 */
export function testRun(fd: number, data: Uint8Array, dataSizeOut: number, repeat: number, ctxIn: Uint8Array | undefined): TestRunResult {
  // Pointers inside a struct must stay valid for the whole call: use native memory for them.
  const dataIn = allocNative(Math.max(data.length, 1));
  const dataOut = allocNative(Math.max(dataSizeOut, 1));
  const ctx = ctxIn === undefined ? undefined : allocNative(Math.max(ctxIn.length, 1));
  try {
    dataIn.bytes.set(data);
    if (ctx !== undefined && ctxIn !== undefined) ctx.bytes.set(ctxIn);
    const opts = {
      sz: TestRunOpts.size,
      data_in: data.length === 0 ? null : dataIn.pointer,
      data_out: dataSizeOut === 0 ? null : dataOut.pointer,
      data_size_in: data.length,
      data_size_out: dataSizeOut,
      ctx_in: ctx?.pointer ?? null,
      ctx_out: null,
      ctx_size_in: ctxIn?.length ?? 0,
      ctx_size_out: 0,
      retval: 0,
      repeat,
      duration: 0,
      flags: 0,
      cpu: 0,
      batch_size: 0,
    };
    const ret = testRunOpts(fd, opts) as number;
    const outLength = Math.min(opts.data_size_out, dataSizeOut);
    return { ret, retval: opts.retval, durationNs: opts.duration, data: dataOut.bytes.slice(0, outLength) };
  } finally {
    dataIn.free();
    dataOut.free();
    ctx?.free();
  }
}

// --- XDP and TC (libbpf.h, netlink) -------------------------------------------------------------

const xdpAttach = libbpf.func('int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const bpf_xdp_attach_opts *opts)');
const xdpDetach = libbpf.func('int bpf_xdp_detach(int ifindex, uint32_t flags, const bpf_xdp_attach_opts *opts)');
const xdpQuery = libbpf.func('int bpf_xdp_query(int ifindex, int flags, _Inout_ bpf_xdp_query_opts *opts)');

/** bpf_xdp_attach(): 0 or a negative errno. oldProgFd is used with XDP_FLAGS_REPLACE. */
export function attachXdp(ifindex: number, progFd: number, flags: number, oldProgFd: number): number {
  return xdpAttach(ifindex, progFd, flags, { sz: XdpAttachOpts.size, old_prog_fd: oldProgFd }) as number;
}

/** bpf_xdp_detach(): 0 or a negative errno. */
export function detachXdp(ifindex: number, flags: number, oldProgFd: number): number {
  return xdpDetach(ifindex, flags, { sz: XdpAttachOpts.size, old_prog_fd: oldProgFd }) as number;
}

/** The output fields of struct bpf_xdp_query_opts. */
export interface XdpQueryFields {
  prog_id: number;
  drv_prog_id: number;
  hw_prog_id: number;
  skb_prog_id: number;
  attach_mode: number;
}

/** bpf_xdp_query(): the ids, or a negative errno. */
export function queryXdp(ifindex: number): XdpQueryFields | number {
  const opts = { sz: XdpQueryOpts.size, prog_id: 0, drv_prog_id: 0, hw_prog_id: 0, skb_prog_id: 0, attach_mode: 0 };
  const ret = xdpQuery(ifindex, 0, opts) as number;
  return ret < 0 ? ret : opts;
}

const tcHookCreate = libbpf.func('int bpf_tc_hook_create(bpf_tc_hook *hook)');
const tcHookDestroy = libbpf.func('int bpf_tc_hook_destroy(bpf_tc_hook *hook)');
const tcAttach = libbpf.func('int bpf_tc_attach(const bpf_tc_hook *hook, _Inout_ bpf_tc_opts *opts)');
const tcDetach = libbpf.func('int bpf_tc_detach(const bpf_tc_hook *hook, const bpf_tc_opts *opts)');
const tcQuery = libbpf.func('int bpf_tc_query(const bpf_tc_hook *hook, _Inout_ bpf_tc_opts *opts)');

function tcHook(ifindex: number, attachPoint: number): object {
  return { sz: TcHook.size, ifindex, attach_point: attachPoint, parent: 0 };
}

/** The fields of struct bpf_tc_opts. */
export interface TcOptsFields {
  prog_fd: number;
  flags: number;
  prog_id: number;
  handle: number;
  priority: number;
}

/** bpf_tc_hook_create(): 0 or a negative errno (-EEXIST when the clsact qdisc exists). */
export function createTcHook(ifindex: number, attachPoint: number): number {
  return tcHookCreate(tcHook(ifindex, attachPoint)) as number;
}

/** bpf_tc_hook_destroy(): 0 or a negative errno. */
export function destroyTcHook(ifindex: number, attachPoint: number): number {
  return tcHookDestroy(tcHook(ifindex, attachPoint)) as number;
}

/** bpf_tc_attach(): the filled opts (prog_id, handle, priority), or a negative errno. */
export function attachTc(ifindex: number, attachPoint: number, fields: TcOptsFields): TcOptsFields | number {
  const opts = { sz: TcOpts.size, ...fields };
  const ret = tcAttach(tcHook(ifindex, attachPoint), opts) as number;
  return ret < 0 ? ret : opts;
}

/** bpf_tc_detach(): 0 or a negative errno. */
export function detachTc(ifindex: number, attachPoint: number, handle: number, priority: number): number {
  const opts = { sz: TcOpts.size, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  return tcDetach(tcHook(ifindex, attachPoint), opts) as number;
}

/** bpf_tc_query(): the filter's opts, or a negative errno (-ENOENT when there is none). */
export function queryTc(ifindex: number, attachPoint: number, handle: number, priority: number): TcOptsFields | number {
  const opts = { sz: TcOpts.size, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const ret = tcQuery(tcHook(ifindex, attachPoint), opts) as number;
  return ret < 0 ? ret : opts;
}

// --- Multi-program attach points (tcx, kernel 6.6+), through BPF_PROG_ATTACH -------------------

const progAttachOpts = libbpf.func('int bpf_prog_attach_opts(int prog_fd, int target, int type, const bpf_prog_attach_opts *opts)');
const progDetach2 = libbpf.func('int bpf_prog_detach2(int prog_fd, int target, int type)');
const progQueryOpts = libbpf.func('int bpf_prog_query_opts(int target, int type, _Inout_ bpf_prog_query_opts *opts)');

/**
 * bpf_prog_attach_opts() with `target` an ifindex (tcx): 0 or a negative errno. `replaceFd` is
 * used with BPF_F_REPLACE (libbpf 1.1 passes no relative program: BPF_F_BEFORE alone means first).
 */
export function progAttach(progFd: number, target: number, type: number, flags: number, replaceFd: number): number {
  return progAttachOpts(progFd, target, type, { sz: ProgAttachOpts.size, flags, replace_prog_fd: replaceFd }) as number;
}

/** bpf_prog_detach2(): 0 or a negative errno. */
export function progDetach(progFd: number, target: number, type: number): number {
  return progDetach2(progFd, target, type) as number;
}

/** bpf_prog_query_opts(): the ids attached at (target, type) in order, or a negative errno; at most `max`. */
export function progQuery(target: number, type: number, max: number): number[] | number {
  const memory = allocNative(4 * max);
  try {
    const opts = { sz: ProgQueryOpts.size, query_flags: 0, attach_flags: 0, prog_ids: memory.pointer, prog_cnt: max, prog_attach_flags: null };
    const ret = progQueryOpts(target, type, opts) as number;
    if (ret < 0) return ret;
    const ids = new Uint32Array(memory.bytes.buffer, memory.bytes.byteOffset, max);
    return [...ids.subarray(0, Math.min(opts.prog_cnt, max))];
  } finally {
    memory.free();
  }
}

// --- libc ---------------------------------------------------------------------------------------

const closeFd = libc.func('int close(int fd)');
const mallocTrim = libc.func('int malloc_trim(size_t pad)');

/**
 * malloc_trim(3) with no padding: glibc returns every free page of its arenas to the system, not
 * only the top of the heap (which MALLOC_TRIM_THRESHOLD_ covers). @returns whether it released any.
 */
export function trimNativeHeap(): boolean {
  return (mallocTrim(0) as number) === 1;
}
const ifNameToIndex = libc.func('uint32_t if_nametoindex(const char *ifname)');
const Timespec = koffi.struct('timespec', { tv_sec: 'int64_t', tv_nsec: 'long' });
const clockGettime = libc.func('clock_gettime', 'int', ['int', koffi.out(koffi.pointer(Timespec))]);
const CLOCK_MONOTONIC_COARSE = 6;

/**
 * CLOCK_MONOTONIC_COARSE now, in ns: the clock of bpf_ktime_get_coarse_ns(), the time of the last
 * timer tick. It lags CLOCK_MONOTONIC by up to a tick, and by more when ticks come late (a loaded
 * or virtualized machine): a program's reading lies between two of these taken around it.
 */
export function monotonicCoarseNs(): bigint {
  const tp = { tv_sec: 0n, tv_nsec: 0 };
  if ((clockGettime(CLOCK_MONOTONIC_COARSE, tp) as number) !== 0) throw new Error('clock_gettime(CLOCK_MONOTONIC_COARSE) failed');
  return BigInt(tp.tv_sec) * 1_000_000_000n + BigInt(tp.tv_nsec);
}

/** close(2); errors are ignored (the fd is gone either way on Linux). */
export function close(fd: number): void {
  closeFd(fd);
}

const mmapFn = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const munmapFn = libc.func('int munmap(void *addr, size_t length)');
const PROT_READ_WRITE = 0x3;
const MAP_SHARED = 0x1;
const MAP_FAILED = 2n ** 64n - 1n;
const sysconf = libc.func('long sysconf(int name)');

/** The page size (sysconf(_SC_PAGESIZE)): an mmap's length is a multiple of it. */
export function pageSize(): number {
  return Number(sysconf(30 /* _SC_PAGESIZE */));
}

/** mmap(2) of `length` bytes of `fd` from offset 0, shared, read and write: the address, or a negative errno. */
export function mapShared(fd: number, length: number): bigint | number {
  const address = mmapFn(null, length, PROT_READ_WRITE, MAP_SHARED, fd, 0) as bigint;
  return address === MAP_FAILED ? -(koffi.errno() || 22) : address;
}

/** munmap(2); errors are ignored (only an address mapShared() returned, with its length, is passed). */
export function unmap(address: bigint, length: number): void {
  munmapFn(address, length);
}

/** `length` bytes at a native address (valid until it is unmapped or freed). */
export function viewNative(address: bigint, length: number): ArrayBuffer {
  return koffi.view(address, length) as ArrayBuffer;
}

/** if_nametoindex(3): the index, or 0 with errno set. */
export function nameToIndex(name: string): number {
  return ifNameToIndex(name) as number;
}

// --- native memory ------------------------------------------------------------------------------

/** Memory that does not move, for pointers libbpf keeps past one call. Free it exactly once. */
export interface NativeMemory {
  readonly pointer: bigint;
  readonly bytes: Uint8Array;
  free(): void;
}

/** Allocates zeroed native memory of `size` bytes. */
export function allocNative(size: number): NativeMemory {
  const pointer = koffi.alloc('uint8_t', size) as bigint;
  const bytes = new Uint8Array(koffi.view(pointer, size));
  bytes.fill(0);
  let freed = false;
  return {
    pointer,
    bytes,
    free() {
      if (freed) return;
      freed = true;
      koffi.free(pointer);
    },
  };
}
