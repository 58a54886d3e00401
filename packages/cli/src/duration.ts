import { parseDurationMs, type Duration } from '@edgeplane/proto';

/** The shared duration reader (@edgeplane/proto), re-exported for the CLI's callers. */
export { parseDurationMs };

/** Converts milliseconds to a google.protobuf.Duration. */
export function msToDuration(ms: number): Duration {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

/** Formats a google.protobuf.Duration as `1h2m3s` (or `250ms`, `0s`). */
export function formatDuration(d: Duration): string {
  const ms = Number(d.seconds) * 1000 + Math.round(d.nanos / 1_000_000);
  return formatMs(ms);
}

/** Formats milliseconds as `1h2m3s`, `250ms` or `0s`. */
export function formatMs(ms: number): string {
  if (ms === 0) return '0s';
  if (ms < 1000 || ms % 1000 !== 0) return ms >= 1000 ? `${ms / 1000}s` : `${ms}ms`;
  let s = ms / 1000;
  let out = '';
  const h = Math.floor(s / 3600);
  if (h) out += `${h}h`;
  s -= h * 3600;
  const m = Math.floor(s / 60);
  if (m) out += `${m}m`;
  s -= m * 60;
  if (s) out += `${s}s`;
  return out;
}

/** Formats the age of a timestamp kubectl-style: `45s`, `12m`, `3h`, `5d`; `<unknown>` if unset. */
export function formatAge(time: Date | undefined, now: Date): string {
  if (!time) return '<unknown>';
  const s = Math.max(0, Math.floor((now.getTime() - time.getTime()) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}
