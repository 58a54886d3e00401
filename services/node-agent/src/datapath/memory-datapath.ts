import { connectionMatcher, encodeControlEndpoints, ZERO_CONNTRACK_COUNTERS, type ConnectionEntry, type ConnectionFilter, type ConntrackOccupancy, type ControlEndpoint } from './conntrack.js';
import type { ApplyResult, Counter, Datapath, DatapathCounters } from './datapath.js';
import { ReferenceClassifier } from './reference-classifier.js';
import type { LbSpec } from './service-compile.js';
import { DEFAULT_RULE_ID, validateRuleSet, type Classification, type RuleSetSpec } from './rule-set.js';

const ZERO: Counter = { packets: 0, bytes: 0 };

/**
 * A datapath in memory, with the eBPF datapath's semantics (the reference classifier), for
 * simulated fleets: many agents in one process, no kernel. Frames reach it only through
 * {@link MemoryDatapath.classify}. It has no connection table: classify() is stateless, the
 * conntrack counters stay zero and listConnections() returns nothing (the control endpoints are
 * validated and kept, for inspection). Holds no resources; close() only marks it closed.
 */
export class MemoryDatapath implements Datapath {
  #classifier: ReferenceClassifier | undefined;
  #live: string | undefined;
  #ruleIds: number[] = [];
  #generation = 0;
  #closed = false;
  #fault: ((ruleSet: RuleSetSpec) => Error | undefined) | undefined;
  #controlEndpoints: readonly ControlEndpoint[] = [];

  /**
   * Fault injection for tests: before every apply `fault` is asked, and an error it returns is
   * thrown with nothing changed (as the eBPF datapath fails: the previous rule set stays).
   * undefined removes it.
   */
  injectApplyFault(fault: ((ruleSet: RuleSetSpec) => Error | undefined) | undefined): void {
    this.#fault = fault;
  }

  /** The rule set in force (undefined before the first apply). */
  get ruleSet(): RuleSetSpec | undefined {
    return this.#live === undefined ? undefined : (JSON.parse(this.#live) as RuleSetSpec);
  }

  /** Validates and switches to `ruleSet`. @throws RuleSetError, CapacityError, an injected fault (nothing changed). */
  async apply(ruleSet: RuleSetSpec, lb?: LbSpec): Promise<ApplyResult> {
    if (this.#closed) throw new Error('apply: the memory datapath is closed');
    const fault = this.#fault?.(ruleSet);
    if (fault) throw fault;
    const normalized = validateRuleSet(ruleSet);
    const key = JSON.stringify(ruleSet);
    const result = (mode: ApplyResult['mode']): ApplyResult => ({ generation: this.#generation, mode, ruleCount: normalized.rules.length, classCount: 0, lpmEntries: 0, classWords: 0, services: lb?.services.length ?? 0 });
    if (key === this.#live) return result('unchanged');
    if (this.#classifier) this.#classifier.replace(ruleSet);
    else this.#classifier = new ReferenceClassifier(ruleSet);
    this.#live = key;
    this.#ruleIds = normalized.rules.map((r) => r.id);
    this.#generation ^= 1;
    return result('installed');
  }

  /** Classifies a frame as the live rule set says (passes everything before the first apply). */
  classify(frame: Uint8Array): Classification | { kind: 'unconfigured'; verdict: 'pass' } {
    return this.#classifier ? this.#classifier.classify(frame) : { kind: 'unconfigured', verdict: 'pass' };
  }

  readCounters(): DatapathCounters {
    const counters = this.#classifier?.counters();
    const stats = this.#classifier?.stats();
    const rules = new Map<number, Counter>(this.#ruleIds.map((id) => [id, { ...(counters?.get(id) ?? ZERO) }]));
    return {
      rules,
      defaultAction: { ...(counters?.get(DEFAULT_RULE_ID) ?? ZERO) },
      nonIp: { ...(stats?.nonIp ?? ZERO) },
      malformed: { ...(stats?.malformed ?? ZERO) },
      unconfigured: ZERO,
      rateLimited: { ...(stats?.rateLimited ?? ZERO) },
      conntrack: ZERO_CONNTRACK_COUNTERS,
    };
  }

  /** Always empty: the memory datapath tracks no connections. */
  readConntrackOccupancy(): ConntrackOccupancy {
    return { established: 0, new: 0 };
  }

  /** Validates `filter` and `limit` as the eBPF datapath does. @returns []. @throws ConntrackInputError. */
  listConnections(filter: ConnectionFilter, limit: number): ConnectionEntry[] {
    connectionMatcher(filter, limit);
    return [];
  }

  /** Validates and keeps the endpoints (see controlEndpoints). @throws ConntrackInputError (nothing changed). */
  setControlEndpoints(endpoints: readonly ControlEndpoint[]): void {
    encodeControlEndpoints(endpoints);
    this.#controlEndpoints = endpoints.map((endpoint) => ({ ...endpoint }));
  }

  /** The endpoints of the last setControlEndpoints() (copies). */
  get controlEndpoints(): readonly ControlEndpoint[] {
    return this.#controlEndpoints.map((endpoint) => ({ ...endpoint }));
  }

  close(): void {
    this.#closed = true;
  }
}
