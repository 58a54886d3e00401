// The edgeplane CLI as a process, as an operator runs it: what the end-to-end tests that drive the
// CLI (rollout, service-rollout, conntrack, trust) share.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestControlPlane } from './control-plane.js';

/** The CLI's entry point (packages/cli, built). */
export const CLI_MAIN = fileURLToPath(new URL('../../packages/cli/dist/main.js', import.meta.url));

/** How a CLI run ended: its exit code (1 when it was killed or did not start) and its output. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@link runCli}. */
export interface RunCliOptions {
  /** The process's environment (default: this one's). */
  env?: NodeJS.ProcessEnv;
  /** Killed after this long, ms. Default 60000. */
  timeoutMs?: number;
}

/** Runs `edgeplane ARGS` and resolves with how it ended; never rejects (a failure is a non-zero code). */
export function runCli(args: string[], options: RunCliOptions = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI_MAIN, ...args], { timeout: options.timeoutMs ?? 60_000, ...(options.env ? { env: options.env } : {}) }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** `edgeplane --server ADDRESS ARGS` against `cp` as its admin (the flags of cp.cliTlsArgs); see {@link runCli}. */
export function cliAsAdmin(cp: TestControlPlane, args: string[], timeoutMs?: number): Promise<CliResult> {
  return runCli(['--server', cp.address, ...cp.cliTlsArgs, ...args], timeoutMs === undefined ? {} : { timeoutMs });
}
