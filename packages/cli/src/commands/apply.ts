import { ApplyPolicyRequest, ApplyServiceRequest, RolloutKind, matchesLabelSelector, type LabelSelector, type RolloutStrategy } from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { parseDurationMs } from '../duration.js';
import { CliError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { FILE_OPTIONS, explainRpcError, loadManifests, resourceId } from '../manifest-input.js';
import { followRollouts, renderProgress, waitForRevision, type FollowedRollout } from '../wait.js';
import { reportError } from '../report.js';
import { applyPrefixList, diffPrefixes } from '../prefix-list-apply.js';

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
  summary: 'Create or update policies, services and prefix lists from YAML/JSON manifests',
  usage: ['apply -f FILE|FOLDER|- [-f ...] [-R] [--wait [--timeout 60s]] [--dry-run=client|server]'],
  details: `Every document is parsed and validated before anything is sent; a problem is reported as
FILE:LINE:COL: FIELD: message. Documents are then applied in order; a server rejection maps the
field path back to the line it is about.

With --wait, the command follows the change until every node the applied policies and
services select (now or before) runs it: a progress bar on a terminal, one line per change
otherwise. A change with a staged rollout strategy is followed wave by wave until its rollout
succeeds (then every selected node runs it). It exits 3 when a node NACKs the revision (printing
the node and its reason; a staged rollout is reverted then), 6 when a rollout fails on a gate or
is aborted (printing the reason), and 4 on --timeout (default 60s, 10m when a rollout is
followed; the timeout covers the whole wait).

A PrefixList manifest gives its prefixes inline (spec.prefixes) and/or in spec.prefixesFile, a
file of one prefix per line (relative to the manifest's folder; '#' starts a comment), read as a
stream; a bad prefix is reported at its line. A list that exists is changed by difference: the
prefixes added and removed go through UpdatePrefixList, at most 50,000 a request. Prefix lists
are written before the policies and services of the same apply, so a policy rule may name a list
(sourcePrefixLists, destinationPrefixLists) given beside it.

Examples:
  edgeplane apply -f examples/
  edgeplane apply -f deny-telnet.yaml --wait --timeout 2m
  edgeplane get policy deny-telnet -o yaml | edgeplane apply -f -`,
  options: {
    ...FILE_OPTIONS,
    wait: { type: 'boolean', description: 'wait until the selected nodes run the new revision' },
    timeout: { type: 'string', value: 'DURATION', description: 'how long --wait waits in all (default 60s; 10m when it follows a staged rollout)' },
    'dry-run': { type: 'string', value: 'MODE', description: 'client: validate locally only; server: the server validates, nothing is written', choices: ['none', 'client', 'server'] },
    validate: { type: 'string', value: 'BOOL', description: 'validate on the client before sending (default true)', choices: ['true', 'false'] },
    'allow-large-growth': { type: 'boolean', description: "accept a change that grows a policy's rule count past the server's guard" },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals.length > 0) throw new UsageError(`apply takes no arguments (got ${positionals.join(' ')}); use -f`);
    const dryRun = flags.choice('dry-run', ['none', 'client', 'server'], 'none');
    const wait = flags.boolean('wait');
    if (wait && dryRun !== 'none') throw new UsageError('--wait and --dry-run do not go together');
    // Prefix lists first, in document order, then the rest: a policy may name a list of the same apply.
    const loaded = await loadManifests(ctx.io, flags, { validate: validateFlag(flags) });
    const manifests = [...loaded.filter((m) => m.kind === 'prefixlist'), ...loaded.filter((m) => m.kind !== 'prefixlist')];
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
        const existing = m.kind === 'policy' ? (await api.getPolicy(m.policy.metadata!.name))?.policy : m.kind === 'service' ? (await api.getService(m.service.metadata!.name))?.service : (await api.getPrefixList(m.prefixList.metadata!.name, true))?.prefixList;
        if (existing) before.push(existing.spec?.nodeSelector);
      }
    }

    let failed = false;
    let revision = 0n;
    // The node selectors of what was applied (policies and services alike).
    const applied: (LabelSelector | undefined)[] = [];
    // The staged rollouts the writes started.
    const rollouts: FollowedRollout[] = [];
    const followRollout = (kind: RolloutKind, name: string, strategy: RolloutStrategy | undefined, res: { unchanged: boolean; revision: bigint }): void => {
      if (strategy?.strategy?.$case === 'staged' && !res.unchanged && res.revision > 0n) rollouts.push({ kind, name, changeRevision: res.revision });
    };
    for (const m of manifests) {
      try {
        let res: { created: boolean; unchanged: boolean; revision: bigint };
        if (m.kind === 'prefixlist') {
          // By difference from the list the controller holds: adds and removes, never the whole list.
          const name = m.prefixList.metadata!.name;
          const held = await api.getPrefixList(name, false);
          if (dryRun === 'server') {
            const r = diffPrefixes(held?.prefixList?.spec?.prefixes ?? [], m.prefixList.spec?.prefixes ?? []);
            io.stdout.write(`${resourceId(m)} would add ${r.add.length} and remove ${r.remove.length} prefixes (server dry run: checked on the client and against the list held; nothing written)\n`);
            continue;
          }
          const r = await applyPrefixList(api, m.prefixList, held);
          if (r.prefixList) applied.push(r.prefixList.spec?.nodeSelector);
          if (r.revision > revision) revision = r.revision;
          const verb = r.unchanged ? 'unchanged' : r.created ? 'created' : 'configured';
          io.stdout.write(`${resourceId(m)} ${verb}${r.unchanged ? '' : ` (+${r.added} -${r.removed}, ${r.count} prefixes, revision ${r.revision})`}\n`);
          continue;
        }
        if (m.kind === 'policy') {
          const r = await api.applyPolicy(ApplyPolicyRequest.fromPartial({ policy: m.policy, validateOnly: dryRun === 'server', allowLargeGrowth: flags.boolean('allow-large-growth') }));
          if (r.policy) applied.push(r.policy.spec?.nodeSelector);
          followRollout(RolloutKind.ROLLOUT_KIND_POLICY, m.policy.metadata!.name, r.policy?.spec?.rolloutStrategy, r);
          const rv = r.revision || r.policy?.metadata?.resourceVersion || 0n;
          if (rv > revision) revision = rv;
          res = r;
        } else {
          const r = await api.applyService(ApplyServiceRequest.fromPartial({ service: m.service, validateOnly: dryRun === 'server' }));
          if (r.service) applied.push(r.service.spec?.nodeSelector);
          followRollout(RolloutKind.ROLLOUT_KIND_SERVICE, m.service.metadata!.name, r.service?.spec?.rolloutStrategy, r);
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
    const timeoutMs = timeoutFlag(flags, rollouts.length > 0 ? 600_000 : 60_000);
    const deadline = Date.now() + timeoutMs;
    if (rollouts.length > 0) {
      // Wave by wave; once every rollout succeeded, its last record's revision is the one every node must run.
      let shown = 0;
      const newest = await followRollouts(api, rollouts, {
        deadline,
        timeoutMs,
        onProgress(lines, passed) {
          if (io.isTTY) {
            // The passed waves' lines stay above the block of current lines, which is redrawn in place.
            io.stdout.write(`${shown > 0 ? `\x1b[${shown}F` : ''}${[...passed, ...lines].map((l) => `\x1b[K${l}\n`).join('')}`);
            shown = lines.length;
          } else io.stdout.write([...passed, ...lines].join('\n') + '\n');
        },
      });
      if (newest > revision) revision = newest;
    }
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
        deadline,
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
