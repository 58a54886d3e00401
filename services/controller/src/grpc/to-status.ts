import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { MAX_LISTED_VIOLATIONS, MORE_VIOLATIONS_REASON, STATUS_DETAILS_KEY, countViolations, encodeStatusDetails, moreViolations, type FieldViolation } from '@edgeplane/proto';
import { ConflictError, EntryTooLargeError, LogUnavailableError } from '@edgeplane/intent-log';
import { IdleStreamError } from '../agent-sessions.js';
import {
  CompactedError,
  DeadlineExceededError,
  NotFoundError,
  PermissionDeniedError,
  PreconditionError,
  UnauthenticatedError,
  UnavailableError,
  ValidationError,
  VersionConflictError,
} from '../errors.js';

/** Where unexpected errors are reported before they become INTERNAL. */
export type ErrorLogger = (message: string, err: unknown) => void;

/** Characters of grpc-message (and of the Status message inside the details). */
export const MAX_STATUS_MESSAGE_LENGTH = 512;
/**
 * Bytes of grpc-message as sent: gRPC percent-encodes every byte outside printable ASCII, so
 * a character such as "€" takes 9. The message is cut to fit this as well.
 */
export const MAX_STATUS_MESSAGE_WIRE_BYTES = 1024;
/** Characters of one violation's field path and of its description. */
const MAX_FIELD_LENGTH = 256;
const MAX_DESCRIPTION_LENGTH = 512;
/**
 * Bytes of the encoded google.rpc.Status. Sent base64 (4/3 larger) beside grpc-message
 * (percent-encoded, up to 3x for non-ASCII): 4 KiB + 512 x 3 stays under the 8 KiB a default
 * gRPC client (C-core's grpc.max_metadata_size) accepts for the whole trailer.
 */
export const MAX_STATUS_DETAILS_BYTES = 4096;

function cut(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = max - 1;
  const c = text.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--;
  return text.slice(0, end) + '…';
}

/** Cuts a grpc-message so its percent-encoded form (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) fits `maxWire` bytes. */
function cutForWire(text: string, maxWire: number): string {
  let wire = 0;
  let i = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    const bytes = cp >= 0x20 && cp <= 0x7e && cp !== 0x25 ? 1 : 3 * Buffer.byteLength(ch);
    // Leave room for the 9 bytes of "…".
    if (wire + bytes > maxWire - 9) return text.slice(0, i) + '…';
    wire += bytes;
    i += ch.length;
  }
  return text;
}

/**
 * Bounds a violation list for the wire: at most MAX_LISTED_VIOLATIONS entries, each cut to a
 * field and description length, then one "and K more" entry counting everything left out
 * (including what validation already only counted), dropping listed entries until the encoded
 * status fits MAX_STATUS_DETAILS_BYTES.
 */
function boundViolations(code: number, message: string, violations: readonly FieldViolation[]): { fieldViolations: FieldViolation[]; bytes: Uint8Array } {
  const total = countViolations(violations);
  const listed = violations
    .filter((v) => v.reason !== MORE_VIOLATIONS_REASON)
    .slice(0, MAX_LISTED_VIOLATIONS)
    .map((v) => ({ field: cut(v.field, MAX_FIELD_LENGTH), description: cut(v.description, MAX_DESCRIPTION_LENGTH), ...(v.reason ? { reason: cut(v.reason, 64) } : {}) }));
  for (let keep = listed.length; ; keep--) {
    const list: FieldViolation[] = listed.slice(0, keep);
    const left = total - keep;
    if (left > 0) {
      const more = moreViolations(list[list.length - 1]?.field ?? violations[0]?.field ?? '', left);
      list.push({ field: more.field, description: more.description, reason: MORE_VIOLATIONS_REASON });
    }
    const bytes = encodeStatusDetails({ code, message, fieldViolations: list });
    if (bytes.length <= MAX_STATUS_DETAILS_BYTES || keep === 0) return { fieldViolations: list, bytes };
  }
}

