import { ApplyPolicyRequest, ApplyServiceRequest, matchesLabelSelector, type Policy } from '@edgeplane/proto';
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

With --wait, the command follows the new revision until every node the applied policies select
(now or before) runs it: a progress bar on a terminal, one line per change otherwise. It exits 3
when a node NACKs the revision (printing the node and its reason) and 4 on --timeout. Services
are not waited for: agents do not enforce them yet, so an ACK would not mean the VIP is served.

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
    // For --wait: the nodes each policy selects before the change, so nodes it stops selecting are waited for too.
    const before = new Map<string, Policy | undefined>();
    if (wait) for (const m of manifests) if (m.kind === 'policy') before.set(m.policy.metadata!.name, (await api.getPolicy(m.policy.metadata!.name))?.policy);

    let failed = false;
    let revision = 0n;
    const applied: Policy[] = [];
    for (const m of manifests) {
      try {
        let res: { created: boolean; unchanged: boolean; revision: bigint };
        if (m.kind === 'policy') {
          const r = await api.applyPolicy(ApplyPolicyRequest.fromPartial({ policy: m.policy, validateOnly: dryRun === 'server', allowLargeGrowth: flags.boolean('allow-large-growth') }));
          if (r.policy) applied.push(r.policy);
          const rv = r.revision || r.policy?.metadata?.resourceVersion || 0n;
          if (rv > revision) revision = rv;
          res = r;
        } else {
          res = await api.applyService(ApplyServiceRequest.fromPartial({ service: m.service, validateOnly: dryRun === 'server' }));
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
    if (manifests.some((m) => m.kind === 'service')) io.stdout.write('services are not waited for: agents do not enforce them yet\n');

    const nodes = await api.listNodes('');
    const selected = new Set(
      nodes
        .filter((n) => applied.some((p) => matchesLabelSelector(p.spec?.nodeSelector, n.labels) || (before.get(p.metadata!.name) && matchesLabelSelector(before.get(p.metadata!.name)!.spec?.nodeSelector, n.labels))))
        .map((n) => n.name),
    );
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
