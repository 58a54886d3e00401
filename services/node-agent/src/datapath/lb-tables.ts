// Lays a node's load-balancing spec (service-compile.ts) out as the exact bytes of one
// generation of bpf/LB.md's maps: ep_lb_vip (VIP key -> struct ep_lb_svc), ep_lb_backends
// (struct ep_lb_backend) and ep_lb_slots (64-byte blocks of 32 u16 slots). Pure: no kernel, no
// I/O; the structs are described once, as codecs in table-codecs.ts (C: bpf/include/ep_lb.h).
// lb-reference.ts selects backends from these bytes, as the datapath will.
import { createHash } from 'node:crypto';
import { endianness } from 'node:os';
import { MAX_SERVICES } from '@edgeplane/proto';
import type { MapEntriesSpec } from './compile-tables.js';
import { CapacityError } from './errors.js';
import type { LbServiceSpec, LbSpec } from './service-compile.js';
import { epLbBackend, epLbBlock, epLbSvc, epLbVipKey } from './table-codecs.js';

const LITTLE_ENDIAN = endianness() === 'LE';

/** Byte offset of each ep_lb_backend field, from its codec (the one description of the struct). */
const BACKEND = Object.fromEntries(epLbBackend.fields.map((f) => [f.name, f.offset])) as Record<keyof ReturnType<typeof epLbBackend.decode>, number>;

/** Slots in one ep_lb_slots block (`EP_LB_BLOCK_SLOTS`): 32 u16, 64 bytes. */
export const LB_BLOCK_SLOTS = 32;

/** struct ep_lb_svc.flags bits (EP_LB_F_*). */
export const lbSvcFlags = {
  /** SESSION_AFFINITY_CLIENT_IP: the slot comes from ep_client_hash (source address only). */
  affinity: 0x1,
  /** FORWARDING_MODE_DSR: IP-in-IP to the backend, which answers the client itself. */
  dsr: 0x2,
  /** FORWARDING_MODE_FULLNAT: DNAT to the backend and SNAT to the node's address towards it. */
  fullnat: 0x4,
} as const;

/** Byte sizes of the load-balancing entries, as in bpf/include/ep_lb.h. */
export const lbSizes = { vipKey: epLbVipKey.size, svc: epLbSvc.size, backend: epLbBackend.size, block: epLbBlock.size } as const;

/**
 * What one generation of the datapath holds (`--lb-services`, `--lb-slots`, `--lb-backends`;
 * bpf/LB.md, "Maps"). Fixed when the datapath is first loaded: each map holds two generations.
 */
export interface LbCapacity {
  /** VIP entries (services). */
  readonly services: number;
  /** Table slots, in blocks of LB_BLOCK_SLOTS (a remainder below a block is unusable). */
  readonly slots: number;
  /** Backend entries, over all services. */
  readonly backends: number;
}

/**
 * The capacity a datapath gets unless the agent's flags say otherwise: what an edge node can
 * afford to preallocate for services it may never front, not LB.md's target (LB_TARGET_CAPACITY,
 * 40 MiB of slots for two generations). Per generation: 10,000 VIP entries (MAX_SERVICES: the
 * hash map is small, ~1 MiB), 1 Mi slots (2 MiB; e.g. 1,024 services at m = 1,021, or 8 services
 * at the largest m) and 2^16 backends (1.5 MiB): about 9 MiB for both generations.
 */
export const DEFAULT_LB_CAPACITY: LbCapacity = { services: MAX_SERVICES, slots: 2 ** 20, backends: 2 ** 16 };

/** The smallest maps a datapath that never fronts services takes (a workload role's): one VIP, one block, one backend. */
export const NO_LB_CAPACITY: LbCapacity = { services: 1, slots: LB_BLOCK_SLOTS, backends: 1 };

/**
 * The capacity LB.md's target needs: 10,000 services (MAX_SERVICES, the most the intent holds)
 * of 10 backends at m = 1,021, which lays out as 32 blocks each: 10,240,000 slots, 20 MiB per
 * generation, rounded up to 10 Mi slots; backends 10 per service, rounded up to 2^17.
 */
