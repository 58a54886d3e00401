// The thin gRPC adapter: generated clients behind the narrow interfaces the commands use.
// Every call gets a deadline; failures become RpcError with the decoded field violations.
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import {
  FleetServiceClient,
  IntentServiceClient,
  BlocklistServiceClient,
  type Block,
  type CreateBlockRequest,
  type CreateBlockResponse,
  type LiftBlockResponse,
  type UpdatePrefixListRequest,
  type UpdatePrefixListResponse,
  type DeletePrefixListResponse,
  type GetPrefixListResponse,
  type ListPrefixListsResponse,
  MAX_PREFIX_LIST_RESPONSE_BYTES,
  TrustServiceClient,
  STATUS_DETAILS_KEY,
  decodeStatusDetails,
  type ApplyPolicyRequest,
  type ApplyPolicyResponse,
  type ApplyServiceRequest,
  type ApplyServiceResponse,
  type DeleteServiceRequest,
  type DeleteServiceResponse,
  type GetServiceResponse,
  type Service,
  type ServiceHealth,
  MAX_SERVICE_HEALTH_NAMES,
  type DeletePolicyRequest,
  type ResetHistoryResponse,
  type SignedHistoryReset,
  type DeletePolicyResponse,
  type GetNodeResponse,
  type GetPolicyCountersRequest,
  type GetPolicyCountersResponse,
  type GetPolicyResponse,
  type GetRevisionStatusResponse,
  type ListConnectionsRequest,
  type ListConnectionsResponse,
  type Node,
  type Policy,
  type Rollout,
  RolloutKind,
  rolloutKindName,
  type RolloutStatus,
  type CreateJoinTokenResponse,
  type IssueCertificateResponse,
  type ListCertificatesResponse,
  type RevokeCertificateResponse,
  type RevokeNodeResponse,
  type SetNodeLabelsResponse,
} from '@edgeplane/proto';
import { InputError, RpcError } from './errors.js';

/** The policy calls the commands make. */
export interface PolicyApi {
  applyPolicy(req: ApplyPolicyRequest): Promise<ApplyPolicyResponse>;
  deletePolicy(req: DeletePolicyRequest): Promise<DeletePolicyResponse>;
  /** Returns the policy, or undefined when the server says NOT_FOUND. */
  getPolicy(name: string): Promise<GetPolicyResponse | undefined>;
  /** Every policy matching the selector, all pages. */
  listPolicies(labelSelector: string): Promise<Policy[]>;
}

/** The service calls the commands make. */
export interface ServiceApi {
  applyService(req: ApplyServiceRequest): Promise<ApplyServiceResponse>;
  deleteService(req: DeleteServiceRequest): Promise<DeleteServiceResponse>;
  /** Returns the service, or undefined when the server says NOT_FOUND. */
  getService(name: string): Promise<GetServiceResponse | undefined>;
  /** Every service matching the selector, all pages. */
  listServices(labelSelector: string): Promise<Service[]>;
}

/** The fleet calls the commands make. */
export interface FleetApi {
  /** Every node matching the selector, all pages. */
  listNodes(labelSelector: string): Promise<Node[]>;
  /** Returns the node, or undefined when the server says NOT_FOUND. */
  getNode(name: string): Promise<GetNodeResponse | undefined>;
  getPolicyCounters(req: GetPolicyCountersRequest): Promise<GetPolicyCountersResponse>;
  getRevisionStatus(revision: bigint, nodeLabelSelector: string): Promise<GetRevisionStatusResponse>;
  /** FleetService.ListConnections: one node's connection table, through its agent. */
  listConnections(req: ListConnectionsRequest): Promise<ListConnectionsResponse>;
  /**
   * FleetService.GetServiceHealth for any number of services (asked MAX_SERVICE_HEALTH_NAMES at
   * a time), in the order given; a service deleted meanwhile is left out.
   */
  getServiceHealth(names: readonly string[]): Promise<ServiceHealth[]>;
}

