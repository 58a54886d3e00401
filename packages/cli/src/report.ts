import type { Io } from './command.js';
import { ManifestError, formatProblem } from './errors.js';

/**
 * Prints an error to stderr: manifest problems one per line as `FILE:LINE:COL: FIELD: message`
 * (the form editors jump to), anything else as `error: message`.
 */
export function reportError(io: Pick<Io, 'stderr'>, err: unknown): void {
  if (err instanceof ManifestError) {
    for (const p of err.problems) io.stderr.write(`${formatProblem(p)}\n`);
    return;
  }
  const message = err instanceof Error ? err.message : String(err);
  for (const line of message.split('\n')) io.stderr.write(`error: ${line}\n`);
}
