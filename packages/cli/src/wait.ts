// `apply --wait`: follow the staged rollouts a change started wave by wave until they end, then
// one revision until every node of interest applied it, one NACKed it, or time ran out. Polls
// GetRollout and GetRevisionStatus; the summaries and the progress lines are pure.
import { RevisionOutcome, RolloutKind, RolloutState, rolloutKindName, type GetRevisionStatusResponse, type RolloutStatus } from '@edgeplane/proto';
import { formatMs } from './duration.js';
import { NackError, RolloutFailedError, WaitTimeoutError } from './errors.js';
import type { FleetApi, RolloutApi } from './grpc-api.js';
import { isRunning, secondsLeft, stateName } from './rollout-text.js';

/** How far a revision has reached among the nodes of interest. */
export interface Convergence {
  revision: bigint;
  total: number;
  applied: string[];
  /** Nodes that NACKed the revision (or a later one) and do not run it. */
  failed: { node: string; reason: string }[];
  /** Neither applied nor failed, including nodes the controller does not know (yet). */
  pending: string[];
}

/**
 * Summarizes a GetRevisionStatus answer for a set of node names (undefined = every node in
 * the answer). Names sort.
 */
export function summarizeConvergence(status: GetRevisionStatusResponse, revision: bigint, nodes?: ReadonlySet<string>): Convergence {
  const states = new Map(status.nodes.map((n) => [n.node, n]));
  const names = [...(nodes ?? states.keys())].sort();
  const out: Convergence = { revision, total: names.length, applied: [], failed: [], pending: [] };
  for (const name of names) {
    const s = states.get(name);
    if (s && s.appliedRevision >= revision) out.applied.push(name);
    else if (s && s.outcome === RevisionOutcome.REVISION_OUTCOME_NACK) out.failed.push({ node: name, reason: s.error || 'no reason given' });
    else out.pending.push(name);
  }
  return out;
}

/** One progress line: a bar on a terminal, plain text otherwise. */
export function renderProgress(c: Convergence, tty: boolean, width = 30): string {
  const n = c.applied.length;
  const text = `${n}/${c.total} nodes at revision ${c.revision}${c.failed.length ? `, ${c.failed.length} NACK` : ''}${c.pending.length && c.pending.length <= 5 ? ` (waiting for ${c.pending.join(', ')})` : c.pending.length ? ` (${c.pending.length} pending)` : ''}`;
  if (!tty) return text;
  const filled = c.total === 0 ? width : Math.round((n / c.total) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}`;
}

/** Options of {@link waitForRevision}. */
export interface WaitOptions {
  revision: bigint;
  /** Node names to wait for. */
  nodes: ReadonlySet<string>;
  timeoutMs: number;
  /** When to give up (epoch ms); default: now + timeoutMs. */
  deadline?: number;
  pollMs?: number;
  /** Called with every new state (and once at the start). */
  onProgress(c: Convergence): void;
}

/**
 * Polls until every node in `nodes` runs the revision.
 * @returns the final convergence.
 * @throws NackError when a node NACKs it (naming node and reason), WaitTimeoutError when time
 * runs out, RpcError when the controller cannot be asked.
 */
export async function waitForRevision(api: Pick<FleetApi, 'getRevisionStatus'>, options: WaitOptions): Promise<Convergence> {
  const deadline = options.deadline ?? Date.now() + options.timeoutMs;
  let last = '';
  for (;;) {
    const status = await api.getRevisionStatus(options.revision, '');
    const c = summarizeConvergence(status, options.revision, options.nodes);
    const key = `${c.applied.length}/${c.failed.length}/${c.pending.join(',')}`;
    if (key !== last) options.onProgress(c);
    last = key;
    if (c.failed.length > 0) {
      throw new NackError(c.failed.map((f) => `node ${f.node} NACKed revision ${options.revision}: ${f.reason}`).join('\n'));
    }
    if (c.pending.length === 0) return c;
    if (Date.now() >= deadline) {
      throw new WaitTimeoutError(`timed out after ${formatMs(options.timeoutMs)}: ${c.applied.length}/${c.total} nodes at revision ${options.revision}; no report from ${c.pending.join(', ')}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(options.pollMs ?? 250, Math.max(0, deadline - Date.now()))));
  }
}

/** A staged rollout `apply --wait` follows: its resource, and the revision of the change that started it. */
export interface FollowedRollout {
  kind: RolloutKind;
  name: string;
  changeRevision: bigint;
}

/** `policy/web` or `service/web`. */
const rolloutId = (f: Pick<FollowedRollout, 'kind' | 'name'>): string => `${f.kind === RolloutKind.ROLLOUT_KIND_SERVICE ? 'service' : 'policy'}/${f.name}`;

/**
 * One progress line of a rollout: its wave, how many nodes run the change, how many of the
 * current wave are done, the bake time left; a bar on a terminal (waves done, and the current
 * wave's share of done nodes). Pure.
 */
