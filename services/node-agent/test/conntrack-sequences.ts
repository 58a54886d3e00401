// A seeded generator of connection-tracking scenarios for the model test and the differential
// test: a few flows (IPv4 and IPv6, TCP, UDP, ICMP echo; some sharing endpoints, reversed,
// to themselves), a few generations (rule sets aimed at those flows, track flags, egress
// tracking, CUT), and a sequence of events: packets with any TCP flags from either end through
// the role's hooks, retransmissions and out-of-order FINs (flags are drawn, not scripted), ICMP
// errors quoting a flow, generation switches, and expiries (an entry's deadline put in the past).
import { parseAddress } from '@edgeplane/proto';
import type { CtHook, CtKey } from '../src/datapath/conntrack-model.js';
import { buildFrame, tcpFlags, type FrameSpec } from '../src/datapath/packet.js';
import type { RuleSetSpec, RuleSpec } from '../src/datapath/rule-set.js';

/** Which datapath a scenario runs on: the uplink (XDP ingress + TC egress) or a workload (TC both ways). */
export type CtRole = 'uplink' | 'workload';

/** One flow: endpoint a and endpoint b. */
export interface CtFlow {
  readonly family: 4 | 6;
  readonly proto: 'tcp' | 'udp' | 'icmp';
  readonly a: string;
  readonly b: string;
  /** Ports (TCP/UDP) or the echo identifier (ICMP: aPort). */
  readonly aPort: number;
  readonly bPort: number;
}

/** A generation: its rule set, with track flags and generation flags (trackEgress, cutOnDeny). */
export interface CtScenarioGeneration {
  readonly ruleSet: RuleSetSpec;
}

/** One step of a scenario. */
export type CtEvent =
  | { readonly kind: 'packet'; readonly flow: number; readonly from: 'a' | 'b'; readonly hook: CtHook; readonly tcp: number; readonly echo: 'request' | 'reply'; readonly payload: number }
  | { readonly kind: 'icmp-error'; readonly flow: number; readonly quoteFrom: 'a' | 'b'; readonly hook: CtHook; readonly type: number; readonly router: boolean }
  | { readonly kind: 'generation'; readonly index: number }
  | { readonly kind: 'expire'; readonly flow: number };

/** A whole scenario: the first event is always a switch to generation 0. */
export interface CtScenario {
  readonly role: CtRole;
  readonly flows: readonly CtFlow[];
  readonly generations: readonly CtScenarioGeneration[];
  readonly events: readonly CtEvent[];
}

const { fin, syn, rst, psh, ack } = tcpFlags;
/** TCP flag bytes drawn for a packet, weighted: handshakes, data, FINs, RSTs and oddities. */
const tcpChoices: readonly [number, number][] = [
  [syn, 18],
  [syn | ack, 14],
  [ack, 20],
  [psh | ack, 10],
  [fin | ack, 12],
  [fin, 3],
  [rst, 4],
  [rst | ack, 4],
  [syn | fin, 2],
  [syn | rst, 1],
  [0, 1],
];
const tcpTotal = tcpChoices.reduce((n, [, w]) => n + w, 0);

const v4 = ['10.1.0.1', '10.1.0.2', '10.1.0.3', '192.0.2.7'];
const v6 = ['2001:db8:1::1', '2001:db8:1::2', '2001:db8:1::3', 'fd00::7'];

/** Options of randomScenario(). */
export interface RandomScenarioOptions {
  /** Most events after the first generation switch. Default 40. */
  readonly maxEvents?: number;
  /** Most generations (rule sets) a scenario switches between. Default 3. */
  readonly maxGenerations?: number;
  /** Leave out ICMP errors sent through the uplink's egress hook. Default false. */
  readonly noEgressIcmpErrors?: boolean;
}

/**
 * Draws one scenario from `rng` (a seeded PRNG returning [0, 1)).
 * @returns a new scenario; the same rng state always gives the same scenario.
 */
