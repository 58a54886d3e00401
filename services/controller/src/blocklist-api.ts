// BlocklistService's domain logic: prefix lists changed by difference (one small log entry per
// update, format 3) and emergency blocks whose expiry is part of the signed entry. Validation is
// the shared one in @edgeplane/proto (linear, bounded by limits.ts); the gRPC edge maps errors
// with toStatus().
import {
  blockActive,
  MAX_ACTIVE_BLOCKS,
  MAX_PREFIX_LIST_ENTRIES,
  MAX_PREFIX_LISTS,
  PrefixListUse,
  validateBlock,
  validatePrefixListUpdate,
  type Block,
  type CreateBlockRequest,
  type CreateBlockResponse,
  type DeletePrefixListRequest,
  type DeletePrefixListResponse,
  type GetPrefixListRequest,
  type GetPrefixListResponse,
  type LiftBlockRequest,
  type LiftBlockResponse,
  type ListBlocksRequest,
  type ListBlocksResponse,
  type ListPrefixListsResponse,
  type PrefixList,
  type PrefixListChange,
  type TraceContext,
  type UpdatePrefixListRequest,
  type UpdatePrefixListResponse,
} from '@edgeplane/proto';
import { NotFoundError, PreconditionError, ValidationError, VersionConflictError } from './errors.js';
import type { IntentStore } from './intent-store.js';
import { firstNamedList } from './intent-api.js';

/** Options of {@link BlocklistApi}. */
export interface BlocklistApiOptions {
  /** The clock blocks are stamped with (tests pass their own). */
  now?: () => Date;
}

const withoutPrefixes = (list: PrefixList): PrefixList => ({ metadata: list.metadata, spec: list.spec ? { ...list.spec, prefixes: [] } : undefined });

/** Prefix lists and blocks over the intent store. */
export class BlocklistApi {
  readonly #store: IntentStore;
  readonly #now: () => Date;

  constructor(store: IntentStore, options: BlocklistApiOptions = {}) {
    this.#store = store;
    this.#now = options.now ?? (() => new Date());
  }

