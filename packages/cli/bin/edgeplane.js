#!/usr/bin/env node
// The installed `edgeplane` command. It lives outside dist/ so that `npm ci` can link it into
// node_modules/.bin before anything is built (npx edgeplane from a fresh clone); it runs the
// compiled CLI, and says how to build it when it is missing.
try {
  await import('../dist/main.js');
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !String(err.message).includes('/dist/main.js')) throw err;
  process.stderr.write('edgeplane: the command line is not built yet: run scripts/setup (or npm run build) in the repository first.\n');
  process.exitCode = 1;
}
