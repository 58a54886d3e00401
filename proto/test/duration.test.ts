import test from 'ava';
import { parseDurationMs } from '@edgeplane/proto';

test('parseDurationMs - units, compounds, decimals and bare seconds', (t) => {
  t.is(parseDurationMs('500ms'), 500);
  t.is(parseDurationMs('90'), 90_000);
  t.is(parseDurationMs('1m30s'), 90_000);
  t.is(parseDurationMs('1.5h'), 5_400_000);
  t.is(parseDurationMs('7d'), 604_800_000);
  t.is(parseDurationMs(' 2h '), 7_200_000);
});

test('parseDurationMs - anything else is undefined, including text over 64 characters', (t) => {
  for (const bad of ['', 'h', '5x', '-3', '1h 30m', '1.h', 'ms', '1'.repeat(65), '1h'.repeat(40), '1'.repeat(63) + 'x', '1m'.repeat(31) + 'x']) t.is(parseDurationMs(bad), undefined, bad);
});

