import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { status as grpcStatus } from '@grpc/grpc-js';
import {
  MAX_DASHBOARD_CONNECTIONS,
  MAX_DASHBOARD_HEADER_BYTES,
  MAX_DASHBOARD_STREAM_BUFFER_BYTES,
  MAX_DASHBOARD_STREAMS,
  MAX_DASHBOARD_STREAMS_PER_IDENTITY,
  MAX_DASHBOARD_URL_LENGTH,
  NodeEventType,
  Policy,
  RevisionOutcome,
  RolloutKind,
  RolloutStatus,
  rolloutKeyOf,
  STATUS_DETAILS_KEY,
  Service,
  checkDnsLabel,
  decodeStatusDetails,
  formatLabelSelector,
  quote,
  type Node,
  type WatchNodesResponse,
} from '@edgeplane/proto';
import type { FleetApi, RolloutReader } from '../fleet-api.js';
import type { IntentApi } from '../intent-api.js';
import type { Caller, AuthenticatedCall } from '../grpc/authorize.js';
import type { TlsOptions } from '../grpc/server.js';
import { toStatus, type ErrorLogger } from '../grpc/to-status.js';
import { ValidationError } from '../errors.js';
import { describeIdentity } from '../pki/identity.js';
import { selectorParam } from '../selector-param.js';
import { CounterHistory } from './counter-history.js';
import { NodeOutcomes } from './node-outcomes.js';

/** What the dashboard reads: the same domain APIs the gRPC services serve, and nothing that writes. */
export interface DashboardSources {
  fleet: Pick<FleetApi, 'listNodes' | 'watchNodes' | 'listRollouts' | 'getRollout' | 'getPolicyCounters'>;
  intent: Pick<IntentApi, 'list' | 'watch' | 'listServices'>;
  rollouts: Pick<RolloutReader, 'watch' | 'status'>;
  /** Calls `listener` with every new fleet revision (IntentStore.onChange); returns the function that stops it. */
  onRevision(listener: (revision: bigint) => void): () => void;
  /** The fleet revision now. */
  revision(): bigint;
}

/** What the dashboard needs of the authorizer (grpc/authorize.ts): its routes are in METHOD_ROLES. */
export interface RouteAuthorizer {
  /** @throws UnauthenticatedError or PermissionDeniedError. */
  authorize(method: string, call: AuthenticatedCall): Caller;
}

/** Options of {@link startDashboard}. */
export interface DashboardOptions {
  /** host:port; port 0 picks a free one. */
  listen: string;
  /** The gRPC listener's transport security: TLS with the serving certificate and the fleet CA for client certificates, or plaintext (loopback, --insecure). */
  tls: TlsOptions;
  auth: RouteAuthorizer;
  sources: DashboardSources;
  /** How often the per-rule counters are sampled for the charts (the agents' report interval). */
  counterIntervalMs: number;
  log: ErrorLogger;
  /** Heartbeat of live streams, ms (default 15 s): a comment line, and the caller is authorized again (a revoked certificate loses the stream). */
  heartbeatMs?: number;
}

/** A running dashboard. */
export interface Dashboard {
  /** Its base URL, `https://host:port/` (http on an --insecure loopback listener). */
  url: string;
  /** Live-update streams open now. */
  readonly streams: number;
  /** Stops listening and ends every connection and stream. Idempotent. */
  close(): Promise<void>;
}

/**
 * The browser's content policy: everything from this origin only, nothing inline, no frames,
 * no forms. The page is static files, JSON and server-sent events from here.
 */
export const CONTENT_SECURITY_POLICY = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

interface Asset {
  type: string;
  body: Buffer;
}

/** The page's files, read once at start; served from memory by fixed path, never from a path the request names. */
function loadAssets(): Map<string, Asset> {
  const dir = new URL('../../dashboard-assets/', import.meta.url);
  const read = (name: string): Buffer => readFileSync(new URL(name, dir));
  return new Map([
    ['/', { type: 'text/html; charset=utf-8', body: read('index.html') }],
    ['/app.js', { type: 'text/javascript; charset=utf-8', body: read('app.js') }],
    ['/app.css', { type: 'text/css; charset=utf-8', body: read('app.css') }],
    ['/favicon.svg', { type: 'image/svg+xml', body: read('favicon.svg') }],
  ]);
}

