import { LabelSelectorRequirement_Operator as Op, type LabelSelector, type LabelSelectorRequirement } from '../gen/edgeplane/v1/resources.js';
import { checkLabelKey, checkLabelValue } from './labels.js';
import type { FieldViolation } from './status-details.js';

/** Thrown by {@link parseLabelSelector} for text that is not a selector. */
export class LabelSelectorSyntaxError extends Error {
  override name = 'LabelSelectorSyntaxError';
}

/**
 * Returns whether `labels` satisfy `selector` with Kubernetes semantics: every match_labels
 * pair and every expression must hold; an empty (or absent) selector matches everything.
 */
export function matchesLabelSelector(selector: LabelSelector | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector.matchLabels)) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    const value = labels[e.key];
    switch (e.operator) {
      case Op.OPERATOR_IN:
        if (!has || !e.values.includes(value!)) return false;
        break;
      case Op.OPERATOR_NOT_IN:
        if (has && e.values.includes(value!)) return false;
        break;
      case Op.OPERATOR_EXISTS:
        if (!has) return false;
        break;
      case Op.OPERATOR_DOES_NOT_EXIST:
        if (has) return false;
        break;
      default:
        return false;
    }
  }
  return true;
}

/**
 * Parses the Kubernetes label-selector text form: comma-separated terms `k=v`, `k==v`, `k!=v`,
 * `k in (a,b)`, `k notin (a,b)`, `k` and `!k`. Empty text is the empty selector.
 * @throws LabelSelectorSyntaxError naming the offending term.
 */
export function parseLabelSelector(text: string): LabelSelector {
  const selector: LabelSelector = { matchLabels: {}, matchExpressions: [] };
  const terms: string[] = [];
  let depth = 0;
  let current = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (depth < 0) throw new LabelSelectorSyntaxError(`label selector ${JSON.stringify(text)}: unbalanced ")"`);
    if (ch === ',' && depth === 0) {
      terms.push(current);
      current = '';
    } else current += ch;
  }
  if (depth !== 0) throw new LabelSelectorSyntaxError(`label selector ${JSON.stringify(text)}: unbalanced "("`);
  terms.push(current);
  if (terms.length === 1 && terms[0]!.trim() === '') return selector;
  for (const raw of terms) {
    const term = raw.trim();
    const fail = (why: string): never => {
      throw new LabelSelectorSyntaxError(`label selector term ${JSON.stringify(term)}: ${why}`);
    };
    let m: RegExpMatchArray | null;
    let req: LabelSelectorRequirement;
    if ((m = term.match(/^(\S+?)\s*(==|=|!=)\s*(\S*)$/))) {
      const [, key, op, value] = m as unknown as [string, string, string, string];
      req = op === '!=' ? { key, operator: Op.OPERATOR_NOT_IN, values: [value] } : { key, operator: Op.OPERATOR_IN, values: [value] };
      if (op !== '!=' && !selector.matchExpressions.some((e) => e.key === key) && !(key in selector.matchLabels)) {
        selector.matchLabels[key] = value;
        checkTerm(key, [value], fail);
        continue;
      }
    } else if ((m = term.match(/^(\S+)\s+(in|notin)\s*\(([^)]*)\)$/))) {
      const [, key, op, list] = m as unknown as [string, string, string, string];
      const values = list.split(',').map((v) => v.trim());
      if (values.some((v) => v === '')) fail('empty value in set');
      req = { key, operator: op === 'in' ? Op.OPERATOR_IN : Op.OPERATOR_NOT_IN, values };
    } else if ((m = term.match(/^!\s*(\S+)$/))) {
      req = { key: m[1]!, operator: Op.OPERATOR_DOES_NOT_EXIST, values: [] };
    } else if ((m = term.match(/^([^\s=!()]+)$/))) {
      req = { key: m[1]!, operator: Op.OPERATOR_EXISTS, values: [] };
    } else {
      return fail('expected k=v, k!=v, k in (..), k notin (..), k or !k');
    }
    checkTerm(req.key, req.values, fail);
    selector.matchExpressions.push(req);
  }
  return selector;
}

function checkTerm(key: string, values: string[], fail: (why: string) => never): void {
  const keyProblem = checkLabelKey(key);
  if (keyProblem) fail(`key ${keyProblem}`);
  for (const v of values) {
    const p = checkLabelValue(v);
    if (p) fail(`value ${JSON.stringify(v)} ${p}`);
  }
}

