import { ExitCode, type ExitCodeValue } from './exit-codes.js';
import type { FieldViolation } from '@edgeplane/proto';

/** A position in an input file, 1-based. */
export interface SourcePosition {
  file: string;
  line: number;
  col: number;
}

/** Formats `file:line:col`. */
export function formatPosition(pos: SourcePosition): string {
  return `${pos.file}:${pos.line}:${pos.col}`;
}

/** Base of the errors the command reports: each knows its exit code. */
export class CliError extends Error {
  override name = 'CliError';
  readonly exitCode: ExitCodeValue = ExitCode.ERROR;
}

/** The command line is wrong (unknown command or flag, missing argument). Exit code 2. */
export class UsageError extends CliError {
  override name = 'UsageError';
  override readonly exitCode: ExitCodeValue = ExitCode.USAGE;
}

/** One problem found in a manifest, at a position when known. */
export interface ManifestProblem {
  /** Where in the input, when known. */
  position?: SourcePosition;
  /** The proto field path (e.g. `policy.spec.rules[2].source_cidrs[0]`), when the problem is about a field. */
  field?: string;
  /** The input file when no position is known. */
  file?: string;
  message: string;
}

/** Formats one problem as `file:line:col: field: message`. */
export function formatProblem(p: ManifestProblem): string {
  const where = p.position ? `${formatPosition(p.position)}: ` : p.file ? `${p.file}: ` : '';
  return `${where}${p.field ? `${p.field}: ` : ''}${p.message}`;
}

/** A manifest does not parse, or does not describe a valid resource. Nothing was sent. */
export class ManifestError extends CliError {
  override name = 'ManifestError';
  constructor(
    readonly problems: ManifestProblem[],
    options?: ErrorOptions,
  ) {
    super(problems.map(formatProblem).join('\n'), options);
  }
}

/** A file or folder given with -f cannot be read. */
export class InputError extends CliError {
  override name = 'InputError';
}

/** A gRPC call failed. Carries the status code and the decoded BadRequest field violations. */
export class RpcError extends CliError {
  override name = 'RpcError';
  constructor(
    message: string,
    /** The gRPC status code. */
    readonly code: number,
    /** Field violations from the google.rpc.BadRequest details (empty if none). */
    readonly violations: FieldViolation[],
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** `apply --wait`: a node NACKed the revision being waited for. Exit code 3. */
export class NackError extends CliError {
  override name = 'NackError';
  override readonly exitCode: ExitCodeValue = ExitCode.NACK;
}

/** `apply --wait`: the fleet did not converge within --timeout. Exit code 4. */
export class WaitTimeoutError extends CliError {
  override name = 'WaitTimeoutError';
  override readonly exitCode: ExitCodeValue = ExitCode.TIMEOUT;
}

/** `apply --wait`: a rollout it followed failed (not on a NACK) or was aborted. Exit code 6. */
export class RolloutFailedError extends CliError {
  override name = 'RolloutFailedError';
  override readonly exitCode: ExitCodeValue = ExitCode.ROLLOUT_FAILED;
}
