import type { FieldViolation } from '@edgeplane/proto';

/** A request is invalid; nothing was written. Maps to INVALID_ARGUMENT with BadRequest details. */
export class ValidationError extends Error {
  override name = 'ValidationError';
  constructor(
    message: string,
    readonly violations: FieldViolation[],
  ) {
    super(message);
  }
}

/** The named resource does not exist. Maps to NOT_FOUND. */
export class NotFoundError extends Error {
  override name = 'NotFoundError';
}

/** The resource changed since the version the caller expected. Maps to ABORTED. */
export class VersionConflictError extends Error {
  override name = 'VersionConflictError';
}

/** The request is valid but needs something the caller did not give (an override). Maps to FAILED_PRECONDITION. */
export class PreconditionError extends Error {
  override name = 'PreconditionError';
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}

/** The intent log cannot be reached or written now; the caller may retry. Maps to UNAVAILABLE. */
export class UnavailableError extends Error {
  override name = 'UnavailableError';
}

/** Someone the controller asked (an agent) did not answer in time. Maps to DEADLINE_EXCEEDED. */
export class DeadlineExceededError extends Error {
  override name = 'DeadlineExceededError';
}

/** Bad configuration (flags, environment, files). The controller does not start. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** The requested history was compacted away. Maps to FAILED_PRECONDITION (OUT_OF_RANGE in AIP terms). */
export class CompactedError extends Error {
  override name = 'CompactedError';
}

/** A NATS credential could not be issued or revoked (bad key, past expiry, servers unreachable). */
export class NatsAuthorityError extends Error {
  override name = 'NatsAuthorityError';
}

/** A certificate cannot be issued for the key or identity given. Maps to INVALID_ARGUMENT. */
export class CertificateIssueError extends Error {
  override name = 'CertificateIssueError';
}

/** The caller presented no usable identity (no client certificate, or a revoked one). Maps to UNAUTHENTICATED. */
export class UnauthenticatedError extends Error {
  override name = 'UnauthenticatedError';
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}

/** The caller's identity may not do this. Maps to PERMISSION_DENIED. */
export class PermissionDeniedError extends Error {
  override name = 'PermissionDeniedError';
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}
