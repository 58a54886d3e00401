// Network interface names to indexes.
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
