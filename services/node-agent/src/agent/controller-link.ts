import type * as grpc from '@grpc/grpc-js';
import {
  AgentServiceClient,
  type AgentHello,
  type BackendVerdict,
  type ConditionReport,
  type ConnectionsAnswer,
  type ConnectionsQuery,
  type ConnectRequest,
  type ConnectResponse,
  type ControllerWelcome,
  type CounterReport,
  type RevisionReport,
  MAX_BACKEND_HEALTH_ENTRIES,
  MAX_COUNTER_RULES,
} from '@edgeplane/proto';

/** Options of {@link ControllerLink}. */
export interface ControllerLinkOptions {
  /**
   * The controller's address, or several replicas' (host:port each): the link uses one at a
   * time and moves to the next when a connect or its stream fails (after the usual backoff).
   */
  address: string | readonly string[];
  credentials: grpc.ChannelCredentials;
  /** The hello to send on every (re)connect: it carries the current revisions. */
  hello: () => AgentHello;
  /** Counter deltas since the last call (undefined = nothing to send). */
  counters: () => CounterReport | undefined;
  onWelcome?: (welcome: ControllerWelcome) => void;
  /**
   * Answers the controller's connection-table queries; the answer goes back on the stream that
   * asked. Unset: every query is answered with an error.
   */
  onConnectionsQuery?: (query: ConnectionsQuery) => ConnectionsAnswer;
  onStateChange?: (connected: boolean, reason: string) => void;
  /**
   * The node's whole backend health state (the revision whose services it probes, and every
   * verdict): sent after every welcome. Unset: no backend health reports.
   */
  backendHealth?: () => { revision: bigint; verdicts: BackendVerdict[] };
  /** Defaults until the controller's settings arrive. */
  heartbeatIntervalMs?: number;
  counterIntervalMs?: number;
  /**
   * HTTP/2 keepalive: a PING after this long (default 20 s); a connection whose PING is not
   * answered within `keepaliveTimeoutMs` (default 10 s) is closed and the link reconnects. This,
   * not the application heartbeat (rare: the controller's setting, 60 s by default), is how a
   * controller that went away without closing the connection is noticed. It costs the controller
   * no JavaScript (its HTTP/2 layer answers PINGs itself) but a PING and its answer still cost
   * ~26 µs of its CPU in the kernel (bench/fleet.ts, 3,000 agents: idle 3.57 % with a PING every
   * 10 s, 2.78 % without): every 20 s is ~1.3 % of a core at 10,000 agents.
   */
  keepaliveMs?: number;
  keepaliveTimeoutMs?: number;
  /** How long to wait for the connection and the welcome. Default 10 s. */
  connectTimeoutMs?: number;
  /** Reconnect backoff bounds, ms. Default 250 .. 15000, with full jitter. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

function ms(d: { seconds: bigint; nanos: number } | undefined): number | undefined {
  return d ? Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6) : undefined;
}

/**
 * The agent's side of AgentService.Connect: connects (with a deadline), says hello, sends
 * reports, counter deltas and heartbeats, notices a half-open connection when its HTTP/2
 * keepalive PINGs or its heartbeats stop coming back, and reconnects with exponential backoff and full jitter, forever. Reports made
 * while disconnected are kept (the newest per revision) and sent after the next hello.
 * Owns its client; close() ends the stream and stops reconnecting.
 */
export class ControllerLink {
  #options: ControllerLinkOptions;
  #addresses: readonly string[];
  /** The address in use, and a client per address used so far (channels are kept for the next turn). */
  #index = 0;
  #clients = new Map<string, AgentServiceClient>();
  #stream: grpc.ClientDuplexStream<ConnectRequest, ConnectResponse> | undefined;
  #queue = new Map<bigint, RevisionReport>();
  /** Conditions that changed after the last hello was built, to send once welcomed. */
  #conditions: ConditionReport | undefined;
  #connected = false;
  #closed = false;
  /** Pending timers of the current stream (a fired timer removes itself: a long-lived stream keeps none). */
  #timers = new Set<NodeJS.Timeout>();
  #attempt = 0;
  #heartbeatMs: number;
  #counterMs: number;
  /**
   * Heartbeats sent since the controller was last heard from. Half-open is judged by this count,
   * not by wall time: when this process itself stalls (CPU starvation, a long GC) it sends no
   * heartbeats during the stall, and the first timer after it must not call the controller dead
   * before the replies waiting in the socket have been read.
   */
  #unanswered = 0;
  #sequence = 0n;

