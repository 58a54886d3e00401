// The one place in edgeplane where the OpenTelemetry SDK is set up. Everything else (services,
// packages) imports `@opentelemetry/api` only and gets the providers registered here through
// the API's globals, or through the `Telemetry` handle that `main.ts` passes down.

import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo } from 'node:net';
import {
  DiagConsoleLogger,
  DiagLogLevel,
  context,
  diag,
  metrics,
  propagation,
  trace,
  type Attributes,
  type DiagLogger,
  type Meter,
  type Tracer,
} from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  CompositePropagator,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} from '@opentelemetry/core';
// The exporters are imported when configured (startTelemetry is async for it): loaded always,
// they cost a process that exports nothing ~5 MiB of RSS (bench/README.md, agent, "Memory").
import type { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import {
  defaultResource,
  detectResources,
  envDetector,
  resourceFromAttributes,
  type Resource,
} from '@opentelemetry/resources';
import { MeterProvider, type IMetricReader } from '@opentelemetry/sdk-metrics';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import { TelemetryStartError } from './errors.js';

// Not yet in the stable semantic conventions export.
const ATTR_SERVICE_INSTANCE_ID = 'service.instance.id';

/** OTLP over HTTP encodings (https://opentelemetry.io/docs/specs/otlp/#otlphttp). */
export type OtlpProtocol = 'http/protobuf' | 'http/json';

/** Options for `startTelemetry`. Only `serviceName` is required. */
export interface TelemetryOptions {
  /** `service.name`, e.g. `edgeplane-controller`, `edgeplane-node-agent`. */
  serviceName: string;
  /** `service.instance.id`, e.g. the node id of an agent. Default: a random UUID. */
  serviceInstanceId?: string;
  /** `service.version`. */
  serviceVersion?: string;
  /** More resource attributes. `OTEL_RESOURCE_ATTRIBUTES` is read too; these win over it. */
  resourceAttributes?: Attributes;
  /**
   * OTLP/HTTP base endpoint, e.g. `http://127.0.0.1:4318`; spans go to `<endpoint>/v1/traces`.
   * When absent, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
   * `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/traces` appended) is used; when none is set,
   * no OTLP exporter is created.
   */
  otlpEndpoint?: string;
  /**
   * Encoding of OTLP/HTTP requests. Default: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
   * `OTEL_EXPORTER_OTLP_PROTOCOL`, then `http/protobuf`. `grpc` is not supported (logged,
   * `http/protobuf` used).
   */
  otlpProtocol?: OtlpProtocol;
  /** Extra headers on OTLP requests (`OTEL_EXPORTER_OTLP_HEADERS` is read by the exporter). */
  otlpHeaders?: Record<string, string>;
  /** Timeout of one OTLP request. Default: 10 s (the exporter's default). */
  otlpTimeoutMillis?: number;
  /**
   * More span processors, run before the OTLP one; e.g. a `SimpleSpanProcessor` over an
   * `InMemorySpanExporter` in tests. They are shut down with the handle.
   */
  spanProcessors?: SpanProcessor[];
  /**
   * Port of a Prometheus scrape endpoint (`GET /metrics`). `0` binds a free port; the URL is
   * on `Telemetry.prometheusUrl`. Absent: no endpoint.
   */
  prometheusPort?: number;
  /** Address the Prometheus endpoint binds to. Default: all interfaces. */
  prometheusHost?: string;
  /** More metric readers, e.g. a `PeriodicExportingMetricReader` over an in-memory exporter. */
  metricReaders?: IMetricReader[];
  /**
   * Where telemetry's own problems (failed exports) are logged, through the API's `diag`.
   * Default: a `DiagConsoleLogger`. The logger is installed process-wide and stays installed
   * after shutdown, so late export errors still have somewhere to go.
   */
  diagLogger?: DiagLogger;
  /** Level for `diagLogger`. Default: `DiagLogLevel.WARN`. */
  diagLogLevel?: DiagLogLevel;
}

/**
 * A running telemetry setup, owned by whoever called `startTelemetry` (the service's
 * `main.ts`). None of its methods throws or rejects.
 */
export interface Telemetry extends AsyncDisposable {
  /** A tracer from this setup's provider (the same provider `trace.getTracer` reaches). */
  tracer(name: string, version?: string): Tracer;
  /** A meter from this setup's provider (the same provider `metrics.getMeter` reaches). */
  meter(name: string, version?: string): Meter;
  /** `http://host:port/metrics` of the Prometheus endpoint, with the bound port; or undefined. */
  readonly prometheusUrl: string | undefined;
  /**
   * Exports what is buffered (spans through every processor; metrics through push readers).
   * Failures are logged through `diag` and swallowed.
   */
  forceFlush(): Promise<void>;
  /**
   * Flushes, then shuts down the providers, closes the Prometheus endpoint (and its open
   * connections), and unregisters the globals this setup registered. Idempotent: later
   * calls return the first call's promise. Failures are logged and swallowed.
   */
  shutdown(): Promise<void>;
  /** Same as `shutdown()`, so `await using telemetry = await startTelemetry(...)` works. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Sets up tracing and metrics for this process and registers them as the API's globals: a
 * tracer provider, an `AsyncLocalStorage` context manager, a W3C trace-context + baggage
 * propagator and a meter provider. Spans go to the given processors and, when an OTLP
 * endpoint is configured (option or environment), to an OTLP/HTTP exporter in batches.
 *
 * Call it once per process, from `main.ts`, before other code creates spans. A second call
 * while one setup is running returns a working handle but leaves the first setup's globals
 * in place (logged).
 *
 * Rejects with `TelemetryStartError` only when the Prometheus port cannot be bound; then
 * nothing is registered or left open. The returned handle is the caller's to shut down.
 */
export async function startTelemetry(options: TelemetryOptions): Promise<Telemetry> {
  diag.setLogger(options.diagLogger ?? new DiagConsoleLogger(), {
    logLevel: options.diagLogLevel ?? DiagLogLevel.WARN,
    suppressOverrideMessage: true,
  });

  const resource = buildResource(options);

  // The OTLP exporter's module is loaded first; then the bind, the only step that can fail, so a
  // failure leaves nothing behind.
  const makeOtlp = await otlpExporter(options);
  let prometheus: { exporter: PrometheusExporter; server: Server; url: string } | undefined;
  if (options.prometheusPort !== undefined) {
    prometheus = await startPrometheus(options.prometheusPort, options.prometheusHost);
  }

  const spanProcessors = [...(options.spanProcessors ?? [])];
  const otlp = makeOtlp?.();
  if (otlp !== undefined) spanProcessors.push(new BatchSpanProcessor(otlp));
  const tracerProvider = new BasicTracerProvider({ resource, spanProcessors });

  const readers = [...(options.metricReaders ?? [])];
  if (prometheus !== undefined) readers.push(prometheus.exporter);
  const meterProvider = new MeterProvider({ resource, readers });

  const contextManager = new AsyncLocalStorageContextManager().enable();
  const registered = {
    context: context.setGlobalContextManager(contextManager),
    propagation: propagation.setGlobalPropagator(
      new CompositePropagator({
        propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
      }),
    ),
    trace: trace.setGlobalTracerProvider(tracerProvider),
    metrics: metrics.setGlobalMeterProvider(meterProvider),
  };
  if (!registered.context) contextManager.disable();
  if (!registered.trace || !registered.metrics) {
    diag.warn('telemetry: another setup already owns the global providers; keeping it');
  }

  return new TelemetryHandle(tracerProvider, meterProvider, prometheus?.server, prometheus?.url, registered);
}

function buildResource(options: TelemetryOptions): Resource {
  const attributes: Attributes = {
    [ATTR_SERVICE_NAME]: options.serviceName,
    [ATTR_SERVICE_INSTANCE_ID]: options.serviceInstanceId ?? randomUUID(),
    ...options.resourceAttributes,
  };
  if (options.serviceVersion !== undefined) attributes[ATTR_SERVICE_VERSION] = options.serviceVersion;
  return defaultResource()
    .merge(detectResources({ detectors: [envDetector] }))
    .merge(resourceFromAttributes(attributes));
}

/** Loads the configured OTLP exporter's module; @returns what makes the exporter, or undefined when none is configured. */
async function otlpExporter(options: TelemetryOptions): Promise<(() => SpanExporter) | undefined> {
  const url = otlpTracesUrl(options.otlpEndpoint);
  if (url === undefined) return undefined;
  const protocol =
    options.otlpProtocol ??
    env('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') ??
    env('OTEL_EXPORTER_OTLP_PROTOCOL') ??
    'http/protobuf';
  const config = {
    url,
    ...(options.otlpHeaders !== undefined && { headers: options.otlpHeaders }),
    ...(options.otlpTimeoutMillis !== undefined && { timeoutMillis: options.otlpTimeoutMillis }),
  };
  if (protocol === 'http/json') {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
    return () => new OTLPTraceExporter(config);
  }
  if (protocol !== 'http/protobuf') {
    diag.warn(`telemetry: OTLP protocol ${protocol} is not supported; using http/protobuf`);
  }
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
  return () => new OTLPTraceExporter(config);
}

/** The traces URL, following the OTLP exporter spec for the environment variables. */
function otlpTracesUrl(endpoint: string | undefined): string | undefined {
  // https://opentelemetry.io/docs/specs/otel/protocol/exporter/#endpoint-urls-for-otlphttp
  if (endpoint !== undefined) return `${endpoint.replace(/\/+$/, '')}/v1/traces`;
  const traces = env('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  if (traces !== undefined) return traces;
  const base = env('OTEL_EXPORTER_OTLP_ENDPOINT');
  return base === undefined ? undefined : `${base.replace(/\/+$/, '')}/v1/traces`;
}

function env(name: string): string | undefined {
  const value = process.env[name]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

/**
 * The exporter's own server treats port 0 as "default port" (9464) and does not expose the
 * bound address, so the exporter only renders and this server owns the socket.
 */
async function startPrometheus(
  port: number,
  host: string | undefined,
): Promise<{ exporter: PrometheusExporter; server: Server; url: string }> {
  const { PrometheusExporter } = await import('@opentelemetry/exporter-prometheus');
  const exporter = new PrometheusExporter({ preventServerStart: true });
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/metrics' && (req.method === 'GET' || req.method === 'HEAD')) {
      exporter.getMetricsRequestHandler(req, res);
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (cause) {
    throw new TelemetryStartError(`listen prometheus ${host ?? '*'}:${port}`, { cause });
  }
  server.on('error', (err) => diag.error('telemetry: prometheus endpoint', err));
  // Like the exporter's own server: metrics alone never keep the process alive.
  server.unref();
  const bound = (server.address() as AddressInfo).port;
  return { exporter, server, url: `http://${urlHost(host)}:${bound}/metrics` };
}

function urlHost(host: string | undefined): string {
  if (host === undefined || host === '' || host === '0.0.0.0' || host === '::') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}

class TelemetryHandle implements Telemetry {
  readonly #tracerProvider: BasicTracerProvider;
  readonly #meterProvider: MeterProvider;
  readonly #server: Server | undefined;
  readonly #registered: { context: boolean; propagation: boolean; trace: boolean; metrics: boolean };
  #shutdown: Promise<void> | undefined;
  readonly prometheusUrl: string | undefined;

  constructor(
    tracerProvider: BasicTracerProvider,
    meterProvider: MeterProvider,
    server: Server | undefined,
    prometheusUrl: string | undefined,
    registered: { context: boolean; propagation: boolean; trace: boolean; metrics: boolean },
  ) {
    this.#tracerProvider = tracerProvider;
    this.#meterProvider = meterProvider;
    this.#server = server;
    this.prometheusUrl = prometheusUrl;
    this.#registered = registered;
  }

  tracer(name: string, version?: string): Tracer {
    return this.#tracerProvider.getTracer(name, version);
  }

  meter(name: string, version?: string): Meter {
    return this.#meterProvider.getMeter(name, version);
  }

  async forceFlush(): Promise<void> {
    if (this.#shutdown !== undefined) return;
    await settle('flush spans', this.#tracerProvider.forceFlush());
    await settle('flush metrics', this.#meterProvider.forceFlush());
  }

  shutdown(): Promise<void> {
    this.#shutdown ??= this.#close();
    return this.#shutdown;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.shutdown();
  }

  async #close(): Promise<void> {
    // Providers first, while the globals still point at them, so spans ended during the
    // final flush are still exported.
    await settle('shut down tracer provider', this.#tracerProvider.shutdown());
    await settle('shut down meter provider', this.#meterProvider.shutdown());
    if (this.#server !== undefined) {
      const server = this.#server;
      await settle(
        'close prometheus endpoint',
        new Promise<void>((resolve, reject) => {
          server.close((err) => (err === undefined ? resolve() : reject(err)));
          // Scrapers keep connections alive; do not wait for them to time out.
          server.closeAllConnections();
        }),
      );
    }
    if (this.#registered.trace) trace.disable();
    if (this.#registered.metrics) metrics.disable();
    if (this.#registered.propagation) propagation.disable();
    if (this.#registered.context) context.disable();
  }
}

/** Awaits `promise`, logging a rejection instead of passing it on. */
async function settle(operation: string, promise: Promise<unknown>): Promise<void> {
  try {
    await promise;
  } catch (err) {
    diag.error(`telemetry: ${operation}`, err);
  }
}
