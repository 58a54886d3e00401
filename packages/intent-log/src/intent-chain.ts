import type { KeyObject } from 'node:crypto';
import {
  applyPolicyPatch,
  applyPrefixListChange,
  blockActive,
  MAX_ENDED_BLOCKS_KEPT,
  type Block,
  type PrefixList,
  type PrefixListChange,
  GENESIS_HASH,
  policyDigest,
  shareEmptyLists,
  logEntryHash,
  openLogEntry,
  keyIdOf,
  openSnapshot,
  readSnapshotKeyRotations,
  publicKeyFromRaw,
  type LogEntry,
  type Policy,
  type Rollout,
  RolloutKind,
  rolloutKey,
  rolloutKeyOf,
  type Service,
  type SignedLogEntry,
  type SignedSnapshot,
  type Snapshot,
  type TrustedKeys,
} from '@edgeplane/proto';
import { ChainError, FleetMismatchError, GapError } from './errors.js';

/** What one entry did to one policy. */
export interface PolicyChange {
  type: 'added' | 'modified' | 'deleted';
  /** The policy after the change; for deletes, as it was before. */
  policy: Policy;
  revision: bigint;
}

/** A signed entry whose signature was verified and whose bytes were decoded, once. */
export interface OpenedEntry {
  entry: LogEntry;
  hash: Uint8Array;
  signed: SignedLogEntry;
}

/** The result of appending one entry. */
export interface AppendResult {
  /** False when the entry was already held (a duplicate delivery): nothing changed. */
  applied: boolean;
  entry: LogEntry;
  changes: PolicyChange[];
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * The prefix lists entries made, by the entry's hash and the list's name, for every chain of the
 * process; weak (a list nobody holds any more leaves, and its key with it). An entry's hash pins
 * the whole log before it (each entry holds the hash of the one before), so the list an entry
 * made from the list the log held there is the same for every chain that appended that entry:
 * the followers of one process (the fleet benchmark's hundreds of agents per worker, however
 * each caught up) hold one copy of a million-prefix list, not one each. A real agent holds one
 * chain; it pays one lookup per list change.
 */
const listsMade = new Map<string, WeakRef<PrefixList>>();
const listGone = new FinalizationRegistry<string>((key) => {
  if (listsMade.get(key)?.deref() === undefined) listsMade.delete(key);
});

/**
 * applyPrefixListChange(base, change) for the entry whose hash is `hash`, shared through
 * listsMade. A kept list serves only a base at the version the change names, with as many
 * prefixes as the list less the change's additions plus its removals (a chain started from a
 * snapshot that disagreed with the log is applied to afresh, and refused as that refuses).
 * @throws PatchError as applyPrefixListChange.
 */
function listAfter(hash: Uint8Array, base: PrefixList | undefined, change: PrefixListChange): PrefixList {
  const key = `${Buffer.from(hash).toString('hex')}/${change.metadata?.name ?? ''}`;
  const kept = listsMade.get(key)?.deref();
  const held = base?.spec?.prefixes.length ?? 0;
  if (kept !== undefined && (base?.metadata?.resourceVersion ?? 0n) === change.baseResourceVersion && (kept.spec?.prefixes.length ?? 0) === held - change.remove.length + change.add.length) return kept;
  const list = applyPrefixListChange(base, change);
  listsMade.set(key, new WeakRef(list));
  listGone.register(list, key);
  return list;
}

/**
 * The intent as of one revision, built by verifying and applying signed log entries in order.
 * Pure and synchronous: it owns no connection. Both the controller (to validate writes against)
 * and every agent (to compile) hold one.
 */
export class IntentChain {
  #trusted: Map<string, KeyObject>;
  /** The entries that rotated keys, in order: carried into snapshots. */
  #rotations: SignedLogEntry[] = [];
  #fleetId: string | undefined;
  #revision = 0n;
  #lastHash: Uint8Array = GENESIS_HASH;
  #policies = new Map<string, Policy>();
  #rollouts = new Map<string, Rollout>();
  #services = new Map<string, Service>();
  #prefixLists = new Map<string, PrefixList>();
  /** By id, in creation order. */
  #blocks = new Map<string, Block>();

