import { Action, Policy, Protocol, validatePolicy } from '@edgeplane/proto';
import { compileIntent, compileTables } from './src/index.js';
function rulesPolicy(n: number, change?: number): Policy {
  const rules: any[] = [{ priority: 1, name: 'probe', sourceCidrs: [`10.0.0.1/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY }];
  for (let i = 1; i < n; i++) { const k = i >> 1; rules.push(i % 2 === 0 ? { priority: i + 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1 + k, last: 0 }], action: Action.ACTION_DENY } : { priority: i + 1, sourceCidrs: [`198.18.${k >> 8}.${k & 255}/32`], protocol: Protocol.PROTOCOL_TCP, action: Action.ACTION_DENY }); }
  if (change !== undefined) rules[n - 1] = { priority: n, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 50_000 + change, last: 0 }], action: Action.ACTION_DENY };
  return Policy.fromPartial({ metadata: { name: 'bench-rules' }, spec: { nodeSelector: { matchLabels: { role: 'edge' } }, defaultAction: Action.ACTION_ALLOW, rules } });
}
for (let k = 0; k < 4; k++) {
  const p = rulesPolicy(65536, k);
  let t = performance.now();
  validatePolicy(p); const tv = performance.now() - t; t = performance.now();
  const c = compileIntent([p], { role: 'edge' }); const ti = performance.now() - t; t = performance.now();
  const tb = compileTables(c.uplink.ruleSet); const tt = performance.now() - t;
  console.log(`validate ${tv.toFixed(0)} compileIntent ${ti.toFixed(0)} compileTables ${tt.toFixed(0)} lpm ${tb.lpm.count} words ${tb.classWords.count} classes ${tb.classCount}`);
}
