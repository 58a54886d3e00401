/**
 * Kubernetes label syntax (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set),
 * which edgeplane labels and selectors follow so that operators' habits carry over. Every check
 * looks at the length first, so its cost is bounded whatever the input's size.
 */
import { MAX_LABEL_NAME_LENGTH, MAX_LABEL_PREFIX_LENGTH, MAX_LABELS, MAX_NODES_PER_REQUEST, quote } from './limits.js';
import type { FieldViolation } from './status-details.js';

const NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Returns why `name` is not an RFC 1123 label (a resource or node name), or undefined if it is. */
export function checkDnsLabel(name: string): string | undefined {
  if (name.length === 0) return 'must not be empty';
  if (name.length > 63) return `must be at most 63 characters (has ${name.length})`;
  if (!DNS_LABEL.test(name)) return 'must be an RFC 1123 label: lower-case letters, digits and "-", starting and ending with a letter or digit';
  return undefined;
}

/** Returns why `key` is not a valid label key, or undefined if it is. */
export function checkLabelKey(key: string): string | undefined {
  if (key.length > MAX_LABEL_PREFIX_LENGTH + 1 + MAX_LABEL_NAME_LENGTH) return `must be at most ${MAX_LABEL_PREFIX_LENGTH + 1 + MAX_LABEL_NAME_LENGTH} characters (has ${key.length})`;
  const slash = key.lastIndexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== undefined) {
    if (prefix.length === 0 || prefix.length > MAX_LABEL_PREFIX_LENGTH) return `prefix must be a DNS subdomain of at most ${MAX_LABEL_PREFIX_LENGTH} characters`;
    if (!prefix.split('.').every((part) => DNS_LABEL.test(part) && part.length <= 63)) return `prefix ${quote(prefix)} must be a DNS subdomain`;
  }
  if (name.length === 0) return 'name part must not be empty';
  if (name.length > MAX_LABEL_NAME_LENGTH) return `name part must be at most ${MAX_LABEL_NAME_LENGTH} characters (has ${name.length})`;
  if (!NAME.test(name)) return 'name part must be alphanumerics, "-", "_" or ".", starting and ending with an alphanumeric';
  return undefined;
}

/** Returns why `value` is not a valid label value, or undefined if it is. */
export function checkLabelValue(value: string): string | undefined {
  if (value.length === 0) return undefined;
  if (value.length > MAX_LABEL_NAME_LENGTH) return `must be at most ${MAX_LABEL_NAME_LENGTH} characters (has ${value.length})`;
  if (!NAME.test(value)) return 'must be alphanumerics, "-", "_" or ".", starting and ending with an alphanumeric';
  return undefined;
}

/**
 * Returns the field violations of a label map under `path` (e.g. `policy.metadata.labels`):
 * more than MAX_LABELS labels (then the labels are not checked one by one), and each key and
 * value that breaks the Kubernetes syntax, quoted at most MAX_QUOTED_LENGTH characters.
 */
export function validateLabels(labels: Readonly<Record<string, string>>, path: string): FieldViolation[] {
  const out: FieldViolation[] = [];
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS) {
    out.push({ field: path, description: `${entries.length} labels; at most ${MAX_LABELS}`, reason: 'TOO_MANY_LABELS' });
    return out;
  }
  for (const [k, v] of entries) {
    const kp = checkLabelKey(k);
    if (kp) out.push({ field: path, description: `key ${quote(k)}: ${kp}`, reason: 'INVALID_LABEL_KEY' });
    const vp = checkLabelValue(v);
    if (vp) out.push({ field: `${path}[${quote(k)}]`, description: `value ${quote(v)}: ${vp}`, reason: 'INVALID_LABEL_VALUE' });
  }
  return out;
}

/**
 * Returns the field violations of a list of node names a request carries, under `path`: more
 * than MAX_NODES_PER_REQUEST names (then the names are not checked one by one), and each name
 * that is not an RFC 1123 label. For every request field that names nodes.
 */
export function validateNodeNames(names: readonly string[], path: string): FieldViolation[] {
  if (names.length > MAX_NODES_PER_REQUEST) return [{ field: path, description: `${names.length} node names; at most ${MAX_NODES_PER_REQUEST}`, reason: 'TOO_MANY_NODES' }];
  const out: FieldViolation[] = [];
  names.forEach((name, i) => {
    const p = checkDnsLabel(name);
    if (p) out.push({ field: `${path}[${i}]`, description: `${quote(name)} ${p}`, reason: 'INVALID_NAME' });
  });
  return out;
}

/** True if two label sets hold the same keys and values (order does not matter). */
export function sameLabels(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && b[k] === a[k]);
}
