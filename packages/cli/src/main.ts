#!/usr/bin/env node
// The `edgeplane` bin: wires the process (argv, stdio, environment, the gRPC adapter) into run().
import { MAX_MANIFEST_BYTES } from '@edgeplane/proto';
import { run } from './cli.js';

// grpc-js passes a target's host as the TLS servername even when it is an IP address, and
// Node.js then prints DEP0123 ("Setting the TLS ServerName to an IP address...") on every
// command (https://nodejs.org/api/deprecations.html#DEP0123). The controller's certificate is
// still checked against the IP; RFC 6066 only forbids sending it as SNI. Drop that one warning.
const emitWarning = process.emitWarning.bind(process) as (...args: unknown[]) => void;
process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
  if (code !== 'DEP0123') emitWarning(warning, ...rest);
}) as typeof process.emitWarning;
import { InputError } from './errors.js';

/** Reads standard input, at most MAX_MANIFEST_BYTES. @throws InputError beyond that. */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > MAX_MANIFEST_BYTES) throw new InputError(`read <stdin>: more than ${MAX_MANIFEST_BYTES} bytes; a manifest is at most that`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// Set exitCode rather than calling process.exit(): stdout may still be draining into a pipe.
process.exitCode = await run(process.argv.slice(2), {
  io: { stdout: process.stdout, stderr: process.stderr, readStdin, isTTY: Boolean(process.stdout.isTTY) },
  env: process.env,
});
