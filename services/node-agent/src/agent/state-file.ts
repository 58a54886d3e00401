import { closeSync, fsyncSync, openSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { applyPolicyPatch, compactSnapshotRules, patchLineageOf, PolicyPatch, policyPatchOf, prefixChangesBetween, Snapshot, type Policy, type PrefixList } from '@edgeplane/proto';
import { writeAll, writeFileDurably } from './durable-file.js';

/** What the node last enforced: the whole verified intent at that revision. */
export interface AppliedState {
  /** The intent (all policies, the revision and its chain hash), as verified when received. */
  snapshot: Snapshot;
  /** The labels it was compiled for. */
  labels: Record<string, string>;
}

/** Thrown when the state file exists but cannot be read back. */
export class StateFileError extends Error {
  override name = 'StateFileError';
}

/** Where the agent keeps what it last enforced (a {@link StateFile}, or a stand-in in simulations and tests). */
export interface StateStore {
  /** Returns the saved state, or undefined if there is none. @throws if it cannot be read back. */
  read(): AppliedState | undefined;
  /** Saves the state durably. @throws when it could not be saved (the old state stays). */
  write(state: AppliedState): void;
}

/** Options of {@link StateFile}. */
export interface StateFileOptions {
  /**
   * The journal may grow to this share of the base before the next write is a whole base again
   * (at least journalMinBytes). Default 1/4.
   */
  journalShare?: number;
  /** The journal may always grow this far. Default 1 MiB (a small base's journal is not rewritten at every change). */
  journalMinBytes?: number;
}

/**
 * The journal's first bytes: its magic and the id of the base it belongs to. EPJ2's records may
 * give policies by name or patch (RecordHeader.policies), which an agent of EPJ1 would not see: it
 * ignores an EPJ2 journal (reads the base alone, a state older but whole) instead of reading
 * records with policies missing. This agent writes EPJ2 and reads both.
 */
const JOURNAL_MAGIC = Buffer.from('EPJ2');
const JOURNAL_MAGIC_V1 = Buffer.from('EPJ1');
const JOURNAL_ID_BYTES = 16;
/** Each record: u32 length of the payload, u32 CRC-32 of the payload, the payload. */
const RECORD_HEADER_BYTES = 8;
/** A list change of more prefixes than this is recorded by a whole base. */
const MAX_JOURNALED_LIST_CHANGE = 65_536;
/** Snapshot bytes per piece of a base's base64 (a multiple of 3: the pieces' base64 joins into the whole's). */
const BASE64_PIECE = 3 * 16_384;
/** Records a journal holds at most before a whole base is due (bounds the replay at a start). */
const MAX_JOURNAL_RECORDS = 1024;

/** A journal record's header: the labels, and how each prefix list and policy of its snapshot is given. */
interface RecordHeader {
  labels: Record<string, string>;
  /** Lists whose prefixes the record leaves out: the previous state's list of the same name, changed by these. */
  lists: { name: string; add: string[]; remove: string[] }[];
  /**
   * The state's policies in order, each given as the previous state's policy of that name
   * (`same`), as that policy with a patch applied (`patch`: a PolicyPatch, base64), or whole in the
   * record's snapshot (neither). Absent in records written before: every policy is there whole.
   */
  policies?: { name: string; same?: true; patch?: string }[];
}

/**
 * The agent's local record of the last applied revision, so a node that boots with no network
 * enforces it again. Two files: the base (`path`, the whole state, written with writeFileDurably:
 * a crash leaves the old file or the new one, never half of one) and its journal (`path.journal`),
 * to which each later state is appended as one record, fsynced: the snapshot with each prefix
 * list that changed by a known difference (applyPrefixListChange's lineage) given as that
 * difference, each policy the previous state held unchanged given by its name, and each one
 * patched from it (applyPolicyPatch's lineage) given as the patch. A one-prefix change to a
 * million-prefix list, or a one-rule change to a 65,536-rule policy, appends a record of the size
 * of the change. Reading replays the journal's records on the base, up to the first
 * record that is not whole (a crash during an append: that state is lost, the one before it
 * read). The journal names the base it belongs to (a random id in both), so a journal left
 * behind by a crash while a new base was written is ignored. A whole base is written again when
 * the journal would pass its share of the base, when a list's change is unknown or large, after a
 * failed append, and at the first write after a start.
 */
export class StateFile implements StateStore {
  readonly path: string;
  readonly #journalPath: string;
  readonly #share: number;
  readonly #minBytes: number;
  /** The state the files on disk hold now, when this process wrote or read them; undefined: the next write is a base. */
  #held: { state: AppliedState; id: Buffer; baseBytes: number; journalBytes: number; records: number } | undefined;

  constructor(path: string, options: StateFileOptions = {}) {
    this.path = path;
    this.#journalPath = `${path}.journal`;
    this.#share = options.journalShare ?? 1 / 4;
    this.#minBytes = options.journalMinBytes ?? 1 << 20;
  }

  /** Returns the saved state, or undefined if there is none. @throws StateFileError if the base is corrupt. */
  read(): AppliedState | undefined {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StateFileError(`read state file ${this.path}`, { cause: err });
    }
    let state: AppliedState;
    let id: string | undefined;
    try {
      const j = JSON.parse(text) as { version: number; snapshot: string; labels: Record<string, string>; journal?: string };
      if (j.version !== 1) throw new Error(`unknown version ${j.version}`);
      state = { snapshot: Snapshot.decode(Buffer.from(j.snapshot, 'base64')), labels: j.labels };
      id = j.journal;
    } catch (cause) {
      throw new StateFileError(`parse state file ${this.path}: ${(cause as Error).message}`, { cause });
    }
    if (id !== undefined) state = this.#replay(state, Buffer.from(id, 'hex'));
    compactSnapshotRules(state.snapshot);
    // The next write is a whole base: the lists read here are not the ones later changes descend from.
    this.#held = undefined;
    return state;
  }

  /** Saves the state durably: one record appended to the journal, or a whole base. */
  write(state: AppliedState): void {
    const held = this.#held;
    const record = held && this.#record(held.state, state);
    if (held && record && held.records < MAX_JOURNAL_RECORDS && held.journalBytes + record.length <= Math.max(this.#minBytes, held.baseBytes * this.#share)) {
      try {
        appendDurably(this.#journalPath, record);
      } catch (err) {
        // The journal may hold part of the record now: only a new base makes it safe to append again.
        this.#held = undefined;
        throw err;
      }
      this.#held = { ...held, state, journalBytes: held.journalBytes + record.length, records: held.records + 1 };
      return;
    }
    this.#writeBase(state);
  }

  // A new base with a new journal id, then an empty journal for it. A crash between the two
  // leaves the old journal, whose id is the old base's: ignored.
  #writeBase(state: AppliedState): void {
    this.#held = undefined;
    const id = randomBytes(JOURNAL_ID_BYTES);
    const snapshot = Snapshot.encode(state.snapshot).finish();
    // The JSON with the snapshot's base64 last, written in pieces: the base64 (and the JSON around
    // it, and their bytes) is never whole in memory. At 65,536 rules those were ~8 MB beside the
    // encoded snapshot, at the agent's peak (right after the first apply of a large policy).
    const head = Buffer.from(JSON.stringify({ version: 1, revision: state.snapshot.revision.toString(), labels: state.labels, journal: id.toString('hex'), snapshot: '' }).slice(0, -'"}'.length));
    const tail = Buffer.from('"}');
    writeFileDurably(this.path, (function* () {
      yield head;
      for (let at = 0; at < snapshot.length; at += BASE64_PIECE) {
        const piece = Buffer.from(snapshot.buffer, snapshot.byteOffset + at, Math.min(BASE64_PIECE, snapshot.length - at));
        yield Buffer.from(piece.toString('base64'), 'latin1');
      }
      yield tail;
    })());
    writeFileDurably(this.#journalPath, Buffer.concat([JOURNAL_MAGIC, id]));
    const baseBytes = head.length + 4 * Math.ceil(snapshot.length / 3) + tail.length;
    this.#held = { state, id, baseBytes, journalBytes: JOURNAL_MAGIC.length + JOURNAL_ID_BYTES, records: 0 };
  }

  /**
   * `next` as one journal record after `prev`: its snapshot with the prefixes of every list whose
   * change from prev's list of that name is known (and at most MAX_JOURNALED_LIST_CHANGE) left
   * out. Undefined when a list's change is not known that way (a whole base is due).
   */
  #record(prev: AppliedState, next: AppliedState): Buffer | undefined {
    const before = new Map(prev.snapshot.prefixLists.map((l) => [l.metadata?.name ?? '', l]));
    const header: RecordHeader = { labels: next.labels, lists: [] };
    const lists: PrefixList[] = [];
    for (const list of next.snapshot.prefixLists) {
      const name = list.metadata?.name ?? '';
      const had = before.get(name)?.spec?.prefixes;
      const now = list.spec?.prefixes ?? [];
      const change = had === undefined ? undefined : had === now ? { add: [], remove: [] } : prefixChangesBetween(had, now, MAX_JOURNALED_LIST_CHANGE);
      if (change === undefined) {
        // A new list, or one changed in an unknown way: small ones go in whole, large ones make a base.
        if (now.length > MAX_JOURNALED_LIST_CHANGE) return undefined;
        lists.push(list);
        continue;
      }
      header.lists.push({ name, add: change.add, remove: change.remove });
      lists.push({ ...list, spec: { ...list.spec!, prefixes: [] } });
    }
    const { policies, whole } = policiesOf(prev.snapshot.policies, next.snapshot.policies);
    header.policies = policies;
    const json = Buffer.from(JSON.stringify(header));
    const snapshot = Snapshot.encode({ ...next.snapshot, policies: whole, prefixLists: lists }).finish();
    const payload = Buffer.alloc(4 + json.length + snapshot.length);
    payload.writeUInt32LE(json.length, 0);
    json.copy(payload, 4);
    payload.set(snapshot, 4 + json.length);
    const out = Buffer.alloc(RECORD_HEADER_BYTES + payload.length);
    out.writeUInt32LE(payload.length, 0);
    out.writeUInt32LE(crc32(payload), 4);
    payload.copy(out, RECORD_HEADER_BYTES);
    return out;
  }

  /** `base` with the journal's records for base `id` applied in order, up to the first that is not whole. */
  #replay(base: AppliedState, id: Buffer): AppliedState {
    let journal: Buffer;
    try {
      journal = readFileSync(this.#journalPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return base;
      throw new StateFileError(`read state journal ${this.#journalPath}`, { cause: err });
    }
    const start = JOURNAL_MAGIC.length + JOURNAL_ID_BYTES;
    const magic = journal.subarray(0, JOURNAL_MAGIC.length);
    if (journal.length < start || !(magic.equals(JOURNAL_MAGIC) || magic.equals(JOURNAL_MAGIC_V1)) || !journal.subarray(JOURNAL_MAGIC.length, start).equals(id)) return base;
    // Each list's changes are folded into one difference from the last whole copy of it, and
    // applied once at the end: linear in the list and the records, however many records change it.
    let state = base;
    let lists = new Map(base.snapshot.prefixLists.map((l) => [l.metadata?.name ?? '', new FoldedList(l.spec?.prefixes ?? [])]));
    for (let at = start; at + RECORD_HEADER_BYTES <= journal.length; ) {
      const length = journal.readUInt32LE(at);
      const end = at + RECORD_HEADER_BYTES + length;
      if (end > journal.length) break;
      const payload = journal.subarray(at + RECORD_HEADER_BYTES, end);
      if (crc32(payload) !== journal.readUInt32LE(at + 4)) break;
      try {
        const jsonLength = payload.readUInt32LE(0);
        const header = JSON.parse(payload.subarray(4, 4 + jsonLength).toString('utf8')) as RecordHeader;
        const snapshot = Snapshot.decode(payload.subarray(4 + jsonLength));
        if (header.policies !== undefined) snapshot.policies = policiesFrom(state.snapshot.policies, header.policies, snapshot.policies);
        const changes = new Map(header.lists.map((l) => [l.name, l]));
        const next = new Map<string, FoldedList>();
        for (const list of snapshot.prefixLists) {
          const name = list.metadata?.name ?? '';
          const change = changes.get(name);
          if (change === undefined) next.set(name, new FoldedList(list.spec?.prefixes ?? []));
          else {
            const folded = lists.get(name);
            if (folded === undefined) throw new Error(`list ${JSON.stringify(name)} changed from a list the state before does not hold`);
            folded.fold(change.add, change.remove);
            next.set(name, folded);
          }
        }
        lists = next;
        state = { snapshot, labels: header.labels };
      } catch (cause) {
        throw new StateFileError(`replay state journal ${this.#journalPath} at byte ${at}: ${(cause as Error).message}`, { cause });
      }
      at = end;
    }
    if (state === base) return base;
    for (const list of state.snapshot.prefixLists) list.spec = { ...list.spec!, prefixes: lists.get(list.metadata?.name ?? '')!.prefixes() };
    return state;
  }
}

/**
 * How a journal record gives `next`'s policies after `prev`'s: by name where the policy is the
 * previous one (the same object: policies are never modified once made), as a patch where
 * applyPolicyPatch made it from the previous one (so its splices are known), whole otherwise.
 */
function policiesOf(prev: readonly Policy[], next: readonly Policy[]): { policies: NonNullable<RecordHeader['policies']>; whole: Policy[] } {
  const held = new Map(prev.map((p) => [p.metadata?.name ?? '', p]));
  const policies: NonNullable<RecordHeader['policies']> = [];
  const whole: Policy[] = [];
  for (const policy of next) {
    const name = policy.metadata?.name ?? '';
    const had = held.get(name);
    if (had !== undefined && had === policy) {
      policies.push({ name, same: true });
      continue;
    }
    // Only where the chain patched it from `had`: its rules outside the splices are `had`'s
    // objects, so policyPatchOf compares them by identity and hashes the changed chunks only.
    const patch = had !== undefined && patchLineageOf(policy)?.base.deref() === had ? policyPatchOf(had, policy) : undefined;
    if (patch !== undefined) {
      policies.push({ name, patch: Buffer.from(PolicyPatch.encode(patch).finish()).toString('base64') });
      continue;
    }
    policies.push({ name });
    whole.push(policy);
  }
  return { policies, whole };
}

/**
 * A record's policies from the previous state's (`prev`), its header's `given` and the whole ones
 * its snapshot carries. @throws Error when a policy is named from a state that does not hold it;
 * PatchError when a patch does not apply to it (its base version or its result's digest differ).
 */
function policiesFrom(prev: readonly Policy[], given: NonNullable<RecordHeader['policies']>, whole: readonly Policy[]): Policy[] {
  const held = new Map(prev.map((p) => [p.metadata?.name ?? '', p]));
  const carried = new Map(whole.map((p) => [p.metadata?.name ?? '', p]));
  return given.map(({ name, same, patch }) => {
    if (same) {
      const policy = held.get(name);
      if (policy === undefined) throw new Error(`policy ${JSON.stringify(name)} kept from a state that does not hold it`);
      return policy;
    }
    if (patch !== undefined) {
      return applyPolicyPatch(held.get(name), PolicyPatch.decode(Buffer.from(patch, 'base64')));
    }
    const policy = carried.get(name);
    if (policy === undefined) throw new Error(`policy ${JSON.stringify(name)} is missing from its record`);
    return policy;
  });
}

/**
 * A prefix list as a whole copy and the prefixes removed from it and added since (in order), as
 * applyPrefixListChange makes them: the copy less the removed ones, then the added ones.
 */
class FoldedList {
  readonly #whole: readonly string[];
  readonly #removed = new Set<string>();
  readonly #added = new Set<string>();

  constructor(whole: readonly string[]) {
    this.#whole = whole;
  }

  fold(add: readonly string[], remove: readonly string[]): void {
    for (const p of remove) if (!this.#added.delete(p)) this.#removed.add(p);
    for (const p of add) this.#added.add(p);
  }

  prefixes(): string[] {
    if (this.#removed.size === 0 && this.#added.size === 0) return this.#whole as string[];
    const out = this.#removed.size === 0 ? this.#whole.slice() : this.#whole.filter((p) => !this.#removed.has(p));
    for (const p of this.#added) out.push(p);
    return out;
  }
}

/** Appends `bytes` to `path` and fsyncs it. @throws Error from the file system. */
function appendDurably(path: string, bytes: Buffer): void {
  const fd = openSync(path, 'a', 0o600);
  try {
    writeAll(fd, bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
