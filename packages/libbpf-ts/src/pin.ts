// Removing pins. A pin is a file on a bpffs; unlinking it drops the reference it held.
import { rmSync } from 'node:fs';
import { errnoError } from './errors.js';

const ENOENT = 2;

/** Unlinks the pin at `path`. @throws NotFoundError if there is none; LibbpfError otherwise. */
export function unpinPath(operation: string, path: string): void {
  try {
    rmSync(path);
  } catch (cause) {
    throw errnoError(operation, (cause as NodeJS.ErrnoException).errno ?? -ENOENT, { cause });
  }
}
