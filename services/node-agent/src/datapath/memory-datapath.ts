import { formatAddress, MAX_SHADOW_SAMPLES } from '@edgeplane/proto';
import { connectionMatcher, encodeControlEndpoints, ZERO_CONNTRACK_COUNTERS, type ConnectionEntry, type ConnectionFilter, type ConntrackOccupancy, type ControlEndpoint } from './conntrack.js';
import type { ApplyResult, Counter, Datapath, DatapathCounters, ShadowCounters, ShadowDatapath, ShadowSample } from './datapath.js';
import type { FlowTuple } from './flow-hash.js';
import { LbReference, type LbSelection } from './lb-reference.js';
import { DEFAULT_LB_CAPACITY, layoutLbTables, type LbCapacity, type LbTablesSpec } from './lb-tables.js';
import { parseFrame, ReferenceClassifier } from './reference-classifier.js';
import type { LbSpec } from './service-compile.js';
import { DEFAULT_RULE_ID, validateRuleSet, type Classification, type RuleSetSpec } from './rule-set.js';

const ZERO: Counter = { packets: 0, bytes: 0 };
const NO_SERVICES: LbSpec = { services: [] };

/** One generation of LB tables with no services, ready to compare and select from (read only). */
interface EmptyLb {
  readonly tables: LbTablesSpec;
  readonly fingerprint: string;
  readonly reference: LbReference;
}

/**
 * The tables of no services, per capacity and generation, laid out once per process: most
 * applies carry no services, and a simulated fleet's hundreds of datapaths per process would
 * otherwise lay out, hash and index the same empty generation on every apply. Read only (the
 * datapath never writes its tables; LbReference only reads them).
 */
const emptyLbs = new WeakMap<LbCapacity, [EmptyLb | undefined, EmptyLb | undefined]>();

function emptyLb(capacity: LbCapacity, gen: 0 | 1): EmptyLb {
  let both = emptyLbs.get(capacity);
  if (both === undefined) emptyLbs.set(capacity, (both = [undefined, undefined]));
  let made = both[gen];
  if (made === undefined) {
    const tables = layoutLbTables(NO_SERVICES, capacity, gen);
    both[gen] = made = { tables, fingerprint: Buffer.from(tables.fingerprint).toString('hex'), reference: new LbReference(tables) };
  }
  return made;
}

/** Options of {@link MemoryDatapath}. */
export interface MemoryDatapathOptions {
  /**
   * What one generation of its load-balancing tables holds, as EbpfDatapathOptions.lbCapacity
   * (the agent's `--lb-*` flags): a spec that does not fit is refused with the same
   * CapacityError. Default DEFAULT_LB_CAPACITY.
   */
  lbCapacity?: LbCapacity;
}

/**
 * A datapath in memory, with the eBPF datapath's semantics (the reference classifier), for
 * simulated fleets: many agents in one process, no kernel. Frames reach it only through
 * {@link MemoryDatapath.classify}. It has no connection table: classify() is stateless, the
 * conntrack counters stay zero and listConnections() returns nothing (the control endpoints are
 * validated and kept, for inspection). Services (the LbSpec beside the rule set) are laid out
 * as one generation of bpf/LB.md's maps with layoutLbTables, as the eBPF datapath writes them,
 * and {@link MemoryDatapath.selectBackend} answers from those bytes with LbReference, the
 * datapath's own selection. A shadow candidate (ShadowDatapath, issue 18) is a second reference
 * classifier that classify() consults after the live one, counting where their verdicts differ.
 * Holds no resources; close() only marks it closed.
 */
export class MemoryDatapath implements Datapath, ShadowDatapath {
  #classifier: ReferenceClassifier | undefined;
  /** The shadow candidate (setShadow): its classifier, rule ids and what it counted. */
  #shadow: { classifier: ReferenceClassifier; candidate: string; ruleIds: number[]; wouldDrop: Counter; wouldAllow: Counter; classified: Counter; samples: ShadowSample[] } | undefined;
  /** The live rule set (JSON) and the live LB tables' fingerprint (hex): what 'unchanged' compares. */
  #live: string | undefined;
  #liveLb = '';
  #lb: LbSpec | undefined;
  #lbReference: LbReference | undefined;
  readonly #lbCapacity: LbCapacity;
  #ruleIds: number[] = [];
  #generation = 0;
  #closed = false;
  #fault: ((ruleSet: RuleSetSpec, lb: LbSpec | undefined) => Error | undefined) | undefined;
  #controlEndpoints: readonly ControlEndpoint[] = [];

