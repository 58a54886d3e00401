import type { Command, CommandContext, Flags } from '../command.js';
import { CliError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { describeNode, describePolicy, describeService } from '../render.js';
import { reportError } from '../report.js';
import { KIND_WORDS, parseTargets } from '../resource-kind.js';
import { SELECTOR_OPTION, selectorFlag } from './get.js';
import { describePrefixLists, PREFIX_LIST_WORDS } from './prefix-lists.js';
import { describeRollout, rolloutTarget } from './rollout.js';

/** `edgeplane describe`. */
export const describeCommand: Command = {
  name: 'describe',
  summary: 'Show a policy, service, node, rollout or prefix list in detail: revisions, ACK/NACK, last error, counters',
  usage: ['describe policy|service|node NAME...', 'describe policies|services|nodes [-l SELECTOR]', 'describe rollout [policy/|service/]NAME...', 'describe prefixlist [NAME...]'],
  details: `A policy shows its rules with fleet-wide counters and the nodes it selects, each with its
applied revision and NACK reason. A service shows its VIP, port and protocol, scheduler and
lookup-table size, health check, affinity, the nodes it selects and its backends with their
weights, shares of new flows and health: how many selected nodes find each healthy, unhealthy or
have not said, and why the unhealthy ones fail. A node shows its agent, interfaces, applied revision (or that
it is unknown, when a failed rollback left the datapath at no known revision), last outcome and
error, its conditions, the policies selecting it, and its rule and interface counters. A rollout
shows what rollout status shows, and the sampled flows a shadow phase found the change would have
broken (or let through). A prefix list shows its use, selector, size and first prefixes.`,
  arguments: [...KIND_WORDS, 'rollouts', 'prefixlists'],
  options: { selector: SELECTOR_OPTION },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals[0] === 'rollout' || positionals[0] === 'rollouts') return describeRollouts(ctx, positionals.slice(1));
    if (PREFIX_LIST_WORDS.has(positionals[0] ?? '')) return describePrefixLists(ctx, positionals.slice(1));
    const { kind, names } = parseTargets(positionals);
    const selector = selectorFlag(flags);
    if (names.length > 0 && selector) throw new UsageError('give names or -l, not both');
    const api = ctx.api();
    let code: ExitCodeValue = ExitCode.OK;
    const blocks: string[] = [];
    const fail = (err: unknown): void => {
      if (!(err instanceof CliError)) throw err;
      reportError(ctx.io, err);
      code = ExitCode.ERROR;
    };
    if (kind === 'policy') {
      const nodes = await api.listNodes('');
      const targets = names.length ? names : (await api.listPolicies(selector)).map((p) => p.metadata?.name ?? '');
      for (const name of targets) {
        try {
          const got = await api.getPolicy(name);
          if (!got?.policy) throw new CliError(`policy ${JSON.stringify(name)} not found`);
          const counters = await api.getPolicyCounters({ policy: name, nodeLabelSelector: '', perNode: true });
          blocks.push(describePolicy({ policy: got.policy, fleetCounters: counters.fleet, nodeCounters: counters.nodes, nodes }, ctx.now()));
        } catch (err) {
          fail(err);
        }
      }
    } else if (kind === 'service') {
      const nodes = await api.listNodes('');
      const targets = names.length ? names : (await api.listServices(selector)).map((s) => s.metadata?.name ?? '');
      for (const name of targets) {
        try {
          const got = await api.getService(name);
          if (!got?.service) throw new CliError(`service ${JSON.stringify(name)} not found`);
          const [health] = await api.getServiceHealth([name]);
          blocks.push(describeService({ service: got.service, nodes, ...(health ? { health } : {}) }, ctx.now()));
        } catch (err) {
          fail(err);
        }
      }
    } else {
      const policies = await api.listPolicies('');
      const targets = names.length ? names : (await api.listNodes(selector)).map((n) => n.name);
      for (const name of targets) {
        try {
          const got = await api.getNode(name);
          if (!got?.node) throw new CliError(`node ${JSON.stringify(name)} not found`);
          blocks.push(describeNode({ node: got, policies }, ctx.now()));
        } catch (err) {
          fail(err);
        }
      }
    }
    ctx.io.stdout.write(blocks.join('\n'));
    return code;
  },
};

/** `describe rollout NAME...` (a bare NAME is a policy's rollout; service/NAME a service's). */
async function describeRollouts(ctx: CommandContext, words: string[]): Promise<ExitCodeValue> {
  if (words.length === 0) throw new UsageError('describe rollout: name one or more rollouts ([policy/|service/]NAME)');
  const targets = words.map(rolloutTarget);
  const api = ctx.api();
  let code: ExitCodeValue = ExitCode.OK;
  const blocks: string[] = [];
  for (const { kind, name } of targets) {
    try {
      const status = await api.getRollout(name, kind);
      if (!status) throw new CliError(`rollout of ${JSON.stringify(name)} not found`);
      blocks.push(describeRollout(status, ctx.now()));
    } catch (err) {
      if (!(err instanceof CliError)) throw err;
      reportError(ctx.io, err);
      code = ExitCode.ERROR;
    }
  }
  ctx.io.stdout.write(blocks.join('\n'));
  return code;
}
