import { SpanStatusCode, context, metrics, trace, type Context, type Counter as MetricCounter, type Link, type Span } from '@opentelemetry/api';
import {
  MAX_CONDITION_MESSAGE_LENGTH,
  MAX_COUNTER_RULES,
  MAX_SHADOW_SAMPLES,
  RevisionOutcome,
  ShadowVerdict,
  sameLabels,
  type ConditionReport,
  type BlocklistStatus,
  type ConntrackStatus,
  type LoadBalancerStatus,
  type CounterReport,
  type NodeCondition,
  type InterfaceCounters,
  type LogEntry,
  type RevisionReport,
  type RuleCounters,
  type ShadowFlow,
  type ShadowReport,
  type Snapshot,
} from '@edgeplane/proto';
import type { IntentChain } from '@edgeplane/intent-log';
import { extractTraceContext, injectTraceContext } from '@edgeplane/telemetry';
import type { ConntrackOccupancy } from '../datapath/conntrack.js';
import { LB_STAT_NAMES, type Counter, type Datapath, type DatapathCounters, type LbCounters, type ShadowCounters, type ShadowDatapath } from '../datapath/datapath.js';
import { RollbackError } from '../datapath/errors.js';
import { IdIndex } from '../datapath/id-index.js';
import type { InterfaceRole } from '../datapath/interface-role.js';
import { eachMoved } from '../datapath/rule-counts.js';
import type { RuleAction, RuleSetSpec } from '../datapath/rule-set.js';
import { MaglevTableCache, type BackendHealthView, type BackendRouteView, type LbSpec } from '../datapath/service-compile.js';
import { compileNode, compileNodeServices, compileShadow, type CompiledIntent, type RuleOrigin, type ShadowCandidate } from './compile.js';
import { blocklistOf, readBlocklistStatus } from './blocklist-metrics.js';
import { conntrackStatus } from './connection-query.js';
import type { AppliedState, StateStore } from './state-file.js';

const tracer = trace.getTracer('@edgeplane/node-agent');
const ROLES: InterfaceRole[] = ['uplink', 'workload'];
/**
 * Connection-table occupancy is re-read for counter reports at most every 30 s, and paced by its
 * cost (a read walks both tables: about 2.4 s at 1,000,000 entries) to at most 0.5 % of one core,
 * as the sweeper is: the next read waits at least 200 times as long as the last one took.
 */
const OCCUPANCY_MIN_MS = 30_000;
const OCCUPANCY_COST_FACTOR = 200;
/**
 * Rules (the larger of the rule sets before and after) from which an apply is followed by
 * NodeAgentOptions.reclaim: an apply of 65,536 rules leaves ~300 MiB of garbage in V8's old
 * generation, which an idle agent allocates too little to ever collect (bench/README.md, agent);
 * below a few thousand rules it is a few MiB and not worth a full collection.
 */
export const RECLAIM_MIN_RULES = 4096;
/**
 * How long the agent must have been quiet (no entry received, no apply running) before the
 * reclaim runs: its full collection pauses the agent 130-160 ms at 65,536 rules (BENCHMARKS.md),
 * which an entry arriving right behind an apply would wait out. A burst of changes is reclaimed
 * once, after it.
 */
export const RECLAIM_QUIET_MS = 1000;
/** What one role's datapath is given: the rule set and, on the uplink, the load-balancing spec (absent: no services). */
interface Enforced {
  readonly ruleSet: RuleSetSpec;
  readonly lb?: LbSpec;
}
/** What a datapath enforces before its first apply: every packet passes, no services. */
const UNCONFIGURED: Enforced = { ruleSet: { rules: [], defaultAction: 'allow' } };
/** Condition: a partial apply could not be undone, the datapath state is unknown (retried until known). */
export const CONDITION_APPLY_ROLLBACK_FAILED = 'apply-rollback-failed';
/** Condition: the datapath enforces a revision the state file could not record (the write is retried). */
export const CONDITION_STATE_FILE_FAILED = 'state-file-failed';
/** Condition: the log offered a shorter or different history than this node verified (refused until an operator reset). */
export const CONDITION_ROLLBACK_REFUSED = 'rollback-refused';
/** Condition: the newest verified controller heartbeat is older than the bound (a frozen log?). */
export const CONDITION_INTENT_STALE = 'intent-stale';
/** Condition: messages on the log failed verification and were skipped. */
export const CONDITION_LOG_MESSAGE_REJECTED = 'log-message-rejected';
/**
 * Condition: a backend's health changed and the services of the revision in force could not be
 * applied with it (the datapath keeps the previous tables; retried with backoff until it takes them).
 */
export const CONDITION_HEALTH_APPLY_FAILED = 'backend-health-apply-failed';

/** The datapath a role's agent drives: enforcement, and shadow classification (issue 18). */
export type AgentDatapath = Datapath & ShadowDatapath;

/** A structured log line sink. */
export type AgentLogger = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

/** Options of {@link NodeAgent}. */
export interface NodeAgentOptions {
  nodeName: string;
  labels: Record<string, string>;
  /** The datapath enforcing (and shadowing) each interface role (may be the same object for both). */
  datapaths: Record<InterfaceRole, AgentDatapath>;
  stateFile: StateStore;
  /** Where ACK/NACK reports go (the controller link). */
  report: (report: RevisionReport) => void;
  /**
   * Sends, at once, the counts an apply flushed at its switch (what the outgoing rule set counted
   * since the previous report, under the revision it enforced): called before the apply's report.
   * Returns false when it cannot send now (not connected): the flush then goes, alone, with the
   * next counterDeltas(). Absent: every flush waits for counterDeltas().
   */
  flushCounters?: (report: CounterReport) => boolean;
  /** Called with the whole set of conditions whenever it changes (the controller link's ConditionReport). */
  conditions?: (report: ConditionReport) => void;
  log: AgentLogger;
  /**
   * Called after every successful apply (and the state file's enforcement at boot) with the
   * snapshot the datapath now enforces and the labels it was compiled for: what the node's
   * backend health checks follow. Its errors are logged, never fatal.
   */
  applied?: (snapshot: Snapshot, labels: Readonly<Record<string, string>>) => void;
  /**
   * The node's source blocklist (BlocklistSync over the uplink datapath): made equal to each
   * revision's prefix lists and blocks before its rule sets are applied, and at boot. Its error
   * NACKs the revision with the rule sets untouched. Absent: prefix lists and blocks are not
   * enforced (the in-memory datapath of the simulated fleet).
   */
  blocklist?: { sync(snapshot: Snapshot, labels: Readonly<Record<string, string>>): unknown };
  /**
   * Backend health on this node (ServiceHealth.eligible): a backend it calls unhealthy takes no
   * new flows. Asked at every compile; tell the agent of a change with
   * {@link NodeAgent.healthChanged}. Absent: every backend is healthy.
   */
  health?: BackendHealthView;
  /** The node's routes to backends, for DSR and full-NAT services (BackendRoutes.view); absent: none resolved. */
  routes?: BackendRouteView;
  /**
   * Called with the uplink's services before they are applied (and with the previous ones when a
   * failed apply rolls back): makes the node's settings what they need (UplinkSysctls.follow).
   * Must not throw.
   */
  prepareUplink?: (lb: LbSpec | undefined) => void;
  /**
   * Backoff of the retries (restoring a known revision after a failed rollback; rewriting the
   * state file): doubling from min to max, ms. Default 1000 .. 60000.
   */
  retryMinMs?: number;
  retryMaxMs?: number;
  /**
   * Coalescing of entries into applies. An entry that comes after a quiet spell (no entry and
   * no apply for this long) is applied at once, with whatever was delivered in the same turn of
   * the event loop (a catch-up is handed over whole). Entries that follow it within this wait
   * are held until the log stays quiet for it, so a burst of writes costs the node two applies
   * at most (its first entry, then its final state). Default 25 ms.
   */
  coalesceMs?: number;
  /** The longest a steady stream of entries holds an apply back. Default 10 x coalesceMs. */
  coalesceMaxMs?: number;
  /**
   * Hands the garbage of a large apply back to the system (main.ts: a full garbage collection
   * when node runs with --expose-gc, as the launcher starts it). Called once the apply's report
   * is sent, on a later turn of the event loop, after an apply (ACK or NACK) whose rule set
   * before or after has at least `reclaimMinRules` rules, and after boot() enforced a state file
   * of that many, once the agent has been quiet for `reclaimQuietMs` (no entry received, no
   * apply running): a burst of applies is reclaimed once, after it. The process's first apply
   * (or boot) is followed by one whatever its size: what the start left (connections, TLS,
   * the first compile of the code) is garbage then, and an idle agent would keep it. Its errors
   * are logged.
   */
  reclaim?: () => void;
  /** Default RECLAIM_MIN_RULES. */
  reclaimMinRules?: number;
  /** Default RECLAIM_QUIET_MS. */
  reclaimQuietMs?: number;
}