  constructor(options: MemoryDatapathOptions = {}) {
    this.#lbCapacity = options.lbCapacity ?? DEFAULT_LB_CAPACITY;
  }

  /**
   * Fault injection for tests: before every apply `fault` is asked (with the rule set and the
   * load-balancing spec of the apply), and an error it returns is thrown with nothing changed
   * (as the eBPF datapath fails: the previous pair stays). undefined removes it.
   */
  injectApplyFault(fault: ((ruleSet: RuleSetSpec, lb: LbSpec | undefined) => Error | undefined) | undefined): void {
    this.#fault = fault;
  }

  /** The rule set in force (undefined before the first apply). */
  get ruleSet(): RuleSetSpec | undefined {
    return this.#live === undefined ? undefined : (JSON.parse(this.#live) as RuleSetSpec);
  }

  /**
   * The load-balancing spec in force: the one the last successful apply was given (undefined
   * before the first apply, or when it was given none: no services). Not copied: read only.
   */
  get lb(): LbSpec | undefined {
    return this.#lb;
  }

  /**
   * Validates `ruleSet`, lays `lb` out (layoutLbTables, within the capacity) and switches to the
   * pair; 'unchanged' when both equal the live ones (the rule set as given, the services by the
   * fingerprint of their bytes).
   * @throws RuleSetError, CapacityError, an injected fault (nothing changed).
   */
  async apply(ruleSet: RuleSetSpec, lb?: LbSpec): Promise<ApplyResult> {
    if (this.#closed) throw new Error('apply: the memory datapath is closed');
    const fault = this.#fault?.(ruleSet, lb);
    if (fault) throw fault;
    const normalized = validateRuleSet(ruleSet);
    const next = (this.#generation ^ 1) as 0 | 1;
    let services: number;
    let lbKey: string;
    let reference: () => LbReference;
    if ((lb ?? NO_SERVICES).services.length === 0) {
      const empty = emptyLb(this.#lbCapacity, next);
      services = 0;
      lbKey = empty.fingerprint;
      reference = () => empty.reference;
    } else {
      const tables = layoutLbTables(lb!, this.#lbCapacity, next);
      services = tables.vip.count;
      lbKey = Buffer.from(tables.fingerprint).toString('hex');
      reference = () => new LbReference(tables);
    }
    const key = JSON.stringify(ruleSet);
    const result = (mode: ApplyResult['mode']): ApplyResult => ({ generation: this.#generation, mode, ruleCount: normalized.rules.length, classCount: 0, lpmEntries: 0, classWords: 0, services });
    if (key === this.#live && lbKey === this.#liveLb) {
      this.#lb = lb;
      return result('unchanged');
    }
    if (key !== this.#live) {
      if (this.#classifier) this.#classifier.replace(ruleSet, normalized);
      else this.#classifier = new ReferenceClassifier(ruleSet);
    }
    this.#live = key;
    this.#ruleIds = normalized.rules.map((r) => r.id);
    this.#liveLb = lbKey;
    this.#lb = lb;
    this.#lbReference = reference();
    this.#generation = next;
    return result('installed');
  }

  /**
   * What a new flow (no connection entry: the memory datapath has none) with this tuple, as the
   * client sent it, gets from the live services: LbReference over the live generation's bytes,
   * the datapath's own selection ('pass' before the first apply and for a tuple that is not a VIP).
   * @returns a new LbSelection; never throws on a well-formed tuple.
   */
  selectBackend(tuple: FlowTuple): LbSelection {
    return this.#lbReference?.select(tuple) ?? { kind: 'pass' };
  }

  /**
   * Classifies a frame as the live rule set says (passes everything before the first apply).
   * With a shadow candidate (setShadow), an IP packet the live rule set classifies is classified
   * by the candidate too: its verdict is only counted (readShadow), the live one is returned.
   */
  classify(frame: Uint8Array): Classification | { kind: 'unconfigured'; verdict: 'pass' } {
    if (!this.#classifier) return { kind: 'unconfigured', verdict: 'pass' };
    const shadow = this.#shadow;
    if (!shadow) return this.#classifier.classify(frame);
    const parsed = parseFrame(frame);
    if (parsed.kind !== 'ip') return this.#classifier.classify(frame);
    const enforced = this.#classifier.classifyHeaders(parsed.headers, frame.length);
    const candidate = shadow.classifier.classifyHeaders(parsed.headers, frame.length);
    count(shadow.classified, frame.length);
    if (enforced.verdict !== candidate.verdict) {
      const verdict = enforced.verdict === 'pass' ? 'wouldDrop' : 'wouldAllow';
      count(verdict === 'wouldDrop' ? shadow.wouldDrop : shadow.wouldAllow, frame.length);
      const h = parsed.headers;
      shadow.samples.push({
        family: h.family,
        proto: h.protocol,
        src: formatAddress(h.family, h.src),
        dst: formatAddress(h.family, h.dst),
        port: h.dstPort ?? 0,
        verdict,
        enforcedRuleId: enforced.kind === 'rule' ? enforced.ruleId : DEFAULT_RULE_ID,
        candidateRuleId: candidate.kind === 'rule' ? candidate.ruleId : DEFAULT_RULE_ID,
      });
      // Newest last, at most MAX_SHADOW_SAMPLES (the eBPF datapath's ring keeps as many).
      if (shadow.samples.length > MAX_SHADOW_SAMPLES) shadow.samples.shift();
    }
    return enforced;
  }

  /**
   * Makes `ruleSet` the shadow candidate under the name `candidate` (its counters start at zero),
   * or removes it (null). Nothing changes when `ruleSet` is invalid.
   * @throws RuleSetError, CapacityError (nothing touched).
   */
  async setShadow(ruleSet: RuleSetSpec | null, candidate = ''): Promise<void> {
    if (this.#closed) throw new Error('set shadow: the memory datapath is closed');
    if (ruleSet === null) {
      this.#shadow = undefined;
      return;
    }
    const normalized = validateRuleSet(ruleSet);
    this.#shadow = { classifier: new ReferenceClassifier(ruleSet), candidate, ruleIds: normalized.rules.map((r) => r.id), wouldDrop: { ...ZERO }, wouldAllow: { ...ZERO }, classified: { ...ZERO }, samples: [] };
  }

  /** What the shadow candidate counted since setShadow (copies), or null without one. */
  readShadow(): ShadowCounters | null {
    const shadow = this.#shadow;
    if (!shadow) return null;
    const counters = shadow.classifier.counters();
    return {
      candidate: shadow.candidate,
      rules: new Map(shadow.ruleIds.map((id) => [id, { ...(counters.get(id) ?? ZERO) }])),
      defaultAction: { ...(counters.get(DEFAULT_RULE_ID) ?? ZERO) },
      wouldDrop: { ...shadow.wouldDrop },
      wouldAllow: { ...shadow.wouldAllow },
      classified: { ...shadow.classified },
      samples: shadow.samples.map((x) => ({ ...x })),
    };
  }

  readCounters(): DatapathCounters {
    const counters = this.#classifier?.counters();
    const stats = this.#classifier?.stats();
    const rules = new Map<number, Counter>(this.#ruleIds.map((id) => [id, { ...(counters?.get(id) ?? ZERO) }]));
    // The classifier keeps every id's count across replaces, as the datapath's carry does.
    const retired = new Map<number, Counter>();
    for (const [id, c] of counters ?? []) if (id !== DEFAULT_RULE_ID && !rules.has(id)) retired.set(id, { ...c });
    return {
      rules,
      retired,
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

/** Counts one packet of `length` bytes into a mutable counter. */
function count(counter: Counter, length: number): void {
  const c = counter as { packets: number; bytes: number };
  c.packets += 1;
  c.bytes += length;
}