/** The query parameters each API route takes; anything else is refused (400). */
const API_PARAMS: Record<string, readonly string[]> = {
  '/api/nodes': ['label_selector', 'page_size', 'page_token'],
  '/api/policies': ['label_selector', 'page_size', 'page_token'],
  '/api/services': ['label_selector', 'page_size', 'page_token'],
  '/api/rollouts': ['active_only', 'page_size', 'page_token'],
  '/api/rollout': ['kind', 'name'],
  '/api/counters': [],
  '/api/events': ['label_selector'],
};

/** HTTP statuses of gRPC codes (as grpc-gateway maps them). */
const HTTP_STATUS: Partial<Record<number, number>> = {
  [grpcStatus.INVALID_ARGUMENT]: 400,
  [grpcStatus.OUT_OF_RANGE]: 400,
  [grpcStatus.FAILED_PRECONDITION]: 400,
  [grpcStatus.UNAUTHENTICATED]: 401,
  [grpcStatus.PERMISSION_DENIED]: 403,
  [grpcStatus.NOT_FOUND]: 404,
  [grpcStatus.ABORTED]: 409,
  [grpcStatus.RESOURCE_EXHAUSTED]: 429,
  [grpcStatus.UNAVAILABLE]: 503,
  [grpcStatus.DEADLINE_EXCEEDED]: 504,
};

