// The prefix lists a chain holds: the followers of one process share the list an entry made,
// however each caught up (pure: no NATS).
import test from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { LOG_FORMAT_BLOCKLIST, LogEntry, PrefixListUse, Snapshot, keyIdOf, signLogEntry, type PrefixListChange, type SignedLogEntry } from '@edgeplane/proto';
import { IntentChain } from '../src/index.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);

const change = (version: bigint, base: bigint, add: string[], remove: string[] = []): PrefixListChange => ({
  metadata: { name: 'feed', labels: {}, annotations: {}, resourceVersion: version, createRevision: 1n, createTime: undefined, updateTime: undefined },
  spec: { nodeSelector: undefined, use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE, description: '', prefixes: [] },
  baseResourceVersion: base,
  add,
  remove,
  delete: false,
});

function next(chain: IntentChain, c: PrefixListChange): SignedLogEntry {
  const revision = chain.revision + 1n;
  return signLogEntry(LogEntry.fromPartial({ revision, previousHash: Buffer.from(chain.lastHash), blocklistChange: { prefixLists: [c], blocks: [] } }), privateKey, LOG_FORMAT_BLOCKLIST);
}

test('intent chain - chains that append the same entry hold the same list object, also one that started from a snapshot; a base the change does not fit is refused', (t) => {
  const a = new IntentChain(trusted);
  const e1 = next(a, change(1n, 0n, ['10.0.0.0/8', '192.0.2.0/24']));
  a.append(e1);
  const v1 = a.prefixLists.get('feed')!;
  // A follower that starts later, from a snapshot of revision 1 (its own objects: decoded afresh).
  const atOne = Snapshot.decode(Snapshot.encode(a.snapshot()).finish());
  const e2 = next(a, change(2n, 1n, ['198.51.100.0/24'], ['10.0.0.0/8']));
  a.append(e2);
  const v2 = a.prefixLists.get('feed')!;
  t.deepEqual(v2.spec!.prefixes, ['192.0.2.0/24', '198.51.100.0/24']);

  const b = new IntentChain(trusted);
  b.append(e1);
  b.append(e2);
  t.is(b.prefixLists.get('feed'), v2, 'a second follower of the same entries');

  const c = new IntentChain(trusted);
  c.load(atOne);
  t.not(c.prefixLists.get('feed'), v1, "the snapshot's list is an object of its own");
  c.append(e2);
  t.is(c.prefixLists.get('feed'), v2, 'a follower whose base is another object, from a snapshot, gets the list the entry made');

  // A snapshot that disagrees with the log (a base without the prefix the change removes) is not
  // given the kept list: the change is applied to it, and refused.
  const d = new IntentChain(trusted);
  const other = Snapshot.decode(Snapshot.encode(atOne).finish());
  other.prefixLists[0]!.spec!.prefixes = ['192.0.2.0/24', '203.0.113.0/24', '172.16.0.0/12'];
  d.load(other);
  t.throws(() => d.append(e2), { message: /removes "10\.0\.0\.0\/8", which the list does not hold/ });
  t.is(d.revision, 1n, 'the chain did not move');
});
