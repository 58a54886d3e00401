// Trust benchmark (issue 12): what mutual TLS, enrollment and per-call authorization cost the
// fleet, each beside plaintext in the same run. Built on bench/fleet.ts's runSize() (the same
// nats-server, controller, simulated agents in 2 workers, ACK watcher and /proc sampling), which
// runs once with a plaintext --insecure controller and once with mutual TLS, where every agent
// first enrolls with its own join token. Prints a table and one JSON line; asserts nothing.
//   npx tsc --build && node --import=tsx bench/trust.ts [--quick] [--nodes N] [--ack-nodes N]
//   --ack-nodes (default 1,000; --quick 300): enrollment, ACK p99 over K changes (20; --quick 5),
//     telemetry (controller CPU per 100,000 counter reports) and a controller restart, both modes;
//   --nodes (default 10,000; --quick 1,000): a second fleet of that size per mode, started
//     (and, with mTLS, enrolled) and then only the controller restart; skipped if equal to --ack-nodes.
//   --reconnect-only: only the --nodes pair.
// Phases, in order: the authorization micro-benchmark (in process), plaintext at --ack-nodes,
// mTLS at --ack-nodes, plaintext at --nodes, mTLS at --nodes.
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { createServer, connect as tlsConnect, type TLSSocket } from 'node:tls';
import { Authorizer, CertificateAuthority, generateKeyPair, type AuthenticatedCall } from '@edgeplane/controller';
import { benchMain, log, machine, round, runSize, toJson, type SizeResult } from './fleet.js';

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const quick = argv.includes('--quick');
const num = (s: string): number => Number(s.replace(/_/g, ''));
const ACK_N = num(opt('--ack-nodes') ?? (quick ? '300' : '1000'));
const RECONNECT_N = num(opt('--nodes') ?? (quick ? '1000' : '10000'));
const K = quick ? 5 : 20;
// --reconnect-only: skip the --ack-nodes pair (enrollment, ACK p99, telemetry) and run only the
// --nodes pair (start, enrollment with mTLS, controller restart), e.g. to measure 10,000 alone.
const reconnectOnly = argv.includes('--reconnect-only');
// --only mtls|plaintext: run one side of each pair (diagnosis; the table then shows that side only).
const ONLY = opt('--only') as 'mtls' | 'plaintext' | undefined;
const AUTHZ_CALLS = quick ? 20_000 : 100_000;
const CONNECT = '/edgeplane.v1.AgentService/Connect';

// ---- authorization, per call ----------------------------------------------------------------

interface AuthzResult {
  calls: number;
  /** Authorizer.authorize + checkNode on an --insecure controller (no certificate read). */
  insecureNs: number;
  /** The same on a verified TLS socket, as grpc-js's getAuthContext() gives it (getPeerCertificate() every call). */
  mtlsNs: number;
  /** Of which: the decision alone, with the peer certificate read once. */
  mtlsDecisionNs: number;
}

/**
 * Times the authorization the controller does per AgentService stream (services.ts: authorize at
 * Connect, checkNode at the hello) on a real mutual TLS socket pair in this process, with
 * certificates from a real CertificateAuthority. Messages after the hello are not authorized
 * again; their extra cost is TLS itself (the telemetry rows).
 */