/** A refusal the dashboard makes itself (transport limits), not a domain error. */
class HttpError extends Error {
  override name = 'HttpError';
  constructor(
    readonly httpStatus: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** The fields of a node the page shows: a fleet's worth of them must fit one stream's buffer. */
function nodeView(n: Node): Record<string, unknown> {
  const s = n.status;
  return {
    name: n.name,
    labels: n.labels,
    datapath: n.info?.datapath ?? '',
    agentVersion: n.info?.agentVersion ?? '',
    connected: s?.connected ?? false,
    lastSeen: s?.lastSeenTime?.toISOString() ?? null,
    receivedRevision: (s?.receivedRevision ?? 0n).toString(),
    appliedRevision: (s?.appliedRevision ?? 0n).toString(),
    appliedUnknown: s?.appliedUnknown ?? false,
    lastOutcome: s?.lastOutcome === RevisionOutcome.REVISION_OUTCOME_ACK ? 'ACK' : s?.lastOutcome === RevisionOutcome.REVISION_OUTCOME_NACK ? 'NACK' : '',
    lastOutcomeRevision: (s?.lastOutcomeRevision ?? 0n).toString(),
    lastError: s?.lastError ?? '',
    lastErrorRevision: (s?.lastErrorRevision ?? 0n).toString(),
    conditions: (s?.conditions ?? []).map((c) => ({ type: c.type, message: c.message })),
  };
}

function parseCount(text: string | undefined, field: string): number {
  if (text === undefined || text === '') return 0;
  if (!/^\d{1,6}$/.test(text)) throw new ValidationError(`invalid ${field}`, [{ field, description: `${quote(text)} is not a whole number`, reason: 'INVALID_NUMBER' }]);
  return Number(text);
}

function parseBool(text: string | undefined, field: string): boolean {
  if (text === undefined || text === '' || text === 'false' || text === '0') return false;
  if (text === 'true' || text === '1') return true;
  throw new ValidationError(`invalid ${field}`, [{ field, description: `${quote(text)}: true or false`, reason: 'INVALID_BOOLEAN' }]);
}

function parseKind(text: string | undefined): RolloutKind {
  if (text === undefined || text === '' || text === 'policy') return RolloutKind.ROLLOUT_KIND_POLICY;
  if (text === 'service') return RolloutKind.ROLLOUT_KIND_SERVICE;
  throw new ValidationError('invalid kind', [{ field: 'kind', description: `${quote(text)}: policy or service`, reason: 'INVALID_KIND' }]);
}

/**
 * The query parameters of a request to `path`: each allowed one at most once.
 * @throws ValidationError naming every parameter the route does not take or that repeats.
 */
function queryOf(path: string, params: URLSearchParams): Map<string, string> {
  const allowed = API_PARAMS[path] ?? [];
  const out = new Map<string, string>();
  const problems: { field: string; description: string; reason: string }[] = [];
  for (const [k, v] of params) {
    if (!allowed.includes(k)) problems.push({ field: k, description: `${path} takes ${allowed.length ? allowed.join(', ') : 'no parameters'}`, reason: 'UNKNOWN_PARAMETER' });
    else if (out.has(k)) problems.push({ field: k, description: 'given more than once', reason: 'REPEATED_PARAMETER' });
    else out.set(k, v);
    if (problems.length >= 8) break;
  }
  if (problems.length > 0) throw new ValidationError(`invalid query: ${quote(problems[0]!.field)}: ${problems[0]!.description}`, problems);
  return out;
}

/**
 * Starts the fleet dashboard: a page, JSON reads and one server-sent-events stream of live
 * changes (nodes, policies, rollouts, counter samples), over HTTPS with the controller's
 * serving certificate. Every request is authorized like a gRPC call (grpc/authorize.ts, routes
 * `dashboard GET <path>`): a client certificate of the fleet's CA with role viewer, operator
 * or admin; nothing on it writes. The dashboard owns what it returns (close it).
 * @throws Error if the address cannot be bound or the page's files are missing.
 */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const assets = loadAssets();
  const { sources, auth } = options;
  const secure = !options.tls.insecure;
  const heartbeatMs = options.heartbeatMs ?? 15_000;
  const outcomes = new NodeOutcomes();
  outcomes.start(sources.fleet, options.log);
  for (const s of sources.fleet.listRollouts({ activeOnly: false, pageSize: 1000, pageToken: '' }).rollouts) outcomes.noteRollout(s);
  const stopNoting = sources.rollouts.watch((key) => {
    const s = sources.rollouts.status(key);
    if (s) outcomes.noteRollout(s);
  });
  const counters = new CounterHistory(sources.fleet);
  counters.start(options.counterIntervalMs);
  const streams = new Set<() => void>();
  const perIdentity = new Map<string, number>();

  const headers = (type: string): Record<string, string> => ({
    'content-type': type,
    'content-security-policy': CONTENT_SECURITY_POLICY,
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    'referrer-policy': 'no-referrer',
    'cross-origin-opener-policy': 'same-origin',
    'cross-origin-resource-policy': 'same-origin',
    'cache-control': 'no-store',
    ...(secure ? { 'strict-transport-security': 'max-age=31536000' } : {}),
  });

  const sendJson = (req: IncomingMessage, res: ServerResponse, httpStatus: number, body: unknown, extra: Record<string, string> = {}): void => {
    const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    res.writeHead(httpStatus, { ...headers('application/json; charset=utf-8'), 'content-length': String(Buffer.byteLength(text)), ...extra });
    res.end(req.method === 'HEAD' ? undefined : text);
  };

  /**
   * Every refusal, in one shape: { error: { code, message, reason?, violations? } }, its status
   * from toStatus's code; a page (not /api/) gets the same as one line of text, for a person.
   */
  const sendError = (req: IncomingMessage, res: ServerResponse, err: unknown): void => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const page = !(req.url ?? '').startsWith('/api/');
    const reply = (httpStatus: number, error: { code: string; message: string }, extra: Record<string, string> = {}): void => {
      if (!page) return sendJson(req, res, httpStatus, { error }, extra);
      const text = `edgeplane dashboard: ${httpStatus} ${error.code}: ${error.message}\n`;
      res.writeHead(httpStatus, { ...headers('text/plain; charset=utf-8'), 'content-length': String(Buffer.byteLength(text)), ...extra });
      res.end(req.method === 'HEAD' ? undefined : text);
    };
    if (err instanceof HttpError) {
      reply(err.httpStatus, { code: err.code, message: err.message }, err.headers);
      return;
    }
    const st = toStatus(err, options.log);
    const code = st.code ?? grpcStatus.INTERNAL;
    const raw = st.metadata?.get(STATUS_DETAILS_KEY)[0];
    const details = raw instanceof Buffer ? decodeStatusDetails(raw) : undefined;
    reply(HTTP_STATUS[code] ?? 500, {
      code: grpcStatus[code] ?? 'INTERNAL',
      message: st.details ?? 'internal error',
      ...(details?.errorInfo?.reason ? { reason: details.errorInfo.reason } : {}),
      ...(details?.fieldViolations.length ? { violations: details.fieldViolations } : {}),
    });
  };

