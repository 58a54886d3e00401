export { ChainFollower, type ChainFollowerEvents, type ChainFollowerOptions, type ChainFollowerStats, type RejectKind } from './chain-follower.js';
export { ChainError, ConflictError, EntryTooLargeError, FleetMismatchError, GapError, LogUnavailableError, NatsCredentialsError } from './errors.js';
export { IntentChain, type AppendResult, type OpenedEntry, type PolicyChange } from './intent-chain.js';
export { IntentLog, type IntentLogOptions, type LogBounds, type StoredEntry, type StoredMessage } from './intent-log.js';
export { DEFAULT_MAX_PAYLOAD, NatsServer, freePort, type NatsServerOptions, type NatsServerTls } from './nats-server.js';
export { formatCreds, natsClientOptions, natsCredentialsPublicKey, parseCreds, type NatsClientCredentials, type NatsClientTls } from './nats-client-options.js';
