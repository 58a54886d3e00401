// Each test starts its own Telemetry; they run serially because the SDK registers
// process-wide globals (context manager, propagator, providers).
import { createServer } from 'node:http';
import { type AddressInfo } from 'node:net';
import test from 'ava';
import { SpanStatusCode, context, trace, type Span } from '@opentelemetry/api';
import { headers as natsHeaders } from '@nats-io/nats-core';
import {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TelemetryStartError,
  extractNatsHeaders,
  extractTraceContext,
  injectNatsHeaders,
  injectTraceContext,
  startTelemetry,
  withSpan,
  type ReadableSpan,
  type TelemetryOptions,
} from '@edgeplane/telemetry';
import { recordingLogger, refusedPort, startOtlpReceiver } from './helpers.js';

async function start(extra: Partial<TelemetryOptions> = {}) {
  const exporter = new InMemorySpanExporter();
  const telemetry = await startTelemetry({
    serviceName: 'edgeplane-test',
    serviceInstanceId: 'node-7',
    serviceVersion: '0.1.0',
    spanProcessors: [new SimpleSpanProcessor(exporter)],
    diagLogger: recordingLogger(),
    ...extra,
  });
  const spans = (name: string): ReadableSpan => {
    const span = exporter.getFinishedSpans().find((s) => s.name === name);
    if (span === undefined) throw new Error(`no finished span named ${name}`);
    return span;
  };
  return { telemetry, exporter, spans };
}

test.serial('startTelemetry - ends spans into the given span processors with the resource', async (t) => {
  const { telemetry, spans } = await start();
  await using _ = telemetry;
  telemetry.tracer('test').startSpan('apply').end();
  // The global tracer reaches the same provider.
  trace.getTracer('global').startSpan('via global').end();

  const span = spans('apply');
  t.is(span.resource.attributes['service.name'], 'edgeplane-test');
  t.is(span.resource.attributes['service.instance.id'], 'node-7');
  t.is(span.resource.attributes['service.version'], '0.1.0');
  t.truthy(spans('via global'));
});

test.serial('trace context - inject and extract across a JSON boundary gives a child span', async (t) => {
  const { telemetry, spans } = await start();
  await using _ = telemetry;
  const tracer = telemetry.tracer('test');

  // The API call's span, itself under a remote parent with a tracestate to carry along.
  const upstream = extractTraceContext({
    traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    tracestate: 'edgeplane=1',
  });
  const wire = tracer.startActiveSpan('api call', {}, upstream, (span) => {
    const entry = { revision: 7, traceContext: injectTraceContext() };
    span.end();
    return JSON.stringify(entry);
  });

  // The other process: only the JSON crosses.
  const entry = JSON.parse(wire) as { traceContext: { traceparent: string; tracestate: string } };
  t.is(entry.traceContext.tracestate, 'edgeplane=1');
  await withSpan(tracer, 'receive', { parent: extractTraceContext(entry.traceContext) }, async () => {
    await withSpan(tracer, 'apply', {}, async () => {
      await new Promise((resolve) => setImmediate(resolve));
    });
  });

  const api = spans('api call');
  const receive = spans('receive');
  const apply = spans('apply');
  t.is(api.spanContext().traceId, '0af7651916cd43dd8448eb211c80319c');
  t.is(receive.spanContext().traceId, api.spanContext().traceId);
  t.is(receive.parentSpanContext?.spanId, api.spanContext().spanId);
  t.is(apply.spanContext().traceId, api.spanContext().traceId);
  t.is(apply.parentSpanContext?.spanId, receive.spanContext().spanId);
});

test.serial('nats headers - inject into and extract from a NATS MsgHdrs', async (t) => {
  const { telemetry, spans } = await start();
  await using _ = telemetry;
  const tracer = telemetry.tracer('test');

  const h = natsHeaders();
  tracer.startActiveSpan('publish', (span) => {
    injectNatsHeaders(h);
    span.end();
  });
  t.regex(h.get('traceparent'), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);

  tracer.startSpan('on message', {}, extractNatsHeaders(h)).end();
  t.is(spans('on message').parentSpanContext?.spanId, spans('publish').spanContext().spanId);
  t.is(spans('on message').spanContext().traceId, spans('publish').spanContext().traceId);
});

test.serial('prometheus - a port 0 endpoint serves a counter', async (t) => {
  const { telemetry } = await start({ prometheusPort: 0, prometheusHost: '127.0.0.1' });
  await using _ = telemetry;
  t.regex(telemetry.prometheusUrl ?? '', /^http:\/\/127\.0\.0\.1:[1-9]\d*\/metrics$/);

  telemetry.meter('test').createCounter('edgeplane_test_applies').add(3, { result: 'ack' });
  const res = await fetch(telemetry.prometheusUrl ?? '');
  t.is(res.status, 200);
  t.regex(await res.text(), /^edgeplane_test_applies_total\{[^}]*result="ack"[^}]*\} 3$/m);
  t.is((await fetch(new URL('/other', telemetry.prometheusUrl))).status, 404);
});

test.serial('prometheus - a port in use rejects with TelemetryStartError and registers nothing', async (t) => {
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => busy.close());
  const { port } = busy.address() as AddressInfo;

  const err = await t.throwsAsync(
    startTelemetry({ serviceName: 'edgeplane-test', prometheusPort: port, prometheusHost: '127.0.0.1' }),
    { instanceOf: TelemetryStartError },
  );
  t.is(err?.message, `listen prometheus 127.0.0.1:${port}`);
  t.truthy(err?.cause);
  t.false(trace.getTracer('x').startSpan('y').isRecording());
});

