// Reading -f manifests into validated policies and services, and mapping field violations
// (client-side or from the server's BadRequest) back to file:line:col.
import { dirname, isAbsolute, join } from 'node:path';
import { MAX_PREFIX_LIST_ENTRIES, validatePolicy, validatePrefixList, validateService, type FieldViolation } from '@edgeplane/proto';
import type { Flags, Io } from './command.js';
import { ManifestError, RpcError, UsageError, type ManifestProblem } from './errors.js';
import { readManifestSources } from './input.js';
import { POLICY_PATH, PREFIX_LIST_PATH, SERVICE_PATH, parseManifests, type PrefixListManifest, type ResourceManifest } from './manifest.js';
import { readPrefixesFile } from './prefixes-file.js';

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
  return (m.kind === 'policy' ? m.policy.metadata?.name : m.kind === 'service' ? m.service.metadata?.name : m.prefixList.metadata?.name) ?? '';
}

/** The proto field path prefix of a manifest's resource. */
function resourcePath(m: ResourceManifest): string {
  return m.kind === 'policy' ? POLICY_PATH : m.kind === 'service' ? SERVICE_PATH : PREFIX_LIST_PATH;
}

function validateResource(m: ResourceManifest): FieldViolation[] {
  if (m.kind === 'policy') return validatePolicy(m.policy, POLICY_PATH);
  if (m.kind === 'service') return validateService(m.service, SERVICE_PATH);
  return validatePrefixList(m.prefixList, PREFIX_LIST_PATH);
}

/**
 * Appends the prefixes of a PrefixList manifest's prefixesFile (relative to the manifest's
 * folder) to its list, and makes locate() point a violation of one of them at its line.
 * @returns the problems of reading it (more than MAX_PREFIX_LIST_ENTRIES prefixes in all).
 * @throws InputError when the file cannot be read.
 */
async function readPrefixes(m: PrefixListManifest, manifestFile: string): Promise<ManifestProblem[]> {
  if (!m.prefixesFile || m.prefixesFile.path === '') return [];
  const spec = m.prefixList.spec!;
  const base = manifestFile === '<stdin>' ? process.cwd() : dirname(manifestFile);
  const path = isAbsolute(m.prefixesFile.path) ? m.prefixesFile.path : join(base, m.prefixesFile.path);
  const inline = spec.prefixes.length;
  const read = await readPrefixesFile(path, Math.max(0, MAX_PREFIX_LIST_ENTRIES - inline));
  for (const p of read.prefixes) spec.prefixes.push(p);
  const locate = m.locate;
  const field = /^prefix_list\.spec\.prefixes\[(\d+)\]/;
  m.locate = (f: string) => {
    const i = Number(field.exec(f)?.[1] ?? -1);
    const line = i >= inline ? read.lines[i - inline] : undefined;
    return line === undefined ? locate(f) : { file: path, line, col: 1 };
  };
  if (read.tooManyAtLine === undefined) return [];
  return [{ position: { file: path, line: read.tooManyAtLine, col: 1 }, field: `${PREFIX_LIST_PATH}.spec.prefixes`, message: `more than ${MAX_PREFIX_LIST_ENTRIES} prefixes (with the manifest's own); a prefix list holds at most ${MAX_PREFIX_LIST_ENTRIES}` }];
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
  for (const m of resources) if (m.kind === 'prefixlist') problems.push(...(await readPrefixes(m, m.position.file)));
  const seen = new Map<string, ResourceManifest>();
  for (const m of resources) {
    const name = resourceName(m);
    const id = resourceId(m);
    const path = `${resourcePath(m)}.metadata.name`;
    const first = seen.get(id);
    if (first && name) problems.push({ position: m.locate(path), field: path, message: `${m.kind} ${JSON.stringify(name)} is also defined at ${first.position.file}:${first.position.line}` });
    seen.set(id, m);
    if (options.validate) problems.push(...violationsToProblems(m, validateResource(m)));
  }
  if (problems.length > 0) throw new ManifestError(problems);
  if (resources.length === 0) throw new ManifestError([{ message: `no policies, services or prefix lists found in ${files.join(', ')}` }]);
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