  const api = (path: string, q: Map<string, string>): unknown => {
    const page = (): { pageSize: number; pageToken: string } => ({ pageSize: parseCount(q.get('page_size'), 'page_size'), pageToken: q.get('page_token') ?? '' });
    switch (path) {
      case '/api/nodes': {
        const r = sources.fleet.listNodes({ labelSelector: q.get('label_selector') ?? '', ...page() });
        return { nodes: r.nodes.map(nodeView), nextPageToken: r.nextPageToken, revision: sources.revision() };
      }
      case '/api/policies': {
        const r = sources.intent.list({ labelSelector: q.get('label_selector') ?? '', ...page() });
        return { policies: r.policies.map((p) => ({ ...(Policy.toJSON(p) as object), nodeSelectorText: formatLabelSelector(p.spec?.nodeSelector) })), nextPageToken: r.nextPageToken, revision: r.revision };
      }
      case '/api/services': {
        const r = sources.intent.listServices({ labelSelector: q.get('label_selector') ?? '', ...page() });
        return { services: r.services.map((s) => ({ ...(Service.toJSON(s) as object), nodeSelectorText: formatLabelSelector(s.spec?.nodeSelector) })), nextPageToken: r.nextPageToken, revision: r.revision };
      }
      case '/api/rollouts': {
        const r = sources.fleet.listRollouts({ activeOnly: parseBool(q.get('active_only'), 'active_only'), ...page() });
        return { rollouts: r.rollouts.map((s) => RolloutStatus.toJSON(s)), nextPageToken: r.nextPageToken };
      }
      case '/api/rollout': {
        const kind = parseKind(q.get('kind'));
        const name = q.get('name') ?? '';
        const problem = name === '' ? 'required' : checkDnsLabel(name);
        if (problem) throw new ValidationError(`invalid name: ${problem}`, [{ field: 'name', description: name === '' ? 'required' : `${quote(name)} ${problem}`, reason: name === '' ? 'REQUIRED' : 'INVALID_NAME' }]);
        const status = sources.fleet.getRollout({ kind, name }).status!;
        return { status: RolloutStatus.toJSON(status), timeline: outcomes.timeline(status) };
      }
      case '/api/counters':
        return { intervalMs: options.counterIntervalMs, samples: counters.samples() };
      default:
        throw new HttpError(404, 'NOT_FOUND', 'no such page');
    }
  };

