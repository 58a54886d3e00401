// Applying a PrefixList manifest: the difference between the list the controller holds and the
// manifest's, sent through UpdatePrefixList (adds and removes, never the whole list), in as many
// requests of at most MAX_PREFIX_LIST_CHANGE as it takes, each based on the version the previous
// one made (so a concurrent writer is refused, not overwritten). Linear in both lists.
import { MAX_PREFIX_LIST_CHANGE, PrefixListSpec, type GetPrefixListResponse, type PrefixList, type UpdatePrefixListRequest, type UpdatePrefixListResponse } from '@edgeplane/proto';

/** What applying a prefix list needs of the API. */
export interface PrefixListWriter {
  updatePrefixList(req: UpdatePrefixListRequest): Promise<UpdatePrefixListResponse>;
}

/** The prefixes to add to `held` and to remove from it to make it `desired`, each in its list's order. */
export function diffPrefixes(held: readonly string[], desired: readonly string[]): { add: string[]; remove: string[] } {
  const have = new Set(held);
  const want = new Set(desired);
  return { add: desired.filter((p) => !have.has(p)), remove: held.filter((p) => !want.has(p)) };
}

/** What {@link applyPrefixList} did. */
export interface PrefixListApplied {
  created: boolean;
  unchanged: boolean;
  added: number;
  removed: number;
  /** Prefixes the list holds now. */
  count: number;
  /** The revision of the last write (0 when unchanged). */
  revision: bigint;
  /** The list as written (without prefixes), or as held when unchanged. */
  prefixList: PrefixList | undefined;
}

/**
 * Makes the controller's list `list.metadata.name` equal to `list`, by difference from `held`
 * (GetPrefixList with prefixes; undefined: the list does not exist).
 * @throws RpcError from the first update refused (those before it are written).
 */
export async function applyPrefixList(api: PrefixListWriter, list: PrefixList, held: GetPrefixListResponse | undefined): Promise<PrefixListApplied> {
  const desired = list.spec?.prefixes ?? [];
  const { add, remove } = diffPrefixes(held?.prefixList?.spec?.prefixes ?? [], desired);
  const withoutPrefixes = (l: PrefixList | undefined): unknown => [l?.metadata?.labels ?? {}, l?.metadata?.annotations ?? {}, PrefixListSpec.toJSON({ ...(l?.spec ?? PrefixListSpec.fromPartial({})), prefixes: [] })];
  if (held && add.length === 0 && remove.length === 0 && JSON.stringify(withoutPrefixes(held.prefixList)) === JSON.stringify(withoutPrefixes(list))) {
    return { created: false, unchanged: true, added: 0, removed: 0, count: held.prefixCount, revision: 0n, prefixList: held.prefixList };
  }
  const meta = list.metadata!;
  let version = held?.prefixList?.metadata?.resourceVersion ?? 0n;
  let res: UpdatePrefixListResponse | undefined;
  // Removes first, so the list never holds more than the larger of before and after.
  let r = 0;
  let a = 0;
  do {
    const removing = remove.slice(r, r + MAX_PREFIX_LIST_CHANGE);
    r += removing.length;
    const adding = add.slice(a, a + MAX_PREFIX_LIST_CHANGE - removing.length);
    a += adding.length;
    res = await api.updatePrefixList({
      prefixList: { metadata: { ...meta, resourceVersion: 0n }, spec: { ...list.spec!, prefixes: [] } },
      add: adding,
      remove: removing,
      expectedResourceVersion: version,
    });
    version = res.prefixList?.metadata?.resourceVersion ?? version;
  } while (r < remove.length || a < add.length);
  return { created: held === undefined, unchanged: false, added: add.length, removed: remove.length, count: res.prefixCount, revision: version, prefixList: res.prefixList };
}