/** How the agent stands: what it has received and what it enforces. */
export interface AgentStatus {
  received: bigint;
  applied: bigint;
  applies: number;
  lastError: string;
  /** True when some role enforces a rule set of no known revision (`applied` is the last known one). */
  appliedUnknown: boolean;
  /** Successful re-applies of the revision in force for a backend health change (no report each). */
  healthApplies: number;
}

/** A retry with doubling backoff; one timer at a time. */
class Retry {
  #timer: NodeJS.Timeout | undefined;
  #attempt = 0;
  #min: number;
  #max: number;

  constructor(min: number, max: number) {
    this.#min = min;
    this.#max = max;
  }

  /** Runs `fn` after the next backoff step, unless a run is already scheduled. */
  schedule(fn: () => void): void {
    if (this.#timer) return;
    const delay = Math.min(this.#max, this.#min * 2 ** this.#attempt++);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      fn();
    }, delay);
  }

  /** Cancels a scheduled run and starts the backoff again from its minimum. */
  reset(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#attempt = 0;
  }
}

/** What a compiled role gives its datapath. */
function pairOf(role: { ruleSet: RuleSetSpec; lb?: LbSpec }): Enforced {
  return role.lb ? { ruleSet: role.ruleSet, lb: role.lb } : { ruleSet: role.ruleSet };
}

/** Each live rule set's rule ids indexed, built at its first counter report that needs it and reused by every later one (and by both roles when they share the rule set). */
const ruleIndexes = new WeakMap<RuleSetSpec, IdIndex>();
/** @returns the action of rule `id` in `ruleSet`, undefined when it has no such rule. */
function actionOf(ruleSet: RuleSetSpec, id: number): RuleAction | undefined {
  let index = ruleIndexes.get(ruleSet);
  if (!index) ruleIndexes.set(ruleSet, (index = new IdIndex(ruleSet.rules.map((r) => r.id))));
  const at = index.positionOf(id);
  return at === undefined ? undefined : ruleSet.rules[at]?.action;
}

function sub(a: Counter, b: Counter | undefined): Counter {
  return { packets: a.packets - (b?.packets ?? 0), bytes: a.bytes - (b?.bytes ?? 0) };
}

/**
 * The node agent's logic: turns the followed intent into datapath tables and applies them, all
 * or nothing across interface roles; ACKs a revision only once the datapath enforces it, NACKs
 * with the reason otherwise (the previous revision stays in force); records what it applied in
 * the state file; reports counter deltas. Applies are coalesced: entries arriving while an
 * apply runs are applied together afterwards, so an agent far behind applies the final state once.
 *
 * It never misreports: a partial apply whose rollback fails is a NACK with reason
 * `apply-rollback-failed: ...` and `appliedUnknown`, raises the condition of that name and the
 * alarm counter `edgeplane.agent.apply_rollback_failures`, and the roles concerned are set back
 * to the last known revision with backoff until they are. A state file that cannot be written
 * after the datapath enforces R does not undo R: R is ACKed, condition `state-file-failed` and
 * `edgeplane.agent.state_file_failures` are raised and the write is retried on its own.
 *
 * Services go with the uplink's rule set as its load-balancing spec (bpf/LB.md), compiled with
 * the node's backend health and one Maglev table cache the agent keeps. A health change
 * ({@link NodeAgent.healthChanged}) re-applies the revision in force with the new health:
 * no log entry and no report, serialized and coalesced with the applies of the log; a failure
 * raises condition `backend-health-apply-failed` and `edgeplane.agent.health_apply_failures`
 * and is retried with backoff until the datapath takes it (or a later apply does).
 * Owns its retry timers: close() stops them (the datapath is the caller's).
 */
export class NodeAgent {
  #o: NodeAgentOptions;
  #received = 0n;
  /** The newest report sent (ACK or NACK), for the hello after a reconnect. */
  #lastReport: RevisionReport | undefined;
  /** Counts intentAdvanced calls: the coalescing wait restarts while it moves. */
  #advances = 0;
  /** performance.now() of the last intentAdvanced() and of the end of the last apply run: what "quiet" is measured from. */
  #lastAdvanceAt = -Infinity;
  #lastRunEndAt = -Infinity;
  /** Ends the coalescing wait in progress (close() does not wait for it). */
  #endWait: (() => void) | undefined;
  #applied = 0n;
  #applies = 0;
  #lastError = '';
  /** What each role enforces of revision #applied (on every role not in #unknownRoles). */
  #live: Record<InterfaceRole, Enforced> | undefined;
  /** Roles whose enforced rule set is of no known revision, with the reason. */
  #unknownRoles = new Map<InterfaceRole, string>();
  #repairDue = false;
  #repair: Retry;
  #stateRetry: Retry;
  /** The newest applied state the state file does not hold yet. */
  #unsaved: AppliedState | undefined;
  #conditions = new Map<string, NodeCondition>();
  #rollbackFailures: MetricCounter;
  #stateFileFailures: MetricCounter;
  #closed = false;
  #origins: Record<InterfaceRole, ReadonlyMap<number, RuleOrigin>> = { uplink: new Map(), workload: new Map() };
  /** The conntrack status last reported (JSON), so an unchanged one is not sent again. */
  #lastConntrack = '';
  /** The load-balancer counters last reported ('' none). */
  #lastLb = '';
  /** The blocklist status last reported (its fields joined), so an unchanged one is not sent again. */
  #lastBlocklists = '';
  #occupancyRead: Partial<Record<InterfaceRole, { at: number; value: ConntrackOccupancy; waitMs: number }>> = {};
  #running: Promise<void> | undefined;
  /** The chain to apply next; `force`: apply it even if its revision is not above #applied (another history: a reset or resync). */
  #wanted: { chain: IntentChain; context: Context | undefined; receivedAt: bigint; links: Link[]; force: boolean } | undefined;
  #lastCounters: Partial<Record<InterfaceRole, DatapathCounters>> = {};
  /** Each role's rule set before the latest apply and its origins: what a rule the apply removed is attributed to. */
  #replaced: Partial<Record<InterfaceRole, { ruleSet: RuleSetSpec; origins: ReadonlyMap<number, RuleOrigin> }>> = {};
  /** What the current apply's switches flushed, until it is sent before the apply's report. */
  #flush: CounterAccumulator | undefined;
  /** A flush that could not be sent: counterDeltas() returns it first. */
  #unsentFlush: CounterReport | undefined;
  #lastCountersAt = new Date();
  /** The labels policies select on now: the options' until {@link setLabels} changes them. */
  #labels: Record<string, string>;
  /** The snapshot of revision #applied (from the state file or the last ACKed apply), recompiled when the labels change. */
  #current: Snapshot | undefined;
  /** The labels #live was compiled for (#labels may be newer while a relabel is pending or after it was refused). */
  #currentLabels: Readonly<Record<string, string>> = {};
  #relabelDue = false;
  /** Built Maglev tables by their inputs: a recompile (a revision, a relabel, a health change) builds only what changed. */
  readonly #tables = new MaglevTableCache();
  /** Counts health changes; #healthApplied is the count #live's services were compiled at. Different: a re-apply is due. */
  #healthSeq = 0;
  #healthApplied = 0;
  /** A failed health re-apply waits for its retry (or the next change) instead of looping. */
  #healthBackoff = false;
  #healthRetry: Retry;
  #healthApplies = 0;
  #healthApplyFailures: MetricCounter;
  /** The reclaim's timer, armed while one is due (see #reclaimAfter). */
  #reclaimDue: NodeJS.Timeout | undefined;
  /** Whether a reclaim was made due since the start (the first one is, whatever the rule set's size). */
  #reclaimedOnce = false;
  /**
   * Each role's shadow candidate as this process installed (or adopted) it: its name, what was
   * installed (the candidate name and the rule set, as JSON: an unchanged candidate is not
   * installed again, which would zero its counters), and the origins of its rule ids.
   */
  #shadow: Partial<Record<InterfaceRole, { candidate: string; key: string; origins: ReadonlyMap<number, RuleOrigin> }>> = {};
  /** The shadow counters last reported ('' none), so unchanged ones are not sent again. */
  #lastShadow = '';
  /** Whether the missing shadow support was logged (once). */

