// Reading -f manifests into validated policies, and mapping field violations (client-side or
// from the server's BadRequest) back to file:line:col.
import { validatePolicy, type FieldViolation } from '@edgeplane/proto';
import type { Flags, Io } from './command.js';
import { ManifestError, RpcError, UsageError, type ManifestProblem } from './errors.js';
import { readManifestSources } from './input.js';
import { POLICY_PATH, parseManifests, type PolicyManifest } from './manifest.js';

/** The -f / -R flags shared by apply, diff and delete. */
export const FILE_OPTIONS = {
  filename: { type: 'string', short: 'f', multiple: true, value: 'FILE', description: 'manifest file, folder, or - for standard input (repeatable)' },
  recursive: { type: 'boolean', short: 'R', description: 'also read sub-folders of folders given with -f' },
} as const;

/** Maps field violations to manifest problems at the line of the field (or the nearest enclosing one). */
export function violationsToProblems(manifest: PolicyManifest, violations: readonly FieldViolation[]): ManifestProblem[] {
  return violations.map((v) => ({ position: manifest.locate(v.field), field: v.field, message: v.description }));
}

/** Options of {@link loadPolicies}. */
export interface LoadOptions {
  /** Run validatePolicy on each policy before anything is sent. */
  validate: boolean;
}

/**
 * Reads and parses the manifests named by -f, checks that names are unique, and validates each
 * policy as the server would.
 * @throws UsageError without -f; InputError when a file cannot be read; ManifestError with every
 * problem found (syntax, unknown fields, field violations), each at its file:line:col.
 */
export async function loadPolicies(io: Io, flags: Flags, options: LoadOptions): Promise<PolicyManifest[]> {
  const files = flags.strings('filename');
  if (files.length === 0) throw new UsageError('-f FILE is required');
  const sources = await readManifestSources(files, () => io.readStdin(), flags.boolean('recursive'));
  const { policies, problems } = parseManifests(sources);
  const seen = new Map<string, PolicyManifest>();
  for (const m of policies) {
    const name = m.policy.metadata?.name ?? '';
    const first = seen.get(name);
    if (first && name) problems.push({ position: m.locate(`${POLICY_PATH}.metadata.name`), field: `${POLICY_PATH}.metadata.name`, message: `policy ${JSON.stringify(name)} is also defined at ${first.position.file}:${first.position.line}` });
    seen.set(name, m);
    if (options.validate) problems.push(...violationsToProblems(m, validatePolicy(m.policy, POLICY_PATH)));
  }
  if (problems.length > 0) throw new ManifestError(problems);
  if (policies.length === 0) throw new ManifestError([{ message: `no policies found in ${files.join(', ')}` }]);
  return policies;
}

/**
 * Turns a failed write of one manifest into what to print: field violations at their lines
 * (ManifestError), anything else unchanged.
 */
export function explainRpcError(manifest: PolicyManifest, err: unknown): unknown {
  if (err instanceof RpcError && err.violations.length > 0) {
    return new ManifestError([{ position: manifest.position, message: err.message }, ...violationsToProblems(manifest, err.violations)], { cause: err });
  }
  return err;
}