export function randomScenario(rng: () => number, options: RandomScenarioOptions = {}): CtScenario {
  const int = (lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rng() * list.length)] as T;
  const role: CtRole = rng() < 0.6 ? 'uplink' : 'workload';
  const flows: CtFlow[] = [];
  const flowCount = int(1, 6);
  for (let i = 0; i < flowCount; i++) {
    const roll = rng();
    const previous = flows.length > 0 ? pick(flows) : undefined;
    if (previous !== undefined && roll < 0.15) {
      // The same endpoints the other way round: its original tuple is an earlier flow's reverse.
      flows.push({ ...previous, a: previous.b, b: previous.a, aPort: previous.bPort, bPort: previous.aPort });
      continue;
    }
    if (previous !== undefined && roll < 0.25) {
      // Same addresses and ports, another protocol.
      flows.push({ ...previous, proto: pick(['tcp', 'udp', 'icmp'] as const) });
      continue;
    }
    const family = rng() < 0.5 ? 4 : 6;
    const pool = family === 4 ? v4 : v6;
    const a = pick(pool);
    // A flow to itself now and then: its key is its own reverse.
    const b = rng() < 0.05 ? a : pick(pool.filter((x) => x !== a));
    const proto = pick(['tcp', 'tcp', 'tcp', 'udp', 'icmp'] as const);
    const aPort = pick([40000, 40001, 53, 80, int(1024, 65535)]);
    const bPort = a === b && rng() < 0.5 ? aPort : pick([80, 443, 53, 40000]);
    flows.push({ family, proto, a, b, aPort, bPort });
  }
  const generations = Array.from({ length: int(1, options.maxGenerations ?? 3) }, () => randomGeneration(rng, flows));
  return { role, flows, generations, events: randomEvents(rng, role, flows, generations.length, options) };
}

/**
 * Draws another event sequence for `scenario`'s flows and generations (a fresh table each time,
 * the rule sets already installed).
 * @returns a new scenario sharing flows and generations with `scenario`.
 */
export function nextSequence(rng: () => number, scenario: CtScenario, options: RandomScenarioOptions = {}): CtScenario {
  return { ...scenario, events: randomEvents(rng, scenario.role, scenario.flows, scenario.generations.length, options) };
}

function randomEvents(rng: () => number, role: CtRole, flows: readonly CtFlow[], generationCount: number, options: RandomScenarioOptions): CtEvent[] {
  const int = (lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rng() * list.length)] as T;
  const events: CtEvent[] = [{ kind: 'generation', index: 0 }];
  const count = int(4, options.maxEvents ?? 40);
  const hooks: readonly CtHook[] = role === 'uplink' ? ['edge_xdp', 'edge_tc_egress'] : ['edge_tc'];
  // On the uplink, each flow has a local end (its packets leave through TC egress) most of the time.
  const local = flows.map(() => (rng() < 0.5 ? 'a' : 'b'));
  for (let i = 0; i < count; i++) {
    const roll = rng();
    const flow = int(0, flows.length - 1);
    if (roll < 0.05 && generationCount > 1) {
      events.push({ kind: 'generation', index: int(0, generationCount - 1) });
    } else if (roll < 0.09) {
      events.push({ kind: 'expire', flow });
    } else if (roll < 0.16) {
      const f = flows[flow] as CtFlow;
      const types = f.family === 4 ? [3, 3, 11, 12, 5] : [1, 2, 2, 3, 4, 137];
      const hook = options.noEgressIcmpErrors === true ? (hooks[0] as CtHook) : pick(hooks);
      events.push({ kind: 'icmp-error', flow, quoteFrom: rng() < 0.5 ? 'a' : 'b', hook, type: pick(types), router: rng() < 0.5 });
    } else {
      // Mostly the conversation goes a first, then both ways.
      const from = rng() < 0.55 ? 'a' : 'b';
      const hook = role === 'workload' ? 'edge_tc' : rng() < 0.85 ? (from === local[flow] ? 'edge_tc_egress' : 'edge_xdp') : pick(hooks);
      let w = rng() * tcpTotal;
      let tcp: number = ack;
      for (const [flags, weight] of tcpChoices) {
        w -= weight;
        if (w < 0) {
          tcp = flags;
          break;
        }
      }
      events.push({ kind: 'packet', flow, from, hook, tcp, echo: rng() < 0.7 === (from === 'a') ? 'request' : 'reply', payload: pick([0, 0, 10, 100]) });
    }
  }
  return events;
}

function randomGeneration(rng: () => number, flows: readonly CtFlow[]): CtScenarioGeneration {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rng() * list.length)] as T;
  const rules: RuleSpec[] = [];
  const count = Math.floor(rng() * 5);
  for (let i = 0; i < count; i++) {
    const flow = pick(flows);
    const host = (address: string): string => `${address}/${flow.family === 4 ? 32 : 128}`;
    const towardsB = rng() < 0.6;
    const src = rng() < 0.5 ? [] : [host(towardsB ? flow.a : flow.b)];
    const dst = rng() < 0.3 ? [] : [host(towardsB ? flow.b : flow.a)];
    const protocol = rng() < 0.3 ? 'any' : flow.proto === 'icmp' ? (flow.family === 4 ? 'icmp' : 'icmpv6') : flow.proto;
    const port = towardsB ? flow.bPort : flow.aPort;
    const dstPorts = (protocol === 'tcp' || protocol === 'udp') && rng() < 0.5 ? [{ from: port, to: port }] : [];
    const action = pick(['allow', 'allow', 'deny', 'rate_limit'] as const);
    const rule: RuleSpec = { id: 100 + i, srcCidrs: src, dstCidrs: dst, protocol, dstPorts, action };
    // A burst no scenario exhausts: rate limiting is the classifier's business, tested elsewhere.
    if (action === 'rate_limit') rule.rateLimit = { pps: 1000, burst: 1_000_000 };
    rules.push(rule);
  }
  const stateful = rng() < 0.85;
  for (const rule of rules) rule.track = stateful && rule.action !== 'deny' && rng() < 0.85;
  return {
    ruleSet: {
      rules,
      defaultAction: rng() < 0.4 ? 'allow' : 'deny',
      trackDefault: stateful && rng() < 0.5,
      trackEgress: stateful && rng() < 0.8,
      cutOnDeny: stateful && rng() < 0.5,
    },
  };
}

