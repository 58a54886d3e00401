// Where edgeplane's programs spend their time, by source line: perf's samples (the texts that
// EP_BENCH_PERF_DIR keeps, perf-share.ts) placed on the lines of the JITed programs
// (bench/bpf-line-table.c, written into the same directory by the bench that loaded them).
//   node --import=tsx bench/perf-lines.ts DIR [--top N] [FILE...]
// FILE...: perf texts of DIR to read (default: every perf-*.txt there). Prints two tables:
// - where the samples under a program end (the program's own code, a subprogram, or a kernel
//   function it called: a map's lookup, the hash table's bucket walk), share of all samples
//   under a program;
// - the program's own samples by source line (the line whose code the sampled instruction
//   belongs to; a load that misses the cache shows on its line, or on the next one).
// Reads files only.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The file in a perf directory that holds the programs' line tables. */
export const LINE_TABLE_FILE = 'bpf-lines.txt';

/**
 * Writes the line tables of programs `ids` (loaded now) into `dir`/bpf-lines.txt, building
 * bench/bpf-line-table.c into `workDir`. @throws if the build or the helper fails.
 */
export function writeLineTables(dir: string, workDir: string, ids: readonly number[]): void {
  const helper = join(workDir, 'bpf-line-table');
  execFileSync('cc', ['-O2', '-Wall', '-o', helper, fileURLToPath(new URL('./bpf-line-table.c', import.meta.url)), '-lbpf']);
  writeFileSync(join(dir, LINE_TABLE_FILE), execFileSync(helper, ids.map(String), { encoding: 'utf8', maxBuffer: 1 << 28 }));
}

interface LineStart {
  address: bigint;
  where: string;
}

/** The line starts of bpf-lines.txt, sorted by address. */
export function parseLineTables(text: string): LineStart[] {
  const starts: LineStart[] = [];
  for (const record of text.split('\n')) {
    const m = /^LINE ([0-9a-f]+) (\d+) (\S+) ?(.*)$/.exec(record);
    if (m) starts.push({ address: BigInt(`0x${m[1]}`), where: `${m[3]}:${m[2]} ${m[4]!.trim().replace(/\s+/g, ' ')}` });
  }
  return starts.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
}

/** The line whose code holds `address` (the last start at or below it), by binary search. */
function lineOf(starts: readonly LineStart[], address: bigint): LineStart | undefined {
  let lo = 0;
  let hi = starts.length - 1;
  let found: LineStart | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (starts[mid]!.address <= address) {
      found = starts[mid];
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

const PROGRAM = /^bpf_prog_[0-9a-f]+_(\w+)$/;
/** The programs a hook runs (their subprograms are below them in a chain). */
const ENTRY = /^bpf_prog_[0-9a-f]+_edge_\w+$/;

export interface LineShares {
  /** Samples with an edgeplane program in their chain. */
  underPrograms: number;
  /** Where those end: a program's or subprogram's own code, or the kernel function it called. */
  leaves: Map<string, number>;
  /** The own-code samples by source line ("program file:line text"). */
  lines: Map<string, number>;
}

/** Places the samples of perf texts (`perf script -F period,ip,sym`) on `starts`. */
export function lineShares(texts: readonly string[], starts: readonly LineStart[]): LineShares {
  const out: LineShares = { underPrograms: 0, leaves: new Map(), lines: new Map() };
  const add = (map: Map<string, number>, key: string): void => void map.set(key, (map.get(key) ?? 0) + 1);
  for (const text of texts) {
    for (const block of text.split(/\n\s*\n/)) {
      const frames = block
        .split('\n')
        .slice(1)
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f.length >= 2);
      if (!frames.some((f) => ENTRY.test(f[1]!))) continue;
      out.underPrograms++;
      const [ip, sym] = frames[0] as [string, string];
      const program = PROGRAM.exec(sym)?.[1];
      add(out.leaves, program ?? sym);
      if (program === undefined || !/^[0-9a-f]+$/.test(ip)) continue;
      const line = lineOf(starts, BigInt(`0x${ip}`));
      add(out.lines, `${program.padEnd(16)} ${line?.where ?? '(no line)'}`);
    }
  }
  return out;
}

function main(): void {
  const args = process.argv.slice(2);
  const topAt = args.indexOf('--top');
  const top = topAt >= 0 ? Number(args[topAt + 1]) : 30;
  const rest = args.filter((_, i) => i !== topAt && i !== topAt + 1);
  const dir = rest[0];
  if (dir === undefined || !Number.isInteger(top) || top <= 0) {
    process.stderr.write('usage: node --import=tsx bench/perf-lines.ts DIR [--top N] [FILE...]\n');
    process.exit(2);
  }
  const files = rest.length > 1 ? rest.slice(1) : readdirSync(dir).filter((f) => /^perf-.*\.txt$/.test(f));
  const starts = parseLineTables(readFileSync(join(dir, LINE_TABLE_FILE), 'utf8'));
  const shares = lineShares(
    files.map((f) => readFileSync(join(dir, f), 'utf8')),
    starts,
  );
  const total = shares.underPrograms;
  const own = [...shares.lines.values()].reduce((a, b) => a + b, 0);
  const pct = (n: number, of: number): string => `${((100 * n) / Math.max(1, of)).toFixed(1).padStart(5)} %`;
  const rows = (map: Map<string, number>, of: number): string[] =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, n]) => `${String(n).padStart(7)} ${pct(n, of)}  ${k}`);
  process.stdout.write(
    [
      `${files.length} perf texts; ${total} samples under edgeplane's programs, ${own} of them in the programs' own code (${pct(own, total).trim()})`,
      '',
      'where the samples under a program end (share of those samples):',
      ...rows(shares.leaves, total),
      '',
      "the programs' own samples by source line (share of the own samples):",
      ...rows(shares.lines, own),
      '',
    ].join('\n'),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
