import { backendKey, buildMaglevTable } from '@edgeplane/node-agent';
const mk = (w: (b: number) => number) => Array.from({ length: 3000 }, (_, s) => Array.from({ length: 10 }, (_, b) => ({ key: backendKey(`10.${s >> 8}.${s & 255}.${b}`, 8080 + b), weight: w(b) })));
const mixed = mk((b) => 1 + ((b * 37) % 100));
for (let r = 0; r < 3; r++) { const t0 = performance.now(); for (const b of mixed) buildMaglevTable(b, 1021); console.log(performance.now() - t0); }
