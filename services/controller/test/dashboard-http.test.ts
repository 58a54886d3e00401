// The dashboard's HTTPS surface through the real controller (mutual TLS, identities from its
// CA, embedded nats-server): who may see it, what hostile requests get, the live stream. The
// page itself is driven in a real browser by test/dashboard.test.ts.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request, type RequestOptions } from 'node:https';
import { MAX_DASHBOARD_STREAMS_PER_IDENTITY, MAX_DASHBOARD_URL_LENGTH, MAX_SELECTOR_LENGTH } from '@edgeplane/proto';
import { call } from '../../../test/support/grpc.js';
import { METHOD_ROLES, defaultCaFiles, loadOrCreateCertificateAuthority, parseConfig } from '../src/index.js';
import { agentStream, clientsFor, createToken, enroll, newKey, startTlsController, type ClientCert, type Clients } from './trust-helpers.js';

let env: Awaited<ReturnType<typeof startTlsController>>;
let admin: Clients;
let viewer: ClientCert;
let operator: ClientCert;
let node: ClientCert;
let base: URL;

async function issue(role: string, name: string): Promise<ClientCert & { serial: string }> {
  const key = newKey();
  const res = await call(admin.trust, admin.trust.issueCertificate, { role, name, publicKey: key.publicDer, lifetime: undefined });
  return { keyPem: key.keyPem, certPem: res.certificate, serial: res.serialNumber };
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One request to the dashboard as `who` (no certificate when undefined), verifying the server against the fleet CA. */
function get(path: string, who: ClientCert | undefined, options: RequestOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: base.hostname, port: base.port, path, method: 'GET', ca: env.ca, ...(who ? { cert: who.certPem, key: who.keyPem } : {}), agent: false, ...options },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const json = (r: Reply): { error?: { code: string; message: string; reason?: string; violations?: { field: string; description: string; reason?: string }[] } } & Record<string, unknown> =>
  JSON.parse(r.body) as never;

test.before(async () => {
  env = await startTlsController(['--dashboard-listen', '127.0.0.1:0', '--counter-interval', '1']);
  base = new URL(env.controller.dashboardUrl!);
  admin = clientsFor(env.controller.address, env.ca, env.admin);
  viewer = await issue('viewer', 'alice');
  operator = await issue('operator', 'ci');
  const anon = clientsFor(env.controller.address, env.ca);
  node = await enroll(anon, await createToken(admin), 'dash-node');
  anon.close();
});

test.after.always(async () => {
  admin?.close();
  await env?.stop();
});

test('dashboard config - off unless --dashboard-listen; plaintext only on loopback with --insecure', (t) => {
  const off = parseConfig(['--listen', '127.0.0.1:0'], {});
  t.false(off !== 'help' && 'dashboardListen' in off);
  t.throws(() => parseConfig(['--listen', '127.0.0.1:0', '--insecure', '--dashboard-listen', '0.0.0.0:8443'], {}), { message: /--insecure serves the dashboard in plaintext .* refused on 0\.0\.0\.0/ });
  t.notThrows(() => parseConfig(['--listen', '127.0.0.1:0', '--insecure', '--dashboard-listen', '127.0.0.1:8443'], {}));
  t.throws(() => parseConfig(['--dashboard-listen', 'nowhere'], {}), { message: /--dashboard-listen: "nowhere" is not HOST:PORT/ });
});

test('dashboard routes - every one is in the authorization table, readable by viewer, operator and admin only', (t) => {
  const routes = Object.keys(METHOD_ROLES).filter((m) => m.startsWith('dashboard '));
  t.true(routes.length >= 10);
  for (const r of routes) {
    t.regex(r, /^dashboard GET \//, `${r}: the dashboard only reads`);
    t.deepEqual(METHOD_ROLES[r], ['viewer', 'operator', 'admin'], r);
  }
});

test('dashboard - served over TLS with the controller certificate from the fleet CA, for 127.0.0.1', async (t) => {
  // get() verifies the chain against the fleet CA and the name against the URL's host.
  const page = await get('/', viewer);
  t.is(page.status, 200);
  t.regex(page.body, /<script type="module" src="\/app.js">/);
  const csp = String(page.headers['content-security-policy']);
  t.regex(csp, /default-src 'none'/);
  t.regex(csp, /script-src 'self'/);
  t.notRegex(csp, /https?:|unsafe-inline|\*/, 'no external origin, nothing inline');
  t.is(page.headers['x-content-type-options'], 'nosniff');
  t.is(page.headers['x-frame-options'], 'DENY');
  t.regex(String(page.headers['strict-transport-security']), /max-age=/);
  t.is((await get('/app.js', viewer)).headers['content-type'], 'text/javascript; charset=utf-8');
});

test('dashboard - no certificate is 401, a node certificate 403, a certificate of another CA 401', async (t) => {
  const none = await get('/api/nodes', undefined);
  t.is(none.status, 401);
  t.is(json(none).error?.code, 'UNAUTHENTICATED');
  t.regex(json(none).error!.message, /needs a client certificate from this fleet's CA/);
  const page = await get('/', undefined);
  t.is(page.status, 401, 'the page too');
  t.is(page.headers['content-type'], 'text/plain; charset=utf-8', 'a page says it in a line of text');
  t.regex(page.body, /^edgeplane dashboard: 401 UNAUTHENTICATED: .*client certificate/);
  const asNode = await get('/api/nodes', node);
  t.is(asNode.status, 403);
  t.is(json(asNode).error?.reason, 'ROLE_NOT_ALLOWED');
  t.regex(json(asNode).error!.message, /node\/dash-node may not call dashboard GET \/api\/nodes/);
  const dir = mkdtempSync(join(tmpdir(), 'dash-other-ca-'));
  try {
    const { ca } = await loadOrCreateCertificateAuthority(defaultCaFiles(dir), 'other-fleet');
    const key = newKey();
    const cert = await ca.issue({ identity: { fleet: 'other-fleet', role: 'admin', name: 'admin' }, publicKey: key.publicDer, lifetimeMs: 3_600_000 });
    const stranger = await get('/api/nodes', { keyPem: key.keyPem, certPem: cert.certPem });
    t.is(stranger.status, 401, "another fleet's admin is nobody here");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dashboard - viewer and operator read; nothing writes (405 for every other method)', async (t) => {
  for (const who of [viewer, operator, env.admin]) {
    const r = await get('/api/policies', who);
    t.is(r.status, 200);
    t.true(Array.isArray(json(r).policies));
  }
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
    const r = await get('/api/policies', env.admin, { method });
    t.is(r.status, 405, method);
    t.is(r.headers.allow, 'GET, HEAD');
  }
});

test('dashboard - a revoked viewer certificate is refused at once', async (t) => {
  const bob = await issue('viewer', 'bob');
  t.is((await get('/api/nodes', bob)).status, 200);
  await call(admin.trust, admin.trust.revokeCertificate, { serialNumber: bob.serial, name: '', reason: 'left' });
  let r: Reply | undefined;
  for (let i = 0; i < 100 && (r = await get('/api/nodes', bob)).status === 200; i++) await new Promise((res) => setTimeout(res, 50));
  t.is(r!.status, 401);
  t.is(json(r!).error?.reason, 'REVOKED');
});

test('dashboard - hostile input: bounded, clear errors, nothing served from a path it names', async (t) => {
  const bad = await get('/api/nodes?label_selector=' + encodeURIComponent('role in (a'), viewer);
  t.is(bad.status, 400);
  t.is(json(bad).error?.code, 'INVALID_ARGUMENT');
  t.is(json(bad).error?.violations?.[0]?.field, 'label_selector');
  t.is(json(bad).error?.violations?.[0]?.reason, 'INVALID_LABEL_SELECTOR');
  const unknown = await get('/api/nodes?x=1&page_size=1&page_size=2', viewer);
  t.is(unknown.status, 400);
  t.deepEqual(json(unknown).error?.violations?.map((v) => [v.field, v.reason]), [['x', 'UNKNOWN_PARAMETER'], ['page_size', 'REPEATED_PARAMETER']]);
  t.is((await get('/api/nodes?page_size=-1', viewer)).status, 400);
  t.is((await get('/api/rollout?kind=policy&name=' + encodeURIComponent('../x'), viewer)).status, 400);
  t.is((await get('/api/rollout?kind=job&name=x', viewer)).status, 400);
  t.is((await get('/api/rollout?kind=policy&name=nothing', viewer)).status, 404);
  for (const path of ['/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/app.js/..%2f..%2fpackage.json', '/dashboard-assets/app.js', '/api', '/api/nodes/']) {
    const r = await get(path, viewer);
    t.is(r.status, 404, path);
    t.regex(r.body, /NOT_FOUND/, path);
  }
  const long = await get('/api/nodes?label_selector=' + 'a'.repeat(MAX_DASHBOARD_URL_LENGTH), viewer);
  t.is(long.status, 414);
  // A selector of the longest length, every character percent-encoded, still reaches the parser.
  const longest = await get('/api/nodes?label_selector=' + '%20'.repeat(MAX_SELECTOR_LENGTH), viewer);
  t.true(longest.status === 200 || longest.status === 400, `a valid-length request is read (${longest.status})`);
  const headers = await get('/', viewer, { headers: { 'x-big': 'a'.repeat(64 * 1024) } });
  t.is(headers.status, 431);
  const cross = await get('/api/nodes', viewer, { headers: { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'cors' } });
  t.is(cross.status, 403, "another site's page cannot read the fleet through a viewer's browser");
});

/** Opens a live stream as `who`; resolves with its status and a reader of its events. */
function openStream(who: ClientCert, query = ''): Promise<{ status: number; events: { event: string; data: unknown }[]; next(pred: (e: { event: string; data: unknown }) => boolean): Promise<void>; close(): void }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: base.hostname, port: base.port, path: `/api/events${query}`, ca: env.ca, cert: who.certPem, key: who.keyPem, agent: false }, (res) => {
      const events: { event: string; data: unknown }[] = [];
      const waiters: (() => void)[] = [];
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        for (let i; (i = buf.indexOf('\n\n')) >= 0; ) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event && data) events.push({ event, data: JSON.parse(data) });
        }
        for (const w of waiters.splice(0)) w();
      });
      resolve({
        status: res.statusCode ?? 0,
        events,
        async next(pred) {
          while (!events.some(pred)) await new Promise<void>((r) => waiters.push(r));
        },
        close: () => req.destroy(),
      });
    });
    req.on('error', (err) => (err.message === 'socket hang up' ? undefined : reject(err)));
    req.end();
  });
}

