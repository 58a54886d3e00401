import type { Command, CommandContext, Flags } from '../command.js';
import { UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';

/** `edgeplane node revoke`. */
export const nodeCommand: Command = {
  name: 'node',
  summary: 'Revoke a node: its certificate and NATS credentials stop working (admin)',
  usage: ['node revoke NAME [--reason TEXT]'],
  details: `Every controller replica refuses the node within a minute (its open stream is closed at
once) and its NATS credentials are withdrawn. The name cannot enroll again.

Examples:
  edgeplane node revoke edge-17 --reason "disk stolen"`,
  arguments: ['revoke'],
  options: {
    reason: { type: 'string', value: 'TEXT', description: 'recorded with the revocation' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals[0] !== 'revoke' || positionals.length !== 2) throw new UsageError('usage: edgeplane node revoke NAME [--reason TEXT]');
    const name = positionals[1]!;
    const res = await ctx.api().revokeNode(name, flags.string('reason') ?? '');
    ctx.io.stdout.write(`node/${name} revoked at ${res.revokedAt?.toISOString() ?? ''}\n`);
    return ExitCode.OK;
  },
};
