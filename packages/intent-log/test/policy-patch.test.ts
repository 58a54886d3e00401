import test from 'ava';
import { generateKeyPairSync, verify } from 'node:crypto';
import {
  Action,
  LOG_FORMAT_PATCHES,
  LogEntry,
  PatchError,
  Policy,
  Protocol,
  SignatureError,
  applyPolicyPatch,
  keyIdOf,
  openLogEntry,
  policyDigest,
  policyPatchOf,
  Rule,
  samePolicySpec,
  sameRule,
  signLogEntry,
  withBaseRules,
  signSnapshot,
  type PolicyPatch,
  type SignedLogEntry,
} from '@edgeplane/proto';
import { ChainFollower, IntentChain, IntentLog } from '../src/index.js';
import { natsServerFixture } from '../../../test/support/nats.js';
import { prng, seedFromEnv } from '../../../test/support/prng.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);

/** A policy of `n` rules; `edit` replaces rule `at` with a port of its own (a one-rule change). */
function rules(n: number, version: bigint, edit?: { at: number; port: number }): Policy {
  const list = Array.from({ length: n }, (_, i) => ({ priority: i + 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1 + i }], action: Action.ACTION_DENY }));
  if (edit) list[edit.at] = { priority: edit.at + 1, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: edit.port }], action: Action.ACTION_DENY };
  return Policy.fromPartial({ metadata: { name: 'p', resourceVersion: version }, spec: { rules: list } });
}

const bytes = (p: Policy): Buffer => Buffer.from(Policy.encode(p).finish());

/** Entry `revision` after `chain`, with a whole upsert or a patch. */
function entry(chain: IntentChain, revision: bigint, change: { upserts?: Policy[]; policyPatches?: PolicyPatch[] }): SignedLogEntry {
  const e = LogEntry.fromPartial({ revision, previousHash: Buffer.from(chain.lastHash), change });
  return signLogEntry(e, privateKey, change.policyPatches?.length ? LOG_FORMAT_PATCHES : undefined);
}

test('policy patch - a patch of one rule of 4,096 applies to its base to exactly the next policy, and is a fraction of its bytes', (t) => {
  const base = rules(4096, 1n);
  const next = rules(4096, 2n, { at: 1000, port: 9 });
  const patch = policyPatchOf(base, next)!;
  t.is(patch.splices.length, 1);
  t.deepEqual([patch.splices[0]!.start, patch.splices[0]!.deleteCount, patch.splices[0]!.rules.length], [1000, 1, 1]);
  t.deepEqual(bytes(applyPolicyPatch(base, patch)), bytes(next));
  t.true(Policy.encode(Policy.fromPartial({ metadata: patch.metadata, spec: patch.spec })).finish().length < bytes(next).length / 50);
});

test('policy patch - inserts, removals and no change at all apply exactly', (t) => {
  const base = rules(300, 5n);
  const shapes: Policy[] = [rules(301, 6n), rules(120, 6n), Policy.fromPartial({ ...rules(300, 6n), spec: { ...rules(300, 6n).spec, rules: [...rules(300, 6n).spec!.rules.slice(1)] } }), rules(300, 6n)];
  for (const next of shapes) t.deepEqual(bytes(applyPolicyPatch(base, policyPatchOf(base, next)!)), bytes(next));
});

test('policy patch - another base, a different result, splices out of order or range are PatchErrors', (t) => {
  const base = rules(100, 1n);
  const next = rules(100, 2n, { at: 50, port: 7 });
  const patch = policyPatchOf(base, next)!;
  t.throws(() => applyPolicyPatch(undefined, patch), { instanceOf: PatchError, message: /no base held/ });
  t.throws(() => applyPolicyPatch(rules(100, 3n), patch), { instanceOf: PatchError, message: /base held is version 3/ });
  // Same version, different content (a follower whose base is not the writer's): the digest catches it.
  t.throws(() => applyPolicyPatch(rules(100, 1n, { at: 10, port: 1 }), patch), { instanceOf: PatchError, message: /digest/ });
  const splice = patch.splices[0]!;
  t.throws(() => applyPolicyPatch(base, { ...patch, splices: [splice, splice] }), { instanceOf: PatchError, message: /out of order/ });
  t.throws(() => applyPolicyPatch(base, { ...patch, splices: [{ ...splice, start: 100 }] }), { instanceOf: PatchError, message: /beyond/ });
  t.throws(() => applyPolicyPatch(base, { ...patch, splices: Array.from({ length: 65 }, () => ({ start: 0, deleteCount: 0, rules: [] })) }), { instanceOf: PatchError, message: /at most 64/ });
});

test('policy digest - reusing the previous policy\'s chunks gives the digest a fresh computation gives', (t) => {
  const base = rules(2000, 1n);
  policyDigest(base);
  const patched = applyPolicyPatch(base, policyPatchOf(base, rules(2000, 2n, { at: 1500, port: 3 }))!);
  const fresh = Policy.decode(Policy.encode(patched).finish());
  t.deepEqual(policyDigest(patched, base), policyDigest(fresh));
  t.notDeepEqual(policyDigest(patched), policyDigest(base));
});