  constructor(options: ControllerLinkOptions) {
    this.#options = options;
    this.#heartbeatMs = options.heartbeatIntervalMs ?? 60_000;
    this.#counterMs = options.counterIntervalMs ?? 5000;
    this.#addresses = typeof options.address === 'string' ? [options.address] : [...options.address];
    if (this.#addresses.length === 0) throw new TypeError('ControllerLink: no controller address');
  }

  /** The controller address the link uses now (or tries next). */
  get address(): string {
    return this.#addresses[this.#index]!;
  }

  get #client(): AgentServiceClient {
    const address = this.address;
    let client = this.#clients.get(address);
    if (!client) {
      client = new AgentServiceClient(address, this.#options.credentials, {
        'grpc.keepalive_time_ms': this.#options.keepaliveMs ?? 20_000,
        'grpc.keepalive_timeout_ms': this.#options.keepaliveTimeoutMs ?? 10_000,
        'grpc.initial_reconnect_backoff_ms': 250,
        'grpc.max_reconnect_backoff_ms': 5000,
      });
      this.#clients.set(address, client);
    }
    return client;
  }

  /** Whether the stream is open and welcomed. */
  get connected(): boolean {
    return this.#connected;
  }

  /** Starts connecting (returns at once). */
  start(): void {
    this.#connect();
  }

  /**
   * Sends a counter report now (the counts an apply flushed at its switch, ahead of its ACK).
   * @returns false, sending nothing, when not connected.
   */
  counters(report: CounterReport): boolean {
    if (!this.#connected) return false;
    this.#sendCounters(report);
    return true;
  }

  #sendCounters(c: CounterReport): void {
    // The controller takes at most MAX_COUNTER_RULES rules per report; it sums deltas, so
    // one reading sent as several reports counts the same.
    for (let i = 0; i === 0 || i < c.rules.length; i += MAX_COUNTER_RULES) {
      this.#send({ message: { $case: 'counters', counters: { ...c, rules: c.rules.slice(i, i + MAX_COUNTER_RULES), interfaces: i === 0 ? c.interfaces : [] } } });
    }
  }

