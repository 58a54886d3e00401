import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MAX_MANIFEST_BYTES } from '@edgeplane/proto';
import { InputError } from './errors.js';
import type { ManifestSource } from './manifest.js';

const MANIFEST_FILE = /\.(ya?ml|json)$/i;

/**
 * Reads what `-f` names: files, folders (their `.yaml`, `.yml` and `.json` files in name
 * order; sub-folders only when `recursive`), and `-` for standard input (read once). A file
 * larger than MAX_MANIFEST_BYTES is refused before it is read.
 * @throws InputError naming the path that cannot be read or is too large.
 */
export async function readManifestSources(paths: readonly string[], readStdin: () => Promise<string>, recursive = false): Promise<ManifestSource[]> {
  const out: ManifestSource[] = [];
  let stdinRead = false;
  const visit = async (path: string, top: boolean): Promise<void> => {
    let info;
    try {
      info = await stat(path);
    } catch (cause) {
      throw new InputError(`read ${path}: ${(cause as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or folder' : (cause as Error).message}`, { cause });
    }
    if (info.isDirectory()) {
      if (!top && !recursive) return;
      const entries = (await readdir(path, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
      for (const e of entries) {
        if (e.isDirectory()) await visit(join(path, e.name), false);
        else if (MANIFEST_FILE.test(e.name)) await visit(join(path, e.name), false);
      }
      return;
    }
    if (info.size > MAX_MANIFEST_BYTES) throw new InputError(`read ${path}: ${info.size} bytes; a manifest is at most ${MAX_MANIFEST_BYTES}`);
    try {
      out.push({ file: path, text: await readFile(path, 'utf8') });
    } catch (cause) {
      throw new InputError(`read ${path}: ${(cause as Error).message}`, { cause });
    }
  };
  for (const path of paths) {
    if (path === '-') {
      if (stdinRead) throw new InputError('-f - (standard input) given twice');
      stdinRead = true;
      const text = await readStdin();
      if (text.length > MAX_MANIFEST_BYTES) throw new InputError(`read <stdin>: ${text.length} characters; a manifest is at most ${MAX_MANIFEST_BYTES} bytes`);
      out.push({ file: '<stdin>', text });
    } else await visit(path, true);
  }
  return out;
}
