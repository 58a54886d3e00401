// Without startTelemetry: no SDK, no registered propagator or context manager in this
// process, as in a library or a service that has not started telemetry.
import test from 'ava';
import { ROOT_CONTEXT, TraceFlags, trace, type SpanContext } from '@opentelemetry/api';
import { headers as natsHeaders } from '@nats-io/nats-core';
import {
  extractNatsHeaders,
  extractTraceContext,
  injectNatsHeaders,
  injectTraceContext,
} from '@edgeplane/telemetry';

const remote: SpanContext = {
  traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
  spanId: '00f067aa0ba902b7',
  traceFlags: TraceFlags.SAMPLED,
};
const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
const withRemote = trace.setSpanContext(ROOT_CONTEXT, remote);

test('injectTraceContext - writes W3C traceparent without the SDK started', (t) => {
  t.deepEqual(injectTraceContext(withRemote), { traceparent, tracestate: '' });
});

test('injectTraceContext - gives empty strings when there is no span', (t) => {
  t.deepEqual(injectTraceContext(), { traceparent: '', tracestate: '' });
  t.deepEqual(injectTraceContext(ROOT_CONTEXT), { traceparent: '', tracestate: '' });
});

test('extractTraceContext - round-trips traceparent and tracestate', (t) => {
  const ctx = extractTraceContext({ traceparent, tracestate: 'edgeplane=1,vendor=x' });
  const sc = trace.getSpanContext(ctx);
  t.is(sc?.traceId, remote.traceId);
  t.is(sc?.spanId, remote.spanId);
  t.true(sc?.isRemote);
  t.is(sc?.traceState?.serialize(), 'edgeplane=1,vendor=x');
  t.deepEqual(injectTraceContext(ctx), { traceparent, tracestate: 'edgeplane=1,vendor=x' });
});

test('extractTraceContext - returns the base context for missing or malformed input', (t) => {
  t.is(extractTraceContext(undefined, ROOT_CONTEXT), ROOT_CONTEXT);
  t.is(extractTraceContext({ traceparent: '' }, ROOT_CONTEXT), ROOT_CONTEXT);
  t.is(trace.getSpanContext(extractTraceContext({ traceparent: 'nonsense' }, ROOT_CONTEXT)), undefined);
});

test('nats headers - round-trip through a NATS MsgHdrs without the SDK started', (t) => {
  const h = natsHeaders();
  injectNatsHeaders(h, withRemote);
  t.is(h.get('traceparent'), traceparent);
  t.is(trace.getSpanContext(extractNatsHeaders(h))?.spanId, remote.spanId);
});

test('nats headers - round-trip through a Map-backed stand-in', (t) => {
  const h = new Map<string, string>();
  injectNatsHeaders(h, withRemote);
  t.is(h.get('traceparent'), traceparent);
  t.is(trace.getSpanContext(extractNatsHeaders(h))?.traceId, remote.traceId);
});

test('nats headers - finds a traceparent key in another case', (t) => {
  const h = natsHeaders();
  h.set('Traceparent', traceparent);
  t.is(trace.getSpanContext(extractNatsHeaders(h))?.spanId, remote.spanId);
});

test('nats headers - no headers or no traceparent returns the base context', (t) => {
  t.is(extractNatsHeaders(undefined, ROOT_CONTEXT), ROOT_CONTEXT);
  t.is(trace.getSpanContext(extractNatsHeaders(natsHeaders(), ROOT_CONTEXT)), undefined);
  const h = natsHeaders();
  injectNatsHeaders(h, ROOT_CONTEXT);
  t.deepEqual(h.keys(), []);
});
