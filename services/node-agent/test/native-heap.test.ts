// trimAfterMajorCollections with V8's real collections: a major one is followed by one trim after
// the delay, minor ones by none, and nothing after stop.
import { setTimeout as sleep } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import test from 'ava';
import { trimAfterMajorCollections } from '../src/agent/native-heap.js';

setFlagsFromString('--expose-gc');
// gc() is a major collection; gc({ type: 'minor' }) a scavenge (this node takes no { type: 'major' }).
const gc = runInNewContext('gc') as (options?: { type: 'minor' }) => void;

test.serial('native heap - a major collection is trimmed after once, after the delay; minor collections are not; stop cancels', async (t) => {
  let trims = 0;
  const stop = trimAfterMajorCollections({ trim: () => trims++, delayMs: 200 });
  t.teardown(stop);
  gc({ type: 'minor' });
  gc({ type: 'minor' });
  await sleep(400);
  t.is(trims, 0, 'minor collections: no trim');
  gc();
  gc();
  await sleep(50);
  t.is(trims, 0, 'not before the delay');
  await sleep(400);
  t.is(trims, 1, 'two major collections within the delay: one trim');
  gc();
  await sleep(50);
  stop();
  await sleep(400);
  t.is(trims, 1, 'stopped: the trim that was due does not run');
  gc();
  await sleep(400);
  t.is(trims, 1, 'stopped: later collections are not observed');
});
