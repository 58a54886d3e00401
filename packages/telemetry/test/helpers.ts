import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { type AddressInfo } from 'node:net';
import { type DiagLogger } from '@opentelemetry/api';

/** One request an `OtlpReceiver` got. */
export interface ReceivedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** A minimal OTLP/HTTP receiver on 127.0.0.1:0 that records requests and answers 200 `{}`. */
export interface OtlpReceiver extends AsyncDisposable {
  endpoint: string;
  requests: ReceivedRequest[];
  /** Resolves with the first request whose URL is `/v1/traces`. */
  nextTraces(): Promise<ReceivedRequest>;
  close(): Promise<void>;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const requests: ReceivedRequest[] = [];
  const waiters: ((r: ReceivedRequest) => void)[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const received = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks),
      };
      requests.push(received);
      if (received.url === '/v1/traces') for (const w of waiters.splice(0)) w(received);
      const json = String(req.headers['content-type']).includes('json');
      res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
      res.end(json ? '{}' : undefined);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }));
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    nextTraces() {
      const seen = requests.find((r) => r.url === '/v1/traces');
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve) => waiters.push(resolve));
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A port on 127.0.0.1 that refuses connections: bound once, then closed. */
export async function refusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A `DiagLogger` that keeps what it is told, for asserting that failures were logged. */
export function recordingLogger(): DiagLogger & { lines: string[] } {
  const lines: string[] = [];
  const record =
    (level: string) =>
    (message: string, ...args: unknown[]): void => {
      lines.push([level, message, ...args.map((a) => (a instanceof Error ? a.message : String(a)))].join(' '));
    };
  return {
    lines,
    error: record('error'),
    warn: record('warn'),
    info: record('info'),
    debug: record('debug'),
    verbose: record('verbose'),
  };
}
