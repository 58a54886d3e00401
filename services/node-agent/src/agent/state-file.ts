import { readFileSync } from 'node:fs';
import { Snapshot } from '@edgeplane/proto';
import { writeFileDurably } from './durable-file.js';

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
 * enforces it again. Written with writeFileDurably: a crash leaves the old file or the new one,
 * never half of one.
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
    const body = JSON.stringify({
      version: 1,
      revision: state.snapshot.revision.toString(),
      labels: state.labels,
      snapshot: Buffer.from(Snapshot.encode(state.snapshot).finish()).toString('base64'),
    });
    writeFileDurably(this.path, body);
  }
}
