// Public surface of the node agent's datapath.
export { compileTables, MAX_CLASS_WORDS, rangeToPrefixes, TableCompiler, TableCompilers } from './datapath/compile-tables.js';
export type { CompiledTables, MapEntriesSpec, TablesDelta, TablesSpec } from './datapath/compile-tables.js';
export type { ApplyResult, ConnectionReader, Counter, CounterReader, Datapath, DatapathCounters, LbCounters } from './datapath/datapath.js';
export { DEFAULT_OBJECT_PATH, EbpfDatapath } from './datapath/ebpf-datapath.js';
export {
  CONNECTION_FLAGS,
  CONNECTION_STATES,
  CONNTRACK_STAT_NAMES,
  connectionMatcher,
  decodeConnection,
  DEFAULT_CONNTRACK_CONFIG,
  encodeControlEndpoints,
  MAX_CONNTRACK_TIMEOUT_MS,
  MAX_CONTROL_ENDPOINTS,
  MAX_LIST_CONNECTIONS,
  ZERO_CONNTRACK_COUNTERS,
} from './datapath/conntrack.js';
export type {
  ConnectionEntry,
  ConnectionFilter,
  ConnectionFlag,
  ConnectionState,
  ConnectionTable,
  ConntrackConfig,
  ConntrackCounters,
  ConntrackOccupancy,
  ControlEndpoint,
} from './datapath/conntrack.js';
export { ConntrackSweeper, nextSweepDelay } from './datapath/conntrack-sweeper.js';
export { CT_FLAG_ORIG_B, ctKeyOfFlow, ctKeyOfTuple, originalTuple } from './datapath/conntrack-key.js';
export type { ConntrackSweeperOptions, ConntrackSweepTarget, SweepRun } from './datapath/conntrack-sweeper.js';
export { epCt4Cold, epCt4Slot, epCtCfg, epCtControlKey, epCtEntry, epCtKey, epCtSweepArgs, epGenCfg, epLbBackend, epLbBlock, epLbSvc, epCtNat, epLbCfg, epLbVipKey, NO_CT_NAT, tableCodecs } from './datapath/table-codecs.js';
export { ct4Entry, ct4Holds, ct4Line, ct4Place, Ct4Slots, CT4_DEAD, CT4_EMPTY, CT4_LIVE, CT4_MAX_SLOTS, CT4_MIN_SLOTS, CT4_PROBES } from './datapath/ct4-table.js';
export { genFlags, RULE_FLAG_TRACK } from './datapath/compile-tables.js';
export type { AttachOptions, EbpfDatapathOptions, UplinkMode } from './datapath/ebpf-datapath.js';
export { INTERFACE_ROLES, isInterfaceRole } from './datapath/interface-role.js';
export type { InterfaceRole } from './datapath/interface-role.js';
export { CapacityError, ConntrackInputError, DatapathError, MaglevInputError, RollbackError, RuleSetError, ServiceCompileError } from './datapath/errors.js';
export { clientHash, FLOW_HASH_SEED, flowHash, jhash2, maglevSlot } from './datapath/flow-hash.js';
export type { FlowTuple } from './datapath/flow-hash.js';
export { backendKey, buildMaglevTable, maglevPermutation, MAX_BACKEND_KEY_LENGTH } from './datapath/maglev.js';
export type { MaglevBackend } from './datapath/maglev.js';
export { compileServices, lbServiceOrder, MaglevTableCache } from './datapath/service-compile.js';
export type { BackendHealthView, BackendRoute, BackendRouteView, LbBackendSpec, LbServiceSpec, LbSpec, ServiceCompileOptions } from './datapath/service-compile.js';
export { DEFAULT_LB_CAPACITY, LB_TARGET_CAPACITY, NO_LB_CAPACITY, layoutLbTables, LB_BLOCK_SLOTS, lbBlocks, lbSizes, lbSvcFlags } from './datapath/lb-tables.js';
export type { LbCapacity, LbExtent, LbTablesSpec } from './datapath/lb-tables.js';
export { LbReference } from './datapath/lb-reference.js';
export type { LbSelection } from './datapath/lb-reference.js';
export {
  ConntrackModel,
  creationState,
  CT_ENTRIES,
  CT_NEW_ENTRIES,
  ctFlags,
  ctGeneration,
  ctStates,
  ctStatNames,
  ctTimeouts,
  DEFAULT_CT_TIMEOUTS,
  keyHeaders,
  keyId,
  parseCtPacket,
  reverseKey,
  tcpTransition,
} from './datapath/conntrack-model.js';
export type {
  ConntrackModelOptions,
  CtConfig,
  CtControlEndpoint,
  CtDirection,
  CtEntry,
  CtGeneration,
  CtHook,
  CtKey,
  CtPacket,
  CtReason,
  CtState,
  CtStatName,
  CtStepResult,
  CtTable,
  CtTimeoutKind,
  CtTimeouts,
  TcpTransition,
} from './datapath/conntrack-model.js';
export { buildFrame, buildNonIpFrame, tcpFlags } from './datapath/packet.js';
export type { ExtensionHeader, FrameSpec } from './datapath/packet.js';
export { firstMatch, parseFrame, parseIpPacket, ReferenceClassifier, ruleMatches } from './datapath/reference-classifier.js';
export type { CounterValue, ParsedFrame, ReferenceClassifierOptions } from './datapath/reference-classifier.js';
export { DEFAULT_RULE_ID, EGRESS_RULE_ID, MAX_RULES, validateRuleSet } from './datapath/rule-set.js';
export type {
  Classification,
  DefaultAction,
  NormalizedRule,
  NormalizedRuleSet,
  PacketHeaders,
  PortRange,
  RuleAction,
  RuleProtocol,
  RuleSetSpec,
  RuleSpec,
} from './datapath/rule-set.js';

