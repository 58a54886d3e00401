// The fleet dashboard in a real browser: Debian's Chromium driven by playwright-core, against a
// real fleet (controller with mutual TLS, nats-server, three enrolled agents: the canary on the
// eBPF datapath in a network namespace, two on the in-memory one). It sees the nodes, an apply and a staged rollout as they happen (waiting
// on the page, never sleeping), refuses a browser without a certificate and one with a node's,
// and saves a screenshot of each view under test-results/dashboard/ for review.
import test from 'ava';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { Action, ApplyPolicyRequest, ApplyServiceRequest, Policy, Protocol, Service } from '@edgeplane/proto';
import { freePort } from '@edgeplane/intent-log';
import { defaultCaFiles, generateKeyPair, loadOrCreateCertificateAuthority } from '@edgeplane/controller';
import { AGENT_MAIN, FleetNetwork, type FleetNode } from './support/fleet.js';
import { Supervised } from './support/supervisor.js';
import { TestControlPlane, until } from './support/control-plane.js';
import { call } from './support/grpc.js';

const SHOTS = join(process.cwd(), 'test-results', 'dashboard');
const CHROMIUM = '/usr/bin/chromium';
/** How long the page may take to show a change: "within a few seconds". */
const SEEN_MS = 5_000;

let net: FleetNetwork;
let cp: TestControlPlane;
let nodes: FleetNode[] = [];
let base: string;
let browser: Browser;
let viewer: { cert: Buffer; key: Buffer };
let nodeCert: { cert: Buffer; key: Buffer };
const contexts: BrowserContext[] = [];
const memoryAgents: Supervised[] = [];
const NODE_NAMES = ['node-1', 'node-2', 'node-3'];

/** A real agent process on the in-memory datapath, enrolled with `cp` (as test/replicas.test.ts starts them). */
async function startMemoryAgent(name: string, labels: Record<string, string>): Promise<Supervised> {
  const stateDir = join(cp.dir, 'agents', name);
  mkdirSync(stateDir, { recursive: true });
  return Supervised.start(`agent-${name}`, {
    command: process.execPath,
    args: [
      AGENT_MAIN, '--node-name', name, '--labels', Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(','),
      '--controller', cp.address, '--nats', `nats://127.0.0.1:${cp.natsPort}`, '--datapath', 'memory', '--state-dir', stateDir,
      '--trusted-key', cp.publicKeyB64, ...(await cp.agentTrustArgs(name, labels)), '--heartbeat-interval', '1', '--counter-interval', '1',
    ],
    readyEvent: 'ready',
  });
}

test.before(async (t) => {
  // Three agents load their eBPF programs, each well over a minute on a loaded machine.
  t.timeout(10 * 60_000);
  mkdirSync(SHOTS, { recursive: true });
  net = new FleetNetwork();
  const port = await freePort('127.0.0.1');
  cp = await TestControlPlane.start({ extra: ['--dashboard-listen', `127.0.0.1:${port}`] });
  base = String(cp.controller.ready.dashboard);
  // node-1, the canary, is a real agent on the eBPF datapath in its namespace (its rule counts
  // real packets); node-2 and node-3 are the agent's own runtime on the in-memory datapath
  // (DESIGN, "Scale beyond one machine"), which start in seconds where loading programs can take
  // minutes on a loaded machine. Each is enrolled with a join token and speaks mutual TLS.
  const canary = net.addNode(1, 'node-1');
  nodes = [canary];
  const started = canary.startAgent(cp, { role: 'edge', node: 'node-1', canary: 'true' });
  for (const name of ['node-2', 'node-3']) memoryAgents.push(await startMemoryAgent(name, { role: 'edge', node: name }));
  await started;
  await until('3 nodes connected', async () => (await call(cp.api.fleet, cp.api.fleet.listNodes, { pageSize: 0, pageToken: '', labelSelector: '' })).nodes.filter((n) => n.status?.connected).length === 3, 60_000, () => cp.controller.output);
  const key = generateKeyPair();
  const issued = await call(cp.api.trust, cp.api.trust.issueCertificate, { role: 'viewer', name: 'alice', publicKey: Buffer.from(key.publicKeyDer), lifetime: undefined });
  viewer = { cert: Buffer.from(issued.certificate), key: Buffer.from(key.privateKeyPem) };
  // A node certificate as enrollment makes them: straight from the fleet CA.
  const { ca } = await loadOrCreateCertificateAuthority(defaultCaFiles(join(cp.dir, 'ctl')), String(cp.controller.ready.fleetId));
  const nodeKey = generateKeyPair();
  const n = await ca.issue({ identity: { fleet: ca.fleet, role: 'node', name: 'node-1' }, publicKey: nodeKey.publicKeyDer, lifetimeMs: 3_600_000 });
  nodeCert = { cert: Buffer.from(n.certPem), key: Buffer.from(nodeKey.privateKeyPem) };
  browser = await chromium.launch({ executablePath: CHROMIUM });
});

