import type { Command, CommandContext, Flags } from '../command.js';
import { UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';

const USAGE = 'usage: edgeplane node revoke NAME [--reason TEXT] | edgeplane node label NAME [K=V ...]';

/** `edgeplane node revoke` and `edgeplane node label`. */
export const nodeCommand: Command = {
  name: 'node',
  summary: 'Revoke a node, or set the labels bound to it (admin)',
  usage: ['node revoke NAME [--reason TEXT]', 'node label NAME [K=V ...]'],
  details: `revoke: every controller replica refuses the node within a minute (its open stream is
closed at once) and its NATS credentials are withdrawn. The name cannot enroll again.

label: a node's labels are bound at enrollment (its join token's) and a hello with others is
refused; this replaces them with exactly the K=V pairs given (none = no labels). The node's open
stream is closed (on whichever controller replica holds it); it reconnects, is told its new
labels, applies the policies that select them at once and keeps them for its next start.

Examples:
  edgeplane node revoke edge-17 --reason "disk stolen"
  edgeplane node label edge-17 site=ams1 tier=canary`,
  arguments: ['revoke', 'label'],
  options: {
    reason: { type: 'string', value: 'TEXT', description: 'recorded with the revocation' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    const [verb, name, ...rest] = positionals;
    if (verb === 'revoke' && name !== undefined && rest.length === 0) {
      const res = await ctx.api().revokeNode(name, flags.string('reason') ?? '');
      ctx.io.stdout.write(`node/${name} revoked at ${res.revokedAt?.toISOString() ?? ''}\n`);
      return ExitCode.OK;
    }
    if (verb === 'label' && name !== undefined) {
      if (flags.string('reason') !== undefined) throw new UsageError('--reason goes with node revoke');
      const labels: Record<string, string> = {};
      for (const pair of rest) {
        const i = pair.indexOf('=');
        if (i <= 0) throw new UsageError(`${JSON.stringify(pair)} is not K=V`);
        const key = pair.slice(0, i);
        if (Object.hasOwn(labels, key)) throw new UsageError(`label ${key} given twice`);
        labels[key] = pair.slice(i + 1);
      }
      const res = await ctx.api().setNodeLabels(name, labels);
      const shown = Object.entries(res.labels).sort().map(([k, v]) => `${k}=${v}`).join(',') || '(none)';
      ctx.io.stdout.write(`node/${name} labels ${shown}\n`);
      return ExitCode.OK;
    }
    throw new UsageError(USAGE);
  },
};
