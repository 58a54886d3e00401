import { Action, Policy, Protocol, LogEntry, signLogEntry, keyIdOf, policyPatchOf, LOG_FORMAT_PATCHES } from '@edgeplane/proto';
import { IntentChain } from '@edgeplane/intent-log';
import { generateKeyPairSync } from 'node:crypto';
import { compileIntent, compileTables } from './src/index.js';
import { EbpfDatapath } from './src/datapath/ebpf-datapath.js';
import { mountBpffs } from './test/datapath-helpers.js';
function rulesPolicy(n: number, change?: number): Policy {
  const rules: any[] = [{ priority: 1, name: 'probe', sourceCidrs: [`10.0.0.1/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY }];
  for (let i = 1; i < n; i++) { const k = i >> 1; rules.push(i % 2 === 0 ? { priority: i + 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1 + k, last: 0 }], action: Action.ACTION_DENY } : { priority: i + 1, sourceCidrs: [`198.18.${k >> 8}.${k & 255}/32`], protocol: Protocol.PROTOCOL_TCP, action: Action.ACTION_DENY }); }
  if (change !== undefined) rules[n - 1] = { priority: n, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 50_000 + change, last: 0 }], action: Action.ACTION_DENY };
  return Policy.fromPartial({ metadata: { name: 'bench-rules', resourceVersion: BigInt(change ?? 0) + 1n }, spec: { nodeSelector: { matchLabels: { role: 'edge' } }, defaultAction: Action.ACTION_ALLOW, rules } });
}
const N = Number(process.argv[2] ?? 65536);
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const chain = new IntentChain(new Map([[keyIdOf(publicKey), publicKey]]));
const bpffs = mountBpffs();
const dp = await EbpfDatapath.open({ pinRoot: bpffs.path });
import { Session } from 'node:inspector/promises';
import { writeFileSync } from 'node:fs';
const session = new Session(); session.connect(); await session.post('Profiler.enable'); await session.post('Profiler.start');
try {
  for (let k = 0; k < 6; k++) {
    let t = performance.now();
    const next = rulesPolicy(N, k);
    let signed;
    if (k === 0) signed = signLogEntry(LogEntry.fromPartial({ revision: 1n, previousHash: Buffer.from(chain.lastHash), change: { upserts: [next] } }), privateKey);
    else signed = signLogEntry(LogEntry.fromPartial({ revision: BigInt(k + 1), previousHash: Buffer.from(chain.lastHash), change: { policyPatches: [policyPatchOf(chain.policies.get('bench-rules')!, next)!] } }), privateKey, LOG_FORMAT_PATCHES);
    const tw = performance.now() - t; t = performance.now();
    chain.append(signed);
    const ta = performance.now() - t; t = performance.now();
    const c = compileIntent([...chain.policies.values()], { role: 'edge' }); const ti = performance.now() - t; t = performance.now();
    compileTables(c.uplink.ruleSet); const tt = performance.now() - t; t = performance.now();
    const r = await dp.apply(c.uplink.ruleSet); const td = performance.now() - t;
    console.log(`k=${k} entry ${signed.entry.length} B (writer ${tw.toFixed(0)} ms) chain.append ${ta.toFixed(0)} compileIntent ${ti.toFixed(0)} compileTables ${tt.toFixed(0)} datapath.apply(excl. tables) ${td.toFixed(0)} ${r.write}`);
  }
} finally { const { profile } = await session.post('Profiler.stop'); writeFileSync('/tmp/delta-prof2.cpuprofile', JSON.stringify(profile)); dp.close(); bpffs.unmount(); }
