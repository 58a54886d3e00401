import { dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

// One ava run covers every package. Tests are TypeScript loaded through tsx; worker threads
// are off because tsx's loader does not reach them (see README, "Tests").

// The longest test files, longest first (measured: per-file wall time of a whole run, 2 at a
// time; remeasured once the datapath object loaded in under a second, bpf/README.md "Verifier
// cost"). ava starts files in this order, then the rest by path: a long file that starts last
// runs alone at the end while the other slot is idle; started first, the short ones fill in
// beside it. The order changes no test, only when each file starts. The test/ files (a whole
// control plane and agents in namespaces each) are all long.
const LONGEST_FIRST = [
  'services/node-agent/test/datapath-conntrack.test.ts',
  'test/rollout.test.ts',
  'services/node-agent/test/datapath-upgrade.test.ts',
  'services/node-agent/test/conntrack-differential.test.ts',
  'services/node-agent/test/datapath-tc-mode.test.ts',
  'packages/cli/test/cli.test.ts',
  'test/conntrack.test.ts',
  'test/faults.test.ts',
  'test/compose.test.ts',
  'services/node-agent/test/agent.test.ts',
  'test/lb.test.ts',
  'services/node-agent/test/datapath-differential.test.ts',
  'services/node-agent/test/datapath-incremental.test.ts',
  'services/controller/test/faults.test.ts',
  'test/log-protection.test.ts',
  'test/dashboard.test.ts',
];

const ROOT = dirname(fileURLToPath(import.meta.url));

/** Sorts absolute test file paths: LONGEST_FIRST in its order, then the others by path. */
function longestFirst(a, b) {
  const rank = (file) => {
    const i = LONGEST_FIRST.indexOf(relative(ROOT, file));
    return i === -1 ? LONGEST_FIRST.length : i;
  };
  return rank(a) - rank(b) || a.localeCompare(b, 'en', { numeric: true });
}

export default {
  files: [
    'proto/test/**/*.test.ts',
    'packages/*/test/**/*.test.ts',
    'services/*/test/**/*.test.ts',
    'test/**/*.test.ts',
  ],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  workerThreads: false,
  timeout: '3m',
  concurrency: 2,
  sortTestFiles: longestFirst,
};
