// A PrefixList manifest's prefixesFile: one prefix per line (threat feeds run to a million),
// read as a stream a line at a time. Blank lines and lines starting with '#' are skipped; a
// trailing comment ("192.0.2.0/24  # why") is cut. Linear in the file, bounded by
// MAX_PREFIXES_FILE_BYTES and MAX_PREFIX_LIST_ENTRIES.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { MAX_PREFIX_LIST_ENTRIES, MAX_PREFIXES_FILE_BYTES } from '@edgeplane/proto';
import { InputError } from './errors.js';

/** The prefixes of a file and the line each came from (1-based). */
export interface PrefixesFile {
  prefixes: string[];
  lines: number[];
  /** Set when the file holds more than `max` prefixes (reading stopped at the next one's line). */
  tooManyAtLine?: number;
}

/**
 * Reads `path`, appending at most `max` prefixes (as written; validation is the caller's).
 * @throws InputError when the file cannot be read or is larger than MAX_PREFIXES_FILE_BYTES.
 */
export async function readPrefixesFile(path: string, max = MAX_PREFIX_LIST_ENTRIES): Promise<PrefixesFile> {
  const out: PrefixesFile = { prefixes: [], lines: [] };
  try {
    const info = await stat(path);
    if (info.size > MAX_PREFIXES_FILE_BYTES) throw new InputError(`read ${path}: ${info.size} bytes; a prefixes file is at most ${MAX_PREFIXES_FILE_BYTES}`);
    const input = createReadStream(path, { encoding: 'utf8' });
    const reader = createInterface({ input, crlfDelay: Infinity });
    let line = 0;
    try {
      for await (const text of reader) {
        line++;
        const hash = text.indexOf('#');
        const prefix = (hash < 0 ? text : text.slice(0, hash)).trim();
        if (prefix === '') continue;
        if (out.prefixes.length === max) {
          out.tooManyAtLine = line;
          break;
        }
        out.prefixes.push(prefix);
        out.lines.push(line);
      }
    } finally {
      reader.close();
      input.destroy();
    }
  } catch (cause) {
    if (cause instanceof InputError) throw cause;
    throw new InputError(`read ${path}: ${(cause as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (cause as Error).message}`, { cause });
  }
  return out;
}
