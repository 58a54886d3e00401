import type { PortRange } from '@edgeplane/proto';

/** Ports have at most 5 digits; a longer number is refused without reading it all. */
const MAX_DIGITS = 5;

/** Counts the work a parser does (characters visited), for tests of linearity. */
export interface PortParseStats {
  steps: number;
}

/**
 * Parses a manifest's port text: `443`, `8000-8100`, with optional spaces around the numbers
 * and the dash. One pass, each character visited at most once; a number of more than 5 digits
 * stops the scan. Range checks (1..65535, order) are validatePolicy's, so the numbers are
 * returned as written (`last` 0 for a single port).
 * @returns the range, or undefined if the text is not a port or a range.
 */
export function parsePortRange(text: string, stats?: PortParseStats): PortRange | undefined {
  const n = text.length;
  let i = 0;
  let steps = 0;
  const space = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c !== 32 && c !== 9) break;
      i++;
      steps++;
    }
  };
  const number = (): number | undefined => {
    let value = 0;
    let digits = 0;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c < 48 || c > 57) break;
      if (++digits > MAX_DIGITS) return undefined;
      value = value * 10 + (c - 48);
      i++;
      steps++;
    }
    return digits === 0 ? undefined : value;
  };
  const done = (r: PortRange | undefined): PortRange | undefined => {
    if (stats) stats.steps += steps;
    return r;
  };
  space();
  const first = number();
  if (first === undefined) return done(undefined);
  space();
  if (i === n) return done({ first, last: 0 });
  if (text.charCodeAt(i) !== 45 /* - */) return done(undefined);
  i++;
  steps++;
  space();
  const last = number();
  if (last === undefined) return done(undefined);
  space();
  return done(i === n ? { first, last } : undefined);
}
