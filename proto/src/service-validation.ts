import { Protocol } from '../gen/edgeplane/v1/policy.js';
import { ForwardingMode, HealthCheck_Type, Scheduler, SessionAffinity, type Backend, type HealthCheck, type Service } from '../gen/edgeplane/v1/service.js';
import type { Duration } from '../gen/google/protobuf/duration.js';
import { isAddressProblem, parseCanonicalAddress } from './cidr.js';
import { validateLabelSelector } from './label-selector.js';
import {
  MAX_BACKEND_WEIGHT,
  MAX_HEALTH_CHECK_INTERVAL_MS,
  MAX_HEALTH_CHECK_PATH_LENGTH,
  MAX_HEALTH_CHECK_THRESHOLD,
  MAX_SERVICE_BACKENDS,
  MIN_HEALTH_CHECK_INTERVAL_MS,
  quote,
} from './limits.js';
import { MAGLEV_MIN_SLOTS_PER_BACKEND, MAGLEV_TABLE_SIZES } from './maglev-sizes.js';
import { collectViolations, DEFAULT_POLICY_LIMITS, validateObjectMeta, validateRolloutStrategy, type AddViolation } from './policy-validation.js';
import type { FieldViolation } from './status-details.js';

/** A health check's interval when unset (HealthCheck.interval). */
export const DEFAULT_HEALTH_CHECK_INTERVAL_MS = 5000;
/** A health check's timeout when unset, unless the interval is shorter (HealthCheck.timeout). */
export const DEFAULT_HEALTH_CHECK_TIMEOUT_MS = 2000;

/** A duration in milliseconds, or undefined when it is negative or its nanos are out of range. */
function durationMs(d: Duration): number | undefined {
  if (d.seconds < 0n || d.nanos < 0 || d.nanos > 999_999_999) return undefined;
  // Anything past a day is out of every bound here; clamping keeps the number exact.
  const seconds = d.seconds > 86_400n ? 86_401 : Number(d.seconds);
  return seconds * 1000 + d.nanos / 1e6;
}

/**
 * Validates a whole service as a write would store it and returns the problems found (empty
 * when valid), like validatePolicy: the first MAX_COLLECTED_VIOLATIONS, then one entry counting
 * the rest; field paths use proto field names under `path` (e.g.
 * `service.spec.backends[3].address`); offending values are quoted short. Linear in the
 * service's size. Pure: the controller runs it before writing, and agents again before applying.
 *
 * All backends drained (weight 0) is valid: the service then takes no new flows, and the flows
 * it already carries keep their backends until they end.
 */
