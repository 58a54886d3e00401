#!/usr/bin/env node
// The `edgeplane` bin: wires the process (argv, stdio, environment, the gRPC adapter) into run().
import { MAX_MANIFEST_BYTES, quietIpServernameWarning } from '@edgeplane/proto';
import { run } from './cli.js';
import { InputError } from './errors.js';

quietIpServernameWarning();

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

// A reader that stops early (`edgeplane get nodes | head -1`) closes the pipe: the command ends
// quietly there, as other command-line tools do, not with an unhandled EPIPE and a stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err;
  process.exit();
});

// Set exitCode rather than calling process.exit(): stdout may still be draining into a pipe.
process.exitCode = await run(process.argv.slice(2), {
  io: { stdout: process.stdout, stderr: process.stderr, readStdin, isTTY: Boolean(process.stdout.isTTY) },
  env: process.env,
});