  constructor(options: NodeAgentOptions) {
    this.#o = options;
    this.#labels = { ...options.labels };
    this.#repair = new Retry(options.retryMinMs ?? 1000, options.retryMaxMs ?? 60_000);
    this.#stateRetry = new Retry(options.retryMinMs ?? 1000, options.retryMaxMs ?? 60_000);
    this.#healthRetry = new Retry(options.retryMinMs ?? 1000, options.retryMaxMs ?? 60_000);
    // The meter is taken here, not at module load: the metrics API has no proxy provider, so a
    // meter taken before the SDK starts would stay a no-op.
    const meter = metrics.getMeter('@edgeplane/node-agent');
    this.#rollbackFailures = meter.createCounter('edgeplane.agent.apply_rollback_failures', { description: 'Partial applies whose rollback failed, leaving the datapath at no known revision (alarm)' });
    this.#stateFileFailures = meter.createCounter('edgeplane.agent.state_file_failures', { description: 'Failed writes of the state file after the datapath enforced a revision' });
    this.#healthApplyFailures = meter.createCounter('edgeplane.agent.health_apply_failures', { description: 'Failed re-applies of the revision in force after a backend health change (retried)' });
  }

  get status(): AgentStatus {
    return { received: this.#received, applied: this.#applied, applies: this.#applies, lastError: this.#lastError, appliedUnknown: this.#unknownRoles.size > 0, healthApplies: this.#healthApplies };
  }

  /** The newest ACK or NACK this agent sent (for the hello), or undefined before the first. */
  get lastReport(): RevisionReport | undefined {
    return this.#lastReport;
  }

  /** The conditions that hold now and whether the applied revision is unknown (for the hello and ConditionReport). */
  get conditions(): ConditionReport {
    return { conditions: [...this.#conditions.values()].map((c) => ({ ...c })), appliedUnknown: this.#unknownRoles.size > 0 };
  }

  /**
   * Raises (or updates) a condition the agent's owner observes (e.g. the follower's
   * rollback-refused or intent-stale); the controller hears the new set. Message bounded to MAX_CONDITION_MESSAGE_LENGTH.
   */
  raiseCondition(type: string, message: string, revision = 0n): void {
    this.#raise(type, message, revision);
  }

  /** Clears a condition raised with {@link NodeAgent.raiseCondition}; no-op if it does not hold. */
  clearCondition(type: string): void {
    this.#clear(type);
  }

  #raise(type: string, message: string, revision: bigint): void {
    const have = this.#conditions.get(type);
    const text = message.slice(0, MAX_CONDITION_MESSAGE_LENGTH);
    if (have && have.message === text && have.revision === revision) return;
    this.#conditions.set(type, { type, message: text, since: have?.since ?? new Date(), revision });
    this.#conditionsChanged();
  }

  #clear(type: string): void {
    if (this.#conditions.delete(type)) this.#conditionsChanged();
  }

  #conditionsChanged(): void {
    try {
      this.#o.conditions?.(this.conditions);
    } catch (err) {
      this.#o.log('error', 'condition listener', { error: (err as Error).message });
    }
  }

  /**
   * Enforces the state file's revision before anything else is reachable (fail-static boot).
   * Returns the snapshot it enforced, or undefined when there is no state file.
   */
  async boot(): Promise<Snapshot | undefined> {
    const state = this.#o.stateFile.read();
    if (!state) return undefined;
    const labels = this.#labels;
    const healthSeq = this.#healthSeq;
    const compiled = this.#compile(state.snapshot, labels);
    // Blocks that expired while the agent was down are left out (and stop matching anyway).
    this.#o.blocklist?.sync(state.snapshot, labels);
    // No flush: the first counter report after a start reads the datapath's totals, as it always did.
    await this.#applyCompiled(compiled, false);
    // The shadow candidate of the state file's revision (a pinned one of the same name is
    // adopted as it is, counters and all). Failing it costs only the shadow counters: logged.
    try {
      await this.#setShadow(compileShadow(state.snapshot, labels, this.#o.nodeName));
    } catch (err) {
      this.#o.log('warn', 'shadow candidate of the state file not installed', { revision: String(state.snapshot.revision), error: (err as Error).message });
    }
    this.#current = state.snapshot;
    this.#currentLabels = labels;
    this.#healthApplied = healthSeq;
    this.#applied = state.snapshot.revision;
    this.#received = state.snapshot.revision;
    this.#o.log('info', 'enforcing the state file', { revision: String(state.snapshot.revision), policies: compiled.selected, services: compiled.uplink.lb?.services.map((x) => x.name) ?? [] });
    this.#tellApplied(state.snapshot, labels);
    this.#checkHealthView();
    this.#reclaimAfter(this.#liveRules());
    return state.snapshot;
  }

  /** The whole snapshot compiled for this node with the health of now (the one compile of an apply). */
  #compile(snapshot: Snapshot, labels: Readonly<Record<string, string>>): CompiledIntent {
    return compileNode(snapshot, labels, { nodeName: this.#o.nodeName, cache: this.#tables, ...(this.#o.health ? { health: this.#o.health } : {}), ...(this.#o.routes ? { routes: this.#o.routes } : {}) });
  }

  /**
   * Tells the agent that a backend's health verdict changed (ServiceHealth.watch): the services
   * of the revision in force are compiled again with the new health and applied to the uplink
   * at once (after the coalescing wait, serialized with the log's applies), with no log entry
   * and no ACK/NACK: the revision does not change.
   */
  healthChanged(): void {
    this.#healthSeq++;
    // A new verdict is worth a try at once, even while a failed one waits for its retry.
    this.#healthBackoff = false;
    this.#kick();
  }

  /** Whether the live services were compiled with an older health than now, and not waiting for a retry. */
  #healthDue(): boolean {
    return this.#healthSeq !== this.#healthApplied && !this.#healthBackoff;
  }

  /**
   * After an apply: the health view may have moved under it without a change being told (the
   * health checks retarget after the apply, and a backend already probed for another service
   * takes that probe's verdict at once): compare the live services with the view, and schedule a
   * health re-apply when they differ.
   */
  #checkHealthView(): void {
    const health = this.#o.health;
    const lb = this.#live?.uplink.lb;
    if (!health || !lb) return;
    for (const s of lb.services) {
      for (const b of s.backends) {
        if (health(s.name, b.address, b.port) !== b.healthy) {
          this.healthChanged();
          return;
        }
      }
    }
  }

