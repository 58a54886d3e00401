// `apply --wait`: follow one revision until every node of interest applied it, one NACKed it,
// or time ran out. Polls GetRevisionStatus; the summary and the progress line are pure.
import { RevisionOutcome, type GetRevisionStatusResponse } from '@edgeplane/proto';
import { formatMs } from './duration.js';
import { NackError, WaitTimeoutError } from './errors.js';
import type { FleetApi } from './grpc-api.js';

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
  const deadline = Date.now() + options.timeoutMs;
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