  /**
   * Creates a prefix list or changes it by difference: one log entry with the prefixes added and
   * removed (not the whole list).
   * @throws ValidationError (bad names, prefixes, too many in one request, a prefix added that
   * the list holds or removed that it does not); VersionConflictError; PreconditionError
   * (TOO_MANY_PREFIXES over MAX_PREFIX_LIST_ENTRIES, TOO_MANY_PREFIX_LISTS); UnavailableError.
   */
  async updatePrefixList(req: UpdatePrefixListRequest, trace?: TraceContext): Promise<UpdatePrefixListResponse> {
    const violations = validatePrefixListUpdate(req.prefixList, req.add, req.remove);
    if (violations.length > 0) throw new ValidationError(`invalid prefix list: ${violations[0]!.field}: ${violations[0]!.description}`, violations);
    const incoming = req.prefixList!;
    const name = incoming.metadata!.name;
    let count = 0;
    const written = await this.#store.writeBlocklist((chain) => {
      const base = chain.prefixLists.get(name);
      const version = base?.metadata?.resourceVersion ?? 0n;
      if (req.expectedResourceVersion !== 0n && req.expectedResourceVersion !== version) throw new VersionConflictError(`prefix list ${name} is at version ${version}, not ${req.expectedResourceVersion}`);
      if (!base && chain.prefixLists.size >= MAX_PREFIX_LISTS) throw new PreconditionError(`the intent holds ${chain.prefixLists.size} prefix lists, the most it may; delete one to create ${name}`, 'TOO_MANY_PREFIX_LISTS');
      // Against the list as held: linear in it, with sets of the (bounded) request only.
      const adding = new Set(req.add);
      const removing = new Set(req.remove);
      let held = 0;
      for (const p of base?.spec?.prefixes ?? []) {
        if (adding.has(p)) throw new ValidationError(`prefix list ${name} already holds ${p}`, [{ field: `add[${req.add.indexOf(p)}]`, description: `${p} is in the list already`, reason: 'PREFIX_PRESENT' }]);
        if (removing.delete(p)) continue;
        held++;
      }
      const missing = [...removing][0];
      if (missing !== undefined) throw new ValidationError(`prefix list ${name} does not hold ${missing}`, [{ field: `remove[${req.remove.indexOf(missing)}]`, description: `${missing} is not in the list`, reason: 'PREFIX_ABSENT' }]);
      count = held + req.add.length;
      if (count > MAX_PREFIX_LIST_ENTRIES) throw new PreconditionError(`prefix list ${name} would hold ${count} prefixes; at most ${MAX_PREFIX_LIST_ENTRIES}`, 'TOO_MANY_PREFIXES');
      const now = this.#now();
      const change: PrefixListChange = {
        metadata: { name, labels: incoming.metadata!.labels, annotations: incoming.metadata!.annotations, resourceVersion: 0n, createRevision: base?.metadata?.createRevision ?? 0n, createTime: base?.metadata?.createTime ?? now, updateTime: now },
        spec: { nodeSelector: incoming.spec?.nodeSelector, use: incoming.spec?.use ?? PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED, prefixes: [], description: incoming.spec?.description ?? '' },
        baseResourceVersion: version,
        add: req.add,
        remove: req.remove,
        delete: false,
      };
      return { prefixLists: [change], blocks: [] };
    }, trace);
    const change = written!.entry.blocklistChange!.prefixLists[0]!;
    return { prefixList: { metadata: change.metadata, spec: change.spec }, prefixCount: count };
  }

  /** @throws NotFoundError, VersionConflictError, UnavailableError */
  async deletePrefixList(req: DeletePrefixListRequest, trace?: TraceContext): Promise<DeletePrefixListResponse> {
    const written = await this.#store.writeBlocklist((chain) => {
      const base = chain.prefixLists.get(req.name);
      if (!base) throw new NotFoundError(`prefix list ${req.name} not found`);
      const version = base.metadata?.resourceVersion ?? 0n;
      if (req.expectedResourceVersion !== 0n && req.expectedResourceVersion !== version) throw new VersionConflictError(`prefix list ${req.name} is at version ${version}, not ${req.expectedResourceVersion}`);
      // A policy naming it (or the version a rollout keeps on the nodes it has not reached) would
      // be NACKed by every node from the next revision on.
      const named = (list: string): boolean => list === req.name;
      for (const policy of [...chain.policies.values(), ...[...chain.rollouts.values()].map((r) => r.previous)]) {
        const found = firstNamedList(policy, named);
        if (found) throw new PreconditionError(`prefix list ${req.name} is named by policy ${policy!.metadata?.name ?? '?'} (${found.field}); remove the reference first`, 'PREFIX_LIST_IN_USE');
      }
      return { prefixLists: [{ metadata: { ...base.metadata!, name: req.name }, spec: undefined, baseResourceVersion: version, add: [], remove: [], delete: true }], blocks: [] };
    }, trace);
    return { revision: written!.revision };
  }

  /** @throws NotFoundError */
  getPrefixList(req: GetPrefixListRequest): GetPrefixListResponse {
    const list = this.#store.chain.prefixLists.get(req.name);
    if (!list) throw new NotFoundError(`prefix list ${req.name} not found`);
    return { prefixList: req.omitPrefixes ? withoutPrefixes(list) : list, prefixCount: list.spec?.prefixes.length ?? 0 };
  }

  listPrefixLists(): ListPrefixListsResponse {
    const lists = [...this.#store.chain.prefixLists.values()].sort((a, b) => (a.metadata!.name < b.metadata!.name ? -1 : 1));
    return { prefixLists: lists.map(withoutPrefixes), prefixCounts: lists.map((l) => l.spec?.prefixes.length ?? 0) };
  }

  /**
   * Blocks prefixes on the selected nodes until now + duration (the controller's clock; the
   * expiry is in the signed entry and each node enforces it by its own clock).
   * @param who the caller's identity, recorded in the block.
   * @throws ValidationError; PreconditionError (TOO_MANY_BLOCKS); UnavailableError.
   */
  async createBlock(req: CreateBlockRequest, who: string, trace?: TraceContext): Promise<CreateBlockResponse> {
    const durationMs = req.duration === undefined ? undefined : Number(req.duration.seconds) * 1000 + Math.floor(req.duration.nanos / 1e6);
    const violations = validateBlock(req.block, durationMs);
    if (violations.length > 0) throw new ValidationError(`invalid block: ${violations[0]!.field}: ${violations[0]!.description}`, violations);
    const written = await this.#store.writeBlocklist((chain) => {
      const now = this.#now();
      const active = [...chain.blocks.values()].filter((b) => blockActive(b, now.getTime())).length;
      if (active >= MAX_ACTIVE_BLOCKS) throw new PreconditionError(`${active} blocks are active, the most there may be; lift one or put the prefixes in a prefix list`, 'TOO_MANY_BLOCKS');
      const block: Block = {
        id: '',
        prefixes: req.block!.prefixes,
        nodeSelector: req.block!.nodeSelector,
        reason: req.block!.reason,
        createdBy: who,
        createTime: now,
        expireTime: new Date(now.getTime() + durationMs!),
        liftTime: undefined,
        liftedBy: '',
        resourceVersion: 0n,
      };
      return { prefixLists: [], blocks: [block] };
    }, trace);
    return { block: written!.entry.blocklistChange!.blocks[0] };
  }

  /**
   * Lifts a block before it expires: a log entry with the block and its lift time.
   * @throws NotFoundError; PreconditionError (ENDED: it expired or was lifted already); UnavailableError.
   */
  async liftBlock(req: LiftBlockRequest, who: string, trace?: TraceContext): Promise<LiftBlockResponse> {
    const written = await this.#store.writeBlocklist((chain) => {
      const block = chain.blocks.get(req.id);
      if (!block) throw new NotFoundError(`block ${req.id} not found`);
      const now = this.#now();
      if (!blockActive(block, now.getTime())) throw new PreconditionError(`block ${req.id} has ended already (${block.liftTime ? `lifted by ${block.liftedBy}` : 'expired'})`, 'ENDED');
      return { prefixLists: [], blocks: [{ ...block, liftTime: now, liftedBy: who }] };
    }, trace);
    return { block: written!.entry.blocklistChange!.blocks[0] };
  }

  /** Newest first; only active ones unless include_ended. */
  listBlocks(req: ListBlocksRequest): ListBlocksResponse {
    const now = this.#now().getTime();
    const blocks = [...this.#store.chain.blocks.values()].filter((b) => req.includeEnded || blockActive(b, now)).reverse();
    return { blocks };
  }
}
