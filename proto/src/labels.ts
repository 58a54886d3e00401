/**
 * Kubernetes label syntax (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set),
 * which edgeplane labels and selectors follow so that operators' habits carry over.
 */

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
  const slash = key.lastIndexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== undefined) {
    if (prefix.length === 0 || prefix.length > 253) return 'prefix must be a DNS subdomain of at most 253 characters';
    if (!prefix.split('.').every((part) => DNS_LABEL.test(part) && part.length <= 63)) return `prefix ${JSON.stringify(prefix)} must be a DNS subdomain`;
  }
  if (name.length === 0) return 'name part must not be empty';
  if (name.length > 63) return `name part must be at most 63 characters (has ${name.length})`;
  if (!NAME.test(name)) return 'name part must be alphanumerics, "-", "_" or ".", starting and ending with an alphanumeric';
  return undefined;
}

/** Returns why `value` is not a valid label value, or undefined if it is. */
export function checkLabelValue(value: string): string | undefined {
  if (value.length === 0) return undefined;
  if (value.length > 63) return `must be at most 63 characters (has ${value.length})`;
  if (!NAME.test(value)) return 'must be alphanumerics, "-", "_" or ".", starting and ending with an alphanumeric';
  return undefined;
}