/** Both APIs. */
/** The rollout calls the commands make. */
export interface RolloutApi {
  /** Returns undefined when the resource (a policy unless `kind` says otherwise) has no rollout. */
  getRollout(name: string, kind?: RolloutKind): Promise<RolloutStatus | undefined>;
  /** Every rollout (policies' and services'), newest change first. */
  listRollouts(activeOnly: boolean): Promise<RolloutStatus[]>;
  rolloutAction(name: string, action: 'pause' | 'resume' | 'promote' | 'abort', reason: string, kind?: RolloutKind): Promise<{ rollout: Rollout | undefined; revision: bigint }>;
}

/** Admin calls. */
export interface AdminApi {
  /** IntentService.ResetHistory (admin only): writes an operator-signed history reset. */
  resetHistory(reset: SignedHistoryReset): Promise<ResetHistoryResponse>;
}

/** The trust calls the commands make (admin). */
export interface TrustApi {
  createJoinToken(ttlMs: number, labels: Record<string, string>): Promise<CreateJoinTokenResponse>;
  revokeNode(nodeName: string, reason: string): Promise<RevokeNodeResponse>;
  /** TrustService.SetNodeLabels: replaces the labels bound to an enrolled node. */
  setNodeLabels(nodeName: string, labels: Record<string, string>): Promise<SetNodeLabelsResponse>;
  /** A certificate for a role and name; `publicKey` is DER SPKI (the key stays with the caller). */
  issueCertificate(role: string, name: string, publicKey: Uint8Array, lifetimeMs: number | undefined): Promise<IssueCertificateResponse>;
  /** TrustService.ListCertificates: the person and pipeline certificates issued. */
  listCertificates(includeExpired: boolean): Promise<ListCertificatesResponse>;
  /** TrustService.RevokeCertificate: by serial number (hex) or by name, whichever `target` looks like. */
  revokeCertificate(target: { serialNumber: string } | { name: string }, reason: string): Promise<RevokeCertificateResponse>;
}

/** Emergency blocks and prefix lists (BlocklistService). */
export interface BlocklistApi {
  createBlock(req: CreateBlockRequest): Promise<CreateBlockResponse>;
  liftBlock(id: string): Promise<LiftBlockResponse>;
  listBlocks(includeEnded: boolean): Promise<Block[]>;
  updatePrefixList(req: UpdatePrefixListRequest): Promise<UpdatePrefixListResponse>;
  /** The list (with its prefixes unless `omitPrefixes`), or undefined when the server says NOT_FOUND. */
  getPrefixList(name: string, omitPrefixes: boolean): Promise<GetPrefixListResponse | undefined>;
  /** Every prefix list, without prefixes, with their counts. */
  listPrefixLists(): Promise<ListPrefixListsResponse>;
  deletePrefixList(name: string): Promise<DeletePrefixListResponse>;
}

export interface EdgeplaneApi extends PolicyApi, ServiceApi, FleetApi, RolloutApi, TrustApi, AdminApi, BlocklistApi {}

