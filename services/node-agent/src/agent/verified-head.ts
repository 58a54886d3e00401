import { readFileSync } from 'node:fs';
import { writeFileDurably } from './durable-file.js';
import { StateFileError } from './state-file.js';

/** The newest point of the log this node verified, and the newest history reset it accepted. */
export interface Head {
  revision: bigint;
  /** The chain hash of the entry at revision. */
  hash: Uint8Array;
  /** The highest operator history-reset epoch accepted (0: none). */
  resetEpoch: bigint;
}

/**
 * The agent's durable record of the newest (revision, hash) it verified (separate from the
 * state file, which holds what it applied, possibly older): the follower refuses any history
 * shorter than it or different at it, across restarts, until an operator-signed reset.
 * Written atomically and fsynced (temporary file, fsync, rename, fsync of the directory).
 */
export class VerifiedHead {
  readonly path: string;
  #last = '';

  constructor(path: string) {
    this.path = path;
  }

  /** Returns the saved head, or undefined if there is none. @throws StateFileError if it is corrupt. */
  read(): Head | undefined {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StateFileError(`read verified head ${this.path}`, { cause: err });
    }
    try {
      const j = JSON.parse(text) as { version: number; revision: string; hash: string; resetEpoch: string };
      if (j.version !== 1 || !/^[0-9a-f]{64}$/.test(j.hash)) throw new Error('unknown version or bad hash');
      this.#last = text;
      return { revision: BigInt(j.revision), hash: new Uint8Array(Buffer.from(j.hash, 'hex')), resetEpoch: BigInt(j.resetEpoch) };
    } catch (cause) {
      throw new StateFileError(`parse verified head ${this.path}: ${(cause as Error).message}`, { cause });
    }
  }

  /** Saves the head durably (nothing when it did not change). @throws Error from the file system. */
  write(head: Head): void {
    const body = JSON.stringify({ version: 1, revision: head.revision.toString(), hash: Buffer.from(head.hash).toString('hex'), resetEpoch: head.resetEpoch.toString() });
    if (body === this.#last) return;
    writeFileDurably(this.path, body);
    this.#last = body;
  }
}
