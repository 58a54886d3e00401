// The runner: argv -> command -> exit code. No process globals here (main.ts passes them in),
// so tests can run commands in-process.
import { parseArgs } from 'node:util';
import { Flags, type Command, type Io, type OptionSpec } from './command.js';
import { COMMANDS } from './commands.js';
import { CliError, UsageError } from './errors.js';
import { EXIT_CODE_HELP, ExitCode, type ExitCodeValue } from './exit-codes.js';
import { GLOBAL_OPTIONS, connectionOptions } from './global-options.js';
import { GrpcEdgeplaneApi, type ConnectionOptions, type EdgeplaneApi } from './grpc-api.js';
import { reportError } from './report.js';

/** What {@link run} needs from its surroundings. */
export interface RunOptions {
  io: Io;
  env: NodeJS.ProcessEnv;
  /** Builds the API client (default: gRPC). Whatever it returns is closed when the command ends. */
  connect?: (options: ConnectionOptions) => EdgeplaneApi & { close(): void };
  now?: () => Date;
  commands?: readonly Command[];
}

function optionLines(options: Readonly<Record<string, OptionSpec>>): string {
  const rows = Object.entries(options).map(([name, o]) => [`${o.short ? `-${o.short}, ` : '    '}--${name}${o.value ? ` ${o.value}` : ''}`, o.description + (o.env && !o.description.includes(o.env) ? ` (${o.env})` : '')]);
  const width = Math.max(...rows.map(([f]) => f!.length)) + 2;
  return rows.map(([f, d]) => `  ${f!.padEnd(width)}${d}`).join('\n');
}

/** The top-level `--help` text: commands, global flags, environment, exit codes. */
export function mainHelp(commands: readonly Command[] = COMMANDS): string {
  const width = Math.max(...commands.map((c) => c.name.length)) + 2;
  return `edgeplane: the command line of the edgeplane control plane (kubectl-like)

Usage: edgeplane COMMAND [ARGS] [flags]

Commands:
${commands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`).join('\n')}
  ${'help'.padEnd(width)}Show help for a command (edgeplane help apply)

Global flags (flags win over the environment variables named):
${optionLines(GLOBAL_OPTIONS)}

Manifests are YAML or JSON, several documents per file, in kubectl's shape:
  apiVersion: edgeplane.io/v1
  kind: Policy
  metadata: {name: deny-telnet, labels: {team: netops}}
  spec:
    nodeSelector: {matchLabels: {role: edge}}
    interfaceRole: uplink            # uplink | workload | all
    defaultAction: allow             # allow | deny
    rules:
      - {priority: 10, name: telnet, protocol: tcp, destinationPorts: [23, "2300-2399"], action: deny}

${EXIT_CODE_HELP}
`;
}

/** The `COMMAND --help` text. */
export function commandHelp(c: Command): string {
  return `${c.summary}

Usage:
${c.usage.map((u) => `  edgeplane ${u}`).join('\n')}
${c.details ? `\n${c.details}\n` : ''}${Object.keys(c.options).length ? `\nFlags:\n${optionLines(c.options)}\n` : ''}
Global flags:
${optionLines(GLOBAL_OPTIONS)}

${EXIT_CODE_HELP}
`;
}

function findCommand(commands: readonly Command[], word: string): Command | undefined {
  return commands.find((c) => c.name === word || c.aliases?.includes(word));
}

/**
 * Runs one invocation and returns its exit code. Errors are printed to `io.stderr`; the API
 * client (if one was made) is closed before returning.
 */
export async function run(argv: readonly string[], options: RunOptions): Promise<ExitCodeValue> {
  const { io } = options;
  const commands = options.commands ?? COMMANDS;
  let api: (EdgeplaneApi & { close(): void }) | undefined;
  try {
    const all: Record<string, OptionSpec> = { ...GLOBAL_OPTIONS };
    for (const c of commands) Object.assign(all, c.options);
    let parsed;
    try {
      parsed = parseArgs({ args: [...argv], options: all, strict: true, allowPositionals: true });
    } catch (cause) {
      throw new UsageError((cause as Error).message.replace(/\. To specify a positional.*$/s, ''), { cause });
    }
    const flags = new Flags(parsed.values);
    const [word, ...rest] = parsed.positionals;
    if (word === undefined || word === 'help') {
      const target = rest[0] === undefined ? undefined : findCommand(commands, rest[0]);
      if (rest[0] !== undefined && !target) throw new UsageError(`unknown command ${JSON.stringify(rest[0])}`);
      if (word === undefined && !flags.boolean('help')) {
        io.stderr.write(mainHelp(commands));
        return ExitCode.USAGE;
      }
      io.stdout.write(target ? commandHelp(target) : mainHelp(commands));
      return ExitCode.OK;
    }
    const command = findCommand(commands, word);
    if (!command) throw new UsageError(`unknown command ${JSON.stringify(word)}; see edgeplane --help`);
    if (flags.boolean('help')) {
      io.stdout.write(commandHelp(command));
      return ExitCode.OK;
    }
    for (const name of Object.keys(parsed.values)) {
      if (!(name in GLOBAL_OPTIONS) && !(name in command.options)) throw new UsageError(`${command.name} does not take --${name}; see edgeplane ${command.name} --help`);
    }
    const connect = options.connect ?? ((o: ConnectionOptions) => new GrpcEdgeplaneApi(o));
    return await command.run(
      {
        io,
        now: options.now ?? (() => new Date()),
        api: () => (api ??= connect(connectionOptions(flags, options.env))),
      },
      rest,
      flags,
    );
  } catch (err) {
    if (!(err instanceof CliError)) {
      // A bug, not a user error: show the stack.
      io.stderr.write(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      return ExitCode.ERROR;
    }
    reportError(io, err);
    return err.exitCode;
  } finally {
    api?.close();
  }
}