async function authzBench(): Promise<AuthzResult> {
  const { ca } = await CertificateAuthority.create('default');
  const serverKeys = generateKeyPair();
  const nodeKeys = generateKeyPair();
  const server = await ca.issue({ identity: { fleet: 'default', role: 'controller', name: 'c1' }, publicKey: serverKeys.publicKeyDer, lifetimeMs: 3_600_000, ipAddresses: ['127.0.0.1'] });
  const node = await ca.issue({ identity: { fleet: 'default', role: 'node', name: 'sim0-00001' }, publicKey: nodeKeys.publicKeyDer, lifetimeMs: 3_600_000 });
  const srv = createServer({ cert: server.certPem, key: serverKeys.privateKeyPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  const accepted = once(srv, 'secureConnection') as Promise<[TLSSocket]>;
  const client = tlsConnect({ host: '127.0.0.1', port, ca: ca.certPem, cert: node.certPem, key: nodeKeys.privateKeyPem, checkServerIdentity: () => undefined });
  const [socket] = await accepted;
  try {
    // What grpc-js's server call does in getAuthContext().
    const live: AuthenticatedCall = { getAuthContext: () => (socket.authorized ? { transportSecurityType: 'ssl', sslPeerCertificate: socket.getPeerCertificate() } : {}) };
    const cert = socket.getPeerCertificate();
    const fixed: AuthenticatedCall = { getAuthContext: () => ({ transportSecurityType: 'ssl', sslPeerCertificate: cert }) };
    const insecureCall: AuthenticatedCall = { getAuthContext: () => null };
    const mtls = new Authorizer({ insecure: false, fleet: 'default', isRevoked: () => false });
    const insecure = new Authorizer({ insecure: true, fleet: 'default', isRevoked: () => false });
    const time = (auth: Authorizer, c: AuthenticatedCall): number => {
      const t0 = performance.now();
      for (let i = 0; i < AUTHZ_CALLS; i++) auth.checkNode(CONNECT, auth.authorize(CONNECT, c), 'sim0-00001');
      return ((performance.now() - t0) * 1e6) / AUTHZ_CALLS;
    };
    // Warm up, then three alternating rounds; medians.
    for (const [a, c] of [[mtls, live], [insecure, insecureCall], [mtls, fixed]] as const) time(a, c);
    const rounds = [0, 1, 2].map(() => [time(insecure, insecureCall), time(mtls, live), time(mtls, fixed)] as const);
    const med = (k: 0 | 1 | 2): number => rounds.map((r) => r[k]).sort((a, b) => a - b)[1]!;
    return { calls: AUTHZ_CALLS, insecureNs: round(med(0), 0), mtlsNs: round(med(1), 0), mtlsDecisionNs: round(med(2), 0) };
  } finally {
    client.destroy();
    socket.destroy();
    srv.close();
  }
}

// ---- table -----------------------------------------------------------------------------------

const ms = (x: number | undefined): string => (x === undefined ? 'n/a' : `${x.toLocaleString('en-US')} ms`);
const pctMore = (a: number, b: number): string => `${b >= a ? '+' : ''}${round(((b - a) / a) * 100)} %`;

/** Controller CPU per 100,000 counter reports in the telemetry phase: gross, and net of its idle rate. */
function perReports(r: SizeResult): { gross: number; net: number } | undefined {
  if (!r.telemetry || !r.idle || !(r.telemetry.counterReportsPerS > 0)) return undefined;
  const per = (pct: number): number => round(((pct * 10) / r.telemetry!.counterReportsPerS) * 100_000, 0);
  return { gross: per(r.telemetry.controllerCpuPct), net: per(r.telemetry.controllerCpuPct - r.idle.controllerCpuPct) };
}

function table(authz: AuthzResult, pairs: [SizeResult, SizeResult][]): string {
  const lines = ['| figure | agents | plaintext (--insecure) | mTLS + authz | mTLS vs plaintext |', '| --- | ---: | ---: | ---: | ---: |'];
  const row = (name: string, n: number, a: string, b: string, d = ''): void => void lines.push(`| ${name} | ${n.toLocaleString('en-US')} | ${a} | ${b} | ${d} |`);
  lines.push(`| authorize + checkNode per AgentService stream (in process, ${authz.calls.toLocaleString('en-US')} calls) | - | ${authz.insecureNs} ns | ${authz.mtlsNs} ns (decision alone ${authz.mtlsDecisionNs} ns) | +${round(authz.mtlsNs - authz.insecureNs, 0)} ns |`);
  for (const [p, m] of pairs) {
    const n = p.nodes;
    const e = m.enroll;
    if (e) {
      row(`join tokens created by the admin (CreateJoinToken, 20 in flight)`, n, '-', ms(e.tokensMs));
      row(`enrollment of every agent (enrollNode: pin CA, keys, Enroll, store; ${e.concurrency} in flight): total`, n, '-', `${ms(e.totalMs)}${e.failed ? ` (${e.failed} failed)` : ''}`);
      row('enrollment latency p50 / p99 / max', n, '-', `${e.latency.p50} / ${e.latency.p99} / ${e.latency.max} ms`);
      row('controller CPU during enrollment (total / per agent)', n, '-', `${ms(e.controllerCpuMs)} / ${round(e.controllerCpuMs / n, 2)} ms`);
    }
    row('agents started, connected and caught up', n, ms(p.startMs), ms(m.startMs), pctMore(p.startMs, m.startMs));
    if (p.convergence && m.convergence) {
      row(`response -> ACK at controller p50 (median of ${p.runs!.length})`, n, ms(p.convergence.ackP50), ms(m.convergence.ackP50), pctMore(p.convergence.ackP50, m.convergence.ackP50));
      row(`**response -> ACK at controller p99** (median of ${p.runs!.length}; goal: at most +10 %)`, n, ms(p.convergence.ackP99), ms(m.convergence.ackP99), `**${pctMore(p.convergence.ackP99, m.convergence.ackP99)}**`);
      row('per-change ACK p99s', n, p.runs!.map((r) => r.ack.p99).join(', '), m.runs!.map((r) => r.ack.p99).join(', '));
      row('controller CPU per change (gross)', n, ms(p.controllerCpuPerChangeMs), ms(m.controllerCpuPerChangeMs), pctMore(p.controllerCpuPerChangeMs!, m.controllerCpuPerChangeMs!));
      row(`controller idle CPU (heartbeats every ${opt('--heartbeat-interval') ?? 5} s)`, n, `${p.idle!.controllerCpuPct} %`, `${m.idle!.controllerCpuPct} %`);
      const pr = perReports(p);
      const mr = perReports(m);
      row('telemetry: counter reports/s; controller CPU', n, `${p.telemetry!.counterReportsPerS}/s; ${p.telemetry!.controllerCpuPct} %`, `${m.telemetry!.counterReportsPerS}/s; ${m.telemetry!.controllerCpuPct} %`);
      if (pr && mr) row('controller CPU per 100,000 counter reports (gross / net of idle)', n, `${ms(pr.gross)} / ${ms(pr.net)}`, `${ms(mr.gross)} / ${ms(mr.net)}`, pctMore(pr.net, mr.net) + ' net');
      row('controller RSS at the end', n, `${p.footprint!.controllerRssMiB} MiB`, `${m.footprint!.controllerRssMiB} MiB`);
    }
    const pc = p.controllerRestart;
    const mc = m.controllerRestart;
    if (pc && mc) {
      row('controller kill -9: every stream down', n, ms(pc.allDownMs), ms(mc.allDownMs));
      row('controller start -> ready', n, ms(pc.startToReadyMs), ms(mc.startToReadyMs));
      row('**ready -> every stream welcomed again**', n, ms(pc.readyToAllWelcomedMs), ms(mc.readyToAllWelcomedMs), pctMore(pc.readyToAllWelcomedMs, mc.readyToAllWelcomedMs));
      row('controller CPU, start -> all welcomed (of which after ready)', n, `${ms(pc.controllerCpuMs)} (${ms(pc.controllerCpuAfterReadyMs)})`, `${ms(mc.controllerCpuMs)} (${ms(mc.controllerCpuAfterReadyMs)})`, pctMore(pc.controllerCpuAfterReadyMs, mc.controllerCpuAfterReadyMs) + ' after ready');
    }
    row('TCP connections to the controller', n, String(p.tcp.grpc), String(m.tcp.grpc));
    if (p.errors.length || m.errors.length) row('errors (first)', n, p.errors[0] ?? '-', m.errors[0] ?? '-');
  }
  return lines.join('\n');
}

// ---- main ------------------------------------------------------------------------------------

await benchMain('trust', (quick ? 30 : 60) * 60_000, async (root) => {
  const at = machine();
  log(`trust: ack/enroll size ${ACK_N} (K=${K}), reconnect size ${RECONNECT_N}; load average ${at.loadavg.join(' ')}`);
  const authz = await authzBench();
  log(`authorize+checkNode: insecure ${authz.insecureNs} ns, mTLS ${authz.mtlsNs} ns (decision ${authz.mtlsDecisionNs} ns)`);
  const pairs: [SizeResult, SizeResult][] = [];
  const pair = async (n: number, k: number): Promise<void> => {
    const run = (mtls: boolean): Promise<SizeResult> => runSize(n, root, { mtls, k, controllerRestart: true, enrollConcurrency: 25, replicas: 1 });
    const plain = ONLY === 'mtls' ? undefined : await run(false);
    const mtls = ONLY === 'plaintext' ? undefined : await run(true);
    if (!plain || !mtls) {
      process.stderr.write(`${toJson({ nodes: n, only: ONLY, result: plain ?? mtls })}\n`);
      return;
    }
    pairs.push([plain, mtls]);
    process.stderr.write(`${table(authz, pairs.slice(-1))}\n`);
  };
  if (!reconnectOnly) await pair(ACK_N, K);
  if (reconnectOnly || RECONNECT_N !== ACK_N) await pair(RECONNECT_N, 0);
  process.stdout.write(table(authz, pairs) + '\n');
  process.stdout.write(toJson({ bench: 'trust', quick, k: K, ...at, loadavgEnd: machine().loadavg, authz, results: pairs.map(([plaintext, mtls]) => ({ nodes: plaintext.nodes, plaintext, mtls })) }) + '\n');
});