  /**
   * @param trusted the keys whose signatures this chain accepts.
   * @param fleetId when given, entries and snapshots of any other fleet are refused.
   */
  constructor(trusted: TrustedKeys, fleetId?: string) {
    this.#trusted = new Map(trusted);
    this.#fleetId = fleetId || undefined;
  }

  /** The fleet this chain accepts entries of (undefined: any). */
  get fleetId(): string | undefined {
    return this.#fleetId;
  }

  /** The keys this chain accepts now: the configured ones and those rotated in along it. */
  get trusted(): TrustedKeys {
    return this.#trusted;
  }

  /** Adds the key a verified rotation entry introduces. A malformed key is ignored (the entry still applies). */
  #learn(signed: SignedLogEntry, entry: LogEntry, into: Map<string, KeyObject>, rotations: SignedLogEntry[]): void {
    try {
      const key = publicKeyFromRaw(entry.keyRotation!.publicKey);
      into.set(keyIdOf(key), key);
      rotations.push(signed);
    } catch {
      // not a 32-byte key: nothing to trust
    }
  }

  /**
   * Verifies the rotation entries a snapshot carries, in order, each with the keys trusted
   * before it, and returns the grown set and the list (one that does not verify is skipped).
   * @throws ChainError if one is from after the snapshot.
   */
  #rotationsOf(snapshot: Snapshot): { trusted: Map<string, KeyObject>; rotations: SignedLogEntry[] } {
    const trusted = new Map(this.#trusted);
    const rotations: SignedLogEntry[] = [];
    for (const signed of snapshot.keyRotations) {
      let entry: LogEntry;
      try {
        entry = openLogEntry(signed, trusted);
      } catch {
        // Signed by a key this chain never trusted (a follower configured with a later key
        // only): it adds nothing; the snapshot must then verify with what is trusted.
        continue;
      }
      if (entry.revision > snapshot.revision) throw new ChainError(`snapshot ${snapshot.revision} carries a key rotation from revision ${entry.revision}`);
      if (entry.keyRotation) this.#learn(signed, entry, trusted, rotations);
    }
    return { trusted, rotations };
  }

