#!/usr/bin/env node
// The installed `edgeplane-controller` command. It lives outside dist/ so that `npm ci` can link
// it into node_modules/.bin before anything is built (npx edgeplane-controller from a fresh
// clone, as packages/cli/bin/edgeplane.js does for the CLI); it runs the compiled controller, and
// says how to build it when it is missing. (dist/main.js runs main() itself only when it is the
// script node was given.)
let main;
try {
  ({ main } = await import('../dist/main.js'));
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !String(err.message).includes('/dist/main.js')) throw err;
  process.stderr.write('edgeplane-controller: the controller is not built yet: run scripts/setup (or npm run build) in the repository first.\n');
  process.exitCode = 1;
}
await main?.();
