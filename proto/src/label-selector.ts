import { LabelSelectorRequirement_Operator as Op, type LabelSelector, type LabelSelectorRequirement } from '../gen/edgeplane/v1/resources.js';
import { checkLabelKey, checkLabelValue } from './labels.js';
import { MAX_QUOTED_LENGTH, MAX_SELECTOR_LENGTH, MAX_SELECTOR_TERMS, MAX_SELECTOR_VALUES, MAX_SELECTOR_VALUES_PER_TERM, quote } from './limits.js';
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

/** Counts the work a parser does, for tests that check it grows linearly with the input. */
export interface ParseStats {
  /** Characters visited (each visit of each character counts once). */
  steps: number;
}

const isSpace = (c: number): boolean => c === 32 || c === 9 || c === 10 || c === 13;
// Characters that end a key or a value: whitespace , ( ) = !
const isDelimiter = (c: number): boolean => isSpace(c) || c === 44 || c === 40 || c === 41 || c === 61 || c === 33;

/**
 * Parses the Kubernetes label-selector text form: comma-separated terms `k=v`, `k==v`, `k!=v`,
 * `k in (a,b)`, `k notin (a,b)`, `k` and `!k`. Empty text is the empty selector. One pass over
 * the text, each character visited once (`stats.steps` counts the visits); the text, the
 * number of terms and of values are bounded (MAX_SELECTOR_LENGTH, MAX_SELECTOR_TERMS,
 * MAX_SELECTOR_VALUES_PER_TERM, MAX_SELECTOR_VALUES) and checked before the work they would cost.
 * @throws LabelSelectorSyntaxError naming the problem, its character position and (a short
 * prefix of) the offending term.
 */