  /** Queues an ACK/NACK; sent now if connected, else after the next hello. */
  report(report: RevisionReport): void {
    this.#queue.set(report.revision, report);
    if (this.#connected) this.#drainQueue();
  }

  /**
   * Sends the agent's conditions (the whole set) now if connected; otherwise the next hello
   * carries them, and a change after that hello is sent once the controller welcomes it.
   */
  conditions(report: ConditionReport): void {
    this.#conditions = report;
    if (this.#connected) this.#drainConditions();
  }

  /**
   * Sends the whole backend health state now (after the probed set changed), if connected;
   * otherwise the next welcome brings it.
   */
  backendHealthState(): void {
    if (!this.#connected) return;
    const state = this.#options.backendHealth?.();
    if (!state) return;
    // The controller takes at most MAX_BACKEND_HEALTH_ENTRIES per message: the first replaces
    // what it held, the rest add to it (the stream keeps their order).
    for (let i = 0; i === 0 || i < state.verdicts.length; i += MAX_BACKEND_HEALTH_ENTRIES) {
      this.#send({ message: { $case: 'backendHealth', backendHealth: { replace: i === 0, backends: state.verdicts.slice(i, i + MAX_BACKEND_HEALTH_ENTRIES), revision: state.revision } } });
    }
  }

  /**
   * Sends one backend's new verdict now, if connected; a change while disconnected is not kept,
   * since the next welcome brings the whole state.
   */
  backendVerdict(verdict: BackendVerdict, revision: bigint): void {
    if (this.#connected) this.#send({ message: { $case: 'backendHealth', backendHealth: { replace: false, backends: [verdict], revision } } });
  }

  #drainConditions(): void {
    const c = this.#conditions;
    if (c && this.#send({ message: { $case: 'conditions', conditions: c } })) this.#conditions = undefined;
  }

  #send(m: ConnectRequest): boolean {
    if (!this.#stream) return false;
    this.#stream.write(m);
    return true;
  }

  #drainQueue(): void {
    for (const [rev, r] of [...this.#queue].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      if (!this.#send({ message: { $case: 'report', report: r } })) return;
      this.#queue.delete(rev);
    }
  }

  #after(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
    return t;
  }

  #clearTimers(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }

  #down(reason: string): void {
    const was = this.#connected;
    this.#connected = false;
    this.#clearTimers();
    const s = this.#stream;
    this.#stream = undefined;
    s?.cancel();
    if (was) this.#options.onStateChange?.(false, reason);
    if (this.#closed) return;
    // Another replica next: the one that failed may be gone for good.
    this.#index = (this.#index + 1) % this.#addresses.length;
    const max = this.#options.maxBackoffMs ?? 15_000;
    const min = this.#options.minBackoffMs ?? 250;
    const delay = Math.random() * Math.min(max, min * 2 ** this.#attempt++);
    this.#after(delay, () => this.#connect());
  }

  #connect(): void {
    if (this.#closed) return;
    const deadline = Date.now() + (this.#options.connectTimeoutMs ?? 10_000);
    const client = this.#client;
    client.waitForReady(deadline, (err) => {
      if (this.#closed) return;
      if (err) return this.#down(`connect ${this.address}: ${err.message}`);
      const stream = client.connect();
      this.#stream = stream;
      let welcomed = false;
      const welcomeTimer = this.#after(Math.max(0, deadline - Date.now()), () => !welcomed && this.#down('no welcome in time'));
      stream.on('data', (m: ConnectResponse) => {
        if (this.#stream !== stream) return;
        this.#unanswered = 0;
        const msg = m.message;
        if (msg?.$case === 'welcome') {
          welcomed = true;
          clearTimeout(welcomeTimer);
          this.#timers.delete(welcomeTimer);
          this.#heartbeatMs = ms(msg.welcome.settings?.heartbeatInterval) ?? this.#heartbeatMs;
          this.#counterMs = ms(msg.welcome.settings?.counterInterval) ?? this.#counterMs;
          this.#attempt = 0;
          this.#connected = true;
          this.#options.onWelcome?.(msg.welcome);
          this.#options.onStateChange?.(true, `welcome from ${this.address}`);
          this.#drainConditions();
          this.#drainQueue();
          this.backendHealthState();
          this.#schedule();
        } else if (msg?.$case === 'settings') {
          this.#heartbeatMs = ms(msg.settings.heartbeatInterval) ?? this.#heartbeatMs;
          this.#counterMs = ms(msg.settings.counterInterval) ?? this.#counterMs;
        } else if (msg?.$case === 'listConnections') {
          const query = msg.listConnections;
          const answer = this.#options.onConnectionsQuery?.(query) ?? { requestId: query.requestId, connections: [], matched: 0n, error: 'this agent does not answer connection queries' };
          // Only on the stream that asked: a reconnect makes the controller's query fail, not hang.
          if (this.#stream === stream) stream.write({ message: { $case: 'connections', connections: { ...answer, requestId: query.requestId } } });
        }
      });
      stream.on('error', (e: grpc.ServiceError) => this.#stream === stream && this.#down(`stream: ${e.message}`));
      stream.on('end', () => this.#stream === stream && this.#down('stream ended by the controller'));
      this.#unanswered = 0;
      // The hello carries the conditions as they are now.
      this.#conditions = undefined;
      stream.write({ message: { $case: 'hello', hello: this.#options.hello() } });
    });
  }

  #schedule(): void {
    const beat = (): void => {
      if (!this.#connected) return;
      // Heartbeats are echoed: three sent, an interval apart, with nothing heard since means half-open.
      if (this.#unanswered >= 3) return this.#down('heartbeats stopped coming back');
      this.#send({ message: { $case: 'heartbeat', heartbeat: { sequence: ++this.#sequence, time: new Date() } } });
      this.#unanswered++;
      this.#after(this.#heartbeatMs, beat);
    };
    const count = (): void => {
      if (!this.#connected) return;
      const c = this.#options.counters();
      if (c) this.#sendCounters(c);
      this.#after(this.#counterMs, count);
    };
    this.#after(this.#heartbeatMs, beat);
    this.#after(this.#counterMs, count);
  }

  /** Ends the stream and stops reconnecting. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#clearTimers();
    this.#stream?.end();
    this.#stream = undefined;
    this.#connected = false;
    for (const c of this.#clients.values()) c.close();
    this.#clients.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