test.serial('otlp - protobuf export reaches the endpoint with the service name', async (t) => {
  await using receiver = await startOtlpReceiver();
  const { telemetry } = await start({ otlpEndpoint: receiver.endpoint });
  await using _ = telemetry;
  telemetry.tracer('test').startSpan('apply').end();
  await telemetry.forceFlush();

  const req = await receiver.nextTraces();
  t.is(req.method, 'POST');
  t.is(req.headers['content-type'], 'application/x-protobuf');
  // Protobuf carries strings as raw bytes.
  t.true(req.body.includes('edgeplane-test'));
  t.true(req.body.includes('apply'));
});

test.serial('otlp - json export reaches the endpoint with the resource attributes', async (t) => {
  await using receiver = await startOtlpReceiver();
  const { telemetry } = await start({ otlpEndpoint: `${receiver.endpoint}/`, otlpProtocol: 'http/json' });
  await using _ = telemetry;
  telemetry.tracer('test').startSpan('apply').end();
  await telemetry.forceFlush();

  const req = await receiver.nextTraces();
  const body = JSON.parse(req.body.toString()) as {
    resourceSpans: { resource: { attributes: { key: string; value: { stringValue?: string } }[] } }[];
  };
  const attrs = Object.fromEntries(
    (body.resourceSpans[0]?.resource.attributes ?? []).map((a) => [a.key, a.value.stringValue]),
  );
  t.is(attrs['service.name'], 'edgeplane-test');
  t.is(attrs['service.instance.id'], 'node-7');
});

test.serial('otlp - OTEL_EXPORTER_OTLP_ENDPOINT is used when no endpoint is given', async (t) => {
  await using receiver = await startOtlpReceiver();
  process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] = receiver.endpoint;
  process.env['OTEL_EXPORTER_OTLP_PROTOCOL'] = 'http/json';
  t.teardown(() => {
    delete process.env['OTEL_EXPORTER_OTLP_ENDPOINT'];
    delete process.env['OTEL_EXPORTER_OTLP_PROTOCOL'];
  });
  const { telemetry } = await start();
  await using _ = telemetry;
  telemetry.tracer('test').startSpan('apply').end();
  await telemetry.forceFlush();

  const req = await receiver.nextTraces();
  t.is(req.headers['content-type'], 'application/json');
  t.true(req.body.includes('edgeplane-test'));
});

test.serial('otlp - an endpoint refusing connections is logged, never thrown', async (t) => {
  const logger = recordingLogger();
  const { telemetry, spans } = await start({
    otlpEndpoint: `http://127.0.0.1:${await refusedPort()}`,
    // A refused connection is retried with backoff until this timeout (default 10 s).
    otlpTimeoutMillis: 500,
    diagLogger: logger,
  });
  t.notThrows(() => telemetry.tracer('test').startSpan('apply').end());
  await t.notThrowsAsync(telemetry.forceFlush());
  t.truthy(spans('apply'), 'the other processors still got the span');
  await t.notThrowsAsync(telemetry.shutdown());
  t.true(
    logger.lines.some((l) => l.startsWith('error telemetry: flush spans')),
    logger.lines.join('\n'),
  );
});

test.serial('shutdown - twice is safe and unregisters the globals', async (t) => {
  const { telemetry } = await start({ prometheusPort: 0, prometheusHost: '127.0.0.1' });
  const url = telemetry.prometheusUrl ?? '';
  t.is((await fetch(url)).status, 200);
  await telemetry.shutdown();
  await t.notThrowsAsync(telemetry.shutdown());
  await t.notThrowsAsync(telemetry[Symbol.asyncDispose]());
  await t.notThrowsAsync(telemetry.forceFlush());
  await t.throwsAsync(fetch(url));
  t.false(trace.getTracer('x').startSpan('y').isRecording());

  // The globals are free for the next setup.
  const { telemetry: next, spans } = await start();
  await using _ = next;
  trace.getTracer('global').startSpan('after restart').end();
  t.truthy(spans('after restart'));
});

test.serial('withSpan - returns the result, ends the span and leaves the status unset', async (t) => {
  const { telemetry, spans } = await start();
  await using _ = telemetry;
  const tracer = telemetry.tracer('test');
  t.is(
    withSpan(tracer, 'compile', { attributes: { revision: 7 } }, (span) => {
      t.is(trace.getActiveSpan(), span);
      return 42;
    }),
    42,
  );
  t.is(await withSpan(tracer, 'apply', {}, () => Promise.resolve('ok')), 'ok');
  t.is(spans('compile').status.code, SpanStatusCode.UNSET);
  t.is(spans('compile').attributes['revision'], 7);
  t.true(spans('apply').ended);
  t.is(trace.getActiveSpan(), undefined);
});

test.serial('withSpan - marks thrown and rejected errors and rethrows them', async (t) => {
  const { telemetry, spans } = await start();
  await using _ = telemetry;
  const tracer = telemetry.tracer('test');

  const sync = new Error('verifier rejected program');
  t.is(
    t.throws(() => withSpan(tracer, 'load', {}, () => { throw sync; })),
    sync,
  );
  const async = new Error('nack revision 7');
  let inner: Span | undefined;
  t.is(
    await t.throwsAsync(
      withSpan(tracer, 'ack', {}, async (span) => {
        inner = span;
        await new Promise((resolve) => setImmediate(resolve));
        t.is(trace.getSpan(context.active()), span);
        throw async;
      }),
    ),
    async,
  );
  t.false(inner?.isRecording() ?? true, 'span ended');

  for (const [name, err] of [['load', sync], ['ack', async]] as const) {
    const span = spans(name);
    t.is(span.status.code, SpanStatusCode.ERROR);
    t.is(span.status.message, err.message);
    t.is(span.events[0]?.name, 'exception');
    t.is(span.events[0]?.attributes?.['exception.message'], err.message);
  }
});
