// readSnapshotKeyRotations: the revision and key rotations of a serialized snapshot, as a full
// decode gives them, without decoding the rest.
import test from 'ava';
import { PrefixListUse, readSnapshotKeyRotations, Snapshot } from '@edgeplane/proto';

test('readSnapshotKeyRotations - returns the revision and rotations a full decode does, and nothing else; junk gives an empty snapshot', (t) => {
  const rotation = { entry: Buffer.from([1, 2, 3]), signature: Buffer.alloc(64, 7), keyId: 'k2', format: 0 };
  const full = Snapshot.fromPartial({
    revision: 123_456_789_012n,
    lastHash: Buffer.alloc(32, 1),
    fleetId: 'default',
    keyRotations: [rotation, { ...rotation, keyId: 'k3' }],
    prefixLists: [{ metadata: { name: 'feed' }, spec: { use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE, prefixes: ['192.0.2.0/24', '198.51.100.0/24'] } }],
    policies: [{ metadata: { name: 'p' } }],
  });
  const bytes = Snapshot.encode(full).finish();
  const decoded = Snapshot.decode(bytes);
  const read = readSnapshotKeyRotations(bytes);
  t.is(read.revision, decoded.revision);
  t.deepEqual(read.keyRotations, decoded.keyRotations);
  t.is(read.keyRotations.length, 2);
  t.deepEqual(read.prefixLists, [], 'the rest is skipped');
  t.deepEqual(read.policies, []);
  t.deepEqual(readSnapshotKeyRotations(new Uint8Array([0x3a, 0xff, 0xff, 0xff])), Snapshot.fromPartial({}));
});