  #tellApplied(snapshot: Snapshot, labels: Readonly<Record<string, string>>): void {
    try {
      this.#o.applied?.(snapshot, labels);
    } catch (err) {
      this.#o.log('error', 'applied listener', { error: (err as Error).message });
    }
  }

  /** The labels policies select on now (a copy). */
  get labels(): Record<string, string> {
    return { ...this.#labels };
  }

  /**
   * Replaces the node's labels (the controller's, from a welcome) and, if they differ, compiles
   * the revision in force again for them and applies it at once (an ACK or NACK of that revision
   * follows, like any apply; a NACK keeps what the datapath enforced). Serialized with applies.
   * @returns true if the labels changed.
   */
  setLabels(labels: Record<string, string>): boolean {
    if (sameLabels(labels, this.#labels)) return false;
    this.#labels = { ...labels };
    this.#relabelDue = true;
    this.#kick();
    return true;
  }

  /** Called when the followed chain advanced; `entries` are the new ones, oldest first. */
  intentAdvanced(chain: IntentChain, entries: LogEntry[]): void {
    let context: Context | undefined;
    const links: Link[] = [...(this.#wanted?.links ?? [])];
    for (const e of entries) {
      context = extractTraceContext(e.traceContext?.traceparent ? { traceparent: e.traceContext.traceparent, tracestate: e.traceContext.tracestate } : undefined);
      tracer.startSpan('edgeplane.agent.receive', { attributes: { 'edgeplane.revision': Number(e.revision), 'edgeplane.node': this.#o.nodeName } }, context).end();
      const sc = trace.getSpanContext(context);
      if (sc) links.push({ context: sc, attributes: { 'edgeplane.revision': Number(e.revision) } });
    }
    this.#received = chain.revision;
    this.#advances++;
    const at = performance.now();
    const wait = this.#o.coalesceMs ?? 25;
    const quiet = at - this.#lastAdvanceAt >= wait && at - this.#lastRunEndAt >= wait;
    this.#lastAdvanceAt = at;
    // apply_duration runs from receipt of the newest entry to enforcement. A coalesced apply
    // is a child of the newest entry's trace and links to every entry it covers.
    // The follower only moves forward on one history; a chain that is not above what the node
    // enforces is another history (an operator's reset, a resync after a storage loss), which
    // must be applied even at the same or a lower revision.
    const force = (this.#wanted?.force ?? false) || chain.revision <= this.#applied;
    this.#wanted = { chain, context: context ?? this.#wanted?.context, receivedAt: process.hrtime.bigint(), links, force };
    this.#kick(quiet);
  }

  /** Starts the apply loop unless it runs; `leading`: after a quiet spell, without the coalescing wait. */
  #kick(leading = false): void {
    if (this.#running) return;
    const delay = this.#o.coalesceMs ?? 25;
    const cap = this.#o.coalesceMaxMs ?? 10 * delay;
    this.#running = (async () => {
      if (leading) await new Promise((r) => setImmediate(r));
      else {
        // Trailing: wait until no entry arrived for `delay`, at most `cap` after the first.
        const first = Date.now();
        for (;;) {
          const seen = this.#advances;
          await new Promise<void>((resolve) => {
            const timer = setTimeout(() => {
              this.#endWait = undefined;
              resolve();
            }, delay);
            this.#endWait = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          if (this.#closed || this.#advances === seen || Date.now() - first >= cap) break;
        }
      }
      for (;;) {
        if (this.#closed) return;
        if (this.#wanted && (this.#wanted.force || this.#wanted.chain.revision > this.#applied)) {
          const { chain, context, receivedAt, links } = this.#wanted;
          this.#wanted = undefined;
          // Compiled with the labels of now: a pending relabel is part of this apply.
          this.#relabelDue = false;
          await this.#reconcile(chain.snapshot(), context, receivedAt, links);
        } else if (this.#relabelDue) {
          this.#relabelDue = false;
          if (this.#current) await this.#reconcile(this.#current, undefined, process.hrtime.bigint(), []);
        } else if (this.#healthDue()) {
          // Before a repair: a health re-apply that takes also sets the uplink to a known state.
          await this.#reapplyHealth();
        } else if (this.#repairDue) {
          this.#repairDue = false;
          await this.#restoreKnown();
        } else return;
      }
    })().finally(() => {
      this.#running = undefined;
      this.#lastRunEndAt = performance.now();
      if (this.#closed) return;
      if ((this.#wanted && (this.#wanted.force || this.#wanted.chain.revision > this.#applied)) || this.#relabelDue || this.#repairDue || this.#healthDue()) this.#kick();
    });
  }

  /**
   * Compiles the services of the revision in force again, for the labels it was compiled with and
   * the health of now, and applies them with the uplink's live rule set (serialized with applies;
   * the revision, its report and the state file do not change). On failure the datapath keeps
   * the previous pair: the condition and the counter are raised and a retry is scheduled.
   */
  async #reapplyHealth(): Promise<void> {
    const seq = this.#healthSeq;
    const snapshot = this.#current;
    const live = this.#live;
    // Nothing enforced yet: the next apply compiles with the health of then.
    if (!snapshot || !live) return void (this.#healthApplied = seq);
    const revision = snapshot.revision;
    await tracer.startActiveSpan('edgeplane.agent.health_apply', { attributes: { 'edgeplane.revision': Number(revision), 'edgeplane.node': this.#o.nodeName } }, async (span) => {
      try {
        const lb = compileNodeServices(snapshot, this.#currentLabels, { nodeName: this.#o.nodeName, cache: this.#tables, ...(this.#o.health ? { health: this.#o.health } : {}), ...(this.#o.routes ? { routes: this.#o.routes } : {}) });
        const result = await this.#o.datapaths.uplink.apply(live.uplink.ruleSet, lb);
        this.#live = { ...live, uplink: { ruleSet: live.uplink.ruleSet, lb } };
        this.#healthApplied = seq;
        this.#healthApplies++;
        this.#healthRetry.reset();
        this.#clear(CONDITION_HEALTH_APPLY_FAILED);
        const unhealthy = lb.services.flatMap((x) => x.backends.filter((b) => !b.healthy).map((b) => `${x.name} ${b.key}`));
        this.#o.log('info', 'applied backend health', { revision: String(revision), mode: result.mode, services: lb.services.length, unhealthy });
        // The uplink now enforces a known pair again, whatever a failed rollback had left there.
        if (this.#unknownRoles.delete('uplink')) this.#unknownChanged(this.#applied);
      } catch (err) {
        const message = (err as Error).message;
        span.setStatus({ code: SpanStatusCode.ERROR, message });
        this.#healthApplyFailures.add(1, { 'edgeplane.node': this.#o.nodeName });
        this.#o.log('error', 'applying backend health failed; the datapath keeps the previous tables, retrying', { revision: String(revision), error: message });
        this.#raise(CONDITION_HEALTH_APPLY_FAILED, `backend health of revision ${revision} not applied: ${message}`, revision);
        this.#healthBackoff = true;
        if (!this.#closed)
          this.#healthRetry.schedule(() => {
            this.#healthBackoff = false;
            this.#kick();
          });
      } finally {
        span.end();
      }
    });
  }

  /** Sets every role of unknown state back to the last known revision's rule set (serialized with applies). */
  async #restoreKnown(): Promise<void> {
    if (this.#unknownRoles.size === 0) return;
    const known = this.#live ?? { uplink: UNCONFIGURED, workload: UNCONFIGURED };
    for (const role of [...this.#unknownRoles.keys()]) {
      try {
        await this.#o.datapaths[role].apply(known[role].ruleSet, known[role].lb);
        this.#unknownRoles.delete(role);
      } catch (err) {
        this.#unknownRoles.set(role, (err as Error).message);
      }
    }
    if (this.#unknownRoles.size === 0) this.#o.log('info', 'the datapath is back at a known revision', { revision: String(this.#applied) });
    else this.#o.log('warn', 'restoring a known revision failed; retrying', { revision: String(this.#applied), roles: Object.fromEntries(this.#unknownRoles) });
    this.#unknownChanged(this.#applied);
  }

  /** Raises or clears apply-rollback-failed to match the roles of unknown state; schedules their repair. */
  #unknownChanged(revision: bigint): void {
    if (this.#unknownRoles.size === 0) {
      this.#repair.reset();
      this.#clear(CONDITION_APPLY_ROLLBACK_FAILED);
      return;
    }
    const roles = [...this.#unknownRoles].map(([role, why]) => `${role} (${why})`).join(', ');
    const have = this.#conditions.get(CONDITION_APPLY_ROLLBACK_FAILED);
    this.#raise(CONDITION_APPLY_ROLLBACK_FAILED, `rollback failed; the datapath state of ${roles} is unknown; last known revision ${this.#applied}`, have?.revision ?? revision);
    if (!this.#closed)
      this.#repair.schedule(() => {
        this.#repairDue = true;
        this.#kick();
      });
  }

  /** Records the state durably; on failure raises state-file-failed and retries with backoff. */
  #save(state: AppliedState | undefined): void {
    if (state) this.#unsaved = state;
    const pending = this.#unsaved;
    if (!pending || this.#closed) return;
    try {
      this.#o.stateFile.write(pending);
      this.#unsaved = undefined;
      this.#stateRetry.reset();
      if (this.#conditions.has(CONDITION_STATE_FILE_FAILED)) this.#o.log('info', 'state file written', { revision: String(pending.snapshot.revision) });
      this.#clear(CONDITION_STATE_FILE_FAILED);
    } catch (err) {
      this.#stateFileFailures.add(1, { 'edgeplane.node': this.#o.nodeName });
      const message = (err as Error).message;
      this.#o.log('error', 'state file write failed; the datapath enforces the revision, retrying the write', { revision: String(pending.snapshot.revision), error: message });
      this.#raise(CONDITION_STATE_FILE_FAILED, `revision ${pending.snapshot.revision} is enforced but not recorded: ${message}`, pending.snapshot.revision);
      this.#stateRetry.schedule(() => this.#save(undefined));
    }
  }

  /** Stops the retries. Idempotent; the datapath keeps enforcing (it is the caller's). */
  close(): void {
    this.#closed = true;
    this.#repair.reset();
    this.#stateRetry.reset();
    this.#healthRetry.reset();
    clearTimeout(this.#reclaimDue);
    this.#reclaimDue = undefined;
    this.#endWait?.();
    this.#endWait = undefined;
  }

  /**
   * Makes a reclaim due when an apply handled a rule set of `rules` rules (the larger of before
   * and after): it runs once the agent has been quiet for `reclaimQuietMs`, checked when the
   * timer fires (an entry received or an apply running since puts it off by what is left).
   */
  #reclaimAfter(rules: number): void {
    if (!this.#o.reclaim || this.#closed || this.#reclaimDue) return;
    if (this.#reclaimedOnce && rules < (this.#o.reclaimMinRules ?? RECLAIM_MIN_RULES)) return;
    this.#reclaimedOnce = true;
    this.#armReclaim(this.#o.reclaimQuietMs ?? RECLAIM_QUIET_MS);
  }

  #armReclaim(ms: number): void {
    const timer = setTimeout(() => {
      this.#reclaimDue = undefined;
      if (this.#closed) return;
      const quiet = this.#o.reclaimQuietMs ?? RECLAIM_QUIET_MS;
      const since = performance.now() - Math.max(this.#lastAdvanceAt, this.#lastRunEndAt);
      if (this.#running || since < quiet) return this.#armReclaim(this.#running ? quiet : quiet - since);
      try {
        this.#o.reclaim?.();
      } catch (err) {
        this.#o.log('error', 'reclaim', { error: (err as Error).message });
      }
    }, ms);
    timer.unref();
    this.#reclaimDue = timer;
  }

  /** Rules of the larger live rule set (0 before the first apply). */
  #liveRules(): number {
    return Math.max(this.#live?.uplink.ruleSet.rules.length ?? 0, this.#live?.workload.ruleSet.rules.length ?? 0);
  }

  /** Resolves when no apply is running or waiting. */
  async settled(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #reconcile(snapshot: Snapshot, parent: Context | undefined, receivedAt: bigint, links: Link[]): Promise<void> {
    const revision = snapshot.revision;
    const attrs = { 'edgeplane.revision': Number(revision), 'edgeplane.node': this.#o.nodeName };
    const run = async <T>(name: string, fn: (span: Span) => Promise<T> | T): Promise<T> =>
      tracer.startActiveSpan(name, { attributes: attrs, links }, parent ?? context.active(), async (span) => {
        try {
          return await fn(span);
        } catch (err) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
          throw err;
        } finally {
          span.end();
        }
      });
    let enforcedAt = process.hrtime.bigint();
    const previousRevision = this.#applied;
    let report: RevisionReport;
    let saving: AppliedState | undefined;
    /** The most rules this apply handled: the live set before it, and what it compiled. */
    let handledRules = this.#liveRules();
    try {
      const labels = this.#labels;
      // The health this compile sees: a change told after it is re-applied afterwards.
      const healthSeq = this.#healthSeq;
      const compiled = await run('edgeplane.agent.compile', () => this.#compile(snapshot, labels));
      handledRules = Math.max(handledRules, compiled.uplink.ruleSet.rules.length, compiled.workload.ruleSet.rules.length);
      // A shadow candidate that does not compile, or that the datapath refuses, NACKs the
      // revision like its enforced rule sets would: nothing enforced changes.
      const shadow = compileShadow(snapshot, labels, this.#o.nodeName);
      if (this.#o.blocklist) await run('edgeplane.agent.blocklist', () => this.#o.blocklist!.sync(snapshot, labels));
      if (shadow) {
        await run('edgeplane.agent.shadow', (span) => {
          span.setAttribute('edgeplane.shadow.candidate', shadow.candidate);
          return this.#setShadow(shadow);
        });
      } else await this.#setShadow(undefined);
      const flushSwitched = await run('edgeplane.agent.apply', () => this.#applyCompiled(compiled));
      enforcedAt = process.hrtime.bigint();
      await run('edgeplane.agent.flush', flushSwitched);
      this.#applied = revision;
      this.#current = snapshot;
      this.#currentLabels = labels;
      this.#healthApplied = healthSeq;
      if (healthSeq === this.#healthSeq) {
        this.#healthRetry.reset();
        this.#clear(CONDITION_HEALTH_APPLY_FAILED);
      }
      this.#applies++;
      this.#lastError = '';
      this.#o.log('info', 'applied', { revision: String(revision), policies: compiled.selected, services: compiled.uplink.lb?.services.map((x) => x.name) ?? [], serviceTables: compiled.uplink.lb?.services.map((x) => `${x.name}:${x.m}`) ?? [], uplinkRules: compiled.uplink.ruleSet.rules.length, workloadRules: compiled.workload.ruleSet.rules.length });
      this.#unknownChanged(revision);
      this.#tellApplied(snapshot, labels);
      this.#checkHealthView();
      // The datapath enforces R whatever happens to the file: R is ACKed either way, and the file
      // is written after the ACK (a million-prefix list makes it tens of MB).
      saving = { snapshot, labels };
      report = { revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, reason: '', appliedRevision: revision, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false };
    } catch (err) {
      const unknown = this.#unknownRoles.size > 0;
      if (err instanceof RollbackError) {
        this.#rollbackFailures.add(1, { 'edgeplane.node': this.#o.nodeName });
        const apply = (err.cause as Error | undefined)?.message ?? 'unknown error';
        this.#lastError = `${CONDITION_APPLY_ROLLBACK_FAILED}: apply failed (${apply}) and ${err.message}; the datapath state is unknown, last known revision ${this.#applied}`;
        this.#o.log('error', 'rollback failed: the datapath state is unknown', { revision: String(revision), reason: this.#lastError });
      } else {
        this.#lastError = (err as Error).message;
        this.#o.log('warn', 'rejected', { revision: String(revision), reason: this.#lastError, enforcing: String(this.#applied), appliedUnknown: unknown });
      }
      this.#unknownChanged(revision);
      report = { revision, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: this.#lastError, appliedRevision: this.#applied, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: unknown };
    }
    // The outgoing rule sets' counts go before the ACK or NACK, under the revision enforced until the switch.
    this.#sendFlush(previousRevision);
    const nanos = enforcedAt - receivedAt;
    report.applyDuration = { seconds: nanos / 1_000_000_000n, nanos: Number(nanos % 1_000_000_000n) };
    await run('edgeplane.agent.ack', (span) => {
      span.setAttribute('edgeplane.outcome', report.outcome === RevisionOutcome.REVISION_OUTCOME_ACK ? 'ack' : 'nack');
      if (report.outcome === RevisionOutcome.REVISION_OUTCOME_NACK) span.setStatus({ code: SpanStatusCode.ERROR, message: report.reason });
      report.traceContext = injectTraceContext();
      this.#lastReport = report;
      this.#o.report(report);
    });
    if (saving) this.#save(saving);
    this.#reclaimAfter(handledRules);
  }

  /**
   * Makes each role's shadow candidate `shadow`'s (none: removes any). A candidate installed
   * already (same name and rule set) is left alone, so its counters keep counting; one of the
   * same name found in the datapath at the first call (pinned across an agent restart) is
   * adopted.
   * @throws what the datapath's setShadow throws (RuleSetError, CapacityError: nothing touched).
   */
  async #setShadow(shadow: ShadowCandidate | undefined): Promise<void> {
    for (const role of this.#roles()) {
      const dp = this.#o.datapaths[role];
      const have = this.#shadow[role];
      if (!shadow) {
        if (have || dp.readShadow() !== null) await dp.setShadow(null);
        delete this.#shadow[role];
        continue;
      }
      const c = shadow.compiled[role];
      // A list stands in the key by its array's identity (arrays are never changed once applied).
      const key = `${shadow.candidate}\u0000${JSON.stringify(c.ruleSet, (field, value: unknown) => (field === 'lists' ? listsKey(value as NonNullable<RuleSetSpec['lists']>) : value))}`;
      if (have?.key === key) continue;
      if (have || dp.readShadow()?.candidate !== shadow.candidate) await dp.setShadow(c.ruleSet, shadow.candidate);
      this.#shadow[role] = { candidate: shadow.candidate, key, origins: c.origins };
    }
  }

  /**
   * The shadow counters of every role's candidate, summed (one report per node), with rule ids
   * attributed to policy rules and at most MAX_SHADOW_SAMPLES samples (newest last); undefined
   * when no role shadows or they did not change since the last call.
   */
  #shadowReport(): ShadowReport | undefined {
    let report: ShadowReport | undefined;
    const rules = new Map<string, RuleCounters>();
    const seen = new Set<AgentDatapath>();
    for (const role of ROLES) {
      const dp = this.#o.datapaths[role];
      const mine = this.#shadow[role];
      if (seen.has(dp) || !mine) continue;
      seen.add(dp);
      let c: ShadowCounters | null;
      try {
        c = dp.readShadow();
      } catch (err) {
        this.#o.log('warn', 'read shadow counters', { role, error: (err as Error).message });
        continue;
      }
      if (!c || c.candidate !== mine.candidate) continue;
      report ??= { node: this.#o.nodeName, candidate: c.candidate, classified: 0n, wouldDrop: 0n, wouldAllow: 0n, defaultActionPackets: 0n, rules: [], samples: [] };
      report.classified += BigInt(c.classified.packets);
      report.wouldDrop += BigInt(c.wouldDrop.packets);
      report.wouldAllow += BigInt(c.wouldAllow.packets);
      report.defaultActionPackets += BigInt(c.defaultAction.packets);
      for (const [id, counter] of c.rules) {
        const origin = mine.origins.get(id);
        if (!origin || counter.packets === 0) continue;
        const k = `${origin.policy}\u0000${origin.priority}`;
        const have = rules.get(k) ?? { rule: { policy: origin.policy, priority: origin.priority }, ruleName: origin.ruleName, packets: 0n, bytes: 0n, rateLimitedPackets: 0n };
        have.packets += BigInt(counter.packets);
        have.bytes += BigInt(counter.bytes);
        rules.set(k, have);
      }
      for (const x of c.samples) {
        const enforced = this.#origins[role].get(x.enforcedRuleId);
        const candidate = mine.origins.get(x.candidateRuleId);
        const flow: ShadowFlow = {
          node: '',
          family: x.family,
          protocol: x.proto,
          source: x.src,
          destination: x.dst,
          port: x.port,
          verdict: x.verdict === 'wouldDrop' ? ShadowVerdict.SHADOW_VERDICT_WOULD_DROP : ShadowVerdict.SHADOW_VERDICT_WOULD_ALLOW,
          enforcedRule: enforced ? { policy: enforced.policy, priority: enforced.priority } : undefined,
          candidateRule: candidate ? { policy: candidate.policy, priority: candidate.priority } : undefined,
          candidateRuleName: candidate?.ruleName ?? '',
        };
        report.samples.push(flow);
      }
    }
    if (!report) {
      this.#lastShadow = '';
      return undefined;
    }
    report.rules = [...rules.values()].slice(0, MAX_COUNTER_RULES);
    report.samples = report.samples.slice(-MAX_SHADOW_SAMPLES);
    const key = `${report.candidate} ${report.classified} ${report.wouldDrop} ${report.wouldAllow}`;
    if (key === this.#lastShadow) return undefined;
    this.#lastShadow = key;
    return report;
  }

  /** The roles with a datapath of their own (one datapath serving both roles is applied once, as uplink). */
  #roles(): InterfaceRole[] {
    return this.#o.datapaths.uplink === this.#o.datapaths.workload ? ['uplink'] : ROLES;
  }

  /**
   * Applies both roles, or neither (the uplink's rule set with its services): a role switched
   * before a later one failed is switched back to the last known revision's pair (or to passing
   * everything with no services, before the first apply).
   * @throws the apply's error when every switched role is back; RollbackError (cause: the
   * apply's error) when some role could not be switched back: it is then in #unknownRoles.
   * @returns the flush of this apply's switches (a no-op without `flush`), for the caller to run
   * once the apply is enforced: it reads what the outgoing rule sets counted up to their switch
   * (the datapath keeps those counts by rule id) before a rule they had is forgotten, off the
   * path to enforcement (two counter reads per role: ~100 ms at 65,536 rules).
   */
  async #applyCompiled(compiled: CompiledIntent, flush = true): Promise<() => void> {
    const known = this.#live ?? { uplink: UNCONFIGURED, workload: UNCONFIGURED };
    const outgoing = this.#origins;
    const switched: InterfaceRole[] = [];
    this.#o.prepareUplink?.(compiled.uplink.lb);
    const moved: InterfaceRole[] = [];
    try {
      for (const role of this.#roles()) {
        const result = await this.#o.datapaths[role].apply(compiled[role].ruleSet, compiled[role].lb);
        switched.push(role);
        if (result.mode !== 'unchanged') moved.push(role);
      }
    } catch (err) {
      const failed = new Map<InterfaceRole, string>();
      for (const role of switched) {
        try {
          const result = await this.#o.datapaths[role].apply(known[role].ruleSet, known[role].lb);
          // Since the last read the role counted under `known` (up to the first switch), then
          // under `compiled`, and now `known` again.
          if (flush && result.mode !== 'unchanged') this.#flushRole(role, { ruleSet: compiled[role].ruleSet, origins: compiled[role].origins, incoming: { ruleSet: known[role].ruleSet, origins: outgoing[role] } });
          this.#unknownRoles.delete(role);
        } catch (rollbackErr) {
          failed.set(role, (rollbackErr as Error).message);
          this.#unknownRoles.set(role, (rollbackErr as Error).message);
        }
      }
      // The uplink enforces the previous services again (or never left them).
      if (!failed.has('uplink')) this.#o.prepareUplink?.(known.uplink.lb);
      if (failed.size) throw new RollbackError(`roll back ${[...failed].map(([role, why]) => `${role}: ${why}`).join('; ')}`, failed, { cause: err });
      throw err;
    }
    this.#unknownRoles.clear();
    this.#replaced = { uplink: { ruleSet: known.uplink.ruleSet, origins: outgoing.uplink }, workload: { ruleSet: known.workload.ruleSet, origins: outgoing.workload } };
    this.#live = { uplink: pairOf(compiled.uplink), workload: pairOf(compiled.workload) };
    this.#origins = { uplink: compiled.uplink.origins, workload: compiled.workload.origins };
    return () => {
      if (flush) for (const role of moved) this.#flushRole(role, { ruleSet: known[role].ruleSet, origins: outgoing[role], incoming: compiled[role] });
    };
  }

  /**
   * `role`'s connection-table occupancy, re-read at most every OCCUPANCY_MIN_MS and paced by the
   * read's cost (OCCUPANCY_COST_FACTOR); the newest reading in between. Undefined if it was
   * never read successfully.
   */
  #occupancy(role: InterfaceRole, dp: Datapath, nowMs: number): ConntrackOccupancy | undefined {
    const have = this.#occupancyRead[role];
    if (have && nowMs - have.at < have.waitMs) return have.value;
    try {
      const started = performance.now();
      const value = dp.readConntrackOccupancy();
      const costMs = performance.now() - started;
      this.#occupancyRead[role] = { at: nowMs, value, waitMs: Math.max(OCCUPANCY_MIN_MS, costMs * OCCUPANCY_COST_FACTOR) };
      return value;
    } catch (err) {
      this.#o.log('warn', 'read conntrack occupancy', { role, error: (err as Error).message });
      return have?.value;
    }
  }

  /** The policy rule a rule id of `role`'s live rule set came from (undefined for ids it does not have). */
  ruleOrigin(role: InterfaceRole, ruleId: number): RuleOrigin | undefined {
    return this.#origins[role].get(ruleId);
  }

  /**
   * Counter deltas since the previous call (or the latest flush at a switch), attributed to
   * policy rules, with the connection tables' status (as it is now) when it changed since the
   * last report; undefined when nothing moved. While a flush could not be sent
   * ({@link NodeAgentOptions.flushCounters} false), that flush is returned alone first.
   */
  counterDeltas(): CounterReport | undefined {
    const held = this.#unsentFlush;
    if (held) {
      this.#unsentFlush = undefined;
      return held;
    }
    const now = new Date();
    const acc: CounterAccumulator = { rules: new Map(), interfaces: [], moved: false };
    const conntrack: ConntrackStatus[] = [];
    const blocklists: BlocklistStatus[] = [];
    const seen = new Set<Datapath>();
    for (const role of ROLES) {
      const dp = this.#o.datapaths[role];
      if (seen.has(dp)) continue;
      seen.add(dp);
      const current = this.#collect(role, acc, { ruleSet: this.#live?.[role].ruleSet, origins: this.#origins[role] });
      if (!current) continue;
      // Only a datapath with connection tables (it says their capacity) reports them: a memory
      // datapath's zeros would be a dozen metric series per simulated node for nothing.
      const capacity = 'conntrackCapacity' in dp ? (dp.conntrackCapacity as ConntrackOccupancy) : undefined;
      const occupancy = capacity ? this.#occupancy(role, dp, now.getTime()) : undefined;
      if (occupancy) conntrack.push(conntrackStatus(role, current.conntrack, occupancy, capacity));
      const blocklist = blocklistOf(dp);
      if (blocklist) {
        try {
          blocklists.push(readBlocklistStatus(role, blocklist));
        } catch (err) {
          this.#o.log('warn', 'read blocklist counters', { role, error: (err as Error).message });
        }
      }
    }
    const start = this.#lastCountersAt;
    this.#lastCountersAt = now;
    // Occupancy is a level, not a delta: sent whenever it (or a conntrack count) changed.
    const ctKey = JSON.stringify(conntrack, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    const ctChanged = conntrack.length > 0 && ctKey !== this.#lastConntrack;
    // The load balancer's counters (the uplink's datapath): totals, sent whenever they changed.
    const lb = loadBalancerStatus(this.#lastCounters.uplink?.lb);
    const lbKey = lb === undefined ? '' : LB_STAT_NAMES.map((n) => String(lb[n])).join(',');
    const lbChanged = lbKey !== this.#lastLb;
    // The blocklists' sizes and drops: levels and totals, sent whenever they changed.
    const blkKey = blocklists.map((b) => [b.role, b.ipv4Entries, b.ipv6Entries, b.ipv4DroppedPackets, b.ipv4DroppedBytes, b.ipv6DroppedPackets, b.ipv6DroppedBytes].join(',')).join(';');
    const blkChanged = blkKey !== this.#lastBlocklists;
    // The shadow candidate's counters: totals, sent whenever they changed (and once for a new candidate).
    const shadow = this.#shadowReport();
    if (!acc.moved && !ctChanged && !lbChanged && !blkChanged && !shadow) return undefined;
    this.#lastConntrack = ctKey;
    this.#lastLb = lbKey;
    this.#lastBlocklists = blkKey;
    return { startTime: start, endTime: now, rules: [...acc.rules.values()], interfaces: acc.moved ? acc.interfaces : [], appliedRevision: this.#applied, conntrack, loadBalancer: lbChanged ? lb : undefined, shadow, blocklists: blkChanged ? blocklists : [] };
  }

  /**
   * Reads `role`'s datapath and adds what it counted since the previous read into `acc`,
   * attributed to `enforced` (the rule set that counted it and its rule origins; a rule it does
   * not have, to the rule set before it). @returns the counters read, undefined when unreadable.
   */
  #collect(role: InterfaceRole, acc: CounterAccumulator, enforced: Attribution): DatapathCounters | undefined {
    let current: DatapathCounters;
    try {
      current = this.#o.datapaths[role].readCounters();
    } catch (err) {
      this.#o.log('warn', 'read counters', { role, error: (err as Error).message });
      return undefined;
    }
    const before = this.#lastCounters[role];
    this.#lastCounters[role] = current;
    const earlier = this.#replaced[role];
    const iface: InterfaceCounters = { interface: role, passedPackets: 0n, droppedPackets: 0n, passedBytes: 0n, droppedBytes: 0n, defaultActionPackets: 0n, nonIpPackets: 0n, malformedPackets: 0n };
    // Removed rules' counts (retired) up to the switch come after the live ones.
    eachMoved(current, before, (id, packets, bytes) => {
      acc.moved = true;
      const own = enforced.origins.get(id);
      const origin = own ?? earlier?.origins.get(id) ?? enforced.incoming?.origins.get(id);
      if (!origin) return;
      const k = `${origin.policy}\u0000${origin.priority}`;
      const have = acc.rules.get(k) ?? { rule: { policy: origin.policy, priority: origin.priority }, ruleName: origin.ruleName, packets: 0n, bytes: 0n, rateLimitedPackets: 0n };
      have.packets += BigInt(packets);
      have.bytes += BigInt(bytes);
      acc.rules.set(k, have);
      const from = own ? enforced.ruleSet : earlier?.origins.has(id) ? earlier.ruleSet : enforced.incoming?.ruleSet;
      const dropped = from !== undefined && actionOf(from, id) === 'deny';
      if (dropped) {
        iface.droppedPackets += BigInt(packets);
        iface.droppedBytes += BigInt(bytes);
      } else {
        iface.passedPackets += BigInt(packets);
        iface.passedBytes += BigInt(bytes);
      }
    });
    const def = sub(current.defaultAction, before?.defaultAction);
    const limited = sub(current.rateLimited, before?.rateLimited);
    const nonIp = sub(current.nonIp, before?.nonIp);
    const malformed = sub(current.malformed, before?.malformed);
    if (def.packets || limited.packets || nonIp.packets || malformed.packets) acc.moved = true;
    iface.defaultActionPackets = BigInt(def.packets);
    if (enforced.ruleSet?.defaultAction === 'deny') {
      iface.droppedPackets += BigInt(def.packets);
      iface.droppedBytes += BigInt(def.bytes);
    } else {
      iface.passedPackets += BigInt(def.packets);
      iface.passedBytes += BigInt(def.bytes);
    }
    // Rate-limited packets were counted as passed under their rule: move them to dropped.
    iface.passedPackets -= BigInt(limited.packets);
    iface.droppedPackets += BigInt(limited.packets);
    iface.passedBytes -= BigInt(limited.bytes);
    iface.droppedBytes += BigInt(limited.bytes);
    iface.nonIpPackets = BigInt(nonIp.packets);
    iface.malformedPackets = BigInt(malformed.packets);
    iface.droppedPackets += BigInt(malformed.packets);
    acc.interfaces.push(iface);
    return current;
  }

  /**
   * Right after `role`'s datapath switched from `outgoing`: reads what it counted since the
   * previous read, attributed to the outgoing rule set (its verdicts decided those packets), into
   * the flush of this apply.
   */
  #flushRole(role: InterfaceRole, outgoing: Attribution): void {
    this.#flush ??= { rules: new Map(), interfaces: [], moved: false };
    this.#collect(role, this.#flush, outgoing);
  }

  /**
   * Sends the counts flushed at this apply's switches (NodeAgentOptions.flushCounters) under the
   * revision enforced until then, before the apply's ACK or NACK: every later report counts only
   * packets the new rule sets decided. Kept for the next counterDeltas() when it cannot be sent.
   */
  #sendFlush(appliedRevision: bigint): void {
    const acc = this.#flush;
    this.#flush = undefined;
    if (!acc?.moved) return;
    const now = new Date();
    const report: CounterReport = { startTime: this.#lastCountersAt, endTime: now, rules: [...acc.rules.values()], interfaces: acc.interfaces, appliedRevision, conntrack: [], loadBalancer: undefined, shadow: undefined, blocklists: [] };
    this.#lastCountersAt = now;
    let sent = false;
    try {
      sent = this.#o.flushCounters?.(report) ?? false;
    } catch (err) {
      this.#o.log('error', 'flush counters', { error: (err as Error).message });
    }
    if (!sent) this.#unsentFlush = this.#unsentFlush ? mergeReports(this.#unsentFlush, report) : report;
  }
}

/** A counter report being built: rule deltas by policy and priority, one interface entry per role read. */
interface CounterAccumulator {
  rules: Map<string, RuleCounters>;
  interfaces: InterfaceCounters[];
  moved: boolean;
}

/** The rule set that counted packets, and the policy rules its ids came from. */
interface Attribution {
  ruleSet: RuleSetSpec | undefined;
  origins: ReadonlyMap<number, RuleOrigin>;
  /**
   * A flush's rule set switched to: rules only it has counted between the switch and the read
   * (read after every role switched), attributed to it rather than lost.
   */
  incoming?: { ruleSet: RuleSetSpec | undefined; origins: ReadonlyMap<number, RuleOrigin> };
}

/** Two counter reports of one node as one (sums; `later`'s revision and end). */
function mergeReports(earlier: CounterReport, later: CounterReport): CounterReport {
  const rules = new Map<string, RuleCounters>();
  for (const c of [...earlier.rules, ...later.rules]) {
    const k = `${c.rule?.policy ?? ''}\u0000${c.rule?.priority ?? 0}`;
    const have = rules.get(k);
    if (!have) rules.set(k, { ...c });
    else {
      have.packets += c.packets;
      have.bytes += c.bytes;
      have.rateLimitedPackets += c.rateLimitedPackets;
    }
  }
  const interfaces = new Map<string, InterfaceCounters>();
  for (const c of [...earlier.interfaces, ...later.interfaces]) {
    const have = interfaces.get(c.interface);
    if (!have) interfaces.set(c.interface, { ...c });
    else for (const f of ['passedPackets', 'droppedPackets', 'passedBytes', 'droppedBytes', 'defaultActionPackets', 'nonIpPackets', 'malformedPackets'] as const) have[f] += c[f];
  }
  return { ...later, startTime: earlier.startTime, rules: [...rules.values()], interfaces: [...interfaces.values()] };
}

/** The report's form of a datapath's load-balancer counters (packets); undefined when it keeps none or counted nothing. */
function loadBalancerStatus(lb: LbCounters | undefined): LoadBalancerStatus | undefined {
  if (lb === undefined || LB_STAT_NAMES.every((n) => lb[n].packets === 0)) return undefined;
  return Object.fromEntries(LB_STAT_NAMES.map((n) => [n, BigInt(lb[n].packets)])) as unknown as LoadBalancerStatus;
}

const listIds = new WeakMap<readonly string[], number>();
let nextListId = 0;

/** A rule set's lists as names and array identities: equal keys, the same prefixes. */
function listsKey(lists: NonNullable<RuleSetSpec['lists']>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, prefixes] of Object.entries(lists)) {
    let id = listIds.get(prefixes);
    if (id === undefined) listIds.set(prefixes, (id = nextListId++));
    out[name] = id;
  }
  return out;
}
