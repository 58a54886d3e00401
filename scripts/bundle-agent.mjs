#!/usr/bin/env node
// Bundles the node agent (services/node-agent/dist/main.js and everything it imports from the
// workspace and node_modules) into one file, services/node-agent/dist/bundle/agent.mjs, which its
// launcher runs. Part of `npm run build`, after tsc.
//
// Why: V8 keeps the source text of every module it loads, comments included, and this code is
// commented generously. One file with whitespace and syntax minified (names kept, so stack traces
// still name functions) takes the agent's idle heap from ~15.6 to ~10.5 MiB and its RSS by ~10 MiB
// (bench/README.md, "agent", "Memory"). A source map is written beside it: run node with
// --enable-source-maps to see stack traces in the original files.
//
// Left outside: koffi (a native addon) and the telemetry exporters the agent imports only when
// they are configured (packages/telemetry: a dynamic import each), so an agent without them never
// loads their code. The bundle sits two directories under services/node-agent, like dist/datapath/,
// so paths taken relative to a module (the BPF object, ebpf-datapath.ts) resolve the same.
import { mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { build } from 'esbuild';

// ts-proto makes each service's client class at module scope (`export const XClient =
// makeGenericClientConstructor(...)`): a call, which a bundler must keep in case it has effects,
// and with it every request and response message of the service. The agent is a client of two
// services (AgentService, TrustService); marking the call pure lets esbuild drop the clients of the
// others (IntentService, FleetService, BlocklistService) and the messages only they use: 172 KB
// of the bundle's 1.76 MB, source that V8 would hold for the agent's lifetime.
const pureServiceClients = {
  name: 'pure-service-clients',
  setup(b) {
    b.onLoad({ filter: /proto\/dist\/gen\/.*_service\.js$/ }, async (args) => ({
      contents: (await readFile(args.path, 'utf8')).replace(/= makeGenericClientConstructor\(/g, '= /* @__PURE__ */ makeGenericClientConstructor('),
      loader: 'js',
    }));
  },
};

const agent = new URL('../services/node-agent/', import.meta.url).pathname;
mkdirSync(`${agent}dist/bundle`, { recursive: true });
await build({
  entryPoints: [`${agent}dist/main.js`],
  outfile: `${agent}dist/bundle/agent.mjs`,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: 'linked',
  // A package's ES module build where it has one ("module" before "main"): esbuild drops what
  // nothing imports from it (OpenTelemetry's semantic conventions are 171 KiB as CommonJS, of
  // which the agent uses two names).
  mainFields: ['module', 'main'],
  // @grpc/proto-loader (and the whole of protobufjs under it) is required only by grpc-js's
  // channelz and ORCA services, which a client never starts: left to node_modules.
  external: ['koffi', '@opentelemetry/exporter-*', '@grpc/proto-loader'],
  // CommonJS packages inside an ES module bundle call require() for node's built-ins.
  banner: { js: "import { createRequire as __edgeplaneRequire } from 'node:module'; const require = __edgeplaneRequire(import.meta.url);" },
  plugins: [pureServiceClients],
  logLevel: 'warning',
});
