export { parseConfig, HELP, type ControllerConfig } from './config.js';
export { startController, type RunningController, type StartExtras } from './main.js';
export { NatsAuthorityError } from './errors.js';
export { NatsAuthority, nodePermissions, type AccountJwtPusher, type NatsUserCredentials } from './nats-authority.js';
export { natsAccountPusher } from './nats-account-pusher.js';
export type { NatsCredentialIssuer } from './nats-credential-issuer.js';

export {
  CertificateAuthority,
  certificateFingerprint,
  generateKeyPair,
  loadOrCreateCertificateAuthority,
  defaultCaFiles,
  type IssuedCertificate,
  type IssueOptions,
  type GeneratedKeyPair,
} from './pki/certificate-authority.js';
export { identityUri, parseIdentityUri, identityFromPeerCertificate, checkNatsServerIdentity, type Identity, type Role } from './pki/identity.js';
export { METHOD_ROLES, INSECURE_IDENTITY, Authorizer, type AuthenticatedCall, type AuthorizerOptions, type Caller } from './grpc/authorize.js';
export { watchStalls, type Stall } from './stall-watch.js';
export { enrollProofMessage, renewProofMessage } from './trust-api.js';
export { NodeRegistry, type NodeStoreBackend, type NodeRegistryOptions, type RevisionOutcomes, type NodeListener, type NodeBatchListener } from './node-registry.js';
export { ConnectionRelay, type ConnectionRelayOptions } from './connection-relay.js';
export { CounterStore } from './counter-store.js';
export { AgentSessions, type AgentStream, type AgentSessionsOptions } from './agent-sessions.js';
export { RolloutManager, type RolloutManagerOptions } from './rollout-manager.js';
export type { IntentStore } from './intent-store.js';
export { ServiceHealthStore } from './service-health-store.js';
export { ReplicaFleetSync, type ReplicaFleetSyncOptions } from './replica-fleet-sync.js';
export { RolloutLease, type RolloutLeaseOptions } from './rollout-lease.js';
export { FLEET_METRICS, prometheusMetricNames } from './metrics.js';