function withDetails(code: status, message: string, details: Parameters<typeof encodeStatusDetails>[0]): Partial<ServiceError> {
  const bounded = cutForWire(cut(message, MAX_STATUS_MESSAGE_LENGTH), MAX_STATUS_MESSAGE_WIRE_BYTES);
  const { fieldViolations, bytes } = boundViolations(details.code, bounded, details.fieldViolations);
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(details.errorInfo ? encodeStatusDetails({ ...details, message: bounded, fieldViolations }) : bytes));
  return { code, details: bounded, metadata };
}

/**
 * The one place domain errors become gRPC statuses (STYLE.md): INVALID_ARGUMENT with
 * google.rpc.BadRequest field violations, NOT_FOUND, ABORTED, FAILED_PRECONDITION with an
 * ErrorInfo reason, DEADLINE_EXCEEDED, UNAUTHENTICATED and PERMISSION_DENIED with an ErrorInfo reason, UNAVAILABLE; anything else is INTERNAL and logged. Every status fits a
 * default client's metadata limit: grpc-message is cut to MAX_STATUS_MESSAGE_LENGTH
 * characters, the details to MAX_LISTED_VIOLATIONS violations ("and K more") and
 * MAX_STATUS_DETAILS_BYTES bytes.
 */
export function toStatus(err: unknown, log: ErrorLogger): Partial<ServiceError> {
  if (err instanceof ValidationError) {
    return withDetails(status.INVALID_ARGUMENT, err.message, { code: status.INVALID_ARGUMENT, message: err.message, fieldViolations: err.violations });
  }
  if (err instanceof EntryTooLargeError) {
    return withDetails(status.INVALID_ARGUMENT, err.message, {
      code: status.INVALID_ARGUMENT,
      message: err.message,
      fieldViolations: [{ field: 'policy', description: err.message, reason: 'ENTRY_TOO_LARGE' }],
    });
  }
  if (err instanceof NotFoundError) return { code: status.NOT_FOUND, details: cutForWire(cut(err.message, MAX_STATUS_MESSAGE_LENGTH), MAX_STATUS_MESSAGE_WIRE_BYTES) };
  if (err instanceof VersionConflictError) return { code: status.ABORTED, details: cutForWire(cut(err.message, MAX_STATUS_MESSAGE_LENGTH), MAX_STATUS_MESSAGE_WIRE_BYTES) };
  if (err instanceof PreconditionError) {
    return withDetails(status.FAILED_PRECONDITION, err.message, {
      code: status.FAILED_PRECONDITION,
      message: err.message,
      fieldViolations: [],
      errorInfo: { reason: err.reason, domain: 'edgeplane.io', metadata: {} },
    });
  }
  if (err instanceof UnauthenticatedError || err instanceof PermissionDeniedError) {
    const code = err instanceof UnauthenticatedError ? status.UNAUTHENTICATED : status.PERMISSION_DENIED;
    return withDetails(code, err.message, { code, message: err.message, fieldViolations: [], errorInfo: { reason: err.reason, domain: 'edgeplane.io', metadata: {} } });
  }
  if (err instanceof DeadlineExceededError) return { code: status.DEADLINE_EXCEEDED, details: cutForWire(cut(err.message, MAX_STATUS_MESSAGE_LENGTH), MAX_STATUS_MESSAGE_WIRE_BYTES) };
  if (err instanceof IdleStreamError) return { code: status.UNAVAILABLE, details: cutForWire(cut(err.message, MAX_STATUS_MESSAGE_LENGTH), MAX_STATUS_MESSAGE_WIRE_BYTES) };
  if (err instanceof CompactedError) return { code: status.OUT_OF_RANGE, details: cutForWire(cut(err.message, MAX_STATUS_MESSAGE_LENGTH), MAX_STATUS_MESSAGE_WIRE_BYTES) };
  if (err instanceof UnavailableError || err instanceof LogUnavailableError || err instanceof ConflictError) {
    return { code: status.UNAVAILABLE, details: cutForWire(cut(err.message, MAX_STATUS_MESSAGE_LENGTH), MAX_STATUS_MESSAGE_WIRE_BYTES) };
  }
  log('internal error', err);
  return { code: status.INTERNAL, details: 'internal error' };
}
