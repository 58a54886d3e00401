import { type Any } from '../gen/google/protobuf/any.js';
import { BadRequest, ErrorInfo } from '../gen/google/rpc/error_details.js';
import { Status } from '../gen/google/rpc/status.js';

/**
 * The binary metadata key gRPC uses for rich error details: a serialized google.rpc.Status
 * (https://grpc.io/docs/guides/error/#richer-error-model). Clients in every language read it.
 */
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

const TYPE_PREFIX = 'type.googleapis.com/';

/** One invalid field: its path in the request (e.g. `policy.spec.rules[2].source_cidrs[0]`). */
export interface FieldViolation {
  field: string;
  description: string;
  /** A short UPPER_SNAKE reason code, e.g. `NON_CANONICAL_CIDR`. */
  reason?: string;
  /**
   * Set on the last entry of a list that was cut short (reason MORE_VIOLATIONS_REASON): how
   * many violations it stands for. Not sent on the wire; the description says it.
   */
  omitted?: number;
}

/** The reason of the entry that stands for violations left out of a list ("and K more"). */
export const MORE_VIOLATIONS_REASON = 'MORE_VIOLATIONS';

/** Returns the entry that stands for `count` violations left out, under `field`. */
export function moreViolations(field: string, count: number): FieldViolation {
  return { field, description: `and ${count} more problem${count === 1 ? '' : 's'} not listed`, reason: MORE_VIOLATIONS_REASON, omitted: count };
}

/** Returns how many violations a list stands for, counting what its MORE_VIOLATIONS entries left out. */
export function countViolations(violations: readonly FieldViolation[]): number {
  let n = 0;
  for (const v of violations) n += v.reason === MORE_VIOLATIONS_REASON && v.omitted !== undefined ? v.omitted : 1;
  return n;
}

/** The rich details decoded from a status. */
export interface StatusDetails {
  code: number;
  message: string;
  fieldViolations: FieldViolation[];
  errorInfo?: { reason: string; domain: string; metadata: Record<string, string> };
}

/**
 * Returns the serialized google.rpc.Status for a gRPC error with BadRequest field violations
 * and, optionally, an ErrorInfo. Put it in the trailer under STATUS_DETAILS_KEY.
 */
export function encodeStatusDetails(details: StatusDetails): Uint8Array {
  const anys: Any[] = [];
  if (details.fieldViolations.length > 0) {
    anys.push({
      typeUrl: TYPE_PREFIX + 'google.rpc.BadRequest',
      value: Buffer.from(
        BadRequest.encode({
          fieldViolations: details.fieldViolations.map((v) => ({ field: v.field, description: v.description, reason: v.reason ?? '' })),
        }).finish(),
      ),
    });
  }
  if (details.errorInfo) {
    anys.push({ typeUrl: TYPE_PREFIX + 'google.rpc.ErrorInfo', value: Buffer.from(ErrorInfo.encode(details.errorInfo).finish()) });
  }
  return Status.encode({ code: details.code, message: details.message, details: anys }).finish();
}

/**
 * Decodes a serialized google.rpc.Status, keeping the BadRequest and ErrorInfo details it
 * knows and skipping the others. Returns undefined if the bytes do not decode.
 */
export function decodeStatusDetails(bytes: Uint8Array): StatusDetails | undefined {
  let status: Status;
  try {
    status = Status.decode(bytes);
  } catch {
    return undefined;
  }
  const result: StatusDetails = { code: status.code, message: status.message, fieldViolations: [] };
  for (const any of status.details) {
    if (any.typeUrl === TYPE_PREFIX + 'google.rpc.BadRequest') {
      for (const v of BadRequest.decode(any.value).fieldViolations) {
        result.fieldViolations.push({ field: v.field, description: v.description, ...(v.reason ? { reason: v.reason } : {}) });
      }
    } else if (any.typeUrl === TYPE_PREFIX + 'google.rpc.ErrorInfo') {
      const info = ErrorInfo.decode(any.value);
      result.errorInfo = { reason: info.reason, domain: info.domain, metadata: info.metadata };
    }
  }
  return result;
}
