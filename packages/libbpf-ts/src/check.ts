// One way to call libbpf: clear libbpf's buffered messages, call, and on a negative return throw
// the translated error carrying the operation and whatever libbpf printed meanwhile.
import { errnoError } from './errors.js';
import { clearMessages, lastErrno, takeMessages } from './native.js';

/** Runs `call`; returns its non-negative result or throws errnoError(operation, result). */
export function check(operation: string, call: () => number): number {
  clearMessages();
  const ret = call();
  if (ret < 0) throw errnoError(operation, ret, { details: takeMessages() });
  return ret;
}

/** Runs a pointer-returning `call`; returns the pointer or throws with errno (libbpf 1.0 mode). */
export function checkPointer<T>(operation: string, call: () => T | null): T {
  clearMessages();
  const ret = call();
  if (ret === null) throw errnoError(operation, lastErrno() || 22 /* EINVAL if errno was not set */, { details: takeMessages() });
  return ret;
}
