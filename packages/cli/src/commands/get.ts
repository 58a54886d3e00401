import { LabelSelectorSyntaxError, RolloutStatus, parseLabelSelector, rolloutKindName, type Node, type Policy, type Service } from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { CliError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { renderNodeTable, renderPolicyTable, renderServiceTable } from '../render.js';
import { reportError } from '../report.js';
import { listOf, nodeToManifest, policyToManifest, serviceToManifest, toJson, toYaml, type Plain } from '../resource-format.js';
import { KIND_WORDS, parseTargets } from '../resource-kind.js';
import { getBlocks } from './block.js';
import { getPrefixLists, PREFIX_LIST_WORDS } from './prefix-lists.js';
import { renderRolloutTable } from './rollout.js';

const OUTPUTS = ['table', 'wide', 'json', 'yaml', 'name'] as const;

/** The -l flag, checked on the client so a typo is a usage error. @throws UsageError */
export function selectorFlag(flags: Flags): string {
  const text = flags.string('selector') ?? '';
  try {
    parseLabelSelector(text);
  } catch (err) {
    if (err instanceof LabelSelectorSyntaxError) throw new UsageError(`-l: ${err.message}`, { cause: err });
    throw err;
  }
  return text;
}

/** The -l option shared by get and describe. */
export const SELECTOR_OPTION = { type: 'string', short: 'l', value: 'SELECTOR', description: 'label selector, e.g. "role=edge,site in (ams1,fra2),!canary"' } as const;

/** `edgeplane get`. */
export const getCommand: Command = {
  name: 'get',
  summary: 'List policies, services, nodes or rollouts',
  usage: ['get policies|services|nodes [NAME...] [-l SELECTOR] [-o wide|json|yaml|name]', 'get rollouts [-o json|yaml]', 'get blocks [--active-only] [-o json]', 'get prefixlists [NAME...] [-o wide|json|yaml|name]'],
  details: `Examples:
  edgeplane get policies
  edgeplane get services -o wide
  edgeplane get nodes -l role=edge -o wide
  edgeplane get policy deny-telnet -o yaml
  edgeplane get service web -o json
  edgeplane get rollouts
  edgeplane get blocks              (emergency blocks, active and ended: who, why, until when)
  edgeplane get prefixlists         (name, use, prefix count, selector, version)
  edgeplane get prefixlist feed -o yaml > feed.yaml   (a manifest apply -f reads back)

A service's HEALTHY column counts the backends that no node fronting it finds unhealthy
(by the nodes' own health checks): 8/10 means two backends take no new flows on some node
(describe service says where and why); <none> means it has no health check.`,
  arguments: [...KIND_WORDS, 'rollouts', 'blocks', 'prefixlists'],
  options: {
    output: { type: 'string', short: 'o', value: 'FORMAT', description: 'table (default), wide, json, yaml or name', choices: OUTPUTS.filter((o) => o !== 'table') },
    selector: SELECTOR_OPTION,
    'active-only': { type: 'boolean', description: 'get blocks: only blocks still in force' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals[0] === 'rollouts' || positionals[0] === 'rollout') return getRollouts(ctx, positionals.slice(1), flags);
    if (positionals[0] === 'blocks' || positionals[0] === 'block') return getBlocks(ctx, flags);
    if (PREFIX_LIST_WORDS.has(positionals[0] ?? '')) return getPrefixLists(ctx, positionals.slice(1), flags);
    const { kind, names } = parseTargets(positionals);
    const output = flags.choice('output', OUTPUTS, 'table');
    const selector = selectorFlag(flags);
    if (names.length > 0 && selector) throw new UsageError('give names or -l, not both');
    const api = ctx.api();
    let code: ExitCodeValue = ExitCode.OK;
    const fetch = async <T>(get: (n: string) => Promise<T | undefined>): Promise<T[]> => {
      const out: T[] = [];
      for (const n of names) {
        try {
          const got = await get(n);
          if (got === undefined) throw new CliError(`${kind} ${JSON.stringify(n)} not found`);
          out.push(got);
        } catch (err) {
          if (!(err instanceof CliError)) throw err;
          reportError(ctx.io, err);
          code = ExitCode.ERROR;
        }
      }
      return out;
    };
    let items: Plain[];
    let table: (wide: boolean) => string;
    let ids: string[];
    if (kind === 'policy') {
      const policies: Policy[] = names.length ? await fetch(async (n) => (await api.getPolicy(n))?.policy) : await api.listPolicies(selector);
      items = policies.map((p) => policyToManifest(p));
      table = (wide) => renderPolicyTable(policies, ctx.now(), wide);
      ids = policies.map((p) => `policy/${p.metadata?.name}`);
    } else if (kind === 'service') {
      const services: Service[] = names.length ? await fetch(async (n) => (await api.getService(n))?.service) : await api.listServices(selector);
      items = services.map((s) => serviceToManifest(s));
      // The HEALTHY column comes from the nodes' own health checks, asked only for a table.
      const health = output === 'table' || output === 'wide' ? new Map((await api.getServiceHealth(services.map((s) => s.metadata?.name ?? ''))).map((h) => [h.name, h])) : new Map();
      table = (wide) => renderServiceTable(services, ctx.now(), wide, health);
      ids = services.map((s) => `service/${s.metadata?.name}`);
    } else {
      const nodes: Node[] = names.length ? await fetch(async (n) => (await api.getNode(n))?.node) : await api.listNodes(selector);
      items = nodes.map(nodeToManifest);
      table = (wide) => renderNodeTable(nodes, ctx.now(), wide);
      ids = nodes.map((n) => `node/${n.name}`);
    }
    const single = names.length === 1 && items.length === 1;
    switch (output) {
      case 'json':
        ctx.io.stdout.write(toJson(single ? items[0]! : listOf(items)));
        break;
      case 'yaml':
        ctx.io.stdout.write(toYaml(single ? items[0]! : listOf(items)));
        break;
      case 'name':
        for (const id of ids) ctx.io.stdout.write(id + '\n');
        break;
      default:
        if (items.length === 0) {
          if (names.length === 0) ctx.io.stderr.write('No resources found.\n');
        } else ctx.io.stdout.write(table(output === 'wide'));
    }
    return code;
  },
};

/** `get rollouts`: every rollout with its kind (policy or service), newest change first. */
async function getRollouts(ctx: CommandContext, names: string[], flags: Flags): Promise<ExitCodeValue> {
  if (names.length > 0) throw new UsageError('get rollouts takes no names; use rollout status [service/]NAME');
  const output = flags.choice('output', OUTPUTS, 'table');
  const rollouts = await ctx.api().listRollouts(false);
  if (output === 'json' || output === 'yaml') {
    const items = rollouts.map((s) => RolloutStatus.toJSON(s) as Plain);
    ctx.io.stdout.write(output === 'json' ? toJson({ items }) : toYaml({ items }));
  } else if (output === 'name') {
    for (const s of rollouts) ctx.io.stdout.write(`rollout/${rolloutKindName(s.rollout!.kind)}/${s.rollout!.name}\n`);
  } else ctx.io.stdout.write(renderRolloutTable(rollouts));
  return ExitCode.OK;
}
