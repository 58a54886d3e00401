import type * as grpc from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode, context, trace, type Context, type Span } from '@opentelemetry/api';
import type {
  AgentServiceServer,
  BlocklistServiceServer,
  FieldViolation,
  ConnectRequest,
  ConnectResponse,
  FleetServiceServer,
  IntentServiceServer,
  TraceContext,
  TrustServiceServer,
} from '@edgeplane/proto';
import { extractNatsHeaders, injectTraceContext } from '@edgeplane/telemetry';
import { X509Certificate } from 'node:crypto';
import type { AgentSessions } from '../agent-sessions.js';
import { UnauthenticatedError } from '../errors.js';
import type { TrustApi } from '../trust-api.js';
import type { Authorizer, Caller } from './authorize.js';
import type { BlocklistApi } from '../blocklist-api.js';
import type { FleetApi } from '../fleet-api.js';
import { describeIdentity } from '../pki/identity.js';
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

/** Where handlers are wrapped: every call is authorized (grpc/authorize.ts) before its handler runs. */
interface Edge {
  log: ErrorLogger;
  auth: Authorizer;
}

function unary<Req, Res>(
  service: string,
  method: string,
  edge: Edge,
  fn: (req: Req, span: Span, caller: Caller, call: grpc.ServerUnaryCall<Req, Res>) => Res | Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  const log = edge.log;
  return (call, callback) => {
    rpcSpan(service, method, call.metadata, async (span) => {
      const caller = edge.auth.authorize(`/edgeplane.v1.${service}/${method}`, call);
      if (caller.identity) span.setAttribute('edgeplane.caller', `${caller.identity.role}/${caller.identity.name}`);
      return fn(call.request, span, caller, call);
    }).then(
      (res) => callback(null, res),
      (err: unknown) => callback(toStatus(err, log) as grpc.ServiceError),
    );
  };
}

