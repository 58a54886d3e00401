// Counting repeated fields of an encoded ApplyPolicyRequest (or ApplyServiceRequest) without decoding it. Decoding
// costs about 0.3 us per string (one TextDecoder call each), so a request of 300,000 tiny
// selector values takes 100 ms to decode before validation can refuse it on the count. This
// walk only reads tags and lengths, skipping every string, and reports the same bounds
// validatePolicy (validateService) enforces, so a server can refuse such a request before decoding it.
import { MAX_LABELS, MAX_ROLLOUT_WAVES, MAX_RULES_PER_POLICY, MAX_SELECTOR_TERMS, MAX_SELECTOR_VALUES, MAX_SERVICE_BACKENDS } from './limits.js';
import type { FieldViolation } from './status-details.js';

/** Thrown inside the walk for bytes that are not protobuf; the walk then reports nothing. */
class Malformed extends Error {}

interface Field {
  number: number;
  wireType: number;
  /** For length-delimited fields: the body's bounds. */
  start: number;
  end: number;
}

/** Calls `visit` for each field of the message in bytes[start, end). */
function fields(bytes: Uint8Array, start: number, end: number, visit: (f: Field) => void): void {
  let i = start;
  const varint = (): number => {
    let value = 0;
    let shift = 0;
    for (;;) {
      if (i >= end) throw new Malformed();
      const b = bytes[i++]!;
      if (shift < 35) value += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return value;
      shift += 7;
      if (shift > 63) throw new Malformed();
    }
  };
  while (i < end) {
    const tag = varint();
    const wireType = tag % 8;
    const number = Math.floor(tag / 8);
    if (wireType === 0) varint();
    else if (wireType === 1) i += 8;
    else if (wireType === 5) i += 4;
    else if (wireType === 2) {
      const len = varint();
      if (i + len > end) throw new Malformed();
      visit({ number, wireType, start: i, end: i + len });
      i += len;
      continue;
    } else throw new Malformed();
    if (i > end) throw new Malformed();
  }
}

/** Counts `number` length-delimited fields in a message: a tight loop, the hot path for long repeated fields. */
function count(bytes: Uint8Array, start: number, end: number, number: number): number {
  let n = 0;
  let i = start;
  while (i < end) {
    // Tags of fields 1..15 are one byte; longer ones go through the general walk.
    const tag = bytes[i]!;
    if (tag & 0x80) {
      let rest = 0;
      fields(bytes, i, end, (f) => {
        if (f.number === number) rest++;
      });
      return n + rest;
    }
    i++;
    const wireType = tag & 7;
    if (wireType === 2) {
      let len = 0;
      let shift = 0;
      for (;;) {
        if (i >= end || shift > 28) throw new Malformed();
        const b = bytes[i++]!;
        len |= (b & 0x7f) << shift;
        if ((b & 0x80) === 0) break;
        shift += 7;
      }
      if (len < 0 || i + len > end) throw new Malformed();
      i += len;
      if (tag >> 3 === number) n++;
    } else if (wireType === 0) {
      for (;;) {
        if (i >= end) throw new Malformed();
        if ((bytes[i++]! & 0x80) === 0) break;
      }
    } else if (wireType === 1) i += 8;
    else if (wireType === 5) i += 4;
    else throw new Malformed();
  }
  if (i > end) throw new Malformed();
  return n;
}

function selector(bytes: Uint8Array, f: Field, path: string, out: FieldViolation[]): void {
  let terms = 0;
  let values = 0;
  fields(bytes, f.start, f.end, (s) => {
    if (s.number === 1) {
      terms++;
      values++;
    } else if (s.number === 2) {
      terms++;
      values += count(bytes, s.start, s.end, 3);
    }
  });
  if (terms > MAX_SELECTOR_TERMS) out.push({ field: path, description: `${terms} terms (match_labels and match_expressions); at most ${MAX_SELECTOR_TERMS}`, reason: 'TOO_MANY_TERMS' });
  else if (values > MAX_SELECTOR_VALUES) out.push({ field: path, description: `${values} values; at most ${MAX_SELECTOR_VALUES}`, reason: 'TOO_MANY_VALUES' });
}

