import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { STATUS_DETAILS_KEY, encodeStatusDetails } from '@edgeplane/proto';
import { ConflictError, EntryTooLargeError, LogUnavailableError } from '@edgeplane/intent-log';
import { IdleStreamError } from '../agent-sessions.js';
import {
  CompactedError,
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

function withDetails(code: status, message: string, details: Parameters<typeof encodeStatusDetails>[0]): Partial<ServiceError> {
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(encodeStatusDetails(details)));
  return { code, details: message, metadata };
}

/**
 * The one place domain errors become gRPC statuses (STYLE.md): INVALID_ARGUMENT with
 * google.rpc.BadRequest field violations, NOT_FOUND, ABORTED, FAILED_PRECONDITION with an
 * ErrorInfo reason, UNAUTHENTICATED and PERMISSION_DENIED with an ErrorInfo reason, UNAVAILABLE; anything else is INTERNAL and logged.
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
  if (err instanceof NotFoundError) return { code: status.NOT_FOUND, details: err.message };
  if (err instanceof VersionConflictError) return { code: status.ABORTED, details: err.message };
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
  if (err instanceof IdleStreamError) return { code: status.UNAVAILABLE, details: err.message };
  if (err instanceof CompactedError) return { code: status.OUT_OF_RANGE, details: err.message };
  if (err instanceof UnavailableError || err instanceof LogUnavailableError || err instanceof ConflictError) {
    return { code: status.UNAVAILABLE, details: err.message };
  }
  log('internal error', err);
  return { code: status.INTERNAL, details: 'internal error' };
}
