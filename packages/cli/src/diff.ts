// `edgeplane diff`: what applying manifests would change, as pure functions over the server's
// current policies, services and nodes.
import { matchesLabelSelector, type Node, type Policy, type Service } from '@edgeplane/proto';
import { policyToManifest, serviceToManifest, toYaml } from './resource-format.js';

/** One line of a line diff. */
export interface DiffLine {
  op: ' ' | '-' | '+';
  text: string;
}

/**
 * Returns a line diff of two texts (longest common subsequence; manifests are small). Every
 * line of both texts appears once, in order.
 */
export function diffLines(before: string, after: string): DiffLine[] {
  const a = before === '' ? [] : before.replace(/\n$/, '').split('\n');
  const b = after === '' ? [] : after.replace(/\n$/, '').split('\n');
  const lcs: number[][] = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i]![j] = a[i] === b[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
    }
  }
  const out: DiffLine[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      out.push({ op: ' ', text: a[i]! });
      i++;
      j++;
    } else if (i < a.length && (j === b.length || lcs[i + 1]![j]! >= lcs[i]![j + 1]!)) {
      // Removals before additions, as diff -u prints them.
      out.push({ op: '-', text: a[i]! });
      i++;
    } else {
      out.push({ op: '+', text: b[j]! });
      j++;
    }
  }
  return out;
}

/** Which nodes a policy (or service) selects before and after a change. */
export interface SelectionPreview {
  /** Selected now and after. */
  kept: string[];
  /** Selected only after the change. */
  added: string[];
  /** Selected now, not after. */
  removed: string[];
}

/**
 * Compares the nodes a policy's selector picks now (`current`, undefined when the policy is
 * new or being deleted) and after (`desired`, undefined when it is deleted). Node names sort.
 */
export function previewSelection(current: Policy | Service | undefined, desired: Policy | Service | undefined, nodes: readonly Node[]): SelectionPreview {
  const pick = (p: Policy | Service | undefined): Set<string> => new Set(p ? nodes.filter((n) => matchesLabelSelector(p.spec?.nodeSelector, n.labels)).map((n) => n.name) : []);
  const before = pick(current);
  const after = pick(desired);
  const sorted = (xs: Iterable<string>): string[] => [...xs].sort();
  return {
    kept: sorted([...after].filter((n) => before.has(n))),
    added: sorted([...after].filter((n) => !before.has(n))),
    removed: sorted([...before].filter((n) => !after.has(n))),
  };
}

/** The difference for one policy or service. */
export interface PolicyDiff {
  /** What is compared (default policy). */
  kind?: 'policy' | 'service';
  name: string;
  /** `create` (not on the server), `update`, `unchanged` or `delete`. */
  change: 'create' | 'update' | 'unchanged' | 'delete';
  lines: DiffLine[];
  nodes: SelectionPreview;
}

/** Computes the diff of one policy against the server's copy (undefined when absent). */
export function diffPolicy(name: string, current: Policy | undefined, desired: Policy | undefined, nodes: readonly Node[]): PolicyDiff {
  const text = (p: Policy | undefined): string => (p ? toYaml(policyToManifest(p, { outputOnly: false })) : '');
  const lines = diffLines(text(current), text(desired));
  const changed = lines.some((l) => l.op !== ' ');
  const change = !current ? 'create' : !desired ? 'delete' : changed ? 'update' : 'unchanged';
  return { name, change, lines, nodes: previewSelection(current, desired, nodes) };
}

/** Computes the diff of one service against the server's copy (undefined when absent), like {@link diffPolicy}. */
export function diffService(name: string, current: Service | undefined, desired: Service | undefined, nodes: readonly Node[]): PolicyDiff {
  const text = (s: Service | undefined): string => (s ? toYaml(serviceToManifest(s, { outputOnly: false })) : '');
  const lines = diffLines(text(current), text(desired));
  const changed = lines.some((l) => l.op !== ' ');
  const change = !current ? 'create' : !desired ? 'delete' : changed ? 'update' : 'unchanged';
  return { kind: 'service', name, change, lines, nodes: previewSelection(current, desired, nodes) };
}

function nodeList(names: string[], max = 20): string {
  return names.length <= max ? names.join(', ') : `${names.slice(0, max).join(', ')}, … (${names.length - max} more)`;
}

/**
 * Renders a policy diff: a unified-style diff of the manifests (`-`/`+` lines with a few lines
 * of context), then the node preview (how many nodes the policy selects now and after, and
 * which start or stop being selected).
 */
export function renderPolicyDiff(d: PolicyDiff, context = 3): string {
  const out: string[] = [];
  const title = { create: 'created', update: 'configured', unchanged: 'unchanged', delete: 'deleted' }[d.change];
  const id = `${d.kind ?? 'policy'}/${d.name}`;
  out.push(`${id} (would be ${title})`);
  if (d.change !== 'unchanged') {
    out.push(`--- ${id} (server)`, `+++ ${id} (${d.change === 'delete' ? 'deleted' : 'manifest'})`);
    const keep = d.lines.map((l, i) => l.op !== ' ' || d.lines.slice(Math.max(0, i - context), i + context + 1).some((n) => n.op !== ' '));
    let skipped = false;
    d.lines.forEach((l, i) => {
      if (!keep[i]) {
        if (!skipped) out.push('@@');
        skipped = true;
        return;
      }
      skipped = false;
      out.push(`${l.op}${l.text}`);
    });
  }
  const n = d.nodes;
  const now = n.kept.length + n.removed.length;
  const after = n.kept.length + n.added.length;
  out.push(`nodes: ${now} selected now, ${after} after`);
  if (n.added.length) out.push(`  + ${nodeList(n.added)}`);
  if (n.removed.length) out.push(`  - ${nodeList(n.removed)}`);
  if (n.kept.length && d.change !== 'unchanged') out.push(`  ${d.change === 'delete' ? '-' : '~'} ${nodeList(n.kept)}`);
  return out.join('\n') + '\n';
}
