import { createServer, type Server } from 'node:http';

/** A span as an OTLP/HTTP JSON export carries it, flattened with its service name. */
export interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  attributes: Record<string, string | number | boolean>;
  /** 0 unset, 1 ok, 2 error */
  statusCode: number;
}

interface AnyValue {
  stringValue?: string;
  intValue?: string | number;
  doubleValue?: number;
  boolValue?: boolean;
}

function value(v: AnyValue | undefined): string | number | boolean {
  if (!v) return '';
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  return v.boolValue ?? '';
}

/**
 * An OTLP/HTTP trace receiver (JSON encoding: set OTEL_EXPORTER_OTLP_PROTOCOL=http/json in the
 * exporting processes) that keeps every span it is sent, for tests that assert a trace tree
 * across processes. Listens on `host` (0.0.0.0 so agents in namespaces can reach it).
 */
export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  #server: Server;
  port = 0;

  private constructor(server: Server) {
    this.#server = server;
  }

  static async start(host = '0.0.0.0'): Promise<OtlpReceiver> {
    const receiver = new OtlpReceiver(
      createServer((req, res) => {
        let body = '';
        req.on('data', (c: Buffer) => (body += c.toString()));
        req.on('end', () => {
          try {
            receiver.#ingest(JSON.parse(body) as never);
            res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
          } catch {
            res.writeHead(400).end();
          }
        });
      }),
    );
    await new Promise<void>((resolve) => receiver.#server.listen(0, host, resolve));
    const addr = receiver.#server.address();
    receiver.port = typeof addr === 'object' && addr ? addr.port : 0;
    return receiver;
  }

  #ingest(body: { resourceSpans?: { resource?: { attributes?: { key: string; value: AnyValue }[] }; scopeSpans?: { spans?: Record<string, unknown>[] }[] }[] }): void {
    for (const rs of body.resourceSpans ?? []) {
      const service = String(value(rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value));
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          const attrs: Record<string, string | number | boolean> = {};
          for (const a of (s.attributes as { key: string; value: AnyValue }[] | undefined) ?? []) attrs[a.key] = value(a.value);
          this.spans.push({
            service,
            traceId: String(s.traceId ?? ''),
            spanId: String(s.spanId ?? ''),
            parentSpanId: String(s.parentSpanId ?? ''),
            name: String(s.name ?? ''),
            attributes: attrs,
            statusCode: Number((s.status as { code?: number } | undefined)?.code ?? 0),
          });
        }
      }
    }
  }

  /** The endpoint to give exporters reachable at `host`. */
  endpoint(host: string): string {
    return `http://${host}:${this.port}`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