export const LB_TARGET_CAPACITY: LbCapacity = { services: MAX_SERVICES, slots: 10 * 2 ** 20, backends: 2 ** 17 };

/** Where one service sits in a generation, and the fingerprint of its bytes there. */
export interface LbExtent {
  readonly name: string;
  readonly svcId: number;
  /** First block in ep_lb_slots, generation-relative; `blocks` blocks from there (0 when m = 0). */
  readonly block: number;
  readonly blocks: number;
  /** First backend in ep_lb_backends, generation-relative; `backends` of them. */
  readonly backendBase: number;
  readonly backends: number;
  /**
   * sha-256 of the service's bytes in this layout (its VIP key with the generation byte 0, its
   * ep_lb_svc value, its backends and its blocks): equal in two generations means nothing of it
   * needs writing (LB.md, "Writing little"). It covers the extent's place, so a service that
   * moved differs even if its table did not.
   */
  readonly fingerprint: Uint8Array;
}

/** One generation of the load-balancing maps. Inert; owns no kernel state. */
export interface LbTablesSpec {
  /** The generation written into every VIP key. */
  readonly gen: 0 | 1;
  /** ep_lb_vip: struct ep_lb_vip_key -> struct ep_lb_svc, one entry per service, in key order. */
  readonly vip: MapEntriesSpec;
  /** ep_lb_backends: `backendCount` struct ep_lb_backend, written at index gen * EP_LB_BACKENDS + i. */
  readonly backends: Uint8Array;
  readonly backendCount: number;
  /** ep_lb_slots: `blockCount` 64-byte blocks, written at index gen * EP_LB_BLOCKS + i. */
  readonly slots: Uint8Array;
  readonly blockCount: number;
  /** Per service, in the same order as the VIP entries. */
  readonly extents: readonly LbExtent[];
  /** sha-256 of the whole generation's bytes (the generation byte taken as 0). */
  readonly fingerprint: Uint8Array;
}

/** Blocks a table of m slots takes. */
export function lbBlocks(m: number): number {
  return Math.ceil(m / LB_BLOCK_SLOTS);
}

/**
 * Lays `spec` out as one generation of the load-balancing maps: services in the spec's key order
 * (lbServiceOrder), each one's backends (in key order) and table extent placed first fit after
 * the previous one's, so the same set of services gives the same bytes on every node and in both
 * generations (only the VIP keys' generation byte differs). A slot holds the service-local index
 * of its backend (u16, little-endian as the program reads it); slots past m in a service's last
 * block are 0 and never read.
 * @param gen the generation byte of the VIP keys.
 * @returns new buffers the caller owns.
 * @throws CapacityError ('lb-services', 'lb-slots', 'lb-backends') when the services do not fit
 *   `capacity`, checked before anything is allocated.
 */
