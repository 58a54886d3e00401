import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Replaces `path` with `body` durably and atomically: a temporary file beside it (mode 0600) is
 * written and fsynced, renamed over the old one, and the directory (created 0700 if missing) is
 * fsynced, so a crash or power loss leaves the old file or the new one, never half of one. A
 * body given in pieces is written piece by piece as it is iterated (never whole in memory).
 * @throws Error from the file system, or what iterating `body` throws (the old file stays).
 */
export function writeFileDurably(path: string, body: string | Uint8Array | Iterable<Uint8Array>): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    if (typeof body === 'string') writeAll(fd, Buffer.from(body));
    else if (body instanceof Uint8Array) writeAll(fd, body);
    else for (const piece of body) writeAll(fd, piece);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, path);
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/** write(2) until every byte of `bytes` is written (a regular file may take fewer in one call). */
export function writeAll(fd: number, bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length; ) at += writeSync(fd, bytes, at, bytes.length - at);
}
