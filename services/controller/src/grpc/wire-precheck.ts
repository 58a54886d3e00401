import { ApplyPolicyRequest, IntentServiceService, checkApplyPolicyWire, type FieldViolation } from '@edgeplane/proto';

/** Requests the deserializer refused on their counts, with the violations found on the wire. */
const refused = new WeakMap<object, FieldViolation[]>();

/**
 * Returns IntentService's definition with an ApplyPolicy deserializer that first counts the
 * request's labels, selector terms and values, rules and waves on the wire
 * (checkApplyPolicyWire) and, past a bound, hands the handler an empty request marked with
 * the violations instead of decoding every string (see {@link wireViolations}). Throwing from
 * a deserializer would become INTERNAL in grpc-js; the handler turns the mark into
 * INVALID_ARGUMENT through toStatus().
 */
export function intentServiceWithWirePrecheck(): typeof IntentServiceService {
  const apply = IntentServiceService.applyPolicy;
  return {
    ...IntentServiceService,
    applyPolicy: {
      ...apply,
      requestDeserialize: (value: Buffer): ApplyPolicyRequest => {
        const violations = checkApplyPolicyWire(value);
        if (violations.length === 0) return apply.requestDeserialize(value);
        const req = ApplyPolicyRequest.fromPartial({});
        refused.set(req, violations);
        return req;
      },
    },
  };
}

/** Returns the violations the wire check found in a request, or undefined if it passed. */
export function wireViolations(req: object): FieldViolation[] | undefined {
  return refused.get(req);
}
