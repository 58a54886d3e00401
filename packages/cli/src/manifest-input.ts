// Reading -f manifests into validated policies and services, and mapping field violations
// (client-side or from the server's BadRequest) back to file:line:col.
import { validatePolicy, validateService, type FieldViolation } from '@edgeplane/proto';
import type { Flags, Io } from './command.js';
import { ManifestError, RpcError, UsageError, type ManifestProblem } from './errors.js';
import { readManifestSources } from './input.js';
import { POLICY_PATH, SERVICE_PATH, parseManifests, type ResourceManifest } from './manifest.js';

/** The -f / -R flags shared by apply, diff and delete. */
export const FILE_OPTIONS = {
  filename: { type: 'string', short: 'f', multiple: true, value: 'FILE', description: 'manifest file, folder, or - for standard input (repeatable)' },
  recursive: { type: 'boolean', short: 'R', description: 'also read sub-folders of folders given with -f' },
} as const;

/** Maps field violations to manifest problems at the line of the field (or the nearest enclosing one). */
export function violationsToProblems(manifest: ResourceManifest, violations: readonly FieldViolation[]): ManifestProblem[] {
  return violations.map((v) => ({ position: manifest.locate(v.field), field: v.field, message: v.description }));
}

/** Options of {@link loadManifests}. */
export interface LoadOptions {
  /** Run validatePolicy / validateService on each resource before anything is sent. */
  validate: boolean;
}

/** The kind and name of a manifest's resource, as the commands print it: `service/web`. */
export function resourceId(m: ResourceManifest): string {
  return `${m.kind}/${resourceName(m)}`;
}

/** The name of a manifest's resource ('' when it has none). */
export function resourceName(m: ResourceManifest): string {
  return (m.kind === 'policy' ? m.policy.metadata?.name : m.service.metadata?.name) ?? '';
}

/**
 * Reads and parses the manifests named by -f, checks that names are unique within each kind
 * (a policy and a service may share one), and validates each resource as the server would.
 * @returns the resources in document order.
 * @throws UsageError without -f; InputError when a file cannot be read; ManifestError with every
 * problem found (syntax, unknown fields, field violations), each at its file:line:col.
 */
export async function loadManifests(io: Io, flags: Flags, options: LoadOptions): Promise<ResourceManifest[]> {
  const files = flags.strings('filename');
  if (files.length === 0) throw new UsageError('-f FILE is required');
  const sources = await readManifestSources(files, () => io.readStdin(), flags.boolean('recursive'));
  const { resources, problems } = parseManifests(sources);
  const seen = new Map<string, ResourceManifest>();
  for (const m of resources) {
    const name = resourceName(m);
    const id = resourceId(m);
    const path = `${m.kind === 'policy' ? POLICY_PATH : SERVICE_PATH}.metadata.name`;
    const first = seen.get(id);
    if (first && name) problems.push({ position: m.locate(path), field: path, message: `${m.kind} ${JSON.stringify(name)} is also defined at ${first.position.file}:${first.position.line}` });
    seen.set(id, m);
    if (options.validate) problems.push(...violationsToProblems(m, m.kind === 'policy' ? validatePolicy(m.policy, POLICY_PATH) : validateService(m.service, SERVICE_PATH)));
  }
  if (problems.length > 0) throw new ManifestError(problems);
  if (resources.length === 0) throw new ManifestError([{ message: `no policies or services found in ${files.join(', ')}` }]);
  return resources;
}

/**
 * Turns a failed write of one manifest into what to print: field violations at their lines
 * (ManifestError), anything else unchanged.
 */
export function explainRpcError(manifest: ResourceManifest, err: unknown): unknown {
  if (err instanceof RpcError && err.violations.length > 0) {
    return new ManifestError([{ position: manifest.position, message: err.message }, ...violationsToProblems(manifest, err.violations)], { cause: err });
  }
  return err;
}
