// Giving glibc's free pages back after V8's major collections. glibc returns free memory at the
// top of its heap by itself (MALLOC_TRIM_THRESHOLD_, set by bin/edgeplane-agent), but free chunks
// below live ones stay resident until malloc_trim(0). A major collection frees native memory of
// its own (the swept pages' remembered sets, its worklists, dead typed arrays' buffers), much of
// it after gc() returns, as V8's threads finish sweeping: an idle agent at 65,536 rules held 12
// MiB of such free pages in [heap] after its reclaim's trim (29 -> 17 MiB by a malloc_trim from
// outside; bench/README.md, "agent", "Memory"). So every major collection is followed, once its
// sweeping has had time, by a trim.
import { constants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';

/** What {@link trimAfterMajorCollections} needs: the trim, and how long after a collection it runs. */
export interface TrimOptions {
  /** malloc_trim(0) (libbpf-ts trimNativeHeap). */
  readonly trim: () => void;
  /** How long after a major collection the trim runs (ms): one trim for the collections in that time. */
  readonly delayMs: number;
}

/**
 * Trims the native heap `delayMs` after each major collection (collections within that time share
 * one trim). The timer does not keep the process alive.
 * @returns a function that stops it (and cancels a trim that is due).
 */
export function trimAfterMajorCollections(options: TrimOptions): () => void {
  let due: NodeJS.Timeout | undefined;
  const major = (entry: PerformanceEntry): boolean => (entry as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR;
  const observer = new PerformanceObserver((list) => {
    if (due !== undefined || !list.getEntries().some(major)) return;
    due = setTimeout(() => {
      due = undefined;
      options.trim();
    }, options.delayMs);
    due.unref();
  });
  observer.observe({ entryTypes: ['gc'] });
  return () => {
    observer.disconnect();
    clearTimeout(due);
    due = undefined;
  };
}
