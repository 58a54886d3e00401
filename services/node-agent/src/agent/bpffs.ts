import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';

/** Whether `dir` is itself the mount point of a bpffs (per /proc/self/mountinfo). */
export function isBpffs(dir: string): boolean {
  const want = resolve(dir);
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((line) => {
      const [left, right] = line.split(' - ');
      return left?.split(' ')[4] === want && right?.split(' ')[0] === 'bpf';
    });
}

/**
 * Makes `dir` a bpffs of its own (mount -t bpf), unless it already is one. Under /run rather
 * than /sys/fs/bpf, because `ip netns exec` remounts /sys and would hide it.
 * @throws Error with mount's message if mounting fails.
 */
export function ensureBpffs(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (isBpffs(dir)) return;
  execFileSync('mount', ['-t', 'bpf', 'bpf', dir], { stdio: 'pipe' });
}
