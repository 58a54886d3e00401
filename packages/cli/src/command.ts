// The shape of a subcommand. The command table in commands.ts lists them; help, flag parsing
// and shell completion are all derived from it, so adding a command (e.g. `rollout`) is one
// new file and one line in the table.
import type { ExitCodeValue } from './exit-codes.js';
import { UsageError } from './errors.js';
import type { EdgeplaneApi } from './grpc-api.js';

/** A flag, in node:util parseArgs terms plus what help prints. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  /** Placeholder shown in help (`FILE`, `SELECTOR`). */
  value?: string;
  description: string;
  /** Environment variable that sets it (global flags). */
  env?: string;
  /** Values offered by shell completion. */
  choices?: readonly string[];
}

/** Where the command writes and what it knows about its terminal. */
export interface Io {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  /** Reads all of standard input (for `-f -`). */
  readStdin(): Promise<string>;
  /** Whether stdout is a terminal (progress bars redraw in place). */
  isTTY: boolean;
}

/** What a command runs with. */
export interface CommandContext {
  io: Io;
  /** The controller API; connects on first use. The runner closes it. */
  api(): EdgeplaneApi;
  now(): Date;
}

/** Parsed flags of one invocation, with typed getters. */
export class Flags {
  #values: Record<string, string | boolean | (string | boolean)[] | undefined>;

  constructor(values: Record<string, string | boolean | (string | boolean)[] | undefined>) {
    this.#values = values;
  }

  /** A string flag's last value. */
  string(name: string): string | undefined {
    const v = this.#values[name];
    const last = Array.isArray(v) ? v[v.length - 1] : v;
    return typeof last === 'string' ? last : undefined;
  }

  /** Every value of a repeatable string flag. */
  strings(name: string): string[] {
    const v = this.#values[name];
    return (Array.isArray(v) ? v : v === undefined ? [] : [v]).filter((x): x is string => typeof x === 'string');
  }

  boolean(name: string): boolean {
    return this.#values[name] === true;
  }

  /** A string flag restricted to `allowed`. @throws UsageError */
  choice<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const v = this.string(name);
    if (v === undefined) return fallback;
    if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`--${name}: ${JSON.stringify(v)} is not one of ${allowed.join(', ')}`);
    return v as T;
  }
}

/** One subcommand. */
export interface Command {
  name: string;
  aliases?: readonly string[];
  /** One line for the command list. */
  summary: string;
  /** Usage lines after `edgeplane ` (e.g. `apply -f FILE [--wait]`). */
  usage: readonly string[];
  /** Longer help, examples. */
  details?: string;
  options: Readonly<Record<string, OptionSpec>>;
  /** Words shell completion offers as the first argument (resource kinds, shells). */
  arguments?: readonly string[];
  /**
   * Runs the command.
   * @returns the exit code.
   * @throws CliError (its exitCode is used); UsageError for bad arguments.
   */
  run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue>;
}