/** Addresses used as "a router on the path" for ICMP errors. */
const routers = { 4: '198.51.100.1', 6: '2001:db8:ff::1' } as const;

/**
 * The frame of a packet or ICMP-error event.
 * @returns the frame; throws TypeError for other events.
 */
export function eventFrame(scenario: CtScenario, event: CtEvent): Uint8Array {
  if (event.kind !== 'packet' && event.kind !== 'icmp-error') throw new TypeError(`eventFrame: ${event.kind} has no frame`);
  const flow = scenario.flows[event.flow] as CtFlow;
  const ends = (from: 'a' | 'b'): { src: string; dst: string; srcPort: number; dstPort: number } =>
    from === 'a' ? { src: flow.a, dst: flow.b, srcPort: flow.aPort, dstPort: flow.bPort } : { src: flow.b, dst: flow.a, srcPort: flow.bPort, dstPort: flow.aPort };
  const packetSpec = (from: 'a' | 'b', tcp: number, echo: 'request' | 'reply', payload: number): FrameSpec => {
    const e = ends(from);
    if (flow.proto === 'icmp') {
      const type = echo === 'request' ? (flow.family === 4 ? 8 : 128) : flow.family === 4 ? 0 : 129;
      return { src: e.src, dst: e.dst, protocol: 'icmp', icmpType: type, icmpId: flow.aPort, payloadLength: payload };
    }
    return { ...e, protocol: flow.proto, tcpFlags: tcp, payloadLength: payload };
  };
  if (event.kind === 'packet') return buildFrame(packetSpec(event.from, event.tcp, event.echo, event.payload));
  // The error travels back to the quoted packet's source, from a router or from its destination.
  const quote = packetSpec(event.quoteFrom, ack, 'request', 0);
  return buildFrame({ src: event.router ? routers[flow.family] : quote.dst, dst: quote.src, protocol: 'icmp', icmpType: event.type, icmpQuote: quote });
}

/** One line per event, for failure messages. */
export function describeEvent(scenario: CtScenario, event: CtEvent): string {
  if (event.kind === 'generation') return `switch to generation ${event.index}: ${JSON.stringify(scenario.generations[event.index])}`;
  const f = scenario.flows[event.flow] as CtFlow;
  const flow = `flow ${event.flow} ${f.proto} [${f.a}]:${f.aPort} <-> [${f.b}]:${f.bPort}`;
  if (event.kind === 'expire') return `expire ${flow}`;
  if (event.kind === 'icmp-error') return `icmp error type ${event.type} on ${event.hook} quoting ${event.quoteFrom}'s packet of ${flow}${event.router ? ' from a router' : ''}`;
  const what = f.proto === 'tcp' ? `tcp 0x${event.tcp.toString(16)}` : f.proto === 'icmp' ? `echo ${event.echo}` : 'udp';
  return `${event.hook}: ${what} from ${event.from} of ${flow}, ${event.payload} bytes payload`;
}

/** The key of `flow` with `from` as the original direction (its packets' tuple). */
export function flowKey(flow: CtFlow, from: 'a' | 'b'): CtKey {
  const pad = (text: string): Uint8Array => {
    const out = new Uint8Array(16);
    out.set(parseAddress(text) as Uint8Array);
    return out;
  };
  const proto = { tcp: 6, udp: 17, icmp: flow.family === 4 ? 1 : 58 }[flow.proto];
  const [src, dst, sport, dport] = from === 'a' ? [flow.a, flow.b, flow.aPort, flow.bPort] : [flow.b, flow.a, flow.bPort, flow.aPort];
  if (flow.proto === 'icmp') return { family: flow.family, proto, sport: flow.aPort, dport: flow.aPort, src: pad(src), dst: pad(dst) };
  return { family: flow.family, proto, sport, dport, src: pad(src), dst: pad(dst) };
}