export function validateService(service: Service | undefined, path = 'service'): FieldViolation[] {
  const { out, add, result } = collectViolations(path);
  if (!service) {
    add(path, 'required', 'REQUIRED');
    return out;
  }
  validateObjectMeta(service.metadata, `${path}.metadata`, DEFAULT_POLICY_LIMITS.maxAnnotationBytes, add);
  const spec = service.spec;
  if (!spec) {
    add(`${path}.spec`, 'required', 'REQUIRED');
    return result();
  }
  const sp = `${path}.spec`;
  for (const v of validateLabelSelector(spec.nodeSelector, `${sp}.node_selector`)) add(v.field, v.description, v.reason ?? 'INVALID');

  let vipFamily: 4 | 6 | undefined;
  if (spec.vip === '') add(`${sp}.vip`, 'required: one IPv4 or IPv6 address', 'REQUIRED');
  else {
    const vip = parseCanonicalAddress(spec.vip);
    if (isAddressProblem(vip)) add(`${sp}.vip`, vip.description, vip.reason);
    else if (vip.bytes.every((b) => b === 0)) add(`${sp}.vip`, `${quote(spec.vip)} is the unspecified address; a VIP must be one host's address`, 'INVALID_ADDRESS');
    else vipFamily = vip.family;
  }
  if (spec.protocol !== Protocol.PROTOCOL_TCP && spec.protocol !== Protocol.PROTOCOL_UDP) {
    add(`${sp}.protocol`, spec.protocol === Protocol.PROTOCOL_UNSPECIFIED ? 'required: TCP or UDP' : 'must be TCP or UDP (a service balances flows by port)', spec.protocol === Protocol.PROTOCOL_UNSPECIFIED ? 'REQUIRED' : 'INVALID_PROTOCOL');
  }
  if (spec.port < 1 || spec.port > 65535) add(`${sp}.port`, `port ${spec.port} is not in 1..65535`, 'PORT_OUT_OF_RANGE');
  const dsr = spec.forwardingMode === ForwardingMode.FORWARDING_MODE_DSR;

  const backends = spec.backends;
  if (backends.length === 0) add(`${sp}.backends`, 'a service needs at least one backend', 'REQUIRED');
  if (backends.length > MAX_SERVICE_BACKENDS) {
    add(`${sp}.backends`, `${backends.length} backends; at most ${MAX_SERVICE_BACKENDS}`, 'TOO_MANY_BACKENDS');
    // Not checked one by one: that work would be the caller's to choose.
  } else {
    const seen = new Map<string, number>();
    backends.forEach((b, i) => validateBackend(b, `${sp}.backends[${i}]`, { vip: spec.vip, vipFamily, port: spec.port, dsr }, seen, i, add));
  }

  if (spec.scheduler !== Scheduler.SCHEDULER_UNSPECIFIED && spec.scheduler !== Scheduler.SCHEDULER_MAGLEV) add(`${sp}.scheduler`, `unknown scheduler ${spec.scheduler}`, 'INVALID_ENUM');
  if (spec.maglevTableSize !== 0) {
    if (!MAGLEV_TABLE_SIZES.includes(spec.maglevTableSize)) {
      add(`${sp}.maglev_table_size`, `${spec.maglevTableSize} is not a supported size; 0 (the smallest that fits) or one of ${MAGLEV_TABLE_SIZES.join(', ')}`, 'INVALID_TABLE_SIZE');
    } else if (spec.maglevTableSize < MAGLEV_MIN_SLOTS_PER_BACKEND * backends.length) {
      add(`${sp}.maglev_table_size`, `${spec.maglevTableSize} slots for ${backends.length} backends; at least ${MAGLEV_MIN_SLOTS_PER_BACKEND} per backend (${MAGLEV_MIN_SLOTS_PER_BACKEND * backends.length}); 0 picks the smallest that fits`, 'TABLE_TOO_SMALL');
    }
  }
  if (![SessionAffinity.SESSION_AFFINITY_UNSPECIFIED, SessionAffinity.SESSION_AFFINITY_NONE, SessionAffinity.SESSION_AFFINITY_CLIENT_IP].includes(spec.sessionAffinity)) {
    add(`${sp}.session_affinity`, `unknown session affinity ${spec.sessionAffinity}`, 'INVALID_ENUM');
  }
  if (![ForwardingMode.FORWARDING_MODE_UNSPECIFIED, ForwardingMode.FORWARDING_MODE_NAT, ForwardingMode.FORWARDING_MODE_DSR, ForwardingMode.FORWARDING_MODE_FULLNAT].includes(spec.forwardingMode)) {
    add(`${sp}.forwarding_mode`, `unknown forwarding mode ${spec.forwardingMode}`, 'INVALID_ENUM');
  }
  if (spec.healthCheck) validateHealthCheck(spec.healthCheck, `${sp}.health_check`, add);
  validateRolloutStrategy(spec.rolloutStrategy, `${sp}.rollout_strategy`, add, { shadow: false });
  if (spec.description.length > DEFAULT_POLICY_LIMITS.maxDescription) add(`${sp}.description`, `at most ${DEFAULT_POLICY_LIMITS.maxDescription} characters`, 'TOO_LONG');
  return result();
}

interface ServiceContext {
  vip: string;
  /** The VIP's family, when the VIP is valid. */
  vipFamily: 4 | 6 | undefined;
  port: number;
  dsr: boolean;
}

function validateBackend(b: Backend, bp: string, svc: ServiceContext, seen: Map<string, number>, i: number, add: AddViolation): void {
  let addressOk = false;
  if (b.address === '') add(`${bp}.address`, 'required: one IPv4 or IPv6 address', 'REQUIRED');
  else {
    const a = parseCanonicalAddress(b.address);
    if (isAddressProblem(a)) add(`${bp}.address`, a.description, a.reason);
    else if (a.bytes.every((x) => x === 0)) add(`${bp}.address`, `${quote(b.address)} is the unspecified address`, 'INVALID_ADDRESS');
    else if (svc.vipFamily !== undefined && a.family !== svc.vipFamily) add(`${bp}.address`, `${quote(b.address)} is IPv${a.family}, the VIP is IPv${svc.vipFamily}; a backend has the VIP's family`, 'FAMILY_MISMATCH');
    else if (b.address === svc.vip) add(`${bp}.address`, `${quote(b.address)} is the VIP itself`, 'BACKEND_IS_VIP');
    else addressOk = true;
  }
  if (b.port > 65535) add(`${bp}.port`, `port ${b.port} is not in 0..65535 (0: the service's port)`, 'PORT_OUT_OF_RANGE');
  else if (svc.dsr && b.port !== 0 && b.port !== svc.port) {
    add(`${bp}.port`, `port ${b.port} differs from the service's ${svc.port}: with direct server return the backend answers from the VIP's port itself, so the port cannot be translated`, 'DSR_PORT_MISMATCH');
  } else if (addressOk) {
    const key = `${b.address} ${b.port === 0 ? svc.port : b.port}`;
    const first = seen.get(key);
    if (first !== undefined) add(`${bp}`, `${quote(b.address)} port ${b.port === 0 ? svc.port : b.port} repeats backends[${first}]`, 'DUPLICATE_BACKEND');
    else seen.set(key, i);
  }
  if (b.weight !== undefined && (b.weight < 0 || b.weight > MAX_BACKEND_WEIGHT)) add(`${bp}.weight`, `weight ${b.weight} is not in 0..${MAX_BACKEND_WEIGHT} (0 drains the backend)`, 'OUT_OF_RANGE');
}

