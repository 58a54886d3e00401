// Network interface names to indexes.
import { readFileSync } from 'node:fs';
import { errnoError, NotFoundError } from './errors.js';
import * as native from './native.js';

/**
 * @returns the index of interface `name` (if_nametoindex). Interfaces are per network namespace:
 * the answer is for the namespace of the calling thread, i.e. of this process.
 * @throws NotFoundError if there is no such interface.
 */
export function ifindex(name: string): number {
  const index = native.nameToIndex(name);
  if (index === 0) {
    const errno = native.lastErrno();
    const operation = `ifindex name=${name}`;
    if (errno === 19 /* ENODEV */ || errno === 0) throw new NotFoundError(operation, 19);
    throw errnoError(operation, errno);
  }
  return index;
}

/**
 * Every network interface of this process's network namespace, read from /proc/self/net/dev
 * (which follows the namespace of the process, unlike /sys/class/net, which follows the mount).
 * An interface that disappears between the listing and the index lookup is left out.
 * @returns name and index of each interface, in the kernel's order; owned by the caller.
 */
export function interfaces(): { name: string; index: number }[] {
  const out: { name: string; index: number }[] = [];
  // Two header lines, then "  name: counters..." per interface.
  for (const line of readFileSync('/proc/self/net/dev', 'utf8').split('\n').slice(2)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const name = line.slice(0, colon).trim();
    const index = native.nameToIndex(name);
    if (index !== 0) out.push({ name, index });
  }
  return out;
}
