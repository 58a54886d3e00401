// The backend a NEW flow to a service gets, computed from the bytes of one generation of the
// load-balancing maps exactly as bpf/LB.md's program will ("A packet", steps 3-6): the oracle of
// the kernel differential test to come. Pure: no kernel. Reads only what layoutLbTables wrote,
// so it checks the layout as much as the selection.
import { formatAddress } from '@edgeplane/proto';
import { clientHash, flowHash, maglevSlot, type FlowTuple } from './flow-hash.js';
import { lbSizes, lbSvcFlags, LB_BLOCK_SLOTS, type LbTablesSpec } from './lb-tables.js';
import { epLbBackend, epLbSvc, epLbVipKey } from './table-codecs.js';

/** What the datapath does with a new flow (no connection entry yet). */
export type LbSelection =
  /** Not a VIP (no ep_lb_vip entry for family, protocol, port, address): not the load balancer's. */
  | { readonly kind: 'pass' }
  /** A VIP without a backend of positive weight (m = 0): dropped, counted LB_NO_BACKEND. */
  | { readonly kind: 'drop'; readonly svcId: number }
  /** DNAT (or DSR) to this backend; `index` is its service-local index, `slot` the table slot taken. */
  | {
      readonly kind: 'backend';
      readonly svcId: number;
      readonly slot: number;
      readonly index: number;
      readonly family: 4 | 6;
      readonly address: string;
      readonly port: number;
      readonly flags: number;
    };

/**
 * New-flow selection over one generation's load-balancing tables. Holds `tables` (not copied:
 * the caller must not change it while this is in use).
 */
export class LbReference {
  readonly #tables: LbTablesSpec;
  /** VIP key bytes (latin1 text of the 24 bytes) -> entry index. */
  readonly #vips = new Map<string, number>();
  readonly #key = new Uint8Array(lbSizes.vipKey);

  constructor(tables: LbTablesSpec) {
    this.#tables = tables;
    const { keys, count } = tables.vip;
    for (let i = 0; i < count; i++) this.#vips.set(latin1(keys.subarray(i * lbSizes.vipKey, (i + 1) * lbSizes.vipKey)), i);
  }

  /**
   * The service and backend a new flow with this tuple (as the client sent it) gets: VIP lookup
   * by (generation, family, protocol, destination port, destination address); m = 0 drops; the
   * slot is ep_maglev_slot of ep_client_hash (EP_LB_F_AFFINITY) or ep_flow_hash; the slot's u16
   * is the service-local backend index.
   * @returns a new LbSelection; never throws on a well-formed tuple.
   */
  select(tuple: FlowTuple): LbSelection {
    const dst = new Uint8Array(16);
    dst.set(tuple.dst.subarray(0, tuple.family === 4 ? 4 : 16));
    epLbVipKey.encode({ gen: this.#tables.gen, family: tuple.family, proto: tuple.proto, pad: 0, port: tuple.dport, pad2: 0, vip: dst }, this.#key);
    const entry = this.#vips.get(latin1(this.#key));
    if (entry === undefined) return { kind: 'pass' };
    const svc = epLbSvc.decode(this.#tables.vip.values.subarray(entry * lbSizes.svc, (entry + 1) * lbSizes.svc));
    if (svc.m === 0) return { kind: 'drop', svcId: svc.svcId };
    const hash = svc.flags & lbSvcFlags.affinity ? clientHash(tuple.family, tuple.src) : flowHash(tuple);
    const slot = maglevSlot(hash, svc.m);
    const blockAt = (svc.block + Math.floor(slot / LB_BLOCK_SLOTS)) * lbSizes.block;
    const slots = this.#tables.slots;
    const index = new DataView(slots.buffer, slots.byteOffset, slots.byteLength).getUint16(blockAt + (slot & (LB_BLOCK_SLOTS - 1)) * 2, true);
    // Never in a table layoutLbTables wrote; the program must check it anyway (the verifier
    // wants the bound), and drops.
    if (index >= svc.backends) return { kind: 'drop', svcId: svc.svcId };
    const at = (svc.backendBase + index) * lbSizes.backend;
    const backend = epLbBackend.decode(this.#tables.backends.subarray(at, at + lbSizes.backend));
    const family = backend.family === 4 ? 4 : 6;
    return {
      kind: 'backend',
      svcId: svc.svcId,
      slot,
      index,
      family,
      address: formatAddress(family, backend.addr.subarray(0, family === 4 ? 4 : 16)),
      port: backend.port,
      flags: svc.flags,
    };
  }
}

function latin1(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}