function validateHealthCheck(hc: HealthCheck, hp: string, add: AddViolation): void {
  const known = [HealthCheck_Type.TYPE_UNSPECIFIED, HealthCheck_Type.TYPE_TCP, HealthCheck_Type.TYPE_HTTP];
  if (!known.includes(hc.type)) add(`${hp}.type`, `unknown health check type ${hc.type}; TCP or HTTP`, 'INVALID_ENUM');
  if (hc.httpPath !== '') {
    if (hc.type !== HealthCheck_Type.TYPE_HTTP) add(`${hp}.http_path`, 'only allowed with type HTTP', 'NOT_ALLOWED');
    else if (hc.httpPath.length > MAX_HEALTH_CHECK_PATH_LENGTH) add(`${hp}.http_path`, `${hc.httpPath.length} characters; at most ${MAX_HEALTH_CHECK_PATH_LENGTH}`, 'TOO_LONG');
    else if (hc.httpPath.charCodeAt(0) !== 47) add(`${hp}.http_path`, `${quote(hc.httpPath)} must start with "/"`, 'INVALID_PATH');
    else {
      // The path goes into a request line as it is: a space or a control character would end
      // the line or the request (RFC 9112 section 3), so only printable ASCII without spaces.
      for (let i = 0; i < hc.httpPath.length; i++) {
        const c = hc.httpPath.charCodeAt(i);
        if (c <= 0x20 || c >= 0x7f) {
          add(`${hp}.http_path`, `${quote(hc.httpPath)} has a character that is not printable ASCII at ${i}; percent-encode it`, 'INVALID_PATH');
          break;
        }
      }
    }
  }
  if (hc.port > 65535) add(`${hp}.port`, `port ${hc.port} is not in 0..65535 (0: each backend's port)`, 'PORT_OUT_OF_RANGE');
  let interval = DEFAULT_HEALTH_CHECK_INTERVAL_MS;
  if (hc.interval) {
    const ms = durationMs(hc.interval);
    if (ms === undefined || ms < MIN_HEALTH_CHECK_INTERVAL_MS || ms > MAX_HEALTH_CHECK_INTERVAL_MS) {
      add(`${hp}.interval`, `must be between ${MIN_HEALTH_CHECK_INTERVAL_MS / 1000} s and ${MAX_HEALTH_CHECK_INTERVAL_MS / 60_000} min`, 'OUT_OF_RANGE');
      interval = NaN;
    } else interval = ms;
  }
  if (hc.timeout) {
    const ms = durationMs(hc.timeout);
    if (ms === undefined || ms <= 0) add(`${hp}.timeout`, 'must be positive', 'OUT_OF_RANGE');
    else if (ms >= interval) add(`${hp}.timeout`, `${ms} ms is not less than the interval (${interval} ms): a probe ends before the next starts`, 'TIMEOUT_NOT_BELOW_INTERVAL');
  }
  if (hc.healthyThreshold > MAX_HEALTH_CHECK_THRESHOLD) add(`${hp}.healthy_threshold`, `${hc.healthyThreshold} is not in 0..${MAX_HEALTH_CHECK_THRESHOLD} (0: 2)`, 'OUT_OF_RANGE');
  if (hc.unhealthyThreshold > MAX_HEALTH_CHECK_THRESHOLD) add(`${hp}.unhealthy_threshold`, `${hc.unhealthyThreshold} is not in 0..${MAX_HEALTH_CHECK_THRESHOLD} (0: 2)`, 'OUT_OF_RANGE');
}

/** A health check with every default of HealthCheck's comments applied. */
export interface ResolvedHealthCheck {
  kind: 'tcp' | 'http';
  /** The HTTP probe's request path ("/" when unset; "/" for TCP, unused). */
  httpPath: string;
  /** The port probed; 0: each backend's own. */
  port: number;
  intervalMs: number;
  timeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
}

/**
 * Applies HealthCheck's defaults (the one place they are read): TCP, interval 5 s, timeout 2 s
 * or the interval when it is shorter, thresholds 2 and 2, path "/". Assumes a valid check
 * (validateService); pure.
 */
export function resolveHealthCheck(hc: HealthCheck): ResolvedHealthCheck {
  const intervalMs = (hc.interval && durationMs(hc.interval)) || DEFAULT_HEALTH_CHECK_INTERVAL_MS;
  const timeoutMs = (hc.timeout && durationMs(hc.timeout)) || Math.min(DEFAULT_HEALTH_CHECK_TIMEOUT_MS, intervalMs);
  return {
    kind: hc.type === HealthCheck_Type.TYPE_HTTP ? 'http' : 'tcp',
    httpPath: hc.httpPath || '/',
    port: hc.port,
    intervalMs,
    timeoutMs,
    healthyThreshold: hc.healthyThreshold || 2,
    unhealthyThreshold: hc.unhealthyThreshold || 2,
  };
}

/** A backend's port: its own, or the service's when it says 0. */
export function backendPort(service: Service, backend: Backend): number {
  return backend.port || (service.spec?.port ?? 0);
}