export function parseLabelSelector(text: string, stats?: ParseStats): LabelSelector {
  if (text.length > MAX_SELECTOR_LENGTH) {
    throw new LabelSelectorSyntaxError(`label selector of ${text.length} characters; at most ${MAX_SELECTOR_LENGTH}`);
  }
  const selector: LabelSelector = { matchLabels: {}, matchExpressions: [] };
  const exprKeys = new Set<string>();
  const n = text.length;
  let i = 0;
  let steps = 0;
  let terms = 0;
  let totalValues = 0;
  let termStart = 0;
  const fail = (why: string): never => {
    if (stats) stats.steps += steps;
    let end = text.indexOf(',', termStart);
    if (end < 0 || end - termStart > MAX_QUOTED_LENGTH) end = Math.min(n, termStart + MAX_QUOTED_LENGTH + 1);
    throw new LabelSelectorSyntaxError(`label selector: ${why} at character ${i + 1}${n > 0 ? ` (term ${quote(text.slice(termStart, end).trim())})` : ''}`);
  };
  const skipSpace = (): void => {
    while (i < n && isSpace(text.charCodeAt(i))) {
      i++;
      steps++;
    }
  };
  /** Reads a run of non-delimiter characters (a key, a value or a keyword). */
  const word = (): string => {
    const from = i;
    while (i < n && !isDelimiter(text.charCodeAt(i))) {
      i++;
      steps++;
    }
    return text.slice(from, i);
  };
  const atTermEnd = (): boolean => i >= n || text.charCodeAt(i) === 44;
  const check = (key: string, values: readonly string[]): void => {
    const kp = checkLabelKey(key);
    if (kp) fail(`key ${quote(key)} ${kp}`);
    for (const v of values) {
      const vp = checkLabelValue(v);
      if (vp) fail(`value ${quote(v)} ${vp}`);
    }
  };

  skipSpace();
  if (i >= n) {
    if (stats) stats.steps += steps;
    return selector;
  }
  for (;;) {
    skipSpace();
    termStart = i;
    if (++terms > MAX_SELECTOR_TERMS) fail(`more than ${MAX_SELECTOR_TERMS} terms`);
    let req: LabelSelectorRequirement;
    if (text.charCodeAt(i) === 33 /* ! */) {
      i++;
      steps++;
      skipSpace();
      const key = word();
      if (key === '') fail('expected a key after "!"');
      skipSpace();
      if (!atTermEnd()) fail('expected "," or the end after "!key"');
      req = { key, operator: Op.OPERATOR_DOES_NOT_EXIST, values: [] };
    } else {
      const key = word();
      if (key === '') fail('expected a key');
      skipSpace();
      const c = i < n ? text.charCodeAt(i) : -1;
      if (c === -1 || c === 44) {
        req = { key, operator: Op.OPERATOR_EXISTS, values: [] };
      } else if (c === 61 /* = */ || c === 33 /* ! */) {
        const negated = c === 33;
        i++;
        steps++;
        if (i < n && text.charCodeAt(i) === 61) {
          i++;
          steps++;
        } else if (negated) fail('expected "!="');
        skipSpace();
        const value = word();
        skipSpace();
        if (!atTermEnd()) fail('expected "," or the end after the value');
        check(key, [value]);
        totalValues++;
        if (!negated && !exprKeys.has(key) && !Object.prototype.hasOwnProperty.call(selector.matchLabels, key)) {
          selector.matchLabels[key] = value;
          exprKeys.add(key);
          if (i >= n) break;
          i++;
          steps++;
          continue;
        }
        req = { key, operator: negated ? Op.OPERATOR_NOT_IN : Op.OPERATOR_IN, values: [value] };
      } else {
        const op = word();
        if (op !== 'in' && op !== 'notin') fail('expected "=", "==", "!=", "in", "notin", "," or the end after the key');
        skipSpace();
        if (text.charCodeAt(i) !== 40 /* ( */) fail(`expected "(" after "${op}"`);
        i++;
        steps++;
        const values: string[] = [];
        for (;;) {
          skipSpace();
          const v = word();
          if (v === '') fail('empty value in set');
          if (values.length >= MAX_SELECTOR_VALUES_PER_TERM) fail(`more than ${MAX_SELECTOR_VALUES_PER_TERM} values in one set`);
          if (++totalValues > MAX_SELECTOR_VALUES) fail(`more than ${MAX_SELECTOR_VALUES} values in the selector`);
          values.push(v);
          skipSpace();
          const d = i < n ? text.charCodeAt(i) : -1;
          i++;
          steps++;
          if (d === 41 /* ) */) break;
          if (d !== 44) {
            i--;
            steps--;
            fail(d === -1 ? 'unbalanced "("' : 'expected "," or ")" in a set');
          }
        }
        skipSpace();
        if (!atTermEnd()) fail('expected "," or the end after ")"');
        req = { key, operator: op === 'in' ? Op.OPERATOR_IN : Op.OPERATOR_NOT_IN, values };
      }
    }
    check(req.key, req.values);
    exprKeys.add(req.key);
    selector.matchExpressions.push(req);
    if (i >= n) break;
    i++; // the comma
    steps++;
  }
  if (stats) stats.steps += steps;
  return selector;
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
 * Returns the field violations of a selector message, under `path`: more terms or values than
 * the limits allow (reported once, without looking further), key and value syntax, operators
 * with the right number of values, and selectors that no label set can satisfy. Linear in the
 * selector's size.
 */
export function validateLabelSelector(selector: LabelSelector | undefined, path: string): FieldViolation[] {
  const out: FieldViolation[] = [];
  if (!selector) return out;
  const labelCount = Object.keys(selector.matchLabels).length;
  const terms = labelCount + selector.matchExpressions.length;
  if (terms > MAX_SELECTOR_TERMS) {
    out.push({ field: path, description: `${terms} terms (match_labels and match_expressions); at most ${MAX_SELECTOR_TERMS}`, reason: 'TOO_MANY_TERMS' });
    return out;
  }
  let values = labelCount;
  for (const e of selector.matchExpressions) values += e.values.length;
  if (values > MAX_SELECTOR_VALUES) {
    out.push({ field: path, description: `${values} values; at most ${MAX_SELECTOR_VALUES}`, reason: 'TOO_MANY_VALUES' });
    return out;
  }
  for (const [k, v] of Object.entries(selector.matchLabels)) {
    const kp = checkLabelKey(k);
    if (kp) out.push({ field: `${path}.match_labels`, description: `key ${quote(k)}: ${kp}`, reason: 'INVALID_LABEL_KEY' });
    const vp = checkLabelValue(v);
    if (vp) out.push({ field: `${path}.match_labels[${quote(k)}]`, description: `value ${quote(v)}: ${vp}`, reason: 'INVALID_LABEL_VALUE' });
  }
  selector.matchExpressions.forEach((e, i) => {
    const p = `${path}.match_expressions[${i}]`;
    const kp = checkLabelKey(e.key);
    if (kp) out.push({ field: `${p}.key`, description: `key ${quote(e.key)}: ${kp}`, reason: 'INVALID_LABEL_KEY' });
    const needsValues = e.operator === Op.OPERATOR_IN || e.operator === Op.OPERATOR_NOT_IN;
    if (e.operator !== Op.OPERATOR_IN && e.operator !== Op.OPERATOR_NOT_IN && e.operator !== Op.OPERATOR_EXISTS && e.operator !== Op.OPERATOR_DOES_NOT_EXIST) {
      out.push({ field: `${p}.operator`, description: 'must be IN, NOT_IN, EXISTS or DOES_NOT_EXIST', reason: 'INVALID_OPERATOR' });
    } else if (needsValues && e.values.length === 0) {
      out.push({ field: `${p}.values`, description: 'IN and NOT_IN need at least one value', reason: 'REQUIRED' });
    } else if (!needsValues && e.values.length > 0) {
      out.push({ field: `${p}.values`, description: 'EXISTS and DOES_NOT_EXIST take no values', reason: 'NOT_ALLOWED' });
    }
    if (e.values.length > MAX_SELECTOR_VALUES_PER_TERM) {
      out.push({ field: `${p}.values`, description: `${e.values.length} values; at most ${MAX_SELECTOR_VALUES_PER_TERM}`, reason: 'TOO_MANY_VALUES' });
      return;
    }
    e.values.forEach((v, j) => {
      const vp = checkLabelValue(v);
      if (vp) out.push({ field: `${p}.values[${j}]`, description: `value ${quote(v)}: ${vp}`, reason: 'INVALID_LABEL_VALUE' });
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
    if (c.mustExist && c.mustNotExist) return `label ${quote(k)} is required and forbidden`;
    if (c.allowed && [...c.allowed].every((v) => c.excluded.has(v))) return `no value of label ${quote(k)} satisfies every term`;
  }
  return undefined;
}
