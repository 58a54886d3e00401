import { ApplyPolicyRequest, ApplyServiceRequest, IntentServiceService, checkApplyPolicyWire, checkApplyServiceWire, type FieldViolation } from '@edgeplane/proto';

/** Requests the deserializer refused on their counts, with the violations found on the wire. */
const refused = new WeakMap<object, FieldViolation[]>();

/** A deserializer that runs `check` on the bytes first and, past a bound, returns an empty request marked with the violations. */
function prechecked<T extends object>(decode: (value: Buffer) => T, empty: () => T, check: (bytes: Uint8Array) => FieldViolation[]): (value: Buffer) => T {
  return (value) => {
    const violations = check(value);
    if (violations.length === 0) return decode(value);
    const req = empty();
    refused.set(req, violations);
    return req;
  };
}

/**
 * Returns IntentService's definition with ApplyPolicy and ApplyService deserializers that
 * first count the request's labels, selector terms and values, rules or backends, and waves on
 * the wire (checkApplyPolicyWire, checkApplyServiceWire) and, past a bound, hand the handler
 * an empty request marked with the violations instead of decoding every string (see
 * {@link wireViolations}). Throwing from a deserializer would become INTERNAL in grpc-js; the
 * handler turns the mark into INVALID_ARGUMENT through toStatus().
 */
export function intentServiceWithWirePrecheck(): typeof IntentServiceService {
  const policy = IntentServiceService.applyPolicy;
  const service = IntentServiceService.applyService;
  return {
    ...IntentServiceService,
    applyPolicy: { ...policy, requestDeserialize: prechecked(policy.requestDeserialize, () => ApplyPolicyRequest.fromPartial({}), checkApplyPolicyWire) },
    applyService: { ...service, requestDeserialize: prechecked(service.requestDeserialize, () => ApplyServiceRequest.fromPartial({}), checkApplyServiceWire) },
  };
}

/** Returns the violations the wire check found in a request, or undefined if it passed. */
export function wireViolations(req: object): FieldViolation[] | undefined {
  return refused.get(req);
}