/**
 * Returns violations of the count bounds (labels, selector terms and values, rules, waves) of
 * an encoded ApplyPolicyRequest, read from its tags and lengths without decoding a string.
 * Linear in the byte length, with a small constant. Bytes that are not protobuf give no
 * violations: the decoder reports them. Field paths and reasons are validatePolicy's.
 */
export function checkApplyPolicyWire(bytes: Uint8Array, maxRules: number = MAX_RULES_PER_POLICY): FieldViolation[] {
  return checkApplyWire(bytes, { resource: 'policy', list: { number: 3, name: 'rules', max: maxRules, reason: 'TOO_MANY_RULES' }, rolloutNumber: 5 });
}

/**
 * Returns violations of the count bounds (labels, selector terms and values, backends, waves)
 * of an encoded ApplyServiceRequest, as checkApplyPolicyWire does for a policy. Field paths and
 * reasons are validateService's.
 */
export function checkApplyServiceWire(bytes: Uint8Array): FieldViolation[] {
  return checkApplyWire(bytes, { resource: 'service', list: { number: 5, name: 'backends', max: MAX_SERVICE_BACKENDS, reason: 'TOO_MANY_BACKENDS' }, rolloutNumber: 11 });
}

/**
 * Where an Apply<Resource>Request keeps what is counted: the request's field 1 is the resource,
 * whose field 1 is ObjectMeta and field 2 the spec, whose field 1 is the node selector.
 */
interface ApplyWireShape {
  /** The resource's name in field paths ('policy', 'service'). */
  readonly resource: string;
  /** The spec's long repeated field (rules, backends) and its bound. */
  readonly list: { readonly number: number; readonly name: string; readonly max: number; readonly reason: string };
  /** The spec's RolloutStrategy field. */
  readonly rolloutNumber: number;
}

function checkApplyWire(bytes: Uint8Array, shape: ApplyWireShape): FieldViolation[] {
  const out: FieldViolation[] = [];
  const { resource, list } = shape;
  try {
    let labels = 0;
    let items = 0;
    let waves = 0;
    fields(bytes, 0, bytes.length, (req) => {
      if (req.number !== 1) return; // the resource
      fields(bytes, req.start, req.end, (r) => {
        if (r.number === 1) labels += count(bytes, r.start, r.end, 2); // ObjectMeta.labels
        if (r.number !== 2) return; // the spec
        fields(bytes, r.start, r.end, (s) => {
          if (s.number === 1) selector(bytes, s, `${resource}.spec.node_selector`, out);
          else if (s.number === list.number) items++;
          else if (s.number === shape.rolloutNumber) waves += rolloutWaves(bytes, s, `${resource}.spec.rollout_strategy`, out);
        });
      });
    });
    if (labels > MAX_LABELS) out.push({ field: `${resource}.metadata.labels`, description: `${labels} labels; at most ${MAX_LABELS}`, reason: 'TOO_MANY_LABELS' });
    if (items > list.max) out.push({ field: `${resource}.spec.${list.name}`, description: `${items} ${list.name}; at most ${list.max}`, reason: list.reason });
    if (waves > MAX_ROLLOUT_WAVES) out.push({ field: `${resource}.spec.rollout_strategy.staged.waves`, description: `${waves} waves; at most ${MAX_ROLLOUT_WAVES}`, reason: 'TOO_MANY_WAVES' });
  } catch (err) {
    if (err instanceof Malformed) return [];
    throw err;
  }
  return out;
}

/**
 * Walks a RolloutStrategy at `f`: checks the selectors of its first MAX_ROLLOUT_WAVES staged
 * waves and returns how many waves it has.
 */
function rolloutWaves(bytes: Uint8Array, f: Field, path: string, out: FieldViolation[]): number {
  let waves = 0;
  fields(bytes, f.start, f.end, (r) => {
    if (r.number !== 2) return; // RolloutStrategy.staged
    fields(bytes, r.start, r.end, (st) => {
      if (st.number !== 1) return; // Staged.waves
      const i = waves++;
      if (i < MAX_ROLLOUT_WAVES) {
        fields(bytes, st.start, st.end, (w) => {
          if (w.number === 3) selector(bytes, w, `${path}.staged.waves[${i}].selector`, out);
        });
      }
    });
  });
  return waves;
}