export function layoutLbTables(spec: LbSpec, capacity: LbCapacity = DEFAULT_LB_CAPACITY, gen: 0 | 1 = 0): LbTablesSpec {
  const services = spec.services;
  let blockCount = 0;
  let backendCount = 0;
  for (const s of services) {
    blockCount += lbBlocks(s.table.length);
    backendCount += s.backends.length;
  }
  const who = `the ${services.length} services that select this node need`;
  if (services.length > capacity.services) throw new CapacityError('lb-services', capacity.services, services.length, 'raise --lb-services (takes --reset-datapath) or select fewer services for this node', who);
  const maxBlocks = Math.floor(capacity.slots / LB_BLOCK_SLOTS);
  if (blockCount > maxBlocks) {
    throw new CapacityError('lb-slots', maxBlocks * LB_BLOCK_SLOTS, blockCount * LB_BLOCK_SLOTS, 'table slots (blocks of 32); raise --lb-slots (takes --reset-datapath), choose smaller maglev_table_size, or select fewer services for this node', who);
  }
  if (backendCount > capacity.backends) throw new CapacityError('lb-backends', capacity.backends, backendCount, 'backends; raise --lb-backends (takes --reset-datapath) or select fewer services for this node', who);

  const keys = new Uint8Array(services.length * lbSizes.vipKey);
  const values = new Uint8Array(services.length * lbSizes.svc);
  const backends = new Uint8Array(backendCount * lbSizes.backend);
  const slots = new Uint8Array(blockCount * lbSizes.block);
  const slotView = new DataView(slots.buffer);
  const backendView = new DataView(backends.buffer);
  const slotWords = new Uint16Array(slots.buffer);
  const extents: LbExtent[] = [];
  const whole = createHash('sha256');
  let block = 0;
  let backendBase = 0;
  services.forEach((s, i) => {
    const key = keys.subarray(i * lbSizes.vipKey, (i + 1) * lbSizes.vipKey);
    const value = values.subarray(i * lbSizes.svc, (i + 1) * lbSizes.svc);
    const m = s.table.length;
    const blocks = lbBlocks(m);
    epLbVipKey.encode({ gen: 0, family: s.family, proto: s.protocol, pad: 0, port: s.port, pad2: 0, vip: padded(s.vip) }, key);
    epLbSvc.encode({ block: m === 0 ? 0 : block, m, backendBase, backends: s.backends.length, flags: flagsOf(s), svcId: s.svcId }, value);
    // Backends are most of the entries (100,000 at LB.md's target): written at the codec's own
    // field offsets rather than through encode(), which makes a view per field. The buffer is
    // zeroed, so flags and the address's tail stay 0.
    s.backends.forEach((b, j) => {
      const at = (backendBase + j) * lbSizes.backend;
      backends[at + BACKEND.family] = b.addressBytes.length === 4 ? 4 : 6;
      backendView.setUint16(at + BACKEND.port, b.port, false);
      backends.set(b.addressBytes, at + BACKEND.addr);
      if (b.route !== undefined) {
        backends.set(b.route.source, at + BACKEND.saddr);
        backendView.setUint16(at + BACKEND.mtu, Math.min(b.route.mtu, 0xffff), true);
      }
    });
    const slotBase = block * lbSizes.block;
    // Slots are little-endian u16 (the codecs' byte order, x86-64's and the program's): a
    // Uint16Array writes them natively on such a host (10 M slots in milliseconds).
    if (LITTLE_ENDIAN) slotWords.set(s.table, slotBase / 2);
    else for (let slot = 0; slot < m; slot++) slotView.setUint16(slotBase + slot * 2, s.table[slot] as number, true);
    const own = createHash('sha256');
    for (const part of [key, value, backends.subarray(backendBase * lbSizes.backend, (backendBase + s.backends.length) * lbSizes.backend), slots.subarray(slotBase, slotBase + blocks * lbSizes.block)]) {
      own.update(new Uint32Array([part.length]));
      own.update(part);
    }
    const fingerprint = new Uint8Array(own.digest());
    whole.update(fingerprint);
    extents.push({ name: s.name, svcId: s.svcId, block: m === 0 ? 0 : block, blocks, backendBase, backends: s.backends.length, fingerprint });
    block += blocks;
    backendBase += s.backends.length;
    // The fingerprint saw generation 0; the key carries the real one.
    key[0] = gen;
  });
  return {
    gen,
    vip: { keySize: lbSizes.vipKey, valueSize: lbSizes.svc, count: services.length, keys, values },
    backends,
    backendCount,
    slots,
    blockCount,
    extents,
    fingerprint: new Uint8Array(whole.digest()),
  };
}

function flagsOf(s: LbServiceSpec): number {
  return (s.affinity === 'client-ip' ? lbSvcFlags.affinity : 0) | (s.forwarding === 'dsr' ? lbSvcFlags.dsr : 0) | (s.forwarding === 'fullnat' ? lbSvcFlags.fullnat : 0);
}

/** An address as the maps hold it: 16 bytes, IPv4 in the first 4 and the rest zero. */
function padded(address: Uint8Array): Uint8Array {
  if (address.length === 16) return address;
  const out = new Uint8Array(16);
  out.set(address);
  return out;
}