  const events = (res: ServerResponse, caller: Caller, q: Map<string, string>, call: AuthenticatedCall): void => {
    const labelSelector = q.get('label_selector') ?? '';
    selectorParam(labelSelector, 'label_selector');
    const who = caller.identity ? describeIdentity(caller.identity) : 'anonymous';
    if (streams.size >= MAX_DASHBOARD_STREAMS) throw new HttpError(503, 'UNAVAILABLE', `the dashboard serves at most ${MAX_DASHBOARD_STREAMS} live streams at once; try again later`, { 'retry-after': '10' });
    if ((perIdentity.get(who) ?? 0) >= MAX_DASHBOARD_STREAMS_PER_IDENTITY) {
      throw new HttpError(429, 'RESOURCE_EXHAUSTED', `${who} has ${MAX_DASHBOARD_STREAMS_PER_IDENTITY} live streams open (close a tab)`, { 'retry-after': '10' });
    }
    res.writeHead(200, { ...headers('text/event-stream; charset=utf-8'), connection: 'keep-alive' });
    res.socket?.setNoDelay(true);
    const abort = new AbortController();
    const offs: (() => void)[] = [];
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      abort.abort();
      for (const off of offs) off();
      clearInterval(flushTimer);
      clearInterval(beat);
      clearInterval(poll);
      streams.delete(end);
      const n = (perIdentity.get(who) ?? 1) - 1;
      if (n > 0) perIdentity.set(who, n);
      else perIdentity.delete(who);
      res.end();
    };
    streams.add(end);
    perIdentity.set(who, (perIdentity.get(who) ?? 0) + 1);
    // The response closes when the client goes away (the request closes once read).
    res.on('close', end);
    const send = (event: string, data: unknown): void => {
      if (ended) return;
      res.write(`event: ${event}\ndata: ${JSON.stringify(data, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n\n`);
      // A reader this far behind starts again from a fresh state (EventSource reconnects).
      if (res.writableLength > MAX_DASHBOARD_STREAM_BUFFER_BYTES) {
        options.log('dashboard stream closed: the client does not read', new Error(`${who}: ${res.writableLength} bytes queued`));
        end();
        res.destroy();
      }
    };
    send('hello', { identity: who, role: caller.identity?.role ?? 'admin', revision: sources.revision(), counterIntervalMs: options.counterIntervalMs });

    // Node changes arrive per report; a fleet's worth per second is coalesced to one event per node per flush.
    const pendingNodes = new Map<string, WatchNodesResponse>();
    let initial = true;
    const nodeEvent = (e: WatchNodesResponse): void => {
      if (!e.node) return;
      if (initial) send('node', { type: 'ADDED', node: nodeView(e.node) });
      else pendingNodes.set(e.node.name, e);
    };
    const flushTimer = setInterval(() => {
      for (const e of pendingNodes.values()) send('node', { type: e.type === NodeEventType.NODE_EVENT_TYPE_DELETED ? 'DELETED' : 'MODIFIED', node: nodeView(e.node!) });
      pendingNodes.clear();
    }, 200);
    sources.fleet.watchNodes({ labelSelector, sendInitial: true }, nodeEvent, abort.signal).catch((err: unknown) => options.log('dashboard node stream', err));
    initial = false;
    send('synced', { what: 'nodes' });

    sources.intent
      .watch({ startRevision: 0n, labelSelector: '' }, (e) => send('policy', { type: e.type, revision: e.revision, ...(e.policy ? { policy: { ...(Policy.toJSON(e.policy) as object), nodeSelectorText: formatLabelSelector(e.policy.spec?.nodeSelector) } } : {}) }), abort.signal)
      .catch((err: unknown) => options.log('dashboard policy stream', err));
    offs.push(sources.onRevision((revision) => send('revision', { revision })));

    // Rollouts: the newest at start, then every change; active ones are looked at each second,
    // since gate readings move with counters, which notify nobody (as FleetApi.watchRollout does).
    const last = new Map<string, string>();
    const sendRollout = (key: string): void => {
      const s = sources.rollouts.status(key);
      if (!s) return;
      const json = RolloutStatus.toJSON(s);
      const text = JSON.stringify(json);
      if (last.get(key) === text) return;
      last.set(key, text);
      send('rollout', json);
    };
    for (const s of sources.fleet.listRollouts({ activeOnly: false, pageSize: 50, pageToken: '' }).rollouts) {
      if (s.rollout) sendRollout(rolloutKeyOf(s.rollout));
    }
    offs.push(sources.rollouts.watch(sendRollout));
    const poll = setInterval(() => {
      for (const s of sources.fleet.listRollouts({ activeOnly: true, pageSize: 50, pageToken: '' }).rollouts) {
        if (s.rollout) sendRollout(rolloutKeyOf(s.rollout));
      }
    }, 1000);
    offs.push(counters.onSample((s) => send('counters', s)));

