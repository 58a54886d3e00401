// The CLI as a library: the runner, the command table and the pure pieces (manifest parsing,
// formatting, diff, convergence) that tests and other tools can use.
export { run, mainHelp, commandHelp, type RunOptions } from './cli.js';
export { Flags, type Command, type CommandContext, type Io, type OptionSpec } from './command.js';
export { COMMANDS } from './commands.js';
export { bashCompletion, zshCompletion } from './commands/completion.js';
export { conntrackLine, connectionsToJson, filterFromFlags, renderConnectionTable } from './commands/conntrack.js';
export { describeRollout, renderRollout, renderRolloutTable } from './commands/rollout.js';
export { diffLines, diffPolicy, diffService, previewSelection, renderPolicyDiff, type DiffLine, type PolicyDiff, type SelectionPreview } from './diff.js';
export { formatAge, formatDuration, parseDurationMs } from './duration.js';
export { CliError, InputError, ManifestError, NackError, RpcError, UsageError, WaitTimeoutError, formatPosition, formatProblem, type ManifestProblem, type SourcePosition } from './errors.js';
export { EXIT_CODE_HELP, ExitCode, type ExitCodeValue } from './exit-codes.js';
export { DEFAULT_SERVER, GLOBAL_OPTIONS, connectionOptions } from './global-options.js';
export { GrpcEdgeplaneApi, toRpcError, type ConnectionOptions, type EdgeplaneApi, type FleetApi, type PolicyApi, type RolloutApi, type ServiceApi } from './grpc-api.js';
export { readManifestSources } from './input.js';
export { parsePortRange, type PortParseStats } from './port-range.js';
export { API_VERSION, parseManifests, type ManifestSource, type ParsedManifests, type PolicyManifest, type ResourceManifest, type ServiceManifest } from './manifest.js';
export { describeNode, describePolicy, describeService, renderNodeTable, renderPolicyTable, renderServiceTable, renderTable, type NodeDescription, type PolicyDescription, type ServiceDescription } from './render.js';
export { listOf, nodeToManifest, policyToManifest, serviceToManifest, toJson, toYaml, type Plain } from './resource-format.js';
export { renderProgress, summarizeConvergence, waitForRevision, type Convergence, type WaitOptions } from './wait.js';
