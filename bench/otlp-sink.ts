// A minimal OTLP/HTTP JSON trace receiver for benchmarks: the services export their spans to it
// (start them with OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json and --otlp-endpoint), and the
// benchmark reads span timings from inside the processes without changing them.
// Encoding: https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';

/** One received span; times in ms since the epoch (fractional). */
export interface SinkSpan {
  service: string;
  traceId: string;
  name: string;
  startMs: number;
  endMs: number;
  attributes: Record<string, string | number | boolean>;
}

type AnyValue = { stringValue?: string; intValue?: string | number; doubleValue?: number; boolValue?: boolean };
type KeyValue = { key: string; value?: AnyValue };
type Nanos = string | number | { low: number; high: number };
interface ExportRequest {
  resourceSpans?: {
    resource?: { attributes?: KeyValue[] };
    scopeSpans?: { spans?: { traceId?: string; name: string; startTimeUnixNano: Nanos; endTimeUnixNano: Nanos; attributes?: KeyValue[] }[] }[];
  }[];
}

function nanosToMs(v: Nanos): number {
  const n = typeof v === 'object' ? (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0) : BigInt(v);
  // Keep microseconds exact before going to a double.
  return Number(n / 1000n) / 1000;
}

function attributes(list: KeyValue[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of list ?? []) {
    if (value?.stringValue !== undefined) out[key] = value.stringValue;
    else if (value?.intValue !== undefined) out[key] = Number(value.intValue);
    else if (value?.doubleValue !== undefined) out[key] = value.doubleValue;
    else if (value?.boolValue !== undefined) out[key] = value.boolValue;
  }
  return out;
}

/** Collects spans POSTed to /v1/traces. Owns its HTTP server; close() stops it (idempotent). */
export class OtlpSink {
  readonly spans: SinkSpan[] = [];
  /** Requests that were not OTLP JSON (e.g. a process exporting protobuf). */
  rejected = 0;
  #server: Server;
  #closed: Promise<void> | undefined;

  private constructor(server: Server) {
    this.#server = server;
  }

  /** Listens on `host`, a free port. @returns a sink the caller closes. */
  static async start(host = '0.0.0.0'): Promise<OtlpSink> {
    const server = createServer();
    const sink = new OtlpSink(server);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => sink.#handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, host, () => resolve());
    });
    return sink;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        if (req.method !== 'POST' || !req.url?.endsWith('/v1/traces') || !String(req.headers['content-type']).includes('json')) throw new Error('not OTLP JSON');
        let body = Buffer.concat(chunks);
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        const request = JSON.parse(body.toString('utf8')) as ExportRequest;
        for (const rs of request.resourceSpans ?? []) {
          const service = String(attributes(rs.resource?.attributes)['service.name'] ?? '');
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              this.spans.push({ service, traceId: s.traceId ?? '', name: s.name, startMs: nanosToMs(s.startTimeUnixNano), endMs: nanosToMs(s.endTimeUnixNano), attributes: attributes(s.attributes) });
            }
          }
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch {
        this.rejected++;
        res.writeHead(400).end();
      }
    });
  }

  /** Stops listening and drops open connections. */
  close(): Promise<void> {
    this.#closed ??= new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
    return this.#closed;
  }
}