    const beat = setInterval(() => {
      try {
        auth.authorize('dashboard GET /api/events', call);
      } catch (err) {
        send('denied', { message: (err as Error).message });
        end();
        return;
      }
      if (!ended) res.write(': ping\n\n');
    }, heartbeatMs);
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    try {
      const target = req.url ?? '/';
      if (target.length > MAX_DASHBOARD_URL_LENGTH) throw new HttpError(414, 'URI_TOO_LONG', `the request target has ${target.length} characters; at most ${MAX_DASHBOARD_URL_LENGTH}`);
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${quote(req.method ?? '', 16)}: the dashboard only reads (GET)`, { allow: 'GET, HEAD' });
      let url: URL;
      try {
        url = new URL(target, 'https://dashboard.invalid');
      } catch {
        throw new HttpError(400, 'INVALID_ARGUMENT', 'the request target is not a URL path');
      }
      if (!target.startsWith('/')) throw new HttpError(400, 'INVALID_ARGUMENT', 'the request target is not a URL path');
      const path = url.pathname;
      const known = assets.has(path) || path in API_PARAMS;
      const socket = req.socket as TLSSocket;
      const call: AuthenticatedCall = {
        getAuthContext: () => (secure && socket.authorized ? { transportSecurityType: 'ssl', sslPeerCertificate: socket.getPeerCertificate() } : null),
      };
      // Who asks comes first: an unknown path is authorized as the page is, then 404.
      const caller = auth.authorize(`dashboard GET ${known ? path : '/'}`, call);
      // Another site's page may link here but not read from here (no CORS; fetch metadata where sent).
      const site = req.headers['sec-fetch-site'];
      if (site === 'cross-site' && !(path === '/' && req.headers['sec-fetch-mode'] === 'navigate')) throw new HttpError(403, 'PERMISSION_DENIED', 'cross-site requests are refused');
      const asset = assets.get(path);
      if (asset) {
        if (url.search) queryOf(path, url.searchParams);
        res.writeHead(200, { ...headers(asset.type), 'content-length': String(asset.body.length) });
        res.end(req.method === 'HEAD' ? undefined : asset.body);
        return;
      }
      if (!known) throw new HttpError(404, 'NOT_FOUND', `no page ${quote(path)}`);
      const q = queryOf(path, url.searchParams);
      if (path === '/api/events') events(res, caller, q, call);
      else sendJson(req, res, 200, api(path, q));
    } catch (err) {
      sendError(req, res, err);
    }
  };

  const serverOptions = { maxHeaderSize: MAX_DASHBOARD_HEADER_BYTES, headersTimeout: 10_000, requestTimeout: 30_000, keepAliveTimeout: 5_000 };
  const server: Server = options.tls.insecure
    ? createHttpServer(serverOptions, handle)
    : createHttpsServer(
        {
          ...serverOptions,
          cert: options.tls.certChainPem,
          key: options.tls.keyPem,
          ca: options.tls.clientCaPem,
          // Asked for, verified against the fleet CA, but not required at the handshake: a browser
          // without one gets a clear 401 instead of a TLS failure (as the gRPC listener does for Enroll).
          requestCert: true,
          rejectUnauthorized: false,
          minVersion: 'TLSv1.2',
          handshakeTimeout: 10_000,
        },
        handle,
      );
  server.maxConnections = MAX_DASHBOARD_CONNECTIONS;
  const i = options.listen.lastIndexOf(':');
  const host = options.listen.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(options.listen.slice(i + 1));
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    stopNoting();
    outcomes.close();
    counters.close();
    throw err;
  }
  const bound = (server.address() as { port: number }).port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  let closing: Promise<void> | undefined;
  return {
    url: `${secure ? 'https' : 'http'}://${shownHost}:${bound}/`,
    get streams() {
      return streams.size;
    },
    close(): Promise<void> {
      closing ??= (async () => {
        stopNoting();
        outcomes.close();
        counters.close();
        for (const end of [...streams]) end();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeAllConnections();
        await closed;
      })();
      return closing;
    },
  };
}
