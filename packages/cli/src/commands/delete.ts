import type { Command, CommandContext, Flags } from '../command.js';
import { CliError, UsageError } from '../errors.js';
import { PREFIX_LIST_WORDS } from './prefix-lists.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { FILE_OPTIONS, loadManifests, resourceName } from '../manifest-input.js';
import { reportError } from '../report.js';
import { parseTargets } from '../resource-kind.js';

/** `edgeplane delete`. */
export const deleteCommand: Command = {
  name: 'delete',
  summary: 'Delete policies and services by name or by manifest',
  usage: ['delete policy|service|prefixlist NAME...', 'delete -f FILE|FOLDER|- [-R]'],
  details: `Nodes are registered by their agents and cannot be deleted.

Examples:
  edgeplane delete policy deny-telnet
  edgeplane delete service web
  edgeplane delete -f examples/ --ignore-not-found`,
  arguments: ['policy', 'service'],
  options: {
    ...FILE_OPTIONS,
    'ignore-not-found': { type: 'boolean', description: 'succeed for policies and services that do not exist' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    let targets: { kind: 'policy' | 'service' | 'prefixlist'; name: string }[];
    if (flags.strings('filename').length > 0) {
      if (positionals.length > 0) throw new UsageError('give names or -f, not both');
      // Prefix lists last: a policy of the same files may name one (a named list cannot be deleted).
      const loaded = (await loadManifests(ctx.io, flags, { validate: false })).map((m) => ({ kind: m.kind, name: resourceName(m) }));
      targets = [...loaded.filter((m) => m.kind !== 'prefixlist'), ...loaded.filter((m) => m.kind === 'prefixlist')];
    } else if (PREFIX_LIST_WORDS.has(positionals[0] ?? '')) {
      if (positionals.length < 2) throw new UsageError('name the prefix lists to delete, or use -f');
      targets = positionals.slice(1).map((name) => ({ kind: 'prefixlist' as const, name }));
    } else {
      const t = parseTargets(positionals);
      if (t.kind === 'node') throw new UsageError('nodes are registered by their agents and cannot be deleted');
      if (t.names.length === 0) throw new UsageError(`name the ${t.kind === 'policy' ? 'policies' : 'services'} to delete, or use -f`);
      targets = t.names.map((name) => ({ kind: t.kind as 'policy' | 'service', name }));
    }
    const api = ctx.api();
    const allowMissing = flags.boolean('ignore-not-found');
    let code: ExitCodeValue = ExitCode.OK;
    for (const { kind, name } of targets) {
      try {
        const exists = kind === 'policy' ? api.getPolicy(name) : kind === 'service' ? api.getService(name) : api.getPrefixList(name, true);
        const found = await exists;
        if (!allowMissing && !found) throw new CliError(`${kind} ${JSON.stringify(name)} not found`);
        const req = { name, allowMissing, validateOnly: false };
        const res = kind === 'policy' ? await api.deletePolicy(req) : kind === 'service' ? await api.deleteService(req) : found ? await api.deletePrefixList(name) : { revision: 0n };
        if (res.revision) ctx.io.stdout.write(`${kind}/${name} deleted (revision ${res.revision})\n`);
      } catch (err) {
        if (!(err instanceof CliError)) throw err;
        reportError(ctx.io, err);
        code = ExitCode.ERROR;
      }
    }
    return code;
  },
};
