import { SpanStatusCode, context, trace, type Context, type Link, type Span } from '@opentelemetry/api';
import {
  RevisionOutcome,
  type CounterReport,
  type InterfaceCounters,
  type LogEntry,
  type RevisionReport,
  type RuleCounters,
  type Snapshot,
} from '@edgeplane/proto';
import type { IntentChain } from '@edgeplane/intent-log';
import { extractTraceContext, injectTraceContext } from '@edgeplane/telemetry';
import type { Counter, Datapath, DatapathCounters } from '../datapath/datapath.js';
import type { InterfaceRole } from '../datapath/interface-role.js';
import type { RuleSetSpec } from '../datapath/rule-set.js';
import { compileIntent, type CompiledIntent, type RuleOrigin } from './compile.js';
import type { StateFile } from './state-file.js';

const tracer = trace.getTracer('@edgeplane/node-agent');
const ROLES: InterfaceRole[] = ['uplink', 'workload'];

/** A structured log line sink. */
export type AgentLogger = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

/** Options of {@link NodeAgent}. */
export interface NodeAgentOptions {
  nodeName: string;
  labels: Record<string, string>;
  /** The datapath enforcing each interface role (may be the same object for both). */
  datapaths: Record<InterfaceRole, Datapath>;
  stateFile: StateFile;
  /** Where ACK/NACK reports go (the controller link). */
  report: (report: RevisionReport) => void;
  log: AgentLogger;
  /**
   * How long to wait after new entries before applying, so a burst (a catch-up, or what TCP
   * delivers at once after an outage) is applied once, as its final state. Default 25 ms.
   */
  coalesceMs?: number;
}

/** How the agent stands: what it has received and what it enforces. */
export interface AgentStatus {
  received: bigint;
  applied: bigint;
  applies: number;
  lastError: string;
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
 */
export class NodeAgent {
  #o: NodeAgentOptions;
  #received = 0n;
  #applied = 0n;
  #applies = 0;
  #lastError = '';
  #live: Record<InterfaceRole, RuleSetSpec> | undefined;
  #origins: Record<InterfaceRole, Map<number, RuleOrigin>> = { uplink: new Map(), workload: new Map() };
  #running: Promise<void> | undefined;
  #wanted: { chain: IntentChain; context: Context | undefined; receivedAt: bigint; links: Link[] } | undefined;
  #lastCounters: Partial<Record<InterfaceRole, DatapathCounters>> = {};
  #lastCountersAt = new Date();

  constructor(options: NodeAgentOptions) {
    this.#o = options;
  }

