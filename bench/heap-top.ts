// Summarizes a V8 heap snapshot (.heapsnapshot: bench/agent-apply.ts --heap-snapshot, or the
// agent's own with EP_BENCH_HEAP_DIR, bench/agent.ts): the live heap's self sizes grouped so that
// per-rule structures stand out. Plain objects group by their property names; arrays, their
// element stores and boxed numbers by the property that holds them. Used to say what the agent
// holds at 65,536 rules (BENCHMARKS.md, "Arrays without spare capacity").
//   node --max-old-space-size=12000 --import=tsx bench/heap-top.ts FILE.heapsnapshot [--top 40]
// A 200 MiB snapshot needs a few GiB of heap to read.
import { readFileSync } from 'node:fs';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]]; edge_fields: string[]; edge_types: [string[]] } };
  nodes: number[];
  edges: number[];
  strings: string[];
}

const [file, ...rest] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: heap-top FILE.heapsnapshot [--top N]\n');
  process.exit(2);
}
const topAt = rest.indexOf('--top');
const TOP = topAt >= 0 ? Number(rest[topAt + 1]) : 40;

const snap = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
const { node_fields: nodeFields, node_types: [nodeTypes], edge_fields: edgeFields, edge_types: [edgeTypes] } = snap.snapshot.meta;
const N = nodeFields.length;
const E = edgeFields.length;
const { nodes, edges, strings } = snap;
const field = { type: nodeFields.indexOf('type'), name: nodeFields.indexOf('name'), size: nodeFields.indexOf('self_size'), edges: nodeFields.indexOf('edge_count') };
const edge = { type: edgeFields.indexOf('type'), name: edgeFields.indexOf('name_or_index'), to: edgeFields.indexOf('to_node') };
const count = nodes.length / N;

const firstEdge = new Uint32Array(count + 1);
for (let n = 0, e = 0; n < count; n++) {
  firstEdge[n] = e;
  e += nodes[n * N + field.edges]! * E;
}
firstEdge[count] = edges.length;

const typeOf = (n: number): string => nodeTypes[nodes[n * N + field.type]!]!;
const nameOf = (n: number): string => strings[nodes[n * N + field.name]!]!;
const propertyNames = (n: number): string[] => {
  const names: string[] = [];
  for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e += E) if (edgeTypes[edges[e + edge.type]!] === 'property') names.push(strings[edges[e + edge.name]!]!);
  return names;
};

// Each node's first holder (object and edge name), from strong edges only.
const holder = new Int32Array(count).fill(-1);
const holderEdge: string[] = new Array<string>(count);
for (let n = 0; n < count; n++) {
  for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e += E) {
    const kind = edgeTypes[edges[e + edge.type]!];
    if (kind === 'weak' || kind === 'shortcut') continue;
    const to = edges[e + edge.to]! / N;
    if (holder[to] !== -1) continue;
    holder[to] = n;
    holderEdge[to] = kind === 'element' ? '[i]' : kind === 'property' || kind === 'internal' ? strings[edges[e + edge.name]!]! : `(${kind})`;
  }
}
const heldBy = (n: number): string => (holder[n] === -1 ? '?' : `${nameOf(holder[n]!).slice(0, 40)}.${holderEdge[n]}`);

const groups = new Map<string, { bytes: number; count: number }>();
let total = 0;
for (let n = 0; n < count; n++) {
  const type = typeOf(n);
  const name = nameOf(n);
  let key: string;
  if (type === 'object' && name === 'Object') key = `{${propertyNames(n).filter((p) => p !== '__proto__').slice(0, 12).join(',')}}`;
  else if (type === 'object' && name === 'Array') key = `Array held by ${heldBy(n)}`;
  else if (type === 'array') key = `elements of ${holder[n] === -1 ? '?' : `${nameOf(holder[n]!)} held by ${heldBy(holder[n]!)}`}`;
  else if (type === 'number') key = `heap number held by ${heldBy(n)}`;
  else if (type === 'string' || type === 'concatenated string' || type === 'sliced string' || type === 'code') key = type;
  else key = `${type}: ${name.slice(0, 60)}`;
  const size = nodes[n * N + field.size]!;
  const group = groups.get(key) ?? { bytes: 0, count: 0 };
  group.bytes += size;
  group.count++;
  groups.set(key, group);
  total += size;
}

const mib = (bytes: number): string => (bytes / 1048576).toFixed(2).padStart(8);
console.log(`${file}: ${count} nodes, ${mib(total).trim()} MiB of self sizes`);
console.log('     MiB     count  group');
for (const [key, g] of [...groups].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, TOP)) console.log(`${mib(g.bytes)} ${String(g.count).padStart(9)}  ${key.slice(0, 160)}`);
