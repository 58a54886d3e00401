// One ava run covers every package. Tests are TypeScript loaded through tsx; worker threads
// are off because tsx's loader does not reach them (see README, "Tests").
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
};
