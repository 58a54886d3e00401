// Program: a loaded BPF program behind a file descriptor.
import { check } from './check.js';
import { errnoError, LibbpfError } from './errors.js';
import * as native from './native.js';
import { unpinPath } from './pin.js';

const EBADF = 9;

/** Input of Program.testRun(). */
export interface TestRunOptions {
  /** The packet (or other input) the program runs on. */
  data: Uint8Array;
  /** Runs in the kernel; the reported duration is the average over them. Default 1. */
  repeat?: number;
  /**
   * Room for the output packet. Default data.length + 256 (XDP may grow the packet). A
   * BPF_PROG_TYPE_SYSCALL program takes no data: pass an empty `data`, `dataSizeOut: 0` and
   * `repeat: 0`, and its input in `ctxIn`.
   */
  dataSizeOut?: number;
  /** Input context (e.g. struct xdp_md, struct __sk_buff); default none. */
  ctxIn?: Uint8Array;
}

/** Output of Program.testRun(). */
export interface TestRunResult {
  /** The program's return value (XDP_DROP = 1, XDP_PASS = 2, TC_ACT_SHOT = 2...). */
  retval: number;
  /** The packet as the program left it. */
  data: Uint8Array;
  /** The kernel's average time per run, in nanoseconds. */
  durationNs: number;
}

/** What a Program needs to know about itself. */
export interface ProgramDescription {
  readonly name: string;
  /** libbpf's program type name ('xdp', 'sched_cls'...). */
  readonly type: string;
}

let invalidate: (program: Program) => void;

/** Marks a program borrowed from a BpfObject unusable; the object calls it when it closes. */
export function invalidateBorrowedProgram(program: Program): void {
  invalidate(program);
}

/**
 * A loaded BPF program. Obtain one from BpfObject.program(), Program.openPinned() or
 * Program.fromId(). A program from a BpfObject borrows the object's fd: its close() does nothing
 * and it stays usable until the object closes. Otherwise the Program owns its fd and close()
 * releases it. Closing never detaches: XDP and TC attachments made through netlink hold their
 * own reference in the kernel and stay until detached.
 */
export class Program {
  readonly name: string;
  /** libbpf's program type name ('xdp', 'sched_cls'...). */
  readonly type: string;
  #fd: number;
  #owned: boolean;
  #closed = false;
  #info: native.ProgInfoFields | undefined;

  static {
    invalidate = (program) => {
      program.#closed = true;
    };
  }

  /** Wraps `fd`; `owned` says whether close() closes it. Prefer the static factories. */
  constructor(fd: number, description: ProgramDescription, owned: boolean) {
    this.#fd = fd;
    this.#owned = owned;
    this.name = description.name;
    this.type = description.type;
  }

  /**
   * Opens the program pinned at `path` (bpf_obj_get).
   * @returns a Program owning a new fd; the pin stays.
   * @throws NotFoundError if nothing is pinned there.
   */
  static openPinned(path: string): Program {
    const operation = `program open pinned path=${path}`;
    return Program.#fromFd(check(operation, () => native.objGet(path)), operation);
  }

  /**
   * Opens the program with kernel id `id` (bpf_prog_get_fd_by_id), e.g. the one queryXdp() names.
   * @returns a Program owning a new fd.
   * @throws NotFoundError if no program has that id.
   */
  static fromId(id: number): Program {
    const operation = `program open id=${id}`;
    return Program.#fromFd(check(operation, () => native.progFdById(id)), operation);
  }

  static #fromFd(fd: number, operation: string): Program {
    const info = native.progInfo(fd);
    if (typeof info === 'number') {
      native.close(fd);
      throw errnoError(operation, info);
    }
    const program = new Program(fd, { name: info.name, type: native.enumName(native.progTypeNames, info.type) }, true);
    program.#info = info;
    return program;
  }

  /** The file descriptor. @throws LibbpfError EBADF once closed. */
  get fd(): number {
    if (this.#closed) throw new LibbpfError(`program fd name=${this.name}`, EBADF, { details: ['the program was closed'] });
    return this.#fd;
  }

  /** The kernel's id for this program (what XDP/TC queries report). */
  get id(): number {
    return this.#readInfo().id;
  }

  /** The kernel's tag: a hash of the instructions, as 16 hex digits (as bpftool shows it). */
  get tag(): string {
    return Buffer.from(this.#readInfo().tag).toString('hex');
  }

  /**
   * Instructions the verifier processed to load this program, its subprograms included
   * (bpf_prog_info.verified_insns, kernel 5.16+): what loading it cost, against the verifier's
   * limit of 1,000,000.
   */
  get verifiedInsns(): number {
    return this.#readInfo().verified_insns;
  }

  /**
   * Runs the program once or `repeat` times on `data` in the kernel (BPF_PROG_TEST_RUN),
   * without any interface.
   * @throws NotSupportedError for program types without test runs; LibbpfError (ENOSPC if
   * dataSizeOut is too small, EINVAL for a malformed packet or ctx).
   */
  testRun(options: TestRunOptions): TestRunResult {
    const dataSizeOut = options.dataSizeOut ?? options.data.length + 256;
    native.clearMessages();
    const result = native.testRun(this.fd, options.data, dataSizeOut, options.repeat ?? 1, options.ctxIn);
    if (result.ret < 0) throw errnoError(`program test run name=${this.name}`, result.ret, { details: native.takeMessages() });
    return { retval: result.retval, data: result.data, durationNs: result.durationNs };
  }

  /**
   * Pins the program at `path` on a bpffs (bpf_obj_pin); the pin keeps it loaded after every fd
   * is closed. @throws LibbpfError (EEXIST if the path exists, EPERM off bpffs).
   */
  pin(path: string): void {
    check(`program pin name=${this.name} path=${path}`, () => native.objPin(this.fd, path));
  }

  /** Removes the pin at `path` (unlink). @throws NotFoundError if there is none. */
  unpin(path: string): void {
    unpinPath(`program unpin name=${this.name} path=${path}`, path);
  }

  /** Releases the fd if this program owns it; idempotent. Never detaches or unpins. */
  close(): void {
    if (!this.#owned || this.#closed) return;
    this.#closed = true;
    native.close(this.#fd);
  }

  /** For `await using`: close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #readInfo(): native.ProgInfoFields {
    if (this.#info === undefined) {
      const info = native.progInfo(this.fd);
      if (typeof info === 'number') throw errnoError(`program info name=${this.name}`, info);
      this.#info = info;
    }
    return this.#info;
  }
}
