// Layouts 2 and 3 -> 4 of the connection tables (bpf/CONNTRACK.md, "Upgrades"): layout 2 keyed an
// entry by its flow's original direction, layouts 3 and 4 by the direction-independent key with
// the originator in EP_CT_F_ORIG_B; layout 4 grows the entry from 64 to 88 bytes with its NAT
// (struct ep_ct_nat, zeros for every entry an older layout made), layout 5 to 112 bytes (the
// NAT's second address of DSR and full NAT, bpf/LB.md "Forwarding modes"). The install migrates both
// tables through relayoutCtElement(), and after the hooks are switched catchUpConntrack() copies
// what the superseded programs created meanwhile.
import { BpfMap, encode, LibbpfError } from 'libbpf-ts';
import { ctKeyOfFlow, CT_FLAG_ORIG_B, originalTuple } from './conntrack-key.js';
import { DatapathError } from './errors.js';
import { epCtEntry, epCtKey, epLbBackend } from './table-codecs.js';

const fieldOffset = (name: string): number => {
  const field = epCtEntry.fields.find((f) => f.name === name);
  if (field === undefined) throw new Error(`unreachable: struct ep_ct_entry has no ${name}`);
  return field.offset;
};
const FLAGS_OFFSET = fieldOffset('flags');
const CREATED_OFFSET = fieldOffset('createdNs');
const EEXIST = 17;
const E2BIG = 7;
/** Elements read per batch syscall. */
const CHUNK = 8192;
/** The oldest layout whose connection tables relayoutCtElement() converts (layout 1 had none). */
export const CT_KEY_LAYOUT_FROM = 2;
/** The layout the connection entry and the backend last changed in: older pinned tables are converted, this one's reused (layout 6 added ep_ct4 beside them). */
export const CT_ENTRY_LAYOUT = 5;

/**
 * One element of ep_lb_backends in layout 5: a layout-4 backend (20 bytes) keeps its fields and
 * gets a zero source address and MTU (unresolved, which only DSR and full-NAT services read, and
 * layout 4 had none of those); a layout-5 element comes out unchanged. The next apply rewrites
 * every backend of the generation it writes anyway; this keeps the live generation's NAT services
 * working until then.
 * @returns the same key and a new value.
 */
export function relayoutLbBackend(key: Uint8Array, value: Uint8Array): { key: Uint8Array; value: Uint8Array } {
  const out = new Uint8Array(epLbBackend.size);
  out.set(value.subarray(0, epLbBackend.size));
  return { key, value: out };
}

/**
 * One element of ep_ct or ep_ct_new in layout 5. A layout-2 element (key = the original
 * direction; its flags never carry EP_CT_F_ORIG_B, a bit layout 2 does not define) becomes the
 * flow's key with EP_CT_F_ORIG_B set when the originator is side b; a layout-3 element keeps its
 * key. A 64-byte value (layouts 2 and 3) grows to 112 with a zero struct ep_ct_nat (not NATed), an
 * 88-byte one (layout 4) keeps its NAT and gets zeros for layout 5's part of it; a layout-5
 * element comes out unchanged, so converting twice is converting once.
 * @returns a new key and value; never throws for elements of 64, 88 or 112 bytes.
 */
export function relayoutCtElement(key: Uint8Array, value: Uint8Array): { key: Uint8Array; value: Uint8Array } {
  const k = epCtKey.decode(key);
  const flags = value[FLAGS_OFFSET] ?? 0;
  const original = originalTuple({ ...k, family: k.family === 6 ? 6 : 4 }, flags);
  const { key: canonical, origFlag } = ctKeyOfFlow(original);
  const out = new Uint8Array(epCtEntry.size);
  out.set(value.subarray(0, epCtEntry.size));
  out[FLAGS_OFFSET] = (flags & ~CT_FLAG_ORIG_B) | origFlag;
  return { key: encode(epCtKey, { ...canonical, pad: k.pad }), value: out };
}

/**
 * After an upgrade's switch: copies into `to` (a layout-4 table) the elements of the superseded
 * table `fromId` (layout 2 or 3, still written by the superseded programs until their hooks were
 * switched) created at or after `sinceNs`, converted, where `to` has no element of that flow.
 * Older elements were copied by the install; one promoted meanwhile is still in the new
 * ep_ct_new and moves again at its next reply.
 * @returns how many elements it added.
 * @throws DatapathError (what was copied stays: each element is whole).
 */
export function catchUpConntrack(fromId: number, to: BpfMap, sinceNs: bigint): number {
  let from: BpfMap | undefined;
  let added = 0;
  try {
    from = BpfMap.fromId(fromId);
    for (const { count, keys, values } of from.getBatches(CHUNK)) {
      const view = new DataView(values.buffer, values.byteOffset, values.byteLength);
      for (let i = 0; i < count; i++) {
        if (view.getBigUint64(i * from.valueSize + CREATED_OFFSET, true) < sinceNs) continue;
        const element = relayoutCtElement(keys.subarray(i * from.keySize, (i + 1) * from.keySize), values.subarray(i * from.valueSize, (i + 1) * from.valueSize));
        if (to.get(element.key) !== undefined) continue;
        try {
          to.set(element.key, element.value, 'noexist');
          added++;
        } catch (error) {
          // Created by the new programs in the meantime (EEXIST), or a full table (E2BIG): the
          // new programs' entry, or none, as for any flow that meets a full table.
          if (!(error instanceof LibbpfError) || (error.errno !== EEXIST && error.errno !== E2BIG)) throw error;
        }
      }
    }
    return added;
  } catch (cause) {
    throw new DatapathError(`catch up connection table map=${to.name} from map id=${fromId}`, { cause });
  } finally {
    from?.close();
  }
}
