import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { Snapshot } from '@edgeplane/proto';

/** What the node last enforced: the whole verified intent at that revision. */
export interface AppliedState {
  /** The intent (all policies, the revision and its chain hash), as verified when received. */
  snapshot: Snapshot;
  /** The labels it was compiled for. */
  labels: Record<string, string>;
}

/** Thrown when the state file exists but cannot be read back. */
export class StateFileError extends Error {
  override name = 'StateFileError';
}

/** Where the agent keeps what it last enforced (a {@link StateFile}, or a stand-in in simulations and tests). */
export interface StateStore {
  /** Returns the saved state, or undefined if there is none. @throws if it cannot be read back. */
  read(): AppliedState | undefined;
  /** Saves the state durably. @throws when it could not be saved (the old state stays). */
  write(state: AppliedState): void;
}

/**
 * The agent's local record of the last applied revision, so a node that boots with no network
 * enforces it again. Written atomically (temporary file, fsync, rename): a crash leaves the old
 * file or the new one, never half of one.
 */
export class StateFile implements StateStore {
  readonly path: string;

  constructor(path: string) {
    this.path = path;
  }

  /** Returns the saved state, or undefined if there is none. @throws StateFileError if it is corrupt. */
  read(): AppliedState | undefined {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StateFileError(`read state file ${this.path}`, { cause: err });
    }
    try {
      const j = JSON.parse(text) as { version: number; snapshot: string; labels: Record<string, string> };
      if (j.version !== 1) throw new Error(`unknown version ${j.version}`);
      return { snapshot: Snapshot.decode(Buffer.from(j.snapshot, 'base64')), labels: j.labels };
    } catch (cause) {
      throw new StateFileError(`parse state file ${this.path}: ${(cause as Error).message}`, { cause });
    }
  }

  /** Saves the state durably. */
  write(state: AppliedState): void {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.tmp-${process.pid}`;
    const body = JSON.stringify({
      version: 1,
      revision: state.snapshot.revision.toString(),
      labels: state.labels,
      snapshot: Buffer.from(Snapshot.encode(state.snapshot).finish()).toString('base64'),
    });
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, body);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    const dir = openSync(dirname(this.path), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
  }
}
