// Seeded randomness for property tests: the same seed, the same cases (EDGEPLANE_SEED reproduces a run).

/** mulberry32: a small seeded PRNG returning floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The seed from EDGEPLANE_SEED, or a fresh one. */
export function seedFromEnv(): number {
  const text = process.env.EDGEPLANE_SEED;
  return text === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(text);
}