test.after.always(async () => {
  for (const c of contexts) await c.close().catch(() => undefined);
  await browser?.close();
  for (const a of memoryAgents) await a.stop(3000).catch(() => undefined);
  await net?.remove();
  await cp?.close();
});

/**
 * A browser context presenting `who`'s client certificate (none when undefined). The fleet CA is
 * not in the browser's store, so the server certificate is not checked here: the HTTPS test
 * (services/controller/test/dashboard-http.test.ts) checks it against the fleet CA.
 */
async function browse(who: { cert: Buffer; key: Buffer } | undefined): Promise<{ page: Page; problems: string[] }> {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1360, height: 860 },
    ...(who ? { clientCertificates: [{ origin: base.replace(/\/$/, ''), cert: who.cert, key: who.key }] } : {}),
  });
  contexts.push(context);
  const page = await context.newPage();
  // Anything the content policy refused, or a script error, is a failure of the page.
  const problems: string[] = [];
  // (The selector test's bad selector is answered 400 on purpose: Chromium logs that as an error.)
  page.on('console', (m) => (m.type() === 'error' && !/status of 400/.test(m.text()) ? problems.push(m.text()) : undefined));
  page.on('pageerror', (e) => problems.push(e.message));
  return { page, problems };
}

const shot = (page: Page, name: string): Promise<Buffer> => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

let page: Page;
let problems: string[];

test.serial('dashboard in chromium - a viewer certificate sees every node, connected, live', async (t) => {
  ({ page, problems } = await browse(viewer));
  const res = await page.goto(base);
  t.is(res?.status(), 200);
  for (const n of NODE_NAMES) await page.locator(`#nodes-table tr[data-node="${n}"]`).getByText('connected', { exact: true }).waitFor({ timeout: SEEN_MS });
  await page.locator('#live', { hasText: 'live' }).waitFor();
  t.is(await page.locator('#identity').textContent(), 'viewer/alice');
  t.is(await page.locator('#nodes-table tbody tr').count(), 3);
  t.regex((await page.locator('tr[data-node="node-1"]').textContent()) ?? '', /canary=true/);
  await shot(page, '1-nodes');
  t.deepEqual(problems, []);
});

test.serial('dashboard in chromium - the label selector filters with the project parser and says what is wrong', async (t) => {
  await page.locator('#selector').fill('canary=true');
  await page.locator('#apply-selector').click();
  await page.locator('#nodes-summary', { hasText: '1 node matching canary=true' }).waitFor({ timeout: SEEN_MS });
  t.is(await page.locator('#nodes-table tbody tr').count(), 1);
  await shot(page, '2-nodes-filtered');
  await page.locator('#selector').fill('role in (edge');
  await page.locator('#selector').press('Enter');
  await page.locator('#selector-error').filter({ hasText: /\S/ }).waitFor({ timeout: SEEN_MS });
  t.regex((await page.locator('#selector-error').textContent()) ?? '', /\)/, 'the parser names what is missing');
  await page.locator('#selector').fill('');
  await page.locator('#apply-selector').click();
  await page.locator('#nodes-summary', { hasText: /^3 nodes:/ }).waitFor({ timeout: SEEN_MS });
  t.deepEqual(problems, []);
});

test.serial('dashboard in chromium - an apply shows as a new policy and every node ACKing its revision', async (t) => {
  t.timeout(5 * 60_000);
  const started = Date.now();
  const { revision } = await call(cp.api.intent, cp.api.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: Policy.fromPartial({
      metadata: { name: 'dash-count', labels: { team: 'edge' } },
      spec: { nodeSelector: { matchLabels: { role: 'edge' } }, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 1, protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_ALLOW }] },
    }),
  }));
  // The agents take what they take; once the controller knows, the page shows it within seconds.
  await until('every node ACKs the apply', async () => (await call(cp.api.fleet, cp.api.fleet.getRevisionStatus, { revision, nodeLabelSelector: '' })).nodesApplied === 3, 120_000);
  for (const n of NODE_NAMES) await page.locator(`tr[data-node="${n}"] td.applied`, { hasText: new RegExp(`^${revision}$`) }).waitFor({ timeout: SEEN_MS });
  for (const n of NODE_NAMES) t.regex((await page.locator(`tr[data-node="${n}"]`).textContent()) ?? '', new RegExp(`ACK ${revision}`));
  t.log(`apply to every node's ACK on the page: ${Date.now() - started} ms (agents included)`);
  await page.goto(`${base}#policies`);
  await page.locator('tr[data-policy="dash-count"]').waitFor({ timeout: SEEN_MS });
  t.regex((await page.locator('tr[data-policy="dash-count"]').textContent()) ?? '', /role=edge/);
  await shot(page, '3-policies');
  t.deepEqual(problems, []);
});

