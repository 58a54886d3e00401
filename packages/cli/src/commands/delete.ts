import type { Command, CommandContext, Flags } from '../command.js';
import { CliError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { FILE_OPTIONS, loadPolicies } from '../policy-input.js';
import { reportError } from '../report.js';
import { parseTargets } from '../resource-kind.js';

/** `edgeplane delete`. */
export const deleteCommand: Command = {
  name: 'delete',
  summary: 'Delete policies by name or by manifest',
  usage: ['delete policy NAME...', 'delete -f FILE|FOLDER|- [-R]'],
  details: `Nodes are registered by their agents and cannot be deleted.

Examples:
  edgeplane delete policy deny-telnet
  edgeplane delete -f examples/ --ignore-not-found`,
  arguments: ['policy'],
  options: {
    ...FILE_OPTIONS,
    'ignore-not-found': { type: 'boolean', description: 'succeed for policies that do not exist' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    let names: string[];
    if (flags.strings('filename').length > 0) {
      if (positionals.length > 0) throw new UsageError('give names or -f, not both');
      names = (await loadPolicies(ctx.io, flags, { validate: false })).map((m) => m.policy.metadata?.name ?? '');
    } else {
      const t = parseTargets(positionals);
      if (t.kind !== 'policy') throw new UsageError('nodes are registered by their agents and cannot be deleted');
      if (t.names.length === 0) throw new UsageError('name the policies to delete, or use -f');
      names = t.names;
    }
    const api = ctx.api();
    const allowMissing = flags.boolean('ignore-not-found');
    let code: ExitCodeValue = ExitCode.OK;
    for (const name of names) {
      try {
        if (!allowMissing && !(await api.getPolicy(name))) throw new CliError(`policy ${JSON.stringify(name)} not found`);
        const res = await api.deletePolicy({ name, allowMissing, validateOnly: false });
        if (res.revision) ctx.io.stdout.write(`policy/${name} deleted (revision ${res.revision})\n`);
      } catch (err) {
        if (!(err instanceof CliError)) throw err;
        reportError(ctx.io, err);
        code = ExitCode.ERROR;
      }
    }
    return code;
  },
};
