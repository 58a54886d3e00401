// Prefix lists and emergency blocks: validation of what the API takes and of what a log entry
// carries, and the one function that applies a PrefixListChange to the list it is based on.
// Controller and agents run the same code (the agent again before it touches its datapath).
// Linear in the number of prefixes; bounds in limits.ts.
import type { Block, PrefixList, PrefixListChange, PrefixListSpec } from '../gen/edgeplane/v1/blocklist.js';
import { PrefixListUse } from '../gen/edgeplane/v1/blocklist.js';
import { cidrFamily, isCidrProblem, parseCanonicalCidr, parseCanonicalCidrInto } from './cidr.js';
import { PackedKeyIndex } from './prefix-index.js';
import { PatchError } from './errors.js';
import { validateLabelSelector } from './label-selector.js';
import {
  MAX_BLOCK_DURATION_MS,
  MAX_BLOCK_PREFIXES,
  MAX_BLOCK_REASON_LENGTH,
  MAX_PREFIX_LIST_CHANGE,
  MAX_PREFIX_LIST_ENTRIES,
  MIN_BLOCK_DURATION_MS,
  quote,
} from './limits.js';
import { collectViolations, validateObjectMeta, type AddViolation } from './policy-validation.js';
import type { FieldViolation } from './status-details.js';

/** Annotation bytes of a prefix list or block (as a policy's default). */
const MAX_ANNOTATION_BYTES = 256 * 1024;
/** Characters of a prefix list's description. */
const MAX_DESCRIPTION = 1024;

/** Bytes of a prefix in SeenPrefixes: family, prefix length, 16 address bytes. */
const SEEN_KEY = 18;

/**
 * The prefixes a request or list holds so far, packed (no string or object per prefix), to find
 * duplicates among a million in one pass.
 */
class SeenPrefixes {
  #keys: Uint8Array;
  readonly #index: PackedKeyIndex;

  constructor(expected: number) {
    this.#keys = new Uint8Array(SEEN_KEY * Math.max(16, expected));
    this.#index = new PackedKeyIndex(SEEN_KEY, expected);
  }