/** Formats a selector in the text form {@link parseLabelSelector} reads. */
export function formatLabelSelector(selector: LabelSelector | undefined): string {
  if (!selector) return '';
  const terms = Object.entries(selector.matchLabels).map(([k, v]) => `${k}=${v}`);
  for (const e of selector.matchExpressions) {
    if (e.operator === Op.OPERATOR_IN) terms.push(`${e.key} in (${e.values.join(',')})`);
    else if (e.operator === Op.OPERATOR_NOT_IN) terms.push(`${e.key} notin (${e.values.join(',')})`);
    else if (e.operator === Op.OPERATOR_EXISTS) terms.push(e.key);
    else if (e.operator === Op.OPERATOR_DOES_NOT_EXIST) terms.push(`!${e.key}`);
  }
  return terms.join(',');
}

/**
 * Returns the field violations of a selector message, under `path`: key and value syntax,
 * operators with the right number of values, and selectors that no label set can satisfy.
 */
export function validateLabelSelector(selector: LabelSelector | undefined, path: string): FieldViolation[] {
  const out: FieldViolation[] = [];
  if (!selector) return out;
  for (const [k, v] of Object.entries(selector.matchLabels)) {
    const kp = checkLabelKey(k);
    if (kp) out.push({ field: `${path}.match_labels`, description: `key ${JSON.stringify(k)}: ${kp}`, reason: 'INVALID_LABEL_KEY' });
    const vp = checkLabelValue(v);
    if (vp) out.push({ field: `${path}.match_labels[${JSON.stringify(k)}]`, description: `value ${JSON.stringify(v)}: ${vp}`, reason: 'INVALID_LABEL_VALUE' });
  }
  selector.matchExpressions.forEach((e, i) => {
    const p = `${path}.match_expressions[${i}]`;
    const kp = checkLabelKey(e.key);
    if (kp) out.push({ field: `${p}.key`, description: `key ${JSON.stringify(e.key)}: ${kp}`, reason: 'INVALID_LABEL_KEY' });
    const needsValues = e.operator === Op.OPERATOR_IN || e.operator === Op.OPERATOR_NOT_IN;
    if (e.operator !== Op.OPERATOR_IN && e.operator !== Op.OPERATOR_NOT_IN && e.operator !== Op.OPERATOR_EXISTS && e.operator !== Op.OPERATOR_DOES_NOT_EXIST) {
      out.push({ field: `${p}.operator`, description: 'must be IN, NOT_IN, EXISTS or DOES_NOT_EXIST', reason: 'INVALID_OPERATOR' });
    } else if (needsValues && e.values.length === 0) {
      out.push({ field: `${p}.values`, description: 'IN and NOT_IN need at least one value', reason: 'REQUIRED' });
    } else if (!needsValues && e.values.length > 0) {
      out.push({ field: `${p}.values`, description: 'EXISTS and DOES_NOT_EXIST take no values', reason: 'NOT_ALLOWED' });
    }
    e.values.forEach((v, j) => {
      const vp = checkLabelValue(v);
      if (vp) out.push({ field: `${p}.values[${j}]`, description: `value ${JSON.stringify(v)}: ${vp}`, reason: 'INVALID_LABEL_VALUE' });
    });
  });
  if (out.length === 0) {
    const why = unsatisfiable(selector);
    if (why) out.push({ field: path, description: `selector can never match a node: ${why}`, reason: 'SELECTOR_CANNOT_MATCH' });
  }
  return out;
}

/** Returns why no label set satisfies the selector, or undefined if some label set does. */
function unsatisfiable(selector: LabelSelector): string | undefined {
  interface KeyConstraint {
    mustExist: boolean;
    mustNotExist: boolean;
    allowed?: Set<string>;
    excluded: Set<string>;
  }
  const keys = new Map<string, KeyConstraint>();
  const get = (k: string): KeyConstraint => {
    let c = keys.get(k);
    if (!c) keys.set(k, (c = { mustExist: false, mustNotExist: false, excluded: new Set() }));
    return c;
  };
  const restrict = (c: KeyConstraint, values: string[]): void => {
    c.mustExist = true;
    c.allowed = c.allowed ? new Set(values.filter((v) => c.allowed!.has(v))) : new Set(values);
  };
  for (const [k, v] of Object.entries(selector.matchLabels)) restrict(get(k), [v]);
  for (const e of selector.matchExpressions) {
    const c = get(e.key);
    if (e.operator === Op.OPERATOR_IN) restrict(c, e.values);
    else if (e.operator === Op.OPERATOR_NOT_IN) e.values.forEach((v) => c.excluded.add(v));
    else if (e.operator === Op.OPERATOR_EXISTS) c.mustExist = true;
    else if (e.operator === Op.OPERATOR_DOES_NOT_EXIST) c.mustNotExist = true;
  }
  for (const [k, c] of keys) {
    if (c.mustExist && c.mustNotExist) return `label ${JSON.stringify(k)} is required and forbidden`;
    if (c.allowed && [...c.allowed].every((v) => c.excluded.has(v))) return `no value of label ${JSON.stringify(k)} satisfies every term`;
  }
  return undefined;
}
