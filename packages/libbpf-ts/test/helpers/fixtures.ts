// Builds the fixture BPF objects into a temp dir, once per test file.
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const fixtures = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

/** Compiled fixtures: `path(name)` is the .o of fixtures/<name>.bpf.c. */
export interface Fixtures {
  readonly dir: string;
  path(name: string): string;
  remove(): Promise<void>;
}

/** Compiles every fixtures/*.bpf.c with clang -target bpf into a fresh temp dir. */
export async function buildFixtures(): Promise<Fixtures> {
  const dir = await mkdtemp(join(tmpdir(), 'libbpf-ts-fixtures-'));
  const sources = (await readdir(fixtures)).filter((file) => file.endsWith('.bpf.c'));
  await Promise.all(
    sources.map((source) =>
      run('clang', ['-O2', '-g', '-target', 'bpf', '-I/usr/include/x86_64-linux-gnu', '-Wall', '-Werror', '-c', join(fixtures, source), '-o', join(dir, source.replace(/\.c$/, '.o'))]),
    ),
  );
  return {
    dir,
    path: (name) => join(dir, `${name}.bpf.o`),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** Path of a fixture source file (for the C layout check). */
export function fixtureSource(file: string): string {
  return join(fixtures, file);
}

/** A string unique to this test run, short enough for interface names. */
export function runSuffix(): string {
  return `${process.pid % 100000}${Math.floor(Math.random() * 0x100).toString(16).padStart(2, '0')}`;
}

/** Runs a command, resolving with stdout; rejects with stderr in the message. */
export async function sh(command: string, args: string[]): Promise<string> {
  try {
    return (await run(command, args)).stdout;
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    throw new Error(`${command} ${args.join(' ')}: ${e.stderr ?? e.message}`);
  }
}
