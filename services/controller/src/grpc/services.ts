import type * as grpc from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode, context, trace, type Context, type Span } from '@opentelemetry/api';
import type {
  AgentServiceServer,
  ConnectRequest,
  ConnectResponse,
  FleetServiceServer,
  IntentServiceServer,
  TraceContext,
} from '@edgeplane/proto';
import { extractNatsHeaders, injectTraceContext } from '@edgeplane/telemetry';
import type { AgentSessions } from '../agent-sessions.js';
import type { FleetApi } from '../fleet-api.js';
import type { IntentApi } from '../intent-api.js';
import { ValidationError } from '../errors.js';
import { toStatus, type ErrorLogger } from './to-status.js';
import { wireViolations } from './wire-precheck.js';

const tracer = trace.getTracer('@edgeplane/controller');

/** Returns the trace context a client sent in its metadata (W3C traceparent), or the active one. */
function incomingContext(metadata: grpc.Metadata): Context {
  return extractNatsHeaders({
    get: (k) => {
      const v = metadata.get(k)[0];
      return typeof v === 'string' ? v : undefined;
    },
  });
}

function rpcSpan<T>(service: string, method: string, metadata: grpc.Metadata, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer.startActiveSpan(
    `edgeplane.v1.${service}/${method}`,
    { kind: SpanKind.SERVER, attributes: { 'rpc.system': 'grpc', 'rpc.service': `edgeplane.v1.${service}`, 'rpc.method': method } },
    incomingContext(metadata),
    async (span) => {
      try {
        return await fn(span);
      } catch (err) {
        span.recordException(err as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        throw err;
      } finally {
        span.end();
      }
    },
  );
}

function unary<Req, Res>(
  service: string,
  method: string,
  log: ErrorLogger,
  fn: (req: Req, span: Span) => Res | Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    rpcSpan(service, method, call.metadata, async (span) => fn(call.request, span)).then(
      (res) => callback(null, res),
      (err: unknown) => callback(toStatus(err, log) as grpc.ServiceError),
    );
  };
}

function serverStream<Req, Res>(
  service: string,
  method: string,
  log: ErrorLogger,
  fn: (req: Req, send: (r: Res) => void, signal: AbortSignal) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const abort = new AbortController();
    call.on('cancelled', () => abort.abort());
    call.on('close', () => abort.abort());
    call.on('error', () => abort.abort());
    rpcSpan(service, method, call.metadata, () => fn(call.request, (r) => void call.write(r), abort.signal)).then(
      () => call.end(),
      // grpc-js sends a stream's status from an 'error' event (destroy() would skip it).
      (err: unknown) => call.emit('error', Object.assign(new Error((err as Error).message), toStatus(err, log))),
    );
  };
}

/** The trace context of the active span, for the log entry. */
function entryTrace(): TraceContext {
  return injectTraceContext(context.active());
}

/** Returns the IntentService handlers over the domain API. */
export function intentServiceHandlers(api: IntentApi, log: ErrorLogger): IntentServiceServer {
  return {
    applyPolicy: unary('IntentService', 'ApplyPolicy', log, async (req, span) => {
      const refused = wireViolations(req);
      if (refused) throw new ValidationError(`invalid policy: ${refused[0]!.field}: ${refused[0]!.description}`, refused);
      span.setAttribute('edgeplane.policy', req.policy?.metadata?.name ?? '');
      const res = await api.apply(req, entryTrace());
      span.setAttribute('edgeplane.revision', Number(res.revision));
      return res;
    }),
    deletePolicy: unary('IntentService', 'DeletePolicy', log, async (req, span) => {
      span.setAttribute('edgeplane.policy', req.name);
      const res = await api.delete(req, entryTrace());
      span.setAttribute('edgeplane.revision', Number(res.revision));
      return res;
    }),
    getPolicy: unary('IntentService', 'GetPolicy', log, (req) => api.get(req)),
    listPolicies: unary('IntentService', 'ListPolicies', log, (req) => api.list(req)),
    watchPolicies: serverStream('IntentService', 'WatchPolicies', log, (req, send, signal) => api.watch(req, send, signal)),
    pauseRollout: unary('IntentService', 'PauseRollout', log, (req) => api.rolloutAction(req.name, 'pause', req.reason, entryTrace())),
    resumeRollout: unary('IntentService', 'ResumeRollout', log, (req) => api.rolloutAction(req.name, 'resume', '', entryTrace())),
    promoteRollout: unary('IntentService', 'PromoteRollout', log, (req) => api.rolloutAction(req.name, 'promote', '', entryTrace())),
    abortRollout: unary('IntentService', 'AbortRollout', log, (req) => api.rolloutAction(req.name, 'abort', req.reason, entryTrace())),
  };
}

/** Returns the FleetService handlers over the domain API. */
export function fleetServiceHandlers(api: FleetApi, log: ErrorLogger): FleetServiceServer {
  return {
    listNodes: unary('FleetService', 'ListNodes', log, (req) => api.listNodes(req)),
    getNode: unary('FleetService', 'GetNode', log, (req) => api.getNode(req)),
    watchNodes: serverStream('FleetService', 'WatchNodes', log, (req, send, signal) => api.watchNodes(req, send, signal)),
    getPolicyCounters: unary('FleetService', 'GetPolicyCounters', log, (req) => api.getPolicyCounters(req)),
    getRevisionStatus: unary('FleetService', 'GetRevisionStatus', log, (req) => api.getRevisionStatus(req)),
    getRollout: unary('FleetService', 'GetRollout', log, (req) => api.getRollout(req)),
    listRollouts: unary('FleetService', 'ListRollouts', log, (req) => api.listRollouts(req)),
    watchRollout: serverStream('FleetService', 'WatchRollout', log, (req, send, signal) => api.watchRollout(req, send, signal)),
  };
}

/**
 * The messages of a client stream as an async iterable. Unlike iterating the stream itself,
 * leaving the loop early does not destroy the call, so the status can still be sent.
 */
function messagesOf<T>(call: grpc.ServerDuplexStream<T, unknown>): AsyncIterable<T> {
  const queue: T[] = [];
  let done = false;
  let wake: (() => void) | undefined;
  const notify = (): void => {
    wake?.();
    wake = undefined;
  };
  call.on('data', (m: T) => {
    queue.push(m);
    notify();
  });
  for (const ev of ['end', 'error', 'close', 'cancelled']) {
    call.on(ev, () => {
      done = true;
      notify();
    });
  }
  return {
    async *[Symbol.asyncIterator]() {
      for (;;) {
        if (queue.length > 0) yield queue.shift()!;
        else if (done) return;
        else await new Promise<void>((r) => (wake = r));
      }
    },
  };
}

/** Returns the AgentService handler: each Connect stream is served by the sessions. */
export function agentServiceHandlers(sessions: AgentSessions, log: ErrorLogger): AgentServiceServer {
  return {
    connect(call: grpc.ServerDuplexStream<ConnectRequest, ConnectResponse>) {
      let ended = false;
      void sessions.serve({
        messages: messagesOf(call),
        send: (m) => {
          if (!ended) call.write(m);
        },
        end: (err) => {
          if (ended) return;
          ended = true;
          if (err) call.emit('error', Object.assign(new Error(err.message), toStatus(err, log)));
          else call.end();
        },
      });
    },
  };
}