test.serial('dashboard in chromium - a staged rollout shows wave by wave, then its timeline to the last ACK', async (t) => {
  t.timeout(5 * 60_000);
  await page.goto(`${base}#rollouts`);
  const { revision } = await call(cp.api.intent, cp.api.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: Policy.fromPartial({
      metadata: { name: 'dash-staged' },
      spec: {
        nodeSelector: { matchLabels: { role: 'edge' } },
        defaultAction: Action.ACTION_ALLOW,
        rules: [{ priority: 5, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 7000, last: 0 }], action: Action.ACTION_DENY }],
        rolloutStrategy: {
          strategy: {
            $case: 'staged',
            staged: { waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { canary: 'true' } } }, bakeTime: { seconds: 3n, nanos: 0 } }, { name: 'rest', target: { $case: 'percent', percent: 100 } }] },
          },
        },
      },
    } as unknown as Policy),
  }));
  const card = page.locator('[data-rollout="policy/dash-staged"]');
  await card.waitFor({ timeout: SEEN_MS });
  t.regex((await card.textContent()) ?? '', new RegExp(`revision ${revision}`));
  // The canary's wave completes and bakes while the rest waits: the page shows it in between.
  await card.locator('[data-wave="0"]', { hasText: '1/1 done' }).waitFor({ timeout: 60_000 });
  t.is(await card.getAttribute('data-state'), 'progressing');
  await shot(page, '4-rollout-progressing');
  await page.locator('[data-rollout="policy/dash-staged"][data-state="succeeded"]').waitFor({ timeout: 120_000 });
  t.regex((await card.locator('[data-wave="1"]').textContent()) ?? '', /2\/2 done/);
  await shot(page, '5-rollouts');

  await page.goto(`${base}#rollout/policy/dash-staged`);
  await page.locator('ol.timeline li[data-kind="ack"]').nth(2).waitFor({ timeout: SEEN_MS }).catch(async (err: Error) => {
    t.log(await page.locator('#rollout-detail').textContent());
    throw err;
  });
  const items = await page.locator('ol.timeline li').allTextContents();
  t.regex(items[0] ?? '', new RegExp(`policy dash-staged: revision ${revision} accepted`), 'it starts at the API call');
  t.true(items.some((i) => /node-1 ACKed/.test(i)), 'the canary ACKed');
  const canaryAck = items.findIndex((i) => /node-1 ACKed/.test(i));
  const restWave = items.findIndex((i) => /wave 2 \(rest\) started/.test(i));
  t.true(canaryAck < restWave, 'the canary ACKed before the second wave started');
  t.regex((await page.locator('#timeline-summary').textContent()) ?? '', /API call to the last node's ACK: \d+\.\d s/);
  t.is(await page.locator('svg[aria-label="rollout timeline"] circle.ack').count(), 3);
  await shot(page, '6-rollout-timeline');
  t.deepEqual(problems, []);
});

test.serial('dashboard in chromium - services and per-rule counters over time', async (t) => {
  t.timeout(5 * 60_000);
  await call(cp.api.intent, cp.api.intent.applyService, ApplyServiceRequest.fromPartial({
    service: Service.fromPartial({
      metadata: { name: 'dash-web' },
      spec: { nodeSelector: { matchLabels: { site: 'nowhere' } }, vip: '192.0.2.10', protocol: Protocol.PROTOCOL_TCP, port: 443, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', weight: 3 }] },
    }),
  }));
  await page.goto(`${base}#services`);
  await page.locator('tr[data-service="dash-web"]').waitFor({ timeout: SEEN_MS });
  t.regex((await page.locator('tr[data-service="dash-web"]').textContent()) ?? '', /192\.0\.2\.10:443/);
  await shot(page, '7-services');

  // Real packets through node-1's XDP program, counted by dash-count's rule.
  await page.goto(`${base}#counters`);
  t.true((await nodes[0]!.ping(0, 10)) > 0);
  const chart = page.locator('.chart[data-rule="dash-count#1"]');
  const total = async (): Promise<number> => Number(/(\d+) total/.exec((await chart.locator('.rate').textContent()) ?? '')?.[1] ?? 0);
  await chart.locator('.rate', { hasText: /[1-9]\d* total/ }).waitFor({ timeout: 15_000 });
  const first = await total();
  await nodes[0]!.ping(0, 10);
  // The next samples count the new packets: the total grows and the rate line leaves the floor.
  await until('the chart to count the new packets', async () => (await total()) > first, 15_000);
  await until('the rate line to leave the floor', async () => ((await chart.locator('polyline').getAttribute('points')) ?? '').split(' ').some((p) => Number(p.split(',')[1]) < 58), 15_000);
  t.true((await total()) > first);
  await shot(page, '8-counters');
  t.deepEqual(problems, []);
});

test.serial('dashboard in chromium - a browser without a certificate, or with a node certificate, is refused', async (t) => {
  const anonymous = await browse(undefined);
  const none = await anonymous.page.goto(base);
  t.is(none?.status(), 401);
  t.regex((await anonymous.page.textContent('body')) ?? '', /needs a client certificate from this fleet's CA/);
  await shot(anonymous.page, '9-refused-no-certificate');
  const asNode = await browse(nodeCert);
  const refused = await asNode.page.goto(base);
  t.is(refused?.status(), 403);
  t.regex((await asNode.page.textContent('body')) ?? '', /node\/node-1 may not call dashboard GET \//);
  await shot(asNode.page, '10-refused-node-certificate');
});
