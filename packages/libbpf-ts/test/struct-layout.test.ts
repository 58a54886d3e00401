import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { structLayout, structTypes } from '../src/native.js';
import { fixtureSource, sh } from './helpers/fixtures.js';

test('native structs - sizes and offsets match the libbpf 1.1.2 and kernel headers', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'libbpf-ts-layout-'));
  try {
    const binary = join(dir, 'layout');
    await sh('cc', ['-Wall', '-Werror', '-o', binary, fixtureSource('struct-layout.c')]);
    const fromC = JSON.parse(await sh(binary, [])) as Record<string, { size: number; offsets: Record<string, number> }>;
    t.deepEqual(Object.keys(fromC).sort(), Object.keys(structTypes).sort());
    for (const [name, c] of Object.entries(fromC)) {
      const koffi = structLayout(name as keyof typeof structTypes);
      t.is(koffi.size, c.size, `sizeof(struct ${name})`);
      for (const [field, offset] of Object.entries(c.offsets)) t.is(koffi.offsets[field], offset, `offsetof(struct ${name}, ${field})`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