  #checkFleet(what: string, fleetId: string): void {
    if (this.#fleetId !== undefined && fleetId !== this.#fleetId) {
      throw new FleetMismatchError(`verify ${what}: it belongs to fleet ${JSON.stringify(fleetId.slice(0, 64))}, not ${JSON.stringify(this.#fleetId)}`);
    }
  }

  /** The revision of the newest entry applied (0 for an empty log). */
  get revision(): bigint {
    return this.#revision;
  }

  /** The chain hash of the newest entry applied (the genesis hash for an empty log). */
  get lastHash(): Uint8Array {
    return this.#lastHash;
  }

  /** The policies by name. Callers must not modify them. */
  get policies(): ReadonlyMap<string, Policy> {
    return this.#policies;
  }

  /** The services by name. Callers must not modify them. */
  get services(): ReadonlyMap<string, Service> {
    return this.#services;
  }

  /**
   * Rollout records (active and finished) by {@link rolloutKey}: a policy's by its name, a
   * service's by `service/NAME`. Callers must not modify them.
   */
  /** Prefix lists by name, whole. */
  get prefixLists(): ReadonlyMap<string, PrefixList> {
    return this.#prefixLists;
  }

  /** Blocks by id (active and ended), in creation order. */
  get blocks(): ReadonlyMap<string, Block> {
    return this.#blocks;
  }

  get rollouts(): ReadonlyMap<string, Rollout> {
    return this.#rollouts;
  }

  /**
   * Verifies one signed entry and applies it if it continues the chain: its previous hash is
   * the hash of the newest entry held and its revision is above it. The revision is normally
   * the next one; it is higher when the stream sequences in between hold messages that are not
   * valid entries (junk published on the log subject, which the writer skipped: it links each
   * entry to the previous valid one and signs that link).
   * An entry at or below the current revision is a duplicate and changes nothing (if it is the
   * current one, its hash must match ours).
   * @throws SignatureError if it is not signed by a trusted key.
   * @throws GapError if it does not link to the newest entry held and entries between may be
   *   missing (its revision is beyond the next one).
   * @throws ChainError if it does not continue the chain (a forked or rewound log: the next
   *   revision links elsewhere), or if `storedAt` (the stream sequence it was read at) differs
   *   from the revision it claims.
   * @throws PatchError (from @edgeplane/proto) if a policy patch it carries does not apply to
   *   the policy held (another base, or a result whose digest differs): nothing is applied.
   */
  append(signed: SignedLogEntry, storedAt?: bigint): AppendResult {
    return this.appendOpened(this.open(signed), storedAt);
  }

  /**
   * Verifies a signed entry against this chain's trusted keys and decodes it, without applying
   * it (so a caller can look at it first and append it without verifying twice).
   * @throws SignatureError; FleetMismatchError if it belongs to another fleet.
   */
  open(signed: SignedLogEntry): OpenedEntry {
    const entry = openLogEntry(signed, this.#trusted);
    this.#checkFleet(`log entry ${entry.revision}`, entry.fleetId);
    return { entry, hash: logEntryHash(signed), signed };
  }

  /** {@link append} for an entry {@link open} returned. Same checks and errors. */
  appendOpened(opened: OpenedEntry, storedAt?: bigint): AppendResult {
    const { entry, hash } = opened;
    if (storedAt !== undefined && entry.revision !== storedAt) {
      throw new ChainError(`append revision=${entry.revision}: the entry is stored at sequence ${storedAt}`);
    }
    if (entry.revision <= this.#revision) {
      if (entry.revision === this.#revision && !equalBytes(hash, this.#lastHash)) {
        throw new ChainError(`append revision=${entry.revision}: a different entry than the one held at this revision (forked log)`);
      }
      return { applied: false, entry, changes: [] };
    }
    if (!equalBytes(entry.previousHash, this.#lastHash)) {
      if (entry.revision !== this.#revision + 1n) {
        throw new GapError(`append revision=${entry.revision}: holding ${this.#revision}, entries in between are missing`, this.#revision, entry.revision);
      }
      throw new ChainError(`append revision=${entry.revision}: previous hash does not match entry ${this.#revision} (forked or rewound log)`);
    }
    // Patches apply to the policies as held before the entry, and all of them before anything
    // changes: one that does not apply leaves the chain as it was. Prefix list changes alike.
    const patched = (entry.change?.policyPatches ?? []).map((patch) => {
      for (const splice of patch.splices) shareEmptyLists(splice.rules);
      return applyPolicyPatch(this.#policies.get(patch.metadata?.name ?? ''), patch);
    });
    const lists = (entry.blocklistChange?.prefixLists ?? []).map((c) => (c.delete ? { name: c.metadata?.name ?? '', list: undefined } : { name: c.metadata?.name ?? '', list: listAfter(hash, this.#prefixLists.get(c.metadata?.name ?? ''), c) }));
    const changes: PolicyChange[] = [];
    for (const name of entry.change?.deletes ?? []) {
      const old = this.#policies.get(name);
      if (old) {
        this.#policies.delete(name);
        changes.push({ type: 'deleted', policy: old, revision: entry.revision });
      }
      this.#rollouts.delete(rolloutKey(RolloutKind.ROLLOUT_KIND_POLICY, name));
    }
    for (const policy of entry.change?.upserts ?? []) {
      const name = policy.metadata?.name ?? '';
      // A whole policy costs its size here anyway (it was decoded): its digest now means a patch
      // of it later rehashes only the chunks the patch touches.
      shareEmptyLists(policy.spec?.rules ?? []);
      policyDigest(policy);
      const existed = this.#policies.has(name);
      this.#policies.set(name, policy);
      changes.push({ type: existed ? 'modified' : 'added', policy, revision: entry.revision });
    }
    for (const policy of patched) {
      this.#policies.set(policy.metadata?.name ?? '', policy);
      changes.push({ type: 'modified', policy, revision: entry.revision });
    }
    // Services are a namespace of their own: a service may share a policy's name.
    for (const name of entry.change?.serviceDeletes ?? []) {
      this.#services.delete(name);
      this.#rollouts.delete(rolloutKey(RolloutKind.ROLLOUT_KIND_SERVICE, name));
    }
    for (const service of entry.change?.serviceUpserts ?? []) this.#services.set(service.metadata?.name ?? '', service);
    for (const { name, list } of lists) {
      if (list === undefined) this.#prefixLists.delete(name);
      else this.#prefixLists.set(name, list);
    }
    for (const block of entry.blocklistChange?.blocks ?? []) this.#blocks.set(block.id, block);
    // Records last: a revert that deletes the resource its rollout created keeps the record.
    for (const rollout of entry.change?.rollouts ?? []) this.#rollouts.set(rolloutKeyOf(rollout), rollout);
    if (entry.keyRotation) this.#learn(opened.signed, entry, this.#trusted, this.#rotations);
    this.#revision = entry.revision;
    this.#lastHash = hash;
    return { applied: true, entry, changes };
  }

  /**
   * Verifies a signed snapshot against this chain's trusted keys and decodes it, without
   * applying it (see {@link load}).
   * @throws SignatureError if it is not signed by a trusted key; FleetMismatchError.
   */
  openSnapshot(signed: SignedSnapshot): Snapshot {
    // The rotations it carries are self-authenticating (each signed by a key trusted before
    // it), so the bytes are decoded first to find them, then the signature is checked.
    // Only the revision and the rotations: the whole is decoded once, by openSnapshot.
    const unverified = readSnapshotKeyRotations(signed.snapshot);
    const snapshot = openSnapshot(signed, this.#rotationsOf(unverified).trusted);
    this.#checkFleet(`snapshot ${snapshot.revision}`, snapshot.fleetId);
    return snapshot;
  }

  /**
   * Replaces the whole state with a verified snapshot.
   * @throws SignatureError if the snapshot is not signed by a trusted key.
   */
  restore(signed: SignedSnapshot): Snapshot {
    const snapshot = this.openSnapshot(signed);
    this.load(snapshot);
    return snapshot;
  }

  /**
   * Replaces the whole state with an unsigned snapshot the caller already trusts — an agent's
   * own state file, written by itself after verifying every entry in it — or one
   * {@link openSnapshot} verified. The key rotations it carries are verified again.
   */
  load(snapshot: Snapshot): void {
    // Keys rotated in along the chain: learned again, each rotation verified as it was.
    const { trusted, rotations } = this.#rotationsOf(snapshot);
    this.#trusted = trusted;
    this.#rotations = rotations;
    for (const p of snapshot.policies) shareEmptyLists(p.spec?.rules ?? []);
    this.#policies = new Map(snapshot.policies.map((p) => [p.metadata?.name ?? '', p]));
    this.#rollouts = new Map(snapshot.rollouts.map((r) => [rolloutKeyOf(r), r]));
    this.#services = new Map(snapshot.services.map((s) => [s.metadata?.name ?? '', s]));
    this.#prefixLists = new Map(snapshot.prefixLists.map((l) => [l.metadata?.name ?? '', l]));
    this.#blocks = new Map(snapshot.blocks.map((b) => [b.id, b]));
    this.#revision = snapshot.revision;
    this.#lastHash = new Uint8Array(snapshot.lastHash);
  }

  /** Returns the compacted state, ready to sign (see signSnapshot in @edgeplane/proto). */
  snapshot(now: Date = new Date()): Snapshot {
    const policies = [...this.#policies.values()].sort((a, b) => (a.metadata!.name < b.metadata!.name ? -1 : 1));
    const rollouts = [...this.#rollouts.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, r]) => r);
    const services = [...this.#services.values()].sort((a, b) => (a.metadata!.name < b.metadata!.name ? -1 : 1));
    const prefixLists = [...this.#prefixLists.values()].sort((a, b) => (a.metadata!.name < b.metadata!.name ? -1 : 1));
    // Active blocks, and the newest ended ones (a bounded history for get blocks).
    const all = [...this.#blocks.values()];
    const ended = all.filter((b) => !blockActive(b, now.getTime()));
    const kept = new Set(ended.slice(Math.max(0, ended.length - MAX_ENDED_BLOCKS_KEPT)));
    const blocks = all.filter((b) => blockActive(b, now.getTime()) || kept.has(b));
    return { revision: this.#revision, lastHash: Buffer.from(this.#lastHash), policies, createTime: now, rollouts, fleetId: this.#fleetId ?? '', keyRotations: [...this.#rotations], services, prefixLists, blocks };
  }
}
