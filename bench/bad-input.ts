// Bad input (issue 12): how long the controller takes to refuse oversized or invalid requests,
// beside a valid request of the same kind. Goal: each refusal within 50 ms. It starts the
// controller as the README shows (its dist/ build, embedded nats-server, plaintext on
// loopback) and removes everything it created.
//
//   npx tsc --build && node --import=tsx bench/bad-input.ts [--quick]
//
// Each figure is the median of N calls (N = 7, 3 with --quick) from one gRPC client, wall
// time from the call to its answer. Requests are encoded once before timing and sent as
// bytes, so the figure is the controller's (decode, check, answer) plus loopback transport,
// not the client's encoding.
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Client, Metadata, credentials, status, type ServiceError } from '@grpc/grpc-js';
import { Action, ApplyPolicyRequest, ListPoliciesRequest, LabelSelectorRequirement_Operator as Op, type DeepPartial, type Policy } from '@edgeplane/proto';
import { CONTROLLER_MAIN } from '../test/support/fleet.js';
import { Supervised } from '../test/support/supervisor.js';

const quick = process.argv.includes('--quick');
const N = quick ? 3 : 7;
const GOAL_MS = 50;

const apply = (p: DeepPartial<Policy>): ApplyPolicyRequest =>
  ApplyPolicyRequest.fromPartial({ validateOnly: true, policy: { metadata: { name: 'bench', ...p.metadata }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }], ...p.spec } } });
const list = (labelSelector: string) => ({ pageSize: 0, pageToken: '', labelSelector });
const terms = (n: number): string => Array.from({ length: n }, (_, i) => `k${i}=v`).join(',');
const exprs = (n: number) => ({ matchLabels: {}, matchExpressions: Array.from({ length: n }, (_, i) => ({ key: `k${i}`, operator: Op.OPERATOR_EXISTS, values: [] })) });
const values = (n: number) => ({ matchLabels: {}, matchExpressions: [{ key: 'k', operator: Op.OPERATOR_IN, values: Array.from({ length: n }, (_, i) => `v${i}`) }] });

interface Row {
  request: string;
  bad: string;
  badMs: number;
  badCode: string;
  valid: string;
  validMs: number;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-bad-input-'));
  let controller: Supervised | undefined;
  let raw: Client | undefined;
  try {
    controller = await Supervised.start('controller', {
      command: process.execPath,
      args: [CONTROLLER_MAIN, '--insecure', '--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'ctl'), '--shutdown-grace', '1'],
      readyEvent: 'ready',
    });
    const client = new Client(String(controller.ready.grpc), credentials.createInsecure());
    raw = client;
    const send = (path: string, bytes: Buffer) => (): Promise<unknown> =>
      new Promise((resolve, reject) =>
        client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, bytes, new Metadata(), { deadline: Date.now() + 30_000 }, (err, res) => (err ? reject(err) : resolve(res))),
      );
    const median = async (run: () => Promise<unknown>): Promise<{ ms: number; code: string }> => {
      const times: number[] = [];
      let code = 'OK';
      await run().catch(() => undefined); // warm-up
      for (let i = 0; i < N; i++) {
        const t0 = performance.now();
        await run().then(
          () => (code = 'OK'),
          (e: unknown) => (code = status[(e as ServiceError).code] ?? 'error'),
        );
        times.push(performance.now() - t0);
      }
      times.sort((a, b) => a - b);
      return { ms: times[Math.floor(times.length / 2)]!, code };
    };
    const listCall = (s: string) => send('/edgeplane.v1.IntentService/ListPolicies', Buffer.from(ListPoliciesRequest.encode(list(s)).finish()));
    const applyCall = (r: ApplyPolicyRequest) => send('/edgeplane.v1.IntentService/ApplyPolicy', Buffer.from(ApplyPolicyRequest.encode(r).finish()));
    const cases: [string, string, () => Promise<unknown>, string, () => Promise<unknown>][] = [
      ['ListPolicies', '1 MiB selector', listCall('a'.repeat(1024 * 1024)), '64-term selector', listCall(terms(64))],
      ['ListPolicies', '100,000 terms', listCall(terms(100_000)), '64-term selector', listCall(terms(64))],
      ['ListPolicies', '8,000-char bad value', listCall(`role=${'x'.repeat(8000)}`), 'role=edge', listCall('role=edge')],
      ['ApplyPolicy', '8,000-char label value', applyCall(apply({ metadata: { labels: { team: 'x'.repeat(8000) } } })), '64 labels', applyCall(apply({ metadata: { labels: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, 'v'])) } }))],
      ['ApplyPolicy', '10,000 match expressions', applyCall(apply({ spec: { nodeSelector: exprs(10_000) } })), '64 expressions', applyCall(apply({ spec: { nodeSelector: exprs(64) } }))],
      ['ApplyPolicy', '300,000 values', applyCall(apply({ spec: { nodeSelector: values(300_000) } })), '256 values', applyCall(apply({ spec: { nodeSelector: values(256) } }))],
      [
        'ApplyPolicy',
        '5,000 bad CIDRs',
        applyCall(apply({ spec: { rules: Array.from({ length: 5000 }, (_, i) => ({ priority: i + 1, action: Action.ACTION_DENY, sourceCidrs: [`${'9'.repeat(100)}/${i}`] })) } })),
        '5,000 good CIDRs',
        applyCall(apply({ spec: { rules: Array.from({ length: 5000 }, (_, i) => ({ priority: i + 1, action: Action.ACTION_DENY, sourceCidrs: [`10.${i >> 8}.${i & 255}.0/24`] })) } })),
      ],
    ];
    const rows: Row[] = [];
    for (const [request, bad, runBad, valid, runValid] of cases) {
      const b = await median(runBad);
      const v = await median(runValid);
      rows.push({ request, bad, badMs: b.ms, badCode: b.code, valid, validMs: v.ms });
    }
    process.stdout.write(`bad input: median of ${N} calls; goal: each refusal within ${GOAL_MS} ms. ${cpus().length} CPUs, kernel ${release()}, Node ${process.version}\n\n`);
    const header = ['request', 'bad input', 'code', 'ms', 'valid input', 'ms', 'goal'];
    const table = rows.map((r) => [r.request, r.bad, r.badCode, r.badMs.toFixed(1), r.valid, r.validMs.toFixed(1), r.badMs <= GOAL_MS ? 'met' : 'MISSED']);
    const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i]!.length)));
    for (const row of [header, ...table]) process.stdout.write(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ') + '\n');
    process.stdout.write('\n' + JSON.stringify({ bench: 'bad-input', goalMs: GOAL_MS, calls: N, rows }) + '\n');
  } finally {
    raw?.close();
    await controller?.stop(3000);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
