// A private bpffs under /run for one test file, since /sys/fs/bpf is not mounted here.
import { mkdtemp, rm } from 'node:fs/promises';
import { sh } from './fixtures.js';

/** A mounted bpffs; unmount() removes the mount and its directory. */
export interface Bpffs {
  readonly dir: string;
  unmount(): Promise<void>;
}

/** Mounts a fresh bpffs at /run/libbpf-ts-test-XXXX. */
export async function mountBpffs(): Promise<Bpffs> {
  const dir = await mkdtemp('/run/libbpf-ts-test-');
  await sh('mount', ['-t', 'bpf', 'bpf', dir]);
  return {
    dir,
    async unmount() {
      await sh('umount', [dir]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
