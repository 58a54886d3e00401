import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { ApplyPolicyRequest, keyIdOf, publicKeyFromRaw, openLogEntry } from '@edgeplane/proto';
import { IntentLog } from '@edgeplane/intent-log';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@edgeplane/telemetry';
import { call, clients } from '../../../test/support/grpc.js';
import { prometheusMetricNames } from '../src/metrics.js';
import { nodeNatsOptions, samplePolicy, startTestController } from './helpers.js';

test('tracing - ApplyPolicy is a server span, the publish its child, and the entry carries its trace', async (t) => {
  const exporter = new InMemorySpanExporter();
  const env = await startTestController(['--prometheus-port', '0', '--prometheus-host', '127.0.0.1'], { spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const c = clients(env.controller.address);
  t.teardown(async () => {
    c.close();
    await env.stop();
  });
  const res = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('traced') }));
  const spans = exporter.getFinishedSpans();
  const rpc = spans.find((s) => s.name === 'edgeplane.v1.IntentService/ApplyPolicy');
  const publish = spans.find((s) => s.name === 'edgeplane.intent.publish');
  t.truthy(rpc);
  t.truthy(publish);
  t.is(publish!.spanContext().traceId, rpc!.spanContext().traceId);
  t.is(publish!.parentSpanContext?.spanId, rpc!.spanContext().spanId);
  t.is(rpc!.attributes['edgeplane.revision'], Number(res.revision));

  const nc = await connect({ servers: env.controller.natsUrl, ...(await nodeNatsOptions(env.controller, 'telemetry-reader')) });
  t.teardown(() => nc.close());
  const log = await IntentLog.open(nc, { create: false });
  const key = publicKeyFromRaw(env.controller.publicKey);
  let traceparent = '';
  for await (const { signed } of log.read(res.revision, res.revision)) traceparent = openLogEntry(signed, new Map([[keyIdOf(key), key]])).traceContext?.traceparent ?? '';
  t.is(traceparent, `00-${rpc!.spanContext().traceId}-${rpc!.spanContext().spanId}-01`, 'agents continue the trace of the API call');

  // Metrics: the Prometheus endpoint serves the intent revision.
  const body = await (await fetch(env.controller.prometheusUrl!)).text();
  t.regex(body, new RegExp(`edgeplane_intent_revision(\\{[^}]*\\})? ${res.revision}`));
  t.regex(body, /edgeplane_nodes\{state="connected"[^}]*\} 0/);
  // Every edgeplane metric the scrape shows is one FLEET_METRICS names, as Prometheus spells it.
  const known = new Set(prometheusMetricNames());
  for (const [, name] of body.matchAll(/^# TYPE (edgeplane_\w+)/gm)) t.true(known.has(name!), `${name} is in FLEET_METRICS`);
});

test('grafana - the dashboard under deploy/ reads only metrics the controller exports, by their Prometheus names', (t) => {
  const dashboard = JSON.parse(readFileSync(fileURLToPath(new URL('../../../deploy/grafana/edgeplane-fleet.json', import.meta.url)), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[]; templating: { list: { query: unknown }[] } };
  const known = new Set(prometheusMetricNames());
  const exprs = [...dashboard.panels.flatMap((p) => p.targets.map((x) => [p.title, x.expr] as const)), ...dashboard.templating.list.filter((v) => typeof v.query === 'string').map((v) => ['variable', v.query as string] as const)];
  t.true(dashboard.panels.length >= 8);
  const used = new Set<string>();
  for (const [title, expr] of exprs) {
    for (const [name] of expr.matchAll(/edgeplane_\w+/g)) {
      t.true(known.has(name), `${title}: ${name} is exported (${[...known].join(', ')})`);
      used.add(name);
    }
  }
  for (const name of ['edgeplane_nodes', 'edgeplane_node_applied_revision', 'edgeplane_interface_packets_total', 'edgeplane_rule_packets_total', 'edgeplane_conntrack_entries', 'edgeplane_lb_packets_total', 'edgeplane_blocklist_dropped_packets_total']) t.true(used.has(name), `the dashboard shows ${name}`);
});