function serverStream<Req, Res>(
  service: string,
  method: string,
  edge: Edge,
  fn: (req: Req, send: (r: Res) => void, signal: AbortSignal) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  const log = edge.log;
  return (call) => {
    const abort = new AbortController();
    call.on('cancelled', () => abort.abort());
    call.on('close', () => abort.abort());
    call.on('error', () => abort.abort());
    rpcSpan(service, method, call.metadata, async () => {
      edge.auth.authorize(`/edgeplane.v1.${service}/${method}`, call);
      await fn(call.request, (r) => void call.write(r), abort.signal);
    }).then(
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

/**
 * One write of a `kind` resource: refuses it with the violations the wire precheck found (before
 * any decoding work of its own), names the resource and the revision written on the span.
 */
async function write<Res extends { revision: bigint }>(kind: 'policy' | 'service' | 'prefix list', name: string | undefined, span: Span, run: () => Promise<Res>, refused?: FieldViolation[]): Promise<Res> {
  if (refused) throw new ValidationError(`invalid ${kind}: ${refused[0]!.field}: ${refused[0]!.description}`, refused);
  span.setAttribute(`edgeplane.${kind.replace(' ', '_')}`, name ?? '');
  const res = await run();
  span.setAttribute('edgeplane.revision', Number(res.revision));
  return res;
}

/** Returns the BlocklistService handlers over the domain API (blocks record who made and lifted them). */
export function blocklistServiceHandlers(api: BlocklistApi, log: ErrorLogger, auth: Authorizer): BlocklistServiceServer {
  const edge: Edge = { log, auth };
  const who = (caller: Caller): string => (caller.identity ? describeIdentity(caller.identity) : 'unknown');
  return {
    updatePrefixList: unary('BlocklistService', 'UpdatePrefixList', edge, (req, span) => {
      span.setAttribute('edgeplane.prefix_list', req.prefixList?.metadata?.name ?? '');
      return api.updatePrefixList(req, entryTrace());
    }),
    deletePrefixList: unary('BlocklistService', 'DeletePrefixList', edge, (req, span) => write('prefix list', req.name, span, () => api.deletePrefixList(req, entryTrace()))),
    getPrefixList: unary('BlocklistService', 'GetPrefixList', edge, (req) => api.getPrefixList(req)),
    listPrefixLists: unary('BlocklistService', 'ListPrefixLists', edge, () => api.listPrefixLists()),
    createBlock: unary('BlocklistService', 'CreateBlock', edge, (req, _span, caller) => api.createBlock(req, who(caller), entryTrace())),
    liftBlock: unary('BlocklistService', 'LiftBlock', edge, (req, _span, caller) => api.liftBlock(req, who(caller), entryTrace())),
    listBlocks: unary('BlocklistService', 'ListBlocks', edge, (req) => api.listBlocks(req)),
  };
}

/** Returns the IntentService handlers over the domain API. */
export function intentServiceHandlers(api: IntentApi, log: ErrorLogger, auth: Authorizer): IntentServiceServer {
  const edge: Edge = { log, auth };
  return {
    applyPolicy: unary('IntentService', 'ApplyPolicy', edge, (req, span) => write('policy', req.policy?.metadata?.name, span, () => api.apply(req, entryTrace()), wireViolations(req))),
    deletePolicy: unary('IntentService', 'DeletePolicy', edge, (req, span) => write('policy', req.name, span, () => api.delete(req, entryTrace()))),
    getPolicy: unary('IntentService', 'GetPolicy', edge, (req) => api.get(req)),
    listPolicies: unary('IntentService', 'ListPolicies', edge, (req) => api.list(req)),
    watchPolicies: serverStream('IntentService', 'WatchPolicies', edge, (req, send, signal) => api.watch(req, send, signal)),
    pauseRollout: unary('IntentService', 'PauseRollout', edge, (req) => api.rolloutAction(req.name, 'pause', req.reason, entryTrace(), req.kind)),
    resumeRollout: unary('IntentService', 'ResumeRollout', edge, (req) => api.rolloutAction(req.name, 'resume', '', entryTrace(), req.kind)),
    promoteRollout: unary('IntentService', 'PromoteRollout', edge, (req) => api.rolloutAction(req.name, 'promote', '', entryTrace(), req.kind)),
    abortRollout: unary('IntentService', 'AbortRollout', edge, (req) => api.rolloutAction(req.name, 'abort', req.reason, entryTrace(), req.kind)),
    resetHistory: unary('IntentService', 'ResetHistory', edge, (req) => api.resetHistory(req, entryTrace())),
    applyService: unary('IntentService', 'ApplyService', edge, (req, span) => write('service', req.service?.metadata?.name, span, () => api.applyService(req, entryTrace()), wireViolations(req))),
    deleteService: unary('IntentService', 'DeleteService', edge, (req, span) => write('service', req.name, span, () => api.deleteService(req, entryTrace()))),
    getService: unary('IntentService', 'GetService', edge, (req) => api.getService(req)),
    listServices: unary('IntentService', 'ListServices', edge, (req) => api.listServices(req)),
  };
}

/** Returns the FleetService handlers over the domain API. */
export function fleetServiceHandlers(api: FleetApi, log: ErrorLogger, auth: Authorizer): FleetServiceServer {
  const edge: Edge = { log, auth };
  return {
    listNodes: unary('FleetService', 'ListNodes', edge, (req) => api.listNodes(req)),
    getNode: unary('FleetService', 'GetNode', edge, (req) => api.getNode(req)),
    watchNodes: serverStream('FleetService', 'WatchNodes', edge, (req, send, signal) => api.watchNodes(req, send, signal)),
    getPolicyCounters: unary('FleetService', 'GetPolicyCounters', edge, (req) => api.getPolicyCounters(req)),
    getRevisionStatus: unary('FleetService', 'GetRevisionStatus', edge, (req) => api.getRevisionStatus(req)),
    getRollout: unary('FleetService', 'GetRollout', edge, (req) => api.getRollout(req)),
    listRollouts: unary('FleetService', 'ListRollouts', edge, (req) => api.listRollouts(req)),
    watchRollout: serverStream('FleetService', 'WatchRollout', edge, (req, send, signal) => api.watchRollout(req, send, signal)),
    listConnections: unary('FleetService', 'ListConnections', edge, (req, span) => {
      span.setAttribute('edgeplane.node', req.node);
      return api.listConnections(req);
    }),
    getServiceHealth: unary('FleetService', 'GetServiceHealth', edge, (req) => api.getServiceHealth(req)),
  };
}

/**
 * Returns the AgentService handler: each Connect stream is authorized (node role), then served
 * by the sessions, which bind it to the caller (a node certificate speaks only for its name).
 */
export function agentServiceHandlers(sessions: AgentSessions, log: ErrorLogger, auth: Authorizer): AgentServiceServer {
  const method = '/edgeplane.v1.AgentService/Connect';
  return {
    connect(call: grpc.ServerDuplexStream<ConnectRequest, ConnectResponse>) {
      let ended = false;
      const end = (err?: Error): void => {
        if (ended) return;
        ended = true;
        if (err) call.emit('error', Object.assign(new Error(err.message), toStatus(err, log)));
        else call.end();
      };
      let caller: Caller;
      try {
        caller = auth.authorize(method, call);
      } catch (err) {
        end(err as Error);
        return;
      }
      void sessions.serve({
        // Ending early does not destroy the call (as iterating it would), so the status is still sent.
        listen: (message, ended) => {
          call.on('data', message);
          for (const ev of ['end', 'error', 'close', 'cancelled']) call.on(ev, ended);
        },
        send: (m) => {
          if (!ended) call.write(m);
        },
        end,
        checkHello: (name, labels) => auth.checkHello(method, caller, name, labels),
      });
    },
  };
}

/** The public key of the caller's verified client certificate. @throws UnauthenticatedError without one. */
function peerPublicKey(call: grpc.ServerUnaryCall<unknown, unknown>): X509Certificate['publicKey'] {
  const raw = call.getAuthContext()?.sslPeerCertificate?.raw;
  if (!raw) throw new UnauthenticatedError('renewal needs the current client certificate', 'NO_IDENTITY');
  return new X509Certificate(raw).publicKey;
}

/** Returns the TrustService handlers over the domain API. */
export function trustServiceHandlers(api: TrustApi, log: ErrorLogger, auth: Authorizer): TrustServiceServer {
  const edge: Edge = { log, auth };
  return {
    enroll: unary('TrustService', 'Enroll', edge, (req, span) => {
      span.setAttribute('edgeplane.node', req.nodeName);
      return api.enroll(req);
    }),
    renewCertificate: unary('TrustService', 'RenewCertificate', edge, (req, _span, caller, call) => {
      if (caller.insecure) throw new UnauthenticatedError('renewal needs a node certificate (not available on an --insecure listener)', 'NO_IDENTITY');
      return api.renew(caller.identity!, peerPublicKey(call), req);
    }),
    createJoinToken: unary('TrustService', 'CreateJoinToken', edge, (req, _span, caller) => api.createJoinToken(caller.identity!, req)),
    revokeNode: unary('TrustService', 'RevokeNode', edge, (req, _span, caller) => api.revokeNode(caller.identity!, req)),
    issueCertificate: unary('TrustService', 'IssueCertificate', edge, (req, _span, caller) => api.issueCertificate(caller.identity, req)),
    listCertificates: unary('TrustService', 'ListCertificates', edge, (req) => api.listCertificates(req)),
    revokeCertificate: unary('TrustService', 'RevokeCertificate', edge, (req, _span, caller) => api.revokeCertificate(caller, req)),
    setNodeLabels: unary('TrustService', 'SetNodeLabels', edge, (req, span) => {
      span.setAttribute('edgeplane.node', req.nodeName);
      return api.setNodeLabels(req);
    }),
  };
}
