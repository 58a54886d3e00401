import { fileURLToPath } from 'node:url';

/**
 * The folder holding the .proto sources (edgeplane/v1/*.proto, google/rpc/*.proto), for
 * servers that load them at run time (gRPC server reflection) and for clients in other
 * languages that generate stubs.
 */
export const PROTO_INCLUDE_DIR: string = fileURLToPath(new URL('../../', import.meta.url));

/** The edgeplane .proto files, relative to PROTO_INCLUDE_DIR. */
export const PROTO_FILES: readonly string[] = [
  'edgeplane/v1/resources.proto',
  'edgeplane/v1/policy.proto',
  'edgeplane/v1/node.proto',
  'edgeplane/v1/counters.proto',
  'edgeplane/v1/rollout.proto',
  'edgeplane/v1/log.proto',
  'edgeplane/v1/intent_service.proto',
  'edgeplane/v1/fleet_service.proto',
  'edgeplane/v1/agent_service.proto',
  'edgeplane/v1/trust_service.proto',
  'edgeplane/v1/replica.proto',
];
