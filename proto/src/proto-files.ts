import { fileURLToPath } from 'node:url';

/**
 * The folder holding the .proto sources (edgeplane/v1/*.proto, google/rpc/*.proto), for
 * clients in other languages that generate stubs. Server reflection serves the compiled
 * descriptors instead (descriptor-index.ts).
 */
export const PROTO_INCLUDE_DIR: string = fileURLToPath(new URL('../../', import.meta.url));
