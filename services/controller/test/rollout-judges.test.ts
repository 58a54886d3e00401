// RolloutManager.judges: which nodes' counters a rollout in progress reads now (its current wave
// and the nodes shadowing its candidate), what replicas share at once instead of in batches.
// A real IntentStore on a real nats-server holds the rollout records.
import test from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { keyIdOf, Rollout, RolloutKind, RolloutState, type Change } from '@edgeplane/proto';
import { IntentLog } from '@edgeplane/intent-log';
import { CounterStore } from '../src/counter-store.js';
import { IntentStore } from '../src/intent-store.js';
import { NodeRegistry } from '../src/node-registry.js';
import { RolloutManager } from '../src/rollout-manager.js';
import { natsServerFixture } from '../../../test/support/nats.js';
import { samplePolicy } from './helpers.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const nats = natsServerFixture(test, 'rollout-judges-test');

const change = (rollouts: Rollout[], upserts = rollouts.map((r) => samplePolicy(r.name, {}, 1))): Change => ({ upserts, deletes: [], rollouts, serviceUpserts: [], serviceDeletes: [], policyPatches: [] });
const rollout = (name: string, state: RolloutState, waveNodes: string[], shadowNodes: string[] = []): Rollout =>
  Rollout.fromPartial({ name, kind: RolloutKind.ROLLOUT_KIND_POLICY, state, waveNodes, shadowNodes });

test('rollout judges - the current wave and the shadowing nodes of rollouts in progress, as the log moves', async (t) => {
  const log = await IntentLog.open(nats.nc, { create: true, stream: 'RJ', subject: 'rj.log', liveSubject: 'rj.live', snapshotBucket: 'RJS' });
  const store = new IntentStore(log, { controllerId: 'c1', signingKey: privateKey, trusted: new Map([[keyIdOf(publicKey), publicKey]]) });
  t.teardown(() => store.close());
  await store.start();
  const manager = new RolloutManager(store, new NodeRegistry({ load: async () => [], save: async () => undefined }), new CounterStore());
  t.false(manager.judges('n1'), 'no rollout');

  await store.write(() => change([rollout('web', RolloutState.ROLLOUT_STATE_PROGRESSING, ['n1'], ['n2']), rollout('old', RolloutState.ROLLOUT_STATE_SUCCEEDED, ['n3'])]));
  t.true(manager.judges('n1'), 'in the current wave');
  t.true(manager.judges('n2'), 'shadows the candidate');
  t.false(manager.judges('n3'), 'in the wave of a finished rollout');
  t.false(manager.judges('n4'));

  // The next wave, then a pause (still in progress), then the end: each read from the log's newest state.
  await store.write(() => change([rollout('web', RolloutState.ROLLOUT_STATE_PROGRESSING, ['n1', 'n4'])], []));
  t.true(manager.judges('n4'));
  t.false(manager.judges('n2'), 'no longer shadowing');
  await store.write(() => change([rollout('web', RolloutState.ROLLOUT_STATE_PAUSED, ['n1', 'n4'])], []));
  t.true(manager.judges('n4'), 'a paused rollout is still in progress');
  await store.write(() => change([rollout('web', RolloutState.ROLLOUT_STATE_FAILED, ['n1', 'n4'])], []));
  t.false(manager.judges('n1'));
  t.false(manager.judges('n4'));
});