// The agent's logic, for the process in main.ts and for simulated fleets (many agents, memory datapath).
export { MemoryDatapath, type MemoryDatapathOptions } from './datapath/memory-datapath.js';
export {
  CompileError,
  compileIntent,
  compileNode,
  compileNodeServices,
  effectivePolicies,
  effectiveVersions,
  ruleId,
  type CompiledIntent,
  type CompiledRole,
  type NodeCompileOptions,
  type NodeIntent,
  type RuleOrigin,
} from './agent/compile.js';
export {
  AgentRuntime,
  type AgentRuntimeHooks,
  type AgentRuntimeOptions,
  type HeadStore,
  type InterfaceAttacher,
} from './agent/agent-runtime.js';
export { ControllerLink, type ControllerLinkOptions } from './agent/controller-link.js';
export { answerConnectionsQuery, conntrackStatus, toConnection, type ConnectionSources } from './agent/connection-query.js';
export { agentNatsOptions } from './agent/nats-connect-options.js';
export { VerifiedHead, type Head } from './agent/verified-head.js';
export {
  CONDITION_APPLY_ROLLBACK_FAILED,
  CONDITION_HEALTH_APPLY_FAILED,
  CONDITION_INTENT_STALE,
  CONDITION_LOG_MESSAGE_REJECTED,
  CONDITION_ROLLBACK_REFUSED,
  CONDITION_STATE_FILE_FAILED,
  NodeAgent,
  type AgentLogger,
  type AgentStatus,
  type NodeAgentOptions,
} from './agent/node-agent.js';
export { StateFile, StateFileError, type AppliedState, type StateStore } from './agent/state-file.js';
export { AGENT_HELP, AgentConfigError, LB_CAPACITY_BOUNDS, parseAgentConfig, type AgentConfig } from './agent/config.js';
export { EnrollmentError, NodeIdentity, enrollNode, fetchPinnedCa, loadNodeCredentials, saveNodeCredentials, checkControllerIdentity, checkNatsServerIdentity } from './agent/node-identity.js';
export type { EnrollOptions, NodeCredentials, NodeIdentityOptions } from './agent/node-identity.js';
export { BLOCKLIST_F_BLOCK, BLOCKLIST_SIZES, BlocklistPacker, decodeBlocklistValue, encodeBlocklistKey, encodeBlocklistValue, inInsertOrder } from './datapath/blocklist.js';
export type { BlocklistEntry, BlocklistSpec, HashedBlocklist, PackedBlocklist } from './datapath/blocklist.js';
export { BlocklistTables } from './datapath/blocklist-tables.js';
export type { BlocklistCounters, BlocklistLoad, BlocklistMaps } from './datapath/blocklist-tables.js';
export { BlocklistSync } from './agent/blocklist-sync.js';
export { observeBlocklists } from './agent/blocklist-metrics.js';
export type { ObservedBlocklist } from './agent/blocklist-metrics.js';
export type { BlocklistSyncOptions, BlocklistSyncResult, BlocklistWriter } from './agent/blocklist-sync.js';
