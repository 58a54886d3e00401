import { ApplyPolicyRequest, ApplyServiceRequest } from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { diffPolicy, diffService, renderPolicyDiff } from '../diff.js';
import { CliError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { FILE_OPTIONS, explainRpcError, loadManifests, resourceName } from '../manifest-input.js';
import { diffPrefixes } from '../prefix-list-apply.js';
import { reportError } from '../report.js';
import { validateFlag } from './apply.js';

/** `edgeplane diff -f FILE`. */
export const diffCommand: Command = {
  name: 'diff',
  summary: 'Show what apply would change, and on which nodes',
  usage: ['diff -f FILE|FOLDER|- [-R] [--exit-code]'],
  details: `For each policy or service: a diff of the server's copy against the manifest, then how many
nodes it selects now and after (+ nodes it starts selecting, - nodes it stops selecting, ~ nodes
that stay selected and get the change). The server validates each manifest (nothing is written).`,
  options: {
    ...FILE_OPTIONS,
    validate: { type: 'string', value: 'BOOL', description: 'validate on the client first (default true)', choices: ['true', 'false'] },
    'exit-code': { type: 'boolean', description: 'exit 5 when there are differences (like git diff --exit-code)' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals.length > 0) throw new UsageError(`diff takes no arguments (got ${positionals.join(' ')}); use -f`);
    const manifests = await loadManifests(ctx.io, flags, { validate: validateFlag(flags) });
    const api = ctx.api();
    const nodes = await api.listNodes('');
    let changed = false;
    let failed = false;
    for (const m of manifests) {
      const name = resourceName(m);
      try {
        let d;
        if (m.kind === 'prefixlist') {
          const held = await api.getPrefixList(name, false);
          const r = diffPrefixes(held?.prefixList?.spec?.prefixes ?? [], m.prefixList.spec?.prefixes ?? []);
          if (!held || r.add.length + r.remove.length > 0) changed = true;
          ctx.io.stdout.write(`prefixlist/${name}: ${held ? (r.add.length + r.remove.length > 0 ? 'modified' : 'unchanged') : 'added'}: +${r.add.length} -${r.remove.length} prefixes\n${r.add.slice(0, 20).map((p) => `+ ${p}\n`).join('')}${r.remove.slice(0, 20).map((p) => `- ${p}\n`).join('')}`);
          continue;
        }
        if (m.kind === 'policy') {
          await api.applyPolicy(ApplyPolicyRequest.fromPartial({ policy: m.policy, validateOnly: true }));
          d = diffPolicy(name, (await api.getPolicy(name))?.policy, m.policy, nodes);
        } else {
          await api.applyService(ApplyServiceRequest.fromPartial({ service: m.service, validateOnly: true }));
          d = diffService(name, (await api.getService(name))?.service, m.service, nodes);
        }
        if (d.change !== 'unchanged') changed = true;
        ctx.io.stdout.write(renderPolicyDiff(d));
      } catch (err) {
        if (!(err instanceof CliError)) throw err;
        failed = true;
        reportError(ctx.io, explainRpcError(m, err));
      }
    }
    if (failed) return ExitCode.ERROR;
    return changed && flags.boolean('exit-code') ? ExitCode.DIFFERENT : ExitCode.OK;
  },
};