export function renderRolloutProgress(id: string, status: RolloutStatus, now: Date, tty: boolean, width = 30): string {
  const r = status.rollout!;
  const waves = r.strategy?.waves.length ?? 0;
  const wave = status.waves.find((w) => w.index === r.currentWave);
  const ended = !isRunning(r.state);
  const text = ended
    ? `${id}: ${stateName(r.state)}${r.reason ? ` - ${r.reason}` : ''}`
    : waveLine(id, status, r.currentWave, r.waveNodes.length) + (r.state === RolloutState.ROLLOUT_STATE_PAUSED ? ', paused' : secondsLeft(wave?.bakeUntilTime, now));
  if (!tty) return text;
  const share = r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED ? 1 : waves === 0 ? 0 : (r.currentWave + (wave && wave.nodes.length > 0 ? wave.nodesDone / wave.nodes.length : 0)) / waves;
  const filled = Math.round(Math.min(1, share) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}`;
}

/** `ID: wave I of N (NAME: TARGET), K node(s) run the change, D/T of the wave done[, F NACK]`: wave `index` of the rollout. */
function waveLine(id: string, status: RolloutStatus, index: number, running: number): string {
  const r = status.rollout!;
  const waves = r.strategy?.waves.length ?? 0;
  const wave = status.waves.find((w) => w.index === index);
  const spec = r.strategy?.waves[index];
  const target = spec?.target?.$case === 'percent' ? `${spec.target.percent}%` : spec?.target?.$case === 'selector' ? 'selector' : '';
  const name = spec?.name ? `${spec.name}: ` : '';
  const inWave = wave ? `, ${wave.nodesDone}/${wave.nodes.length} of the wave done${wave.nodesFailed ? `, ${wave.nodesFailed} NACK` : ''}` : '';
  return `${id}: wave ${Math.min(index + 1, waves)} of ${waves} (${name}${target}), ${running} node(s) run the change${inWave}`;
}

/**
 * The lines of the waves a rollout went through since wave `shown` was printed and that no poll
 * saw it in (a wave done within one poll, or before the first): each wave is printed once, in
 * order, with what its status says now. None for a rollout that failed or was aborted (its later
 * waves never ran). Pure.
 */
export function skippedWaveLines(id: string, status: RolloutStatus, shown: number): string[] {
  const r = status.rollout!;
  const last = r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED ? (r.strategy?.waves.length ?? 0) - 1 : isRunning(r.state) ? r.currentWave - 1 : -1;
  const lines: string[] = [];
  for (let i = shown + 1; i <= last; i++) {
    const running = status.waves.filter((w) => w.index <= i).reduce((n, w) => n + w.nodes.length, 0);
    lines.push(waveLine(id, status, i, running));
  }
  return lines;
}

/** Options of {@link followRollouts}. */
export interface FollowOptions {
  /** When the whole wait ends (epoch ms), shared with the revision wait that follows. */
  deadline: number;
  timeoutMs: number;
  pollMs?: number;
  /**
   * Called with one line per rollout when any of them changed (and once at the start), after
   * the lines of the waves no poll saw running (`passed`: printed once, they do not change).
   */
  onProgress(lines: string[], passed: string[]): void;
  now?: () => Date;
}

/**
 * Polls the rollouts until every one has ended. A rollout the controller no longer holds for
 * that change (a newer change replaced it) counts as ended with nothing more to follow.
 * @returns the newest revision of their records: once a node applied it, it runs every change.
 * @throws NackError when a rollout failed because a node NACKed the change (exit code 3),
 * RolloutFailedError when one failed otherwise or was aborted (6), WaitTimeoutError (4).
 */
export async function followRollouts(api: Pick<RolloutApi, 'getRollout'>, rollouts: readonly FollowedRollout[], options: FollowOptions): Promise<bigint> {
  const now = options.now ?? (() => new Date());
  let last = '';
  let newest = 0n;
  // The newest wave printed of each rollout (-1: none yet).
  const shown = rollouts.map(() => -1);
  for (;;) {
    const lines: string[] = [];
    const skipped: string[] = [];
    let running = 0;
    for (const [i, f] of rollouts.entries()) {
      const status = await api.getRollout(f.name, f.kind);
      const r = status?.rollout;
      if (!status || !r) {
        // Written with the change, so only a lagging answer lacks it: keep asking until the deadline.
        lines.push(`${rolloutId(f)}: waiting for the rollout of the change at revision ${f.changeRevision}`);
        running++;
        continue;
      }
      if (r.changeRevision !== f.changeRevision) {
        lines.push(`${rolloutId(f)}: no longer rolling out the change at revision ${f.changeRevision}`);
        continue;
      }
      if (r.resourceVersion > newest) newest = r.resourceVersion;
      skipped.push(...skippedWaveLines(rolloutId(f), status, shown[i]!));
      if (isRunning(r.state)) shown[i] = r.currentWave;
      else if (r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED) shown[i] = Number.MAX_SAFE_INTEGER;
      lines.push(renderRolloutProgress(rolloutId(f), status, now(), false));
      if (r.state === RolloutState.ROLLOUT_STATE_FAILED || r.state === RolloutState.ROLLOUT_STATE_ABORTED) {
        options.onProgress(lines, skipped);
        const what = `rollout of ${rolloutKindName(r.kind)} ${r.name} ${stateName(r.state)}: ${r.reason}`;
        if (status.waves.some((w) => w.nodesFailed > 0)) throw new NackError(what);
        throw new RolloutFailedError(what);
      }
      if (r.state !== RolloutState.ROLLOUT_STATE_SUCCEEDED) running++;
    }
    // The countdown alone does not make a new line.
    const key = lines.map((l) => l.replace(/, baking \d+s more/, '')).join('\n');
    if (key !== last || skipped.length > 0) options.onProgress(lines, skipped);
    last = key;
    if (running === 0) return newest;
    if (Date.now() >= options.deadline) {
      throw new WaitTimeoutError(`timed out after ${formatMs(options.timeoutMs)}: ${lines.join('; ')}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(options.pollMs ?? 500, Math.max(0, options.deadline - Date.now()))));
  }
}