/** A random rule from a small domain (so equal pairs occur), in one of the shapes a rule arrives in. */
function randomRule(next: () => number): Rule {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
  const rule = Rule.fromPartial({
    priority: pick([1, 2]),
    name: 'r',
    sourceCidrs: pick([['10.0.0.0/8'], ['10.0.0.0/8', '2001:db8::/32']]),
    protocol: Protocol.PROTOCOL_TCP,
    destinationPorts: pick([[], [{ first: 80, last: 0 }], [{ first: 80, last: 90 }]]),
    action: pick([Action.ACTION_DENY, Action.ACTION_RATE_LIMIT]),
    rateLimit: pick([undefined, { packetsPerSecond: 5n, burst: 1 }]),
    sourcePrefixLists: pick([[], ['feed']]),
  });
  switch (pick(['built', 'decoded', 'reordered', 'sparse'] as const)) {
    case 'built':
      return rule;
    case 'decoded':
      return Rule.decode(Rule.encode(rule).finish());
    case 'reordered':
      // The same fields inserted in reverse order.
      return Object.fromEntries(Object.entries(rule).reverse()) as unknown as Rule;
    case 'sparse': {
      // A key holding undefined left out: another shape, the same bytes.
      const copy: Partial<Rule> = { ...rule };
      if (copy.rateLimit === undefined) delete copy.rateLimit;
      return copy as Rule;
    }
  }
}

test('sameRule - tells two rules apart exactly as their encoded bytes do, whatever shape each arrives in', (t) => {
  const seed = seedFromEnv();
  const next = prng(seed);
  let equal = 0;
  let sparseEqual = 0;
  for (let i = 0; i < 4000; i++) {
    const a = randomRule(next);
    const b = randomRule(next);
    const sameBytes = Buffer.from(Rule.encode(a).finish()).equals(Buffer.from(Rule.encode(b).finish()));
    if (sameRule(a, b) !== sameBytes) return t.fail(`seed ${seed}: sameRule ${!sameBytes} for ${JSON.stringify(a, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))} and ${JSON.stringify(b, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))}`);
    if (sameBytes) equal++;
    if (sameBytes && Object.keys(a).length !== Object.keys(b).length) sparseEqual++;
  }
  t.true(equal > 20 && sparseEqual > 0, `seed ${seed}: ${equal} equal pairs, ${sparseEqual} of different shape`);
});

test('samePolicySpec - the same rules in other objects are the same spec; one rule or one other field different is not', (t) => {
  const base = rules(500, 1n);
  const copy = Policy.decode(Policy.encode(base).finish());
  t.true(samePolicySpec(base.spec!, copy.spec!));
  t.false(samePolicySpec(base.spec!, rules(500, 1n, { at: 499, port: 1 }).spec!));
  t.false(samePolicySpec(base.spec!, rules(499, 1n).spec!));
  t.false(samePolicySpec(base.spec!, { ...copy.spec!, description: 'other' }));
});

test('withBaseRules - the next policy, holding the base\'s rule objects where its rules equal them and copies of the others', (t) => {
  const base = rules(3000, 1n);
  for (const next of [rules(3000, 2n, { at: 1700, port: 9 }), rules(3001, 2n), rules(2000, 2n), rules(3000, 2n)]) {
    const decoded = Policy.decode(Policy.encode(next).finish());
    const shared = withBaseRules(base, decoded);
    t.deepEqual(bytes(shared), bytes(next), 'encodes as the next policy');
    const held = new Set(base.spec!.rules);
    const fromBase = shared.spec!.rules.filter((r) => held.has(r)).length;
    const patch = policyPatchOf(base, next)!;
    const changed = patch.splices.reduce((n, s) => n + s.rules.length, 0);
    t.is(fromBase, shared.spec!.rules.length - changed, 'every rule outside the change is the base\'s object');
    t.false(shared.spec!.rules.some((r) => decoded.spec!.rules.includes(r)), 'and the changed ones are copies, not the caller\'s');
  }
  t.is(withBaseRules(undefined, base).spec!.rules.filter((r, i) => r === base.spec!.rules[i]).length, 0, 'no base: every rule copied');
});

test('policyPatchOf - rules equal to the base\'s but decoded anew: the smallest splice, and the digest a follower computes', (t) => {
  const base = rules(3000, 1n);
  policyDigest(base);
  const next = Policy.decode(Policy.encode(rules(3000, 2n, { at: 2999, port: 4 })).finish());
  const patch = policyPatchOf(base, next)!;
  t.deepEqual(patch.splices.map((s) => [s.start, s.deleteCount, s.rules.length]), [[2999, 1, 1]]);
  t.deepEqual(Buffer.from(patch.resultDigest), Buffer.from(policyDigest(Policy.decode(Policy.encode(next).finish()))));
  t.deepEqual(bytes(applyPolicyPatch(base, patch)), bytes(next));
});

