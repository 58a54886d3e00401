import { Block, LabelSelectorSyntaxError, parseLabelSelector, type LabelSelector } from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { msToDuration, parseDurationMs } from '../duration.js';
import { UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';

/** Parses --selector (empty: every node). @throws UsageError */
function selectorOf(flags: Flags): LabelSelector | undefined {
  const text = flags.string('selector') ?? '';
  if (text === '') return undefined;
  try {
    return parseLabelSelector(text);
  } catch (err) {
    if (err instanceof LabelSelectorSyntaxError) throw new UsageError(`--selector: ${err.message}`, { cause: err });
    throw err;
  }
}

/** `edgeplane block PREFIX... --for DURATION [--selector S] --reason TEXT`. */
export const blockCommand: Command = {
  name: 'block',
  summary: 'Block source prefixes on the selected nodes for a while (an emergency block that expires)',
  usage: ['block PREFIX... --for DURATION --reason TEXT [--selector SELECTOR]'],
  details: `Every selected node drops packets from the prefixes at once, first thing at its XDP and TC
hooks, until the block expires: the expiry is in the signed log entry and each node enforces it
by its own clock, with no further entry (nodes' clocks must agree within about a second: NTP).
Lift it earlier with edgeplane unblock ID; see blocks, active and ended, with edgeplane get blocks.

Examples:
  edgeplane block 203.0.113.0/24 --for 1h --selector site=ams1 --reason "scanner, ticket 4711"
  edgeplane block 198.51.100.7/32 2001:db8:bad::/48 --for 15m --reason "credential stuffing"`,
  options: {
    for: { type: 'string', value: 'DURATION', description: 'how long the block lasts (1s .. 30 days), e.g. 1h or 15m' },
    reason: { type: 'string', value: 'TEXT', description: 'why (required; shown by get blocks)' },
    selector: { type: 'string', short: 'l', value: 'SELECTOR', description: 'which nodes (default every node), e.g. "site=ams1"' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals.length === 0) throw new UsageError('usage: edgeplane block PREFIX... --for DURATION --reason TEXT [--selector SELECTOR]');
    const forText = flags.string('for');
    if (forText === undefined) throw new UsageError('--for is required (e.g. --for 1h)');
    const ms = parseDurationMs(forText);
    if (ms === undefined || ms <= 0) throw new UsageError(`--for: ${JSON.stringify(forText)} is not a duration like 1h`);
    const reason = flags.string('reason');
    if (reason === undefined || reason.trim() === '') throw new UsageError('--reason is required: say why (get blocks shows it)');
    const res = await ctx.api().createBlock({ block: Block.fromPartial({ prefixes: positionals, nodeSelector: selectorOf(flags), reason }), duration: msToDuration(ms) });
    const block = res.block!;
    ctx.io.stdout.write(`block ${block.id} until ${block.expireTime?.toISOString() ?? ''}\n`);
    return ExitCode.OK;
  },
};

/** `edgeplane unblock ID...`. */
export const unblockCommand: Command = {
  name: 'unblock',
  summary: 'Lift emergency blocks before they expire',
  usage: ['unblock ID...'],
  details: `Examples:
  edgeplane unblock blk-812`,
  options: {},
  async run(ctx: CommandContext, positionals: string[]): Promise<ExitCodeValue> {
    if (positionals.length === 0) throw new UsageError('usage: edgeplane unblock ID...');
    for (const id of positionals) {
      const res = await ctx.api().liftBlock(id);
      ctx.io.stdout.write(`block ${id} lifted at ${res.block?.liftTime?.toISOString() ?? ''}\n`);
    }
    return ExitCode.OK;
  },
};

/** The table of `get blocks`: active and ended, who and why. */
export function renderBlockTable(blocks: readonly Block[], now: Date): string {
  const rows = [['ID', 'STATE', 'PREFIXES', 'SELECTOR', 'EXPIRES', 'BY', 'REASON']];
  for (const b of blocks) {
    const state = b.liftTime ? `lifted by ${b.liftedBy}` : b.expireTime && b.expireTime.getTime() > now.getTime() ? 'active' : 'expired';
    const selector = b.nodeSelector ? Object.entries(b.nodeSelector.matchLabels).map(([k, v]) => `${k}=${v}`).join(',') || '<expr>' : '<all>';
    const prefixes = b.prefixes.length > 3 ? `${b.prefixes.slice(0, 3).join(',')},+${b.prefixes.length - 3}` : b.prefixes.join(',');
    rows.push([b.id, state, prefixes, selector, b.expireTime?.toISOString() ?? '', b.createdBy, b.reason]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

/** `edgeplane get blocks [--all]`: active blocks, and with -a the ended ones. */
export async function getBlocks(ctx: CommandContext, flags: Flags): Promise<ExitCodeValue> {
  const blocks = await ctx.api().listBlocks(!flags.boolean('active-only'));
  const output = flags.string('output');
  if (output === 'json') ctx.io.stdout.write(JSON.stringify(blocks.map((b) => Block.toJSON(b)), null, 2) + '\n');
  else ctx.io.stdout.write(renderBlockTable(blocks, ctx.now()));
  return ExitCode.OK;
}
