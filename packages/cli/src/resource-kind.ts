import { UsageError } from './errors.js';

/** The resource kinds the command knows. */
export type ResourceKind = 'policy' | 'service' | 'node';

/** Every word that names a kind (singular, plural, short), kubectl-style: the one table parsing, help and completion read. */
export const KIND_ALIASES: Readonly<Record<string, ResourceKind>> = {
  policy: 'policy',
  policies: 'policy',
  pol: 'policy',
  service: 'service',
  services: 'service',
  svc: 'service',
  node: 'node',
  nodes: 'node',
  no: 'node',
};

/** The words that name a kind, for help and completion. */
export const KIND_WORDS = ['policies', 'services', 'nodes'] as const;

/**
 * Parses a kind word (`policy`, `policies`, `pol`, `service`, `services`, `svc`, `node`,
 * `nodes`, `no`), also in the `policy/NAME` form, which returns the name too.
 * @throws UsageError for an unknown kind.
 */
export function parseKind(word: string | undefined): { kind: ResourceKind; name?: string } {
  if (word === undefined) throw new UsageError(`name a resource kind: ${KIND_WORDS.join(', ')}`);
  const [k, name] = word.split('/', 2);
  const kind = KIND_ALIASES[(k ?? '').toLowerCase()];
  if (!kind) throw new UsageError(`unknown resource kind ${JSON.stringify(k)}; use ${KIND_WORDS.join(', ')}`);
  return name ? { kind, name } : { kind };
}

/** Splits `KIND NAME...` or `KIND/NAME...` arguments. @throws UsageError */
export function parseTargets(positionals: readonly string[]): { kind: ResourceKind; names: string[] } {
  const first = parseKind(positionals[0]);
  if (first.name !== undefined) {
    const names = [first.name];
    for (const p of positionals.slice(1)) {
      const t = parseKind(p);
      if (t.kind !== first.kind || t.name === undefined) throw new UsageError(`mix of resource forms: ${p}`);
      names.push(t.name);
    }
    return { kind: first.kind, names };
  }
  return { kind: first.kind, names: positionals.slice(1) };
}
