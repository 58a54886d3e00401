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
import { build } from 'esbuild';

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
  external: ['koffi', '@opentelemetry/exporter-*'],
  // CommonJS packages inside an ES module bundle call require() for node's built-ins.
  banner: { js: "import { createRequire as __edgeplaneRequire } from 'node:module'; const require = __edgeplaneRequire(import.meta.url);" },
  logLevel: 'warning',
});