test('log envelope - a format 2 entry verifies for this follower, never for one that verifies the bare bytes (an older agent), and a newer format is refused', (t) => {
  const chain = new IntentChain(trusted);
  const base = rules(10, 1n);
  const signed = entry(chain, 1n, { policyPatches: [policyPatchOf(base, rules(10, 1n, { at: 2, port: 5 }))!] });
  t.is(signed.format, 2);
  t.is(openLogEntry(signed, trusted).change?.policyPatches.length, 1);
  // What an agent built before format 2 checks: the signature over the entry bytes alone.
  t.false(verify(null, signed.entry, publicKey, signed.signature));
  t.throws(() => openLogEntry({ ...signed, format: 0 }, trusted), { instanceOf: SignatureError });
  t.throws(() => openLogEntry({ ...signed, format: 3 }, trusted), { instanceOf: SignatureError });
  t.throws(() => openLogEntry({ ...signed, format: 4 }, trusted), { instanceOf: SignatureError, message: /format 4 is newer/ });
  // Patches under a format 1 signature (a writer bug) are refused too.
  const e = LogEntry.decode(signed.entry);
  t.throws(() => openLogEntry(signLogEntry(e, privateKey), trusted), { instanceOf: SignatureError, message: /format 0 entry carries policy patches/ });
});

test('intent chain - a patch entry is applied as the whole policy; one that does not apply changes nothing', (t) => {
  const writer = new IntentChain(trusted);
  writer.append(entry(writer, 1n, { upserts: [rules(50, 1n)] }));
  const next = rules(50, 2n, { at: 49, port: 4 });
  const patchEntry = entry(writer, 2n, { policyPatches: [policyPatchOf(writer.policies.get('p')!, next)!] });
  // A follower whose policy at version 1 is not the writer's.
  const other = new IntentChain(trusted);
  other.load({ ...writer.snapshot(), policies: [rules(50, 1n, { at: 3, port: 8 })] });
  const r = writer.append(patchEntry);
  t.deepEqual(r.changes.map((c) => c.type), ['modified']);
  t.deepEqual(bytes(writer.policies.get('p')!), bytes(next));
  t.throws(() => other.append(patchEntry), { instanceOf: PatchError });
  t.is(other.revision, 1n);
  t.deepEqual(bytes(other.policies.get('p')!), bytes(rules(50, 1n, { at: 3, port: 8 })));
});

test('intent chain - the rules it holds (whole, patched, from a snapshot) share one frozen empty list, and encode as they did', (t) => {
  const chain = new IntentChain(trusted);
  chain.append(entry(chain, 1n, { upserts: [rules(40, 1n)] }));
  const next = rules(40, 2n, { at: 39, port: 4 });
  chain.append(entry(chain, 2n, { policyPatches: [policyPatchOf(chain.policies.get('p')!, next)!] }));
  const loaded = new IntentChain(trusted);
  loaded.load({ ...chain.snapshot(), policies: [Policy.decode(Policy.encode(next).finish())] });
  for (const held of [chain.policies.get('p')!, loaded.policies.get('p')!]) {
    t.deepEqual(bytes(held), bytes(next));
    const lists = held.spec!.rules.flatMap((r) => [r.sourceCidrs, r.destinationCidrs, r.sourcePrefixLists, r.destinationPrefixLists]);
    t.is(new Set(lists).size, 1, 'every empty list is one array');
    t.true(Object.isFrozen(lists[0]));
    t.is(held.spec!.rules[39]!.sourceCidrs, lists[0]!, 'the patched rule\'s too');
  }
});

const nats = natsServerFixture(test, 'policy-patch-test');

async function until(what: string, pred: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('chain follower - a live patch entry applies; a follower without its base fails closed and catches up from the next snapshot', async (t) => {
  const log = await IntentLog.open(nats.nc, { create: true, stream: 'PP', subject: 'pp.log', liveSubject: 'pp.live', snapshotBucket: 'PPS' });
  const writer = new IntentChain(trusted);
  const write = async (signed: SignedLogEntry): Promise<void> => {
    const at = await log.append(signed, writer.revision);
    writer.append(signed, at);
  };
  await write(entry(writer, 1n, { upserts: [rules(1000, 1n)] }));
  const good = new ChainFollower(log, { trusted });
  const broken = new ChainFollower(log, { trusted, onDivergence: 'refuse', start: { ...writer.snapshot(), policies: [rules(1000, 1n, { at: 7, port: 7 })] } });
  t.teardown(() => (good.close(), broken.close()));
  await good.start();
  await broken.start();
  const next = rules(1000, 2n, { at: 999, port: 65_000 });
  await write(entry(writer, 2n, { policyPatches: [policyPatchOf(writer.policies.get('p')!, next)!] }));
  await until('the good follower to apply the patch', () => good.chain.revision === 2n);
  t.deepEqual(bytes(good.chain.policies.get('p')!), bytes(next));
  await until('the broken follower to refuse it', () => broken.stats.patchFailures > 0);
  await broken.catchUp();
  t.is(broken.chain.revision, 1n, 'no snapshot covers the patch yet: it stays where it was');
  await log.writeSnapshot(signSnapshot(writer.snapshot(), privateKey));
  await broken.catchUp();
  t.is(broken.chain.revision, 2n);
  t.deepEqual(bytes(broken.chain.policies.get('p')!), bytes(next));
});
