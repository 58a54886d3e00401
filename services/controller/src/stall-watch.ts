// Notices when this process's event loop stops turning (a long GC, a synchronous loop, CPU
// starvation): every stream's timers and keepalives are judged late after such a stall, so the
// operator needs to see it beside the disconnects it explains.
import { performance } from 'node:perf_hooks';

/** A stall report: how long the loop did not turn, and the heap at that moment. */
export interface Stall {
  ms: number;
  heapMiB: number;
}

/**
 * Calls `onStall` whenever a tick (every `tickMs`) arrives more than `thresholdMs` late. Returns
 * the stop function (idempotent). The timer is unref'd: it never keeps the process alive.
 */
export function watchStalls(onStall: (s: Stall) => void, thresholdMs = 2000, tickMs = 500): () => void {
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    const late = now - last - tickMs;
    last = now;
    if (late > thresholdMs) onStall({ ms: Math.round(late), heapMiB: Math.round(process.memoryUsage().heapUsed / 2 ** 20) });
  }, tickMs);
  timer.unref();
  return () => clearInterval(timer);
}