test.serial('dashboard events - live node changes, filtered by the label selector; at most MAX_DASHBOARD_STREAMS_PER_IDENTITY per identity', async (t) => {
  const all = await openStream(viewer);
  const edge = await openStream(viewer, '?label_selector=' + encodeURIComponent('role=edge'));
  t.is(all.status, 200);
  await all.next((e) => e.event === 'hello');
  t.like(all.events[0]!.data as object, { identity: 'viewer/alice', role: 'viewer' });
  const anon = clientsFor(env.controller.address, env.ca);
  const edgeNode = await enroll(anon, await createToken(admin, 900, { role: 'edge' }), 'edge-1');
  const coreNode = await enroll(anon, await createToken(admin, 900, { role: 'core' }), 'core-1');
  anon.close();
  const agents = [
    agentStream(clientsFor(env.controller.address, env.ca, edgeNode).agent, 'edge-1', { role: 'edge' }),
    agentStream(clientsFor(env.controller.address, env.ca, coreNode).agent, 'core-1', { role: 'core' }),
  ];
  const named = (name: string) => (e: { event: string; data: unknown }): boolean => e.event === 'node' && (e.data as { node: { name: string; connected: boolean } }).node.name === name && (e.data as { node: { connected: boolean } }).node.connected;
  await all.next(named('edge-1'));
  await all.next(named('core-1'));
  await edge.next(named('edge-1'));
  t.false(edge.events.some(named('core-1')), 'the selector keeps core-1 out');
  const more = [];
  for (let i = 2; i < MAX_DASHBOARD_STREAMS_PER_IDENTITY; i++) more.push(await openStream(viewer));
  const refused = await openStream(viewer);
  t.is(refused.status, 429);
  const other = await openStream(operator);
  t.is(other.status, 200, 'another identity still gets one');
  for (const s of [all, edge, refused, other, ...more]) s.close();
  for (const a of agents) a.close();
});
