import { ApplyPolicyRequest, ApplyServiceRequest, matchesLabelSelector, type LabelSelector } from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { parseDurationMs } from '../duration.js';
import { CliError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { FILE_OPTIONS, explainRpcError, loadManifests, resourceId } from '../manifest-input.js';
import { renderProgress, waitForRevision } from '../wait.js';
import { reportError } from '../report.js';

/** Parses `--timeout`. @throws UsageError */
export function timeoutFlag(flags: Flags, fallbackMs: number): number {
  const text = flags.string('timeout');
  if (text === undefined) return fallbackMs;
  const ms = parseDurationMs(text);
  if (ms === undefined || ms <= 0) throw new UsageError(`--timeout: ${JSON.stringify(text)} is not a duration like 60s or 2m`);
  return ms;
}

/** Parses `--validate=true|false`. @throws UsageError */
export function validateFlag(flags: Flags): boolean {
  return flags.choice('validate', ['true', 'false', 'strict'], 'true') !== 'false';
}

/** `edgeplane apply -f FILE`. */
export const applyCommand: Command = {
  name: 'apply',
  summary: 'Create or update policies and services from YAML/JSON manifests',
  usage: ['apply -f FILE|FOLDER|- [-f ...] [-R] [--wait [--timeout 60s]] [--dry-run=client|server]'],
  details: `Every document is parsed and validated before anything is sent; a problem is reported as
FILE:LINE:COL: FIELD: message. Documents are then applied in order; a server rejection maps the
field path back to the line it is about.

With --wait, the command follows the new revision until every node the applied policies and
services select (now or before) runs it: a progress bar on a terminal, one line per change
otherwise. It exits 3 when a node NACKs the revision (printing the node and its reason) and 4 on
--timeout. With a staged rollout strategy, nodes outside the first wave run the revision with
the previous version; follow the waves with rollout status [service/]NAME --watch.

Examples:
  edgeplane apply -f examples/
  edgeplane apply -f deny-telnet.yaml --wait --timeout 2m
  edgeplane get policy deny-telnet -o yaml | edgeplane apply -f -`,
  options: {
    ...FILE_OPTIONS,
    wait: { type: 'boolean', description: 'wait until the selected nodes run the new revision' },
    timeout: { type: 'string', value: 'DURATION', description: 'how long --wait waits (default 60s)' },
    'dry-run': { type: 'string', value: 'MODE', description: 'client: validate locally only; server: the server validates, nothing is written', choices: ['none', 'client', 'server'] },
    validate: { type: 'string', value: 'BOOL', description: 'validate on the client before sending (default true)', choices: ['true', 'false'] },
    'allow-large-growth': { type: 'boolean', description: "accept a change that grows a policy's rule count past the server's guard" },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals.length > 0) throw new UsageError(`apply takes no arguments (got ${positionals.join(' ')}); use -f`);
    const dryRun = flags.choice('dry-run', ['none', 'client', 'server'], 'none');
    const wait = flags.boolean('wait');
    const timeoutMs = timeoutFlag(flags, 60_000);
    if (wait && dryRun !== 'none') throw new UsageError('--wait and --dry-run do not go together');
    const manifests = await loadManifests(ctx.io, flags, { validate: validateFlag(flags) });
    const { io } = ctx;
    if (dryRun === 'client') {
      for (const m of manifests) io.stdout.write(`${resourceId(m)} valid (dry run)\n`);
      return ExitCode.OK;
    }
    const api = ctx.api();
    // For --wait: the nodes each policy or service selects before the change, so nodes it stops selecting are waited for too.
    const before: (LabelSelector | undefined)[] = [];
    if (wait) {
      for (const m of manifests) {
        const existing = m.kind === 'policy' ? (await api.getPolicy(m.policy.metadata!.name))?.policy : (await api.getService(m.service.metadata!.name))?.service;
        if (existing) before.push(existing.spec?.nodeSelector);
      }
    }

    let failed = false;
    let revision = 0n;
    // The node selectors of what was applied (policies and services alike).
    const applied: (LabelSelector | undefined)[] = [];
    for (const m of manifests) {
      try {
        let res: { created: boolean; unchanged: boolean; revision: bigint };
        if (m.kind === 'policy') {
          const r = await api.applyPolicy(ApplyPolicyRequest.fromPartial({ policy: m.policy, validateOnly: dryRun === 'server', allowLargeGrowth: flags.boolean('allow-large-growth') }));
          if (r.policy) applied.push(r.policy.spec?.nodeSelector);
          const rv = r.revision || r.policy?.metadata?.resourceVersion || 0n;
          if (rv > revision) revision = rv;
          res = r;
        } else {
          const r = await api.applyService(ApplyServiceRequest.fromPartial({ service: m.service, validateOnly: dryRun === 'server' }));
          if (r.service) applied.push(r.service.spec?.nodeSelector);
          const rv = r.revision || r.service?.metadata?.resourceVersion || 0n;
          if (rv > revision) revision = rv;
          res = r;
        }
        const verb = res.unchanged ? 'unchanged' : res.created ? 'created' : 'configured';
        const suffix = dryRun === 'server' ? ' (server dry run)' : res.revision ? ` (revision ${res.revision})` : '';
        io.stdout.write(`${resourceId(m)} ${verb}${suffix}\n`);
      } catch (err) {
        if (!(err instanceof CliError)) throw err;
        failed = true;
        reportError(io, explainRpcError(m, err));
      }
    }
    if (failed) return ExitCode.ERROR;
    if (!wait) return ExitCode.OK;
    const nodes = await api.listNodes('');
    const selectors = [...applied, ...before];
    const selected = new Set(nodes.filter((n) => selectors.some((sel) => matchesLabelSelector(sel, n.labels))).map((n) => n.name));
    if (selected.size === 0) {
      io.stdout.write(`revision ${revision}: no nodes selected; nothing to wait for\n`);
      return ExitCode.OK;
    }
    let drawn = false;
    try {
      await waitForRevision(api, {
        revision,
        nodes: selected,
        timeoutMs,
        onProgress(c) {
          if (io.isTTY) {
            io.stdout.write(`\r\x1b[K${renderProgress(c, true)}`);
            drawn = true;
          } else io.stdout.write(renderProgress(c, false) + '\n');
        },
      });
    } finally {
      if (drawn) io.stdout.write('\n');
    }
    io.stdout.write(`revision ${revision} applied on all ${selected.size} selected nodes\n`);
    return ExitCode.OK;
  },
};