  /**
   * Parses `text` as a canonical prefix and remembers it.
   * @returns 'ok', 'duplicate' (seen before), or 'invalid' (parseCanonicalCidr says why).
   */
  add(text: string): 'ok' | 'duplicate' | 'invalid' {
    const at = this.#index.size * SEEN_KEY;
    if (at + SEEN_KEY > this.#keys.length) {
      const keys = new Uint8Array(this.#keys.length * 2);
      keys.set(this.#keys);
      this.#keys = keys;
    }
    const keys = this.#keys;
    keys.fill(0, at, at + SEEN_KEY);
    const length = parseCanonicalCidrInto(text, keys, at + 2);
    if (length < 0) return 'invalid';
    keys[at] = cidrFamily(text);
    keys[at + 1] = length;
    return this.#index.add(keys) < 0 ? 'ok' : 'duplicate';
  }
}

/**
 * Checks canonical CIDRs at `path`: each parses (parseCanonicalCidr: host bits zero, one spelling),
 * each appears once. Stops checking one by one after `max` (a count violation instead). Linear,
 * with no string or object per valid prefix.
 */
function checkPrefixes(prefixes: readonly string[], path: string, max: number, add: AddViolation, seen = new SeenPrefixes(prefixes.length)): void {
  if (prefixes.length > max) {
    add(path, `${prefixes.length} prefixes; at most ${max}`, 'TOO_MANY_PREFIXES');
    return;
  }
  for (let i = 0; i < prefixes.length; i++) {
    const text = prefixes[i]!;
    const outcome = seen.add(text);
    if (outcome === 'ok') continue;
    if (outcome === 'duplicate') {
      add(`${path}[${i}]`, `${quote(text)} appears twice`, 'DUPLICATE_PREFIX');
      continue;
    }
    const parsed = parseCanonicalCidr(text);
    if (isCidrProblem(parsed)) add(`${path}[${i}]`, parsed.description, parsed.reason);
  }
}

function checkSpec(spec: PrefixListSpec | undefined, path: string, add: AddViolation): void {
  if (!spec) return;
  for (const v of validateLabelSelector(spec.nodeSelector, `${path}.node_selector`)) add(v.field, v.description, v.reason ?? 'INVALID');
  if (spec.use !== PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED && spec.use !== PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE) add(`${path}.use`, `unknown use ${spec.use}`, 'INVALID_ENUM');
  if (spec.description.length > MAX_DESCRIPTION) add(`${path}.description`, `at most ${MAX_DESCRIPTION} characters`, 'TOO_LONG');
}

/**
 * Checks an UpdatePrefixList request's list and changes at `path`: metadata as every resource,
 * spec (selector, use, description; spec.prefixes empty: changes go in add and remove), add and
 * remove canonical, each prefix once across both, at most MAX_PREFIX_LIST_CHANGE together.
 * @returns the violations (bounded), empty when valid. Linear in the request.
 */
export function validatePrefixListUpdate(list: PrefixList | undefined, addPrefixes: readonly string[], removePrefixes: readonly string[], path = 'prefix_list'): FieldViolation[] {
  const { out, add, result } = collectViolations(path);
  if (!list) {
    add(path, 'required', 'REQUIRED');
    return out;
  }
  validateObjectMeta(list.metadata, `${path}.metadata`, MAX_ANNOTATION_BYTES, add);
  checkSpec(list.spec, `${path}.spec`, add);
  if ((list.spec?.prefixes.length ?? 0) > 0) add(`${path}.spec.prefixes`, 'must be empty: send prefixes in add (and remove), at most ' + MAX_PREFIX_LIST_CHANGE + ' a request', 'USE_ADD');
  if (addPrefixes.length + removePrefixes.length > MAX_PREFIX_LIST_CHANGE) {
    add('add', `${addPrefixes.length} added and ${removePrefixes.length} removed; at most ${MAX_PREFIX_LIST_CHANGE} together in one update (send the rest in further updates)`, 'TOO_MANY_PREFIXES');
    return result();
  }
  const seen = new SeenPrefixes(addPrefixes.length + removePrefixes.length);
  checkPrefixes(addPrefixes, 'add', MAX_PREFIX_LIST_CHANGE, add, seen);
  checkPrefixes(removePrefixes, 'remove', MAX_PREFIX_LIST_CHANGE, add, seen);
  return result();
}

/**
 * Checks a whole prefix list (from a snapshot, or a manifest) at `path`: metadata, spec, at most
 * MAX_PREFIX_LIST_ENTRIES canonical prefixes, each once. Linear.
 */
export function validatePrefixList(list: PrefixList | undefined, path = 'prefix_list'): FieldViolation[] {
  const { out, add, result } = collectViolations(path);
  if (!list) {
    add(path, 'required', 'REQUIRED');
    return out;
  }
  validateObjectMeta(list.metadata, `${path}.metadata`, MAX_ANNOTATION_BYTES, add);
  checkSpec(list.spec, `${path}.spec`, add);
  checkPrefixes(list.spec?.prefixes ?? [], `${path}.spec.prefixes`, MAX_PREFIX_LIST_ENTRIES, add);
  return result();
}

/**
 * Checks a CreateBlock request at `path`: 1..MAX_BLOCK_PREFIXES canonical prefixes, each once, a
 * valid selector, a reason (required: `get blocks` says why) of at most MAX_BLOCK_REASON_LENGTH,
 * a duration of MIN_BLOCK_DURATION_MS..MAX_BLOCK_DURATION_MS.
 */
export function validateBlock(block: Block | undefined, durationMs: number | undefined, path = 'block'): FieldViolation[] {
  const { out, add, result } = collectViolations(path);
  if (!block) {
    add(path, 'required', 'REQUIRED');
    return out;
  }
  if (block.prefixes.length === 0) add(`${path}.prefixes`, 'at least one prefix', 'REQUIRED');
  checkPrefixes(block.prefixes, `${path}.prefixes`, MAX_BLOCK_PREFIXES, add);
  for (const v of validateLabelSelector(block.nodeSelector, `${path}.node_selector`)) add(v.field, v.description, v.reason ?? 'INVALID');
  if (block.reason.trim() === '') add(`${path}.reason`, 'required: say why (shown by get blocks)', 'REQUIRED');
  if (block.reason.length > MAX_BLOCK_REASON_LENGTH) add(`${path}.reason`, `at most ${MAX_BLOCK_REASON_LENGTH} characters`, 'TOO_LONG');
  if (durationMs === undefined) add('duration', 'required', 'REQUIRED');
  else if (!(durationMs >= MIN_BLOCK_DURATION_MS && durationMs <= MAX_BLOCK_DURATION_MS)) {
    add('duration', `${durationMs} ms; from ${MIN_BLOCK_DURATION_MS} ms to ${MAX_BLOCK_DURATION_MS / 86_400_000} days`, 'OUT_OF_RANGE');
  }
  return result();
}

/**
 * Applies `change` to `base` (the list the log holds at change.baseResourceVersion; undefined when
 * the change creates the list): the base's prefixes in their order less the removed ones, then
 * the added ones. Pure and linear; `base` is not modified.
 * @returns the resulting list, whole (a new object; the chain shares it among its followers).
 * @throws PatchError when the change does not fit the base: another base version, a removed
 * prefix not in it, an added prefix already in it, or the result over MAX_PREFIX_LIST_ENTRIES.
 */
export function applyPrefixListChange(base: PrefixList | undefined, change: PrefixListChange): PrefixList {
  const name = change.metadata?.name ?? '';
  const baseVersion = base?.metadata?.resourceVersion ?? 0n;
  if (baseVersion !== change.baseResourceVersion) throw new PatchError(`apply prefix list change name=${name}: based on version ${change.baseResourceVersion}, the list is at ${baseVersion}`);
  const held = base?.spec?.prefixes ?? [];
  let prefixes: string[];
  if (held.length === 0) {
    // A new (or empty) list: nothing to find the change's prefixes in, so no set of them either
    // (a list created from a large change costs a copy of it).
    if (change.remove.length > 0) throw new PatchError(`apply prefix list change name=${name}: removes ${quote(change.remove[0]!)}, which the list does not hold`);
    prefixes = [];
  } else if (change.add.length + change.remove.length <= FEW_CHANGES) {
    // A few: a copy of the list and a native scan per change (a one-prefix change to a million
    // prefixes costs ~25 ms here, the loop below ~150 ms).
    prefixes = held.slice();
    for (const p of change.remove) {
      const at = prefixes.indexOf(p);
      if (at < 0) throw new PatchError(`apply prefix list change name=${name}: removes ${quote(p)}, which the list does not hold`);
      prefixes.splice(at, 1);
    }
    for (const p of change.add) if (prefixes.includes(p)) throw new PatchError(`apply prefix list change name=${name}: adds ${quote(p)}, which the list holds`);
  } else {
    // Sets of the change only (small), never of the list: one pass over the list.
    const removed = new Set(change.remove);
    const added = new Set(change.add);
    prefixes = [];
    for (const p of held) {
      if (added.has(p)) throw new PatchError(`apply prefix list change name=${name}: adds ${quote(p)}, which the list holds`);
      if (removed.has(p)) removed.delete(p);
      else prefixes.push(p);
    }
    if (removed.size > 0) throw new PatchError(`apply prefix list change name=${name}: removes ${quote([...removed][0]!)}, which the list does not hold`);
  }
  for (const p of change.add) prefixes.push(p);
  if (prefixes.length > MAX_PREFIX_LIST_ENTRIES) throw new PatchError(`apply prefix list change name=${name}: ${prefixes.length} prefixes; at most ${MAX_PREFIX_LIST_ENTRIES}`);
  remember(prefixes, held, change);
  return { metadata: change.metadata, spec: { ...(change.spec ?? { nodeSelector: undefined, use: PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED, description: '' }), prefixes } };
}

/** Changes up to this many prefixes are applied by a copy of the list and a scan per change. */
const FEW_CHANGES = 8;

/**
 * One step of a list's lineage: the change that made an array from its base. The base array is
 * held weakly (a million-prefix list is 8 MB of array: holding every version a one-prefix change
 * replaced kept them all, ~8 MB more per change for as long as the newest lived); the step before
 * (the base's own step) strongly, so a walk passes versions nobody holds any more. Steps are the
 * size of their changes, and a new one cuts the chain MAX_LINEAGE_STEPS behind it.
 */
interface LineageStep {
  readonly base: WeakRef<readonly string[]>;
  readonly add: readonly string[];
  readonly remove: readonly string[];
  prev: LineageStep | undefined;
}

/** Where a list's prefixes array came from, by the array applyPrefixListChange made. Weak by array. */
const lineage = new WeakMap<readonly string[], LineageStep>();

/** Steps of lineage prefixChangesBetween walks back (and a lineage keeps). */
const MAX_LINEAGE_STEPS = 64;

function remember(made: readonly string[], base: readonly string[], change: PrefixListChange): void {
  const step: LineageStep = { base: new WeakRef(base), add: change.add, remove: change.remove, prev: lineage.get(base) };
  lineage.set(made, step);
  let at = step;
  for (let n = 1; n < MAX_LINEAGE_STEPS && at.prev !== undefined; n++) at = at.prev;
  at.prev = undefined;
}

/**
 * The prefixes added and removed from the list array `from` to the array `to`, when `to` was made
 * from `from` by applyPrefixListChange (in up to 64 steps) and the changes total at most `limit`
 * prefixes: what a holder of `from` must write to hold `to`, found in the size of the changes, not
 * of the list.
 * @returns undefined when `to` does not descend from `from` that way (compare the lists whole).
 */
export function prefixChangesBetween(from: readonly string[], to: readonly string[], limit: number): { add: string[]; remove: string[] } | undefined {
  if (to === from) return { add: [], remove: [] };
  const steps: LineageStep[] = [];
  let size = 0;
  for (let step = lineage.get(to); ; step = step.prev) {
    if (step === undefined || steps.length === MAX_LINEAGE_STEPS) return undefined;
    size += step.add.length + step.remove.length;
    if (size > limit) return undefined;
    steps.push(step);
    // `from` is held by the caller, so its weak reference still answers it.
    if (step.base.deref() === from) break;
  }
  // Oldest first: a prefix added then removed (or removed then added) cancels out.
  const added = new Set<string>();
  const removed = new Set<string>();
  for (let i = steps.length - 1; i >= 0; i--) {
    const step = steps[i]!;
    for (const p of step.remove) if (!added.delete(p)) removed.add(p);
    for (const p of step.add) if (!removed.delete(p)) added.add(p);
  }
  return { add: [...added], remove: [...removed] };
}

/** @returns whether `block` matches at `nowMs` (ms since the epoch, UTC): not lifted and not expired. */
export function blockActive(block: Block, nowMs: number): boolean {
  return block.liftTime === undefined && block.expireTime !== undefined && block.expireTime.getTime() > nowMs;
}
