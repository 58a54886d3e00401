import type { Command, CommandContext, Flags } from '../command.js';
import { parseDurationMs } from '../duration.js';
import { UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';

/** Parses `k=v,k=v`. @throws UsageError */
export function parseLabelList(text: string | undefined): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of (text ?? '').split(',').filter(Boolean)) {
    const i = pair.indexOf('=');
    if (i <= 0) throw new UsageError(`--labels: ${JSON.stringify(pair)} is not KEY=VALUE`);
    labels[pair.slice(0, i)] = pair.slice(i + 1);
  }
  return labels;
}

/** `edgeplane token create`. */
export const tokenCommand: Command = {
  name: 'token',
  summary: 'Create a single-use join token for a new node (admin)',
  usage: ['token create [--ttl 15m] [--labels K=V,...]'],
  details: `Prints a join token and the CA fingerprint. Start the new node's agent with both:
  edgeplane-agent --node-name NAME --join-token TOKEN --ca-fingerprint sha256:... ...
The token works once, until it expires; the controller keeps only its hash. The node gets a
certificate bound to its name (24 h, renewed by the agent) and its NATS credentials.

Examples:
  edgeplane token create --ttl 15m --labels site=ams1,role=edge`,
  arguments: ['create'],
  options: {
    ttl: { type: 'string', value: 'DURATION', description: 'how long the token can be used (default 15m, at most 24h)' },
    labels: { type: 'string', value: 'K=V,...', description: 'labels given to the node that enrolls with it' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals[0] !== 'create' || positionals.length !== 1) throw new UsageError('usage: edgeplane token create [--ttl 15m] [--labels K=V,...]');
    const ttlText = flags.string('ttl') ?? '15m';
    const ttl = parseDurationMs(ttlText);
    if (ttl === undefined || ttl <= 0) throw new UsageError(`--ttl: ${JSON.stringify(ttlText)} is not a duration like 15m`);
    const res = await ctx.api().createJoinToken(ttl, parseLabelList(flags.string('labels')));
    ctx.io.stdout.write(`token:          ${res.token}\nca-fingerprint: ${res.caFingerprint}\nexpires:        ${res.expiresAt?.toISOString() ?? ''}\n`);
    return ExitCode.OK;
  },
};
