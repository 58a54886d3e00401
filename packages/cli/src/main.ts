#!/usr/bin/env node
// The `edgeplane` bin: wires the process (argv, stdio, environment, the gRPC adapter) into run().
import { run } from './cli.js';

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

// Set exitCode rather than calling process.exit(): stdout may still be draining into a pipe.
process.exitCode = await run(process.argv.slice(2), {
  io: { stdout: process.stdout, stderr: process.stderr, readStdin, isTTY: Boolean(process.stdout.isTTY) },
  env: process.env,
});
