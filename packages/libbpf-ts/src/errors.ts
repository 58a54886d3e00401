// The error classes of libbpf-ts. Native errors (negative errno returns, errno after a NULL
// pointer, verifier logs) are translated here once; callers above this package never see errno
// arithmetic. Messages read `${operation}: ${code} (${strerror})`, then libbpf's own warnings.
import { errnoNames, strerror } from './native.js';

const ENOENT = 2;
const EOPNOTSUPP = 95;
const ENOTSUPP = 524; // kernel-internal, returned by bpf(2) for unsupported map operations

/** Options every libbpf-ts error accepts. */
export interface LibbpfErrorOptions {
  /** The underlying error, if this one wraps another. */
  cause?: unknown;
  /** libbpf messages (its print callback) or other detail appended to the message. */
  details?: readonly string[];
}

/**
 * A libbpf or bpf(2) call failed. `errno` is positive (libbpf returns it negated), `code` is its
 * name ('EINVAL', 'EPERM', 'E2BIG', 'LIBBPF_ERRNO__FORMAT'...), `operation` names what was being
 * done ('map update name=rules'), `details` holds libbpf's own messages for the operation.
 */
export class LibbpfError extends Error {
  override name = 'LibbpfError';
  readonly errno: number;
  readonly code: string;
  readonly operation: string;
  readonly details: readonly string[];

  constructor(operation: string, errno: number, options: LibbpfErrorOptions = {}) {
    const positive = Math.abs(errno);
    const code = errnoNames.get(positive) ?? `E${positive}`;
    const details = options.details ?? [];
    const detailText = details.length > 0 ? `\n${details.join('\n')}` : '';
    super(`${operation}: ${code} (${strerror(positive)})${detailText}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.errno = positive;
    this.code = code;
    this.operation = operation;
    this.details = details;
  }
}

/**
 * The kernel verifier rejected a program. `log` holds the verifier log of the failing program
 * (its last lines are also in the message); `program` names it.
 */
export class VerifierError extends LibbpfError {
  override name = 'VerifierError';
  readonly log: string;
  readonly program: string;

  constructor(operation: string, errno: number, program: string, log: string, options: LibbpfErrorOptions = {}) {
    const tail = log.trimEnd().split('\n').slice(-4);
    super(operation, errno, { ...options, details: [`verifier log of program ${program} (last lines):`, ...tail, ...(options.details ?? [])] });
    this.log = log;
    this.program = program;
  }
}

/** The kernel or the device lacks a feature (EOPNOTSUPP, ENOTSUPP) for the operation. */
export class NotSupportedError extends LibbpfError {
  override name = 'NotSupportedError';
}

/** What was looked up (pinned path, id, interface, key where absence is an error) does not exist. */
export class NotFoundError extends LibbpfError {
  override name = 'NotFoundError';
}

/**
 * Translates a failed call's errno (positive or negative) into the matching error class:
 * ENOENT -> NotFoundError, EOPNOTSUPP/ENOTSUPP -> NotSupportedError, else LibbpfError.
 */
export function errnoError(operation: string, errno: number, options: LibbpfErrorOptions = {}): LibbpfError {
  const positive = Math.abs(errno);
  if (positive === ENOENT) return new NotFoundError(operation, positive, options);
  if (positive === EOPNOTSUPP || positive === ENOTSUPP) return new NotSupportedError(operation, positive, options);
  return new LibbpfError(operation, positive, options);
}
