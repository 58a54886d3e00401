// Which refusals a controller starting beside a forming JetStream cluster waits out
// (jetstream-ready.ts), and that it gives up on any other at once and on these at its timeout.
import test from 'ava';
import { JetStreamApiError } from '@nats-io/jetstream';
import { TimeoutError } from '@nats-io/transport-node';
import { isFormingClusterError, whenJetStreamReady } from '../src/jetstream-ready.js';

const apiError = (errCode: number, description: string): JetStreamApiError => new JetStreamApiError({ code: 500, err_code: errCode, description });

test('jetstream ready - a forming cluster\'s refusals are waited out, anything else is not', (t) => {
  t.true(isFormingClusterError(apiError(10005, 'no suitable peers for placement')));
  t.true(isFormingClusterError(apiError(10008, 'JetStream system temporarily unavailable')));
  t.true(isFormingClusterError(apiError(10009, 'JetStream cluster can not handle request')));
  t.true(isFormingClusterError(apiError(10049, 'error creating store for stream')));
  t.true(isFormingClusterError(new TimeoutError()));
  t.true(isFormingClusterError(new Error('create the log', { cause: apiError(10049, 'error creating store for stream') })), 'found in the cause chain');
  // The same code with another reason, and other refusals: the operator's to see at once.
  t.false(isFormingClusterError(apiError(10049, 'insufficient resources')));
  t.false(isFormingClusterError(apiError(10058, 'stream name already in use with a different configuration')));
  t.false(isFormingClusterError(apiError(10039, 'jetstream not enabled for account')));
  t.false(isFormingClusterError(new Error('permissions violation')));
});

test('jetstream ready - retries until the open succeeds; a store refusal after the timeout is thrown as it came', async (t) => {
  let calls = 0;
  const retried: number[] = [];
  const opened = await whenJetStreamReady('log', async () => {
    calls++;
    if (calls < 3) throw apiError(10049, 'error creating store for stream');
    return 'open';
  }, { timeoutMs: 10_000, onRetry: (_what, _err, attempt) => retried.push(attempt) });
  t.is(opened, 'open');
  t.deepEqual(retried, [1, 2]);

  const refused = apiError(10049, 'error creating store for stream');
  let attempts = 0;
  const thrown = await t.throwsAsync(whenJetStreamReady('log', () => (attempts++, Promise.reject(refused)), { timeoutMs: 600, onRetry: () => undefined }));
  t.is(thrown, refused);
  t.true(attempts >= 2, `tried ${attempts} times before the timeout`);
  const other = apiError(10058, 'stream name already in use with a different configuration');
  let tries = 0;
  t.is(await t.throwsAsync(whenJetStreamReady('log', () => (tries++, Promise.reject(other)), { timeoutMs: 10_000, onRetry: () => undefined })), other);
  t.is(tries, 1, 'not retried');
});
