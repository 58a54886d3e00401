// Trace-context propagation across process boundaries: the W3C `TraceContext` message carried
// in a signed log entry, and NATS message headers. Only `@opentelemetry/api` and the W3C
// propagator from `@opentelemetry/core` are used, so a service can call these whether or not
// `startTelemetry` ran in its process.
//
// Spec: https://www.w3.org/TR/trace-context/

import {
  context,
  propagation,
  type Context,
  type TextMapGetter,
  type TextMapPropagator,
  type TextMapSetter,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';

/** The W3C trace context as it travels in `edgeplane.v1.TraceContext`. Empty string = absent. */
export interface TraceContextCarrier {
  traceparent: string;
  tracestate?: string;
}

/**
 * The part of a message-header object that `injectNatsHeaders` writes to. The NATS v3
 * `MsgHdrs` (from `@nats-io/nats-core`'s `headers()`) and a `Map<string, string>` both fit;
 * the package does not depend on a NATS client.
 */
export interface HeaderSetter {
  set(key: string, value: string): void;
}

/**
 * The part of a message-header object that `extractNatsHeaders` reads. `get` may return `''`
 * (as `MsgHdrs` does) or `undefined` (as `Map` does) for a missing key. When `keys` is there,
 * a key that differs only in case (`Traceparent` from a publisher that canonicalises header
 * names) is found too.
 */
export interface HeaderGetter {
  get(key: string): string | undefined;
  keys?(): Iterable<string>;
}

// Used when no propagator is registered globally (the API's default is a no-op), and always for
// the TraceContext message, whose fields are W3C by definition.
const w3c = new W3CTraceContextPropagator();

const recordSetter: TextMapSetter<Record<string, string>> = {
  set(carrier, key, value) {
    carrier[key] = value;
  },
};

const recordGetter: TextMapGetter<Record<string, string>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key],
};

const headerSetter: TextMapSetter<HeaderSetter> = {
  set(carrier, key, value) {
    carrier.set(key, value);
  },
};

const headerGetter: TextMapGetter<HeaderGetter> = {
  keys(carrier) {
    return carrier.keys === undefined ? [] : [...carrier.keys()];
  },
  get(carrier, key) {
    const value = carrier.get(key);
    if (value !== undefined && value !== '') return value;
    if (carrier.keys === undefined) return undefined;
    const lower = key.toLowerCase();
    for (const k of carrier.keys()) {
      if (k.toLowerCase() === lower) {
        const v = carrier.get(k);
        return v === '' ? undefined : v;
      }
    }
    return undefined;
  },
};

/** The globally registered propagator, or the W3C one when nothing is registered. */
function headerPropagator(): Pick<TextMapPropagator, 'inject' | 'extract'> {
  // The API's no-op propagator reports no fields; an SDK-registered one reports its headers.
  return propagation.fields().length > 0 ? propagation : w3c;
}

/**
 * The W3C trace context of the span in `ctx` (default: the active context), for the
 * `TraceContext { traceparent, tracestate }` message of a log entry. Returns empty strings
 * when there is no valid span (or the SDK is not started and no context was given). Never
 * throws. The returned object is the caller's.
 */
export function injectTraceContext(ctx: Context = context.active()): {
  traceparent: string;
  tracestate: string;
} {
  const carrier: Record<string, string> = {};
  w3c.inject(ctx, carrier, recordSetter);
  return { traceparent: carrier['traceparent'] ?? '', tracestate: carrier['tracestate'] ?? '' };
}

/**
 * The context to start receiving-side spans in: `base` (default: the active context) with
 * the remote span of `tc` as parent, so a node agent's receive/compile/apply/ack spans
 * become children of the API call's span. A missing, empty or malformed `traceparent`
 * returns `base` unchanged. Never throws.
 */
export function extractTraceContext(
  tc: TraceContextCarrier | undefined,
  base: Context = context.active(),
): Context {
  if (tc === undefined || tc.traceparent === '') return base;
  const carrier: Record<string, string> = { traceparent: tc.traceparent };
  if (tc.tracestate !== undefined && tc.tracestate !== '') carrier['tracestate'] = tc.tracestate;
  return w3c.extract(base, carrier, recordGetter);
}

/**
 * Writes the trace context of `ctx` (default: the active context) into message headers
 * (`traceparent`, `tracestate`, and whatever else the registered propagator carries, such
 * as `baggage`). Uses the globally registered propagator, or W3C trace context when none
 * is registered. Never throws; writes nothing when there is no valid span.
 */
export function injectNatsHeaders(headers: HeaderSetter, ctx: Context = context.active()): void {
  headerPropagator().inject(ctx, headers, headerSetter);
}

/**
 * The context carried by message headers, on top of `base` (default: the active context).
 * Headers that are absent (`undefined`, a message published without headers) or carry no
 * valid `traceparent` return `base` unchanged. Never throws.
 */
export function extractNatsHeaders(
  headers: HeaderGetter | undefined,
  base: Context = context.active(),
): Context {
  if (headers === undefined) return base;
  return headerPropagator().extract(base, headers, headerGetter);
}
