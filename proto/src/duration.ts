/** Milliseconds per duration unit. */
const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** The longest duration text read; anything longer is not a duration. */
const MAX_DURATION_TEXT = 64;

/**
 * Parses a duration like `60s`, `1m30s`, `500ms`, `2h`, `1.5h`, `7d` or a bare number of seconds
 * into milliseconds (rounded). The one duration reader of the CLI, the manifests and the agent's
 * flags; each caller bounds the range it accepts. Linear in the text, which is at most 64
 * characters. Returns undefined when the text is not a duration.
 */
export function parseDurationMs(text: string): number | undefined {
  const t = text.trim();
  if (t.length === 0 || t.length > MAX_DURATION_TEXT) return undefined;
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(Number(t) * 1000);
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(t)) return undefined;
  let total = 0;
  for (const m of t.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) total += Number(m[1]) * UNITS[m[2]!]!;
  return Math.round(total);
}