function duration(ms: number): { seconds: bigint; nanos: number } {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

/** How to reach the controller. */
export interface ConnectionOptions {
  /** host:port. */
  server: string;
  /** Plaintext gRPC (the controller's --insecure). */
  insecure: boolean;
  /** CA bundle (PEM) to verify the server; unset = the system roots. */
  tlsCa?: string;
  /** Client certificate and key (PEM) for mutual TLS. */
  tlsCert?: string;
  tlsKey?: string;
  /** Deadline of every call, in milliseconds. */
  requestTimeoutMs: number;
}

type Callback<Res> = (err: grpc.ServiceError | null, res: Res) => void;
type Unary<Req, Res> = (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<Res>) => grpc.ClientUnaryCall;

/** Converts a gRPC error to an RpcError with its BadRequest field violations. */
export function toRpcError(operation: string, err: grpc.ServiceError): RpcError {
  const raw = err.metadata?.get(STATUS_DETAILS_KEY)[0];
  const details = Buffer.isBuffer(raw) ? decodeStatusDetails(raw) : undefined;
  const code = grpc.status[err.code] ?? String(err.code);
  return new RpcError(`${operation}: ${code}: ${err.details || err.message}`, err.code, details?.fieldViolations ?? [], { cause: err });
}

function readPem(flag: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (cause) {
    throw new InputError(`read ${flag} ${file}: ${(cause as Error).message}`, { cause });
  }
}

/**
 * The gRPC implementation of {@link EdgeplaneApi}. Owns three clients; `close()` closes them
 * and is idempotent.
 */
export class GrpcEdgeplaneApi implements EdgeplaneApi {
  #intent: IntentServiceClient;
  #fleet: FleetServiceClient;
  #trust: TrustServiceClient;
  #blocklist: BlocklistServiceClient;
  #timeoutMs: number;
  #closed = false;

  /** @throws InputError when a TLS file cannot be read. */
  constructor(options: ConnectionOptions) {
    const creds = options.insecure
      ? grpc.credentials.createInsecure()
      : grpc.credentials.createSsl(
          options.tlsCa ? readPem('--tls-ca', options.tlsCa) : null,
          options.tlsKey ? readPem('--tls-key', options.tlsKey) : null,
          options.tlsCert ? readPem('--tls-cert', options.tlsCert) : null,
        );
    this.#intent = new IntentServiceClient(options.server, creds);
    // Same target and credentials: grpc-js shares one subchannel between the two clients.
    this.#fleet = new FleetServiceClient(options.server, creds);
    this.#trust = new TrustServiceClient(options.server, creds);
    // A whole list of a million prefixes is one GetPrefixList answer, above grpc-js's 4 MiB default.
    this.#blocklist = new BlocklistServiceClient(options.server, creds, { 'grpc.max_receive_message_length': MAX_PREFIX_LIST_RESPONSE_BYTES });
    this.#timeoutMs = options.requestTimeoutMs;
  }

  #call<Req, Res>(operation: string, client: grpc.Client, method: Unary<Req, Res>, req: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      method.call(client, req, new grpc.Metadata(), { deadline: Date.now() + this.#timeoutMs }, (err, res) => (err ? reject(toRpcError(operation, err)) : resolve(res)));
    });
  }

  /** The call's answer, or undefined when it is NOT_FOUND. */
  async #find<Req, Res>(operation: string, client: grpc.Client, method: Unary<Req, Res>, req: Req): Promise<Res | undefined> {
    try {
      return await this.#call(operation, client, method, req);
    } catch (err) {
      if (err instanceof RpcError && err.code === grpc.status.NOT_FOUND) return undefined;
      throw err;
    }
  }

  /** Every item of a paged List call, pages of 1,000. */
  async #all<Req, Res extends { nextPageToken: string }, T>(operation: string, client: grpc.Client, method: Unary<Req & { pageSize: number; pageToken: string }, Res>, req: Req, items: (page: Res) => T[]): Promise<T[]> {
    const out: T[] = [];
    let pageToken = '';
    do {
      const page = await this.#call(operation, client, method, { ...req, pageSize: 1000, pageToken });
      out.push(...items(page));
      pageToken = page.nextPageToken;
    } while (pageToken);
    return out;
  }

  applyPolicy(req: ApplyPolicyRequest): Promise<ApplyPolicyResponse> {
    return this.#call(`apply policy ${req.policy?.metadata?.name ?? ''}`, this.#intent, this.#intent.applyPolicy, req);
  }

  deletePolicy(req: DeletePolicyRequest): Promise<DeletePolicyResponse> {
    return this.#call(`delete policy ${req.name}`, this.#intent, this.#intent.deletePolicy, req);
  }

  getPolicy(name: string): Promise<GetPolicyResponse | undefined> {
    return this.#find(`get policy ${name}`, this.#intent, this.#intent.getPolicy, { name });
  }

  listPolicies(labelSelector: string): Promise<Policy[]> {
    return this.#all('list policies', this.#intent, this.#intent.listPolicies, { labelSelector }, (page) => page.policies);
  }

  applyService(req: ApplyServiceRequest): Promise<ApplyServiceResponse> {
    return this.#call(`apply service ${req.service?.metadata?.name ?? ''}`, this.#intent, this.#intent.applyService, req);
  }

  deleteService(req: DeleteServiceRequest): Promise<DeleteServiceResponse> {
    return this.#call(`delete service ${req.name}`, this.#intent, this.#intent.deleteService, req);
  }

  getService(name: string): Promise<GetServiceResponse | undefined> {
    return this.#find(`get service ${name}`, this.#intent, this.#intent.getService, { name });
  }

  listServices(labelSelector: string): Promise<Service[]> {
    return this.#all('list services', this.#intent, this.#intent.listServices, { labelSelector }, (page) => page.services);
  }

  listNodes(labelSelector: string): Promise<Node[]> {
    return this.#all('list nodes', this.#fleet, this.#fleet.listNodes, { labelSelector }, (page) => page.nodes);
  }

  getNode(name: string): Promise<GetNodeResponse | undefined> {
    return this.#find(`get node ${name}`, this.#fleet, this.#fleet.getNode, { name });
  }

  getPolicyCounters(req: GetPolicyCountersRequest): Promise<GetPolicyCountersResponse> {
    return this.#call('get policy counters', this.#fleet, this.#fleet.getPolicyCounters, req);
  }

  getRevisionStatus(revision: bigint, nodeLabelSelector: string): Promise<GetRevisionStatusResponse> {
    return this.#call(`get revision status ${revision}`, this.#fleet, this.#fleet.getRevisionStatus, { revision, nodeLabelSelector });
  }

  async getServiceHealth(names: readonly string[]): Promise<ServiceHealth[]> {
    const out: ServiceHealth[] = [];
    const ask = (chunk: string[]): Promise<ServiceHealth[]> => this.#call(`get health of ${chunk.length === 1 ? `service ${chunk[0]}` : `${chunk.length} services`}`, this.#fleet, this.#fleet.getServiceHealth, { names: chunk }).then((r) => r.services);
    for (let i = 0; i < names.length; i += MAX_SERVICE_HEALTH_NAMES) {
      const chunk = names.slice(i, i + MAX_SERVICE_HEALTH_NAMES);
      try {
        out.push(...(await ask(chunk)));
      } catch (err) {
        if (!(err instanceof RpcError && err.code === grpc.status.NOT_FOUND)) throw err;
        // One of them was deleted since it was listed: ask one by one, without it.
        for (const name of chunk) {
          try {
            out.push(...(await ask([name])));
          } catch (e) {
            if (!(e instanceof RpcError && e.code === grpc.status.NOT_FOUND)) throw e;
          }
        }
      }
    }
    return out;
  }

  listConnections(req: ListConnectionsRequest): Promise<ListConnectionsResponse> {
    return this.#call(`${req.countOnly ? 'count' : 'list'} connections of node ${req.node}`, this.#fleet, this.#fleet.listConnections, req);
  }

  async getRollout(name: string, kind: RolloutKind = RolloutKind.ROLLOUT_KIND_POLICY): Promise<RolloutStatus | undefined> {
    return (await this.#find(`get rollout of ${rolloutKindName(kind)} ${name}`, this.#fleet, this.#fleet.getRollout, { name, kind }))?.status;
  }

  listRollouts(activeOnly: boolean): Promise<RolloutStatus[]> {
    return this.#all('list rollouts', this.#fleet, this.#fleet.listRollouts, { activeOnly }, (page) => page.rollouts);
  }

  resetHistory(reset: SignedHistoryReset): Promise<ResetHistoryResponse> {
    return this.#call('reset history', this.#intent, this.#intent.resetHistory, { reset });
  }

  rolloutAction(name: string, action: 'pause' | 'resume' | 'promote' | 'abort', reason: string, kind: RolloutKind = RolloutKind.ROLLOUT_KIND_POLICY): Promise<{ rollout: Rollout | undefined; revision: bigint }> {
    const op = `${action} rollout of ${rolloutKindName(kind)} ${name}`;
    switch (action) {
      case 'pause':
        return this.#call(op, this.#intent, this.#intent.pauseRollout, { name, reason, kind });
      case 'resume':
        return this.#call(op, this.#intent, this.#intent.resumeRollout, { name, kind });
      case 'promote':
        return this.#call(op, this.#intent, this.#intent.promoteRollout, { name, kind });
      case 'abort':
        return this.#call(op, this.#intent, this.#intent.abortRollout, { name, reason, kind });
    }
  }

  createBlock(req: CreateBlockRequest): Promise<CreateBlockResponse> {
    return this.#call(`block ${req.block?.prefixes.join(',') ?? ''}`, this.#blocklist, this.#blocklist.createBlock, req);
  }

  liftBlock(id: string): Promise<LiftBlockResponse> {
    return this.#call(`unblock ${id}`, this.#blocklist, this.#blocklist.liftBlock, { id });
  }

  async listBlocks(includeEnded: boolean): Promise<Block[]> {
    return (await this.#call('list blocks', this.#blocklist, this.#blocklist.listBlocks, { includeEnded })).blocks;
  }

  updatePrefixList(req: UpdatePrefixListRequest): Promise<UpdatePrefixListResponse> {
    return this.#call(`update prefix list ${req.prefixList?.metadata?.name ?? ''}`, this.#blocklist, this.#blocklist.updatePrefixList, req);
  }

  getPrefixList(name: string, omitPrefixes: boolean): Promise<GetPrefixListResponse | undefined> {
    return this.#find(`get prefix list ${name}`, this.#blocklist, this.#blocklist.getPrefixList, { name, omitPrefixes });
  }

  listPrefixLists(): Promise<ListPrefixListsResponse> {
    return this.#call('list prefix lists', this.#blocklist, this.#blocklist.listPrefixLists, {});
  }

  deletePrefixList(name: string): Promise<DeletePrefixListResponse> {
    return this.#call(`delete prefix list ${name}`, this.#blocklist, this.#blocklist.deletePrefixList, { name, expectedResourceVersion: 0n });
  }

  createJoinToken(ttlMs: number, labels: Record<string, string>): Promise<CreateJoinTokenResponse> {
    return this.#call('create join token', this.#trust, this.#trust.createJoinToken, { ttl: duration(ttlMs), labels });
  }

  revokeNode(nodeName: string, reason: string): Promise<RevokeNodeResponse> {
    return this.#call(`revoke node ${nodeName}`, this.#trust, this.#trust.revokeNode, { nodeName, reason });
  }

  setNodeLabels(nodeName: string, labels: Record<string, string>): Promise<SetNodeLabelsResponse> {
    return this.#call(`set labels of node ${nodeName}`, this.#trust, this.#trust.setNodeLabels, { nodeName, labels });
  }

  issueCertificate(role: string, name: string, publicKey: Uint8Array, lifetimeMs: number | undefined): Promise<IssueCertificateResponse> {
    return this.#call(`issue certificate ${role}/${name}`, this.#trust, this.#trust.issueCertificate, { role, name, publicKey: Buffer.from(publicKey), lifetime: lifetimeMs ? duration(lifetimeMs) : undefined });
  }

  listCertificates(includeExpired: boolean): Promise<ListCertificatesResponse> {
    return this.#call('list certificates', this.#trust, this.#trust.listCertificates, { includeExpired });
  }

  revokeCertificate(target: { serialNumber: string } | { name: string }, reason: string): Promise<RevokeCertificateResponse> {
    const serialNumber = 'serialNumber' in target ? target.serialNumber : '';
    const name = 'name' in target ? target.name : '';
    return this.#call(`revoke certificate ${serialNumber || name}`, this.#trust, this.#trust.revokeCertificate, { serialNumber, name, reason });
  }

  /** Closes the channels. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#intent.close();
    this.#fleet.close();
    this.#trust.close();
    this.#blocklist.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
