// trimNativeHeap (malloc_trim(0)): free pages in the middle of glibc's heap go back to the system,
// which MALLOC_TRIM_THRESHOLD_ (top of the heap only) does not do. The agent calls it after the
// full collection that follows a large apply.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { trimNativeHeap } from '../src/index.js';
import { allocNative, type NativeMemory } from '../src/native.js';

/** Resident KiB of this process's [heap] mapping (glibc's main arena). */
function heapRssKiB(): number {
  let inHeap = false;
  let rss = 0;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inHeap = line.trimEnd().endsWith('[heap]');
    else if (inHeap && line.startsWith('Rss:')) rss += Number(line.split(/\s+/)[1]);
  }
  return rss;
}

test('trimNativeHeap - the free holes between live blocks of the heap leave the resident set', (t) => {
  // 64 KiB blocks (below glibc's mmap threshold: they come from the heap), every other one freed.
  const blocks: NativeMemory[] = Array.from({ length: 1600 }, () => allocNative(64 * 1024));
  const kept = blocks.filter((_, i) => i % 2 === 0);
  blocks.forEach((b, i) => i % 2 === 1 && b.free());
  const before = heapRssKiB();
  t.true(trimNativeHeap(), 'it released memory');
  const after = heapRssKiB();
  t.true(before - after > 30 * 1024, `the heap's resident set went from ${before} to ${after} KiB`);
  for (const b of kept) b.free();
});
