import { RolloutKind, RolloutState, ShadowVerdict, WavePhase, isServiceRollout, rolloutKindName, type RolloutStatus, type RuleKey } from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { CliError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { parseKind } from '../resource-kind.js';
import { isRunning, secondsLeft, stateName } from '../rollout-text.js';
import { formatMs } from '../duration.js';
import { timeoutFlag } from './apply.js';

const ACTIONS = ['status', 'list', 'pause', 'resume', 'promote', 'abort'] as const;
type Action = (typeof ACTIONS)[number];

const reverted = (state: RolloutState): boolean => state === RolloutState.ROLLOUT_STATE_FAILED || state === RolloutState.ROLLOUT_STATE_ABORTED;

/**
 * Which nodes run what: while the rollout runs, the nodes its record gives the change; once it
 * succeeded, all of them; once it was reverted, the nodes that enforced the change, applied only
 * the revert, or neither, as the controller counted them (WaveStatus).
 */
function nodesLine(status: RolloutStatus): string {
  const r = status.rollout!;
  if (!reverted(r.state)) return `${r.waveNodes.length} node(s) run the change`;
  const sum = (k: 'nodesEnforced' | 'nodesRevertOnly' | 'nodesNeither'): number => status.waves.reduce((n, w) => n + w[k], 0);
  return `${sum('nodesEnforced')} node(s) enforced the change before the revert, ${sum('nodesRevertOnly')} applied only the revert, ${sum('nodesNeither')} neither`;
}

/** Renders a rollout's status as text (pure). */
export function renderRollout(status: RolloutStatus, now: Date): string {
  const r = status.rollout!;
  const waves = r.strategy?.waves ?? [];
  const lines = [
    `Rollout of ${rolloutKindName(r.kind)} ${r.name} (change at revision ${r.changeRevision}): ${stateName(r.state)}${r.reason ? ` - ${r.reason}` : ''}`,
    `Wave ${Math.min(r.currentWave + 1, waves.length)} of ${waves.length}; ${nodesLine(status)}${(isServiceRollout(r) ? r.previousService : r.previous) ? '' : ` (a new ${rolloutKindName(r.kind)})`}${r.wavePhase === WavePhase.WAVE_PHASE_SHADOW ? `; ${r.shadowNodes.length} node(s) ${isRunning(r.state) ? 'shadow' : 'shadowed'} it` : ''}`,
    reverted(r.state) ? 'WAVE  TARGET                 NODES  ENFORCED  REVERT-ONLY  NEITHER  NACK  STATE' : 'WAVE  TARGET                 NODES  DONE  FAILED  PENDING  STATE',
  ];
  for (const w of status.waves) {
    const spec = waves[w.index];
    const target = spec?.target?.$case === 'percent' ? `${spec.target.percent}%` : spec?.target?.$case === 'selector' ? `selector ${Object.entries(spec.target.selector.matchLabels).map(([k, v]) => `${k}=${v}`).join(',')}` : '?';
    const shadow = w.phase === WavePhase.WAVE_PHASE_SHADOW;
    const phase = shadow ? `shadow ${r.state === RolloutState.ROLLOUT_STATE_PROGRESSING ? (w.shadowUntilTime ? shadowLeft(w.shadowUntilTime, now) : '(waiting for every node to shadow)') : ''}`.trimEnd() : '';
    const state = w.index < r.currentWave || r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED ? 'done' : w.index === r.currentWave ? (shadow ? `${stateName(r.state)}, ${phase}` : `${stateName(r.state)}${r.state === RolloutState.ROLLOUT_STATE_PROGRESSING ? secondsLeft(w.bakeUntilTime, now) : ''}`) : 'waiting';
    const head = `${String(w.index + 1).padEnd(4)}  ${`${w.name ? `${w.name}: ` : ''}${target}`.padEnd(21)}  ${String(w.nodes.length).padEnd(5)}  `;
    if (reverted(r.state)) lines.push(`${head}${String(w.nodesEnforced).padEnd(8)}  ${String(w.nodesRevertOnly).padEnd(11)}  ${String(w.nodesNeither).padEnd(7)}  ${String(w.nodesFailed).padEnd(4)}  ${w.index < r.currentWave ? 'done' : w.index === r.currentWave ? (shadow ? `${stateName(r.state)} in shadow` : stateName(r.state)) : 'never started'}`);
    else lines.push(`${head}${String(w.nodesDone).padEnd(4)}  ${String(w.nodesFailed).padEnd(6)}  ${String(w.nodesPending).padEnd(7)}  ${state}`);
  }
  if (status.gateReadings.length > 0) {
    const active = isRunning(r.state);
    lines.push(`Health gate${active ? '' : ' at the end'} (share of dropped packets, before -> since the node enforced the change):`);
    for (const g of status.gateReadings) lines.push(`  ${g.node}: ${g.baselineDropPercent.toFixed(1)}% -> ${g.currentDropPercent.toFixed(1)}% (${g.droppedPackets} of ${g.packets} packets)${g.overLimit ? ' OVER THE LIMIT' : ''}`);
  }
  if (status.shadowReadings.length > 0) {
    lines.push('Shadow gate (what the change would have done while the previous version was enforced):');
    for (const x of status.shadowReadings) {
      lines.push(`  wave ${x.wave + 1} ${x.node}: would drop ${x.wouldDropPercent.toFixed(1)}% (${x.wouldDrop} of ${x.classified} packets classified), would allow ${x.wouldAllow}`);
    }
  }
  return lines.join('\n') + '\n';
}

/** `(12s more)` while a shadow bake runs, else `(baked)`. */
function shadowLeft(until: Date, now: Date): string {
  const left = Math.ceil((until.getTime() - now.getTime()) / 1000);
  return left > 0 ? `(${left}s more)` : '(baked)';
}

const IP_PROTOCOLS: Readonly<Record<number, string>> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6' };
const ruleText = (k: RuleKey | undefined, name = ''): string => (k ? `${k.policy}/${k.priority}${name ? ` (${name})` : ''}` : 'default action');

/**
 * `describe rollout`: the status as `rollout status` shows it, then the sampled flows whose
 * verdict the change would have changed in a shadow phase: the ones it would have broken (would
 * drop) first, then those it would have let through. Pure.
 */
export function describeRollout(status: RolloutStatus, now: Date): string {
  let out = renderRollout(status, now);
  const flows = status.shadowSamples;
  if (flows.length === 0) return out + (status.shadowReadings.length > 0 ? 'Sampled flows: none (no packet\'s verdict would have changed)\n' : '');
  const rows = [['NODE', 'VERDICT', 'PROTO', 'SOURCE', 'DESTINATION', 'PORT', 'ENFORCED BY', 'CHANGE DECIDES BY']];
  const order = [ShadowVerdict.SHADOW_VERDICT_WOULD_DROP, ShadowVerdict.SHADOW_VERDICT_WOULD_ALLOW];
  for (const verdict of order) {
    for (const f of flows) {
      if (f.verdict !== verdict) continue;
      rows.push([f.node, verdict === ShadowVerdict.SHADOW_VERDICT_WOULD_DROP ? 'would drop' : 'would allow', IP_PROTOCOLS[f.protocol] ?? String(f.protocol), f.source, f.destination, f.port ? String(f.port) : '-', ruleText(f.enforcedRule), ruleText(f.candidateRule, f.candidateRuleName)]);
    }
  }
  const broken = flows.filter((f) => f.verdict === ShadowVerdict.SHADOW_VERDICT_WOULD_DROP).length;
  out += `Sampled flows the change would have broken: ${broken} (of ${flows.length} sampled with a changed verdict, newest last per node)\n`;
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return out + rows.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}

/** The `get rollouts` / `rollout list` table, newest change first (pure). */
export function renderRolloutTable(rollouts: readonly RolloutStatus[]): string {
  const rows = [['KIND', 'NAME', 'REVISION', 'STATE', 'WAVE', 'NODES', 'REASON']];
  for (const s of rollouts) {
    const r = s.rollout!;
    rows.push([rolloutKindName(r.kind), r.name, String(r.changeRevision), stateName(r.state), `${Math.min(r.currentWave + 1, r.strategy?.waves.length ?? 0)}/${r.strategy?.waves.length ?? 0}`, String(r.waveNodes.length), r.reason]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return rows.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}

/**
 * The resource a rollout command names: `NAME` (a policy, as before services had rollouts),
 * `policy/NAME` or `service/NAME`. @throws UsageError
 */
export function rolloutTarget(word: string): { kind: RolloutKind; name: string } {
  if (!word.includes('/')) return { kind: RolloutKind.ROLLOUT_KIND_POLICY, name: word };
  const { kind, name } = parseKind(word);
  if (kind === 'node' || !name) throw new UsageError(`rollout: name a policy or a service (policy/NAME, service/NAME), not ${JSON.stringify(word)}`);
  return { kind: kind === 'service' ? RolloutKind.ROLLOUT_KIND_SERVICE : RolloutKind.ROLLOUT_KIND_POLICY, name };
}

const finished = (s: RolloutStatus | undefined): boolean => !!s && !isRunning(s.rollout?.state);

/** `edgeplane rollout`. */
export const rolloutCommand: Command = {
  name: 'rollout',
  summary: 'Show and steer staged rollouts: list, status, pause, resume, promote, abort',
  usage: ['rollout list [--active]', 'rollout status [policy/|service/]NAME [--watch] [--timeout 10m]', 'rollout pause|resume|promote|abort [policy/|service/]NAME [--reason TEXT]'],
  details: `A policy or service change with a staged rollout strategy reaches the nodes it selects
wave by wave. A bare NAME is a policy; service/NAME names a service's rollout.
list shows every rollout with its kind (as get rollouts does); --active only those in progress.
status shows the waves (a wave with a shadow phase first shadows the change: its nodes classify
by it and enforce the previous version), the nodes done/failed/pending, the health-gate and
shadow-gate readings (describe rollout NAME adds the sampled flows it would have broken); --watch
follows it until it ends (exit 6 if it failed or was aborted). promote skips the current wave's
bake time; abort reverts the nodes that took the change.

Examples:
  edgeplane rollout status web --watch
  edgeplane rollout pause web --reason "investigating"
  edgeplane rollout abort web
  edgeplane rollout status service/frontend --watch`,
  arguments: ACTIONS,
  options: {
    watch: { type: 'boolean', short: 'w', description: 'follow the rollout until it ends' },
    timeout: { type: 'string', value: 'DURATION', description: 'with --watch: give up after this long (default 10m)' },
    reason: { type: 'string', value: 'TEXT', description: 'pause/abort: recorded in the log entry' },
    active: { type: 'boolean', description: 'list: only rollouts in progress or paused' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    const [action, word, ...rest] = positionals;
    if (!action || !(ACTIONS as readonly string[]).includes(action)) throw new UsageError(`rollout: expected one of ${ACTIONS.join(', ')}`);
    const api = ctx.api();
    if ((action as Action) === 'list') {
      if (word) throw new UsageError('rollout list takes no name');
      ctx.io.stdout.write(renderRolloutTable(await api.listRollouts(flags.boolean('active'))));
      return ExitCode.OK;
    }
    if (!word || rest.length > 0) throw new UsageError(`rollout ${action}: name exactly one policy or service`);
    const { kind, name } = rolloutTarget(word);
    const what = `${rolloutKindName(kind)} ${name}`;
    if ((action as Action) !== 'status') {
      const res = await api.rolloutAction(name, action as Exclude<Action, 'status' | 'list'>, flags.string('reason') ?? '', kind);
      const id = kind === RolloutKind.ROLLOUT_KIND_SERVICE ? `rollout/service/${name}` : `rollout/${name}`;
      ctx.io.stdout.write(`${id} ${action === 'abort' ? 'aborted' : `${action}d`} (revision ${res.revision}): ${stateName(res.rollout?.state)}\n`);
      return ExitCode.OK;
    }
    const first = await api.getRollout(name, kind);
    if (!first) throw new CliError(`${what} has no rollout`);
    if (!flags.boolean('watch')) {
      ctx.io.stdout.write(renderRollout(first, ctx.now()));
      return ExitCode.OK;
    }
    const timeoutMs = timeoutFlag(flags, 600_000);
    const deadline = Date.now() + timeoutMs;
    let status: RolloutStatus | undefined = first;
    let shown = '';
    for (;;) {
      const text = renderRollout(status!, ctx.now());
      // A terminal redraws in place; plain output prints when more than the countdown changed.
      const strip = (s: string): string => s.replace(/, baking \d+s more/g, '');
      if (ctx.io.isTTY) ctx.io.stdout.write(`\x1b[H\x1b[2J${text}`);
      else if (strip(text) !== strip(shown)) ctx.io.stdout.write(text);
      shown = text;
      if (finished(status)) break;
      if (Date.now() > deadline) {
        ctx.io.stderr.write(`rollout of ${what} did not finish within ${formatMs(timeoutMs)}\n`);
        return ExitCode.TIMEOUT;
      }
      await new Promise((r) => setTimeout(r, 500));
      status = (await api.getRollout(name, kind)) ?? status;
    }
    const state = status!.rollout!.state;
    if (state === RolloutState.ROLLOUT_STATE_SUCCEEDED) return ExitCode.OK;
    ctx.io.stderr.write(`rollout of ${name} ${stateName(state)}: ${status!.rollout!.reason}\n`);
    return ExitCode.ROLLOUT_FAILED;
  },
};
