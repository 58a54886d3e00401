// @edgeplane/telemetry: the only place the OpenTelemetry SDK is set up, and trace-context
// propagation over log entries and NATS headers. Library code imports `@opentelemetry/api`
// only; the propagation helpers and `withSpan` work whether or not the SDK is started.

export { TelemetryStartError } from './errors.js';
export {
  extractNatsHeaders,
  extractTraceContext,
  injectNatsHeaders,
  injectTraceContext,
  type HeaderGetter,
  type HeaderSetter,
  type TraceContextCarrier,
} from './propagation.js';
export {
  startTelemetry,
  type OtlpProtocol,
  type Telemetry,
  type TelemetryOptions,
} from './start-telemetry.js';
export { withSpan, type WithSpanOptions } from './with-span.js';

/**
 * SDK pieces a service's tests and `main.ts` hand to `startTelemetry` (spans checked with an
 * `InMemorySpanExporter` behind a `SimpleSpanProcessor`), re-exported so that services never
 * depend on the SDK packages themselves. See the OpenTelemetry JS SDK for their contracts.
 */
export {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
export { type IMetricReader } from '@opentelemetry/sdk-metrics';