  get status(): AgentStatus {
    return { received: this.#received, applied: this.#applied, applies: this.#applies, lastError: this.#lastError };
  }

  /**
   * Enforces the state file's revision before anything else is reachable (fail-static boot).
   * Returns the snapshot it enforced, or undefined when there is no state file.
   */
  async boot(): Promise<Snapshot | undefined> {
    const state = this.#o.stateFile.read();
    if (!state) return undefined;
    const compiled = compileIntent(state.snapshot.policies, this.#o.labels, state.snapshot.rollouts, this.#o.nodeName);
    await this.#applyCompiled(compiled);
    this.#applied = state.snapshot.revision;
    this.#received = state.snapshot.revision;
    this.#o.log('info', 'enforcing the state file', { revision: String(state.snapshot.revision), policies: compiled.selected });
    return state.snapshot;
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
    // apply_duration runs from receipt of the newest entry to enforcement. A coalesced apply
    // is a child of the newest entry's trace and links to every entry it covers.
    this.#wanted = { chain, context: context ?? this.#wanted?.context, receivedAt: process.hrtime.bigint(), links };
    this.#kick();
  }

  #kick(): void {
    if (this.#running) return;
    const delay = this.#o.coalesceMs ?? 25;
    this.#running = (async () => {
      await new Promise((r) => setTimeout(r, delay));
      while (this.#wanted && this.#wanted.chain.revision > this.#applied) {
        const { chain, context, receivedAt, links } = this.#wanted;
        this.#wanted = undefined;
        await this.#reconcile(chain, context, receivedAt, links);
      }
    })().finally(() => {
      this.#running = undefined;
      if (this.#wanted && this.#wanted.chain.revision > this.#applied) this.#kick();
    });
  }

  /** Resolves when no apply is running or waiting. */
  async settled(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #reconcile(chain: IntentChain, parent: Context | undefined, receivedAt: bigint, links: Link[]): Promise<void> {
    const revision = chain.revision;
    const snapshot = chain.snapshot();
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
    let report: RevisionReport;
    try {
      const compiled = await run('edgeplane.agent.compile', () => compileIntent(snapshot.policies, this.#o.labels, snapshot.rollouts, this.#o.nodeName));
      await run('edgeplane.agent.apply', () => this.#applyCompiled(compiled));
      enforcedAt = process.hrtime.bigint();
      this.#applied = revision;
      this.#applies++;
      this.#lastError = '';
      this.#o.stateFile.write({ snapshot, labels: this.#o.labels });
      this.#o.log('info', 'applied', { revision: String(revision), policies: compiled.selected, uplinkRules: compiled.uplink.ruleSet.rules.length, workloadRules: compiled.workload.ruleSet.rules.length });
      report = { revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, reason: '', appliedRevision: revision, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false };
    } catch (err) {
      this.#lastError = (err as Error).message;
      this.#o.log('warn', 'rejected', { revision: String(revision), reason: this.#lastError, enforcing: String(this.#applied) });
      report = { revision, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: this.#lastError, appliedRevision: this.#applied, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false };
    }
    const nanos = enforcedAt - receivedAt;
    report.applyDuration = { seconds: nanos / 1_000_000_000n, nanos: Number(nanos % 1_000_000_000n) };
    await run('edgeplane.agent.ack', (span) => {
      span.setAttribute('edgeplane.outcome', report.outcome === RevisionOutcome.REVISION_OUTCOME_ACK ? 'ack' : 'nack');
      if (report.outcome === RevisionOutcome.REVISION_OUTCOME_NACK) span.setStatus({ code: SpanStatusCode.ERROR, message: report.reason });
      report.traceContext = injectTraceContext();
      this.#o.report(report);
    });
  }

  /** Applies both roles, or neither: a role switched before a later one failed is switched back. */
  async #applyCompiled(compiled: CompiledIntent): Promise<void> {
    const done: InterfaceRole[] = [];
    const seen = new Set<Datapath>();
    try {
      for (const role of ROLES) {
        const dp = this.#o.datapaths[role];
        if (seen.has(dp) && role === 'workload') continue;
        seen.add(dp);
        await dp.apply(compiled[role].ruleSet);
        done.push(role);
      }
    } catch (err) {
      if (this.#live) for (const role of done) await this.#o.datapaths[role].apply(this.#live[role]).catch(() => undefined);
      throw err;
    }
    this.#live = { uplink: compiled.uplink.ruleSet, workload: compiled.workload.ruleSet };
    this.#origins = { uplink: compiled.uplink.origins, workload: compiled.workload.origins };
  }

  /** Counter deltas since the previous call, attributed to policy rules; undefined when nothing moved. */
  counterDeltas(): CounterReport | undefined {
    const now = new Date();
    const rules = new Map<string, RuleCounters>();
    const interfaces: InterfaceCounters[] = [];
    let moved = false;
    const seen = new Set<Datapath>();
    for (const role of ROLES) {
      const dp = this.#o.datapaths[role];
      if (seen.has(dp)) continue;
      seen.add(dp);
      let current: DatapathCounters;
      try {
        current = dp.readCounters();
      } catch (err) {
        this.#o.log('warn', 'read counters', { role, error: (err as Error).message });
        continue;
      }
      const before = this.#lastCounters[role];
      this.#lastCounters[role] = current;
      const live = this.#live?.[role];
      const actions = new Map(live?.rules.map((r) => [r.id, r.action]) ?? []);
      const iface: InterfaceCounters = { interface: role, passedPackets: 0n, droppedPackets: 0n, passedBytes: 0n, droppedBytes: 0n, defaultActionPackets: 0n, nonIpPackets: 0n, malformedPackets: 0n };
      for (const [id, c] of current.rules) {
        const d = sub(c, before?.rules.get(id));
        if (d.packets <= 0) continue;
        moved = true;
        const origin = this.#origins[role].get(id);
        if (!origin) continue;
        const k = `${origin.policy}\u0000${origin.priority}`;
        const have = rules.get(k) ?? { rule: { policy: origin.policy, priority: origin.priority }, ruleName: origin.ruleName, packets: 0n, bytes: 0n, rateLimitedPackets: 0n };
        have.packets += BigInt(d.packets);
        have.bytes += BigInt(d.bytes);
        rules.set(k, have);
        const dropped = actions.get(id) === 'deny';
        if (dropped) {
          iface.droppedPackets += BigInt(d.packets);
          iface.droppedBytes += BigInt(d.bytes);
        } else {
          iface.passedPackets += BigInt(d.packets);
          iface.passedBytes += BigInt(d.bytes);
        }
      }
      const def = sub(current.defaultAction, before?.defaultAction);
      const limited = sub(current.rateLimited, before?.rateLimited);
      const nonIp = sub(current.nonIp, before?.nonIp);
      const malformed = sub(current.malformed, before?.malformed);
      if (def.packets || limited.packets || nonIp.packets || malformed.packets) moved = true;
      iface.defaultActionPackets = BigInt(def.packets);
      if (live?.defaultAction === 'deny') {
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
      interfaces.push(iface);
    }
    const start = this.#lastCountersAt;
    this.#lastCountersAt = now;
    if (!moved) return undefined;
    return { startTime: start, endTime: now, rules: [...rules.values()], interfaces, appliedRevision: this.#applied };
  }
}
