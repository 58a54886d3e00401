// The structs of bpf/include/ep_tables.h that the agent reads and writes field by field, each
// described once as a libbpf-ts codec. test/datapath-layout.test.ts checks every field's offset
// and size against the BTF clang wrote into bpf/build/edgeplane.bpf.o, so the C header and this
// file cannot drift apart unnoticed. (compile-tables.ts writes whole tables as packed arrays
// for speed; the same test checks its entry sizes against the object.)
import { array, bytes, struct, u16, u16be, u32, u64, u8 } from 'libbpf-ts';

/** `struct ep_meta`: agent-only bookkeeping of one generation (the programs never read it). */
export const epMeta = struct({
  /** Rules the generation holds (slots 1..ruleCount of ep_rules). */
  ruleCount: u32,
  /** 1 once the generation is fully written; 0 while it is being rewritten. */
  valid: u32,
  /** sha-256 of the compiled tables (TablesSpec.fingerprint). */
  fingerprint: bytes(32),
});

/** `struct ep_counter`: packets and bytes of one counter slot on one CPU (or a carried sum). */
export const epCounter = struct({ packets: u64, bytes: u64 });

/** `struct ep_rule`: only rule_id is read back (to recover a generation's rule ids). */
export const epRule = struct({ action: u32, ruleId: u32, pps: u64, burstNt: u64, fillNs: u64 });

/**
 * `struct ep_ct_key`: key of ep_ct and ep_ct_new, the same for both directions of a flow (layout
 * 3): (src, sport) is side a, (dst, dport) side b, in the order conntrack-key.ts computes; the
 * entry's EP_CT_F_ORIG_B names the side that opened the flow (originalTuple()). Ports in host
 * byte order (an ICMP echo's identifier in both); IPv4 addresses in the first 4 bytes.
 */
export const epCtKey = struct({ family: u8, proto: u8, pad: u16, sport: u16, dport: u16, src: bytes(16), dst: bytes(16) });

/**
 * `struct ep_ct_nat` (layout 4): the NAT of a load-balanced flow's entry: on its service entry the
 * backend (flags EP_CT_NAT_DNAT), on its reverse entry the VIP (EP_CT_NAT_REVNAT); zeros when
 * not NATed. Ports in network byte order. Layout 5 adds the other side of a DSR or full-NAT flow
 * (addr2, port2; bpf/LB.md, "Forwarding modes"): on S the node's source address (and full NAT's
 * allocated port), on a full-NAT B the client; `mtu` on a DSR S.
 */
export const epCtNat = struct({ addr: bytes(16), port: u16be, flags: u8, pad: u8, svcId: u32, addr2: bytes(16), port2: u16be, mtu: u16, pad2: u32 });

/** The struct ep_ct_nat of an entry that is not NATed. */
export const NO_CT_NAT: Readonly<ReturnType<typeof epCtNat.decode>> = Object.freeze({ addr: new Uint8Array(16), port: 0, flags: 0, pad: 0, svcId: 0, addr2: new Uint8Array(16), port2: 0, mtu: 0, pad2: 0 });

/** `struct ep_ct_entry`: one connection (bpf/CONNTRACK.md); index 0 of packets/bytes is the original direction. */
export const epCtEntry = struct({
  expiresNs: u64,
  createdNs: u64,
  packets: array(u64, 2),
  bytes: array(u64, 2),
  ruleId: u32,
  epoch: u32,
  state: u8,
  flags: u8,
  pad0: u16,
  pad1: u32,
  /** Layout 4: zeros when the flow is not NATed. */
  nat: epCtNat,
});

/** `struct ep_ct_cfg`: the timeouts in nanoseconds, indexed by enum ep_ct_timeout (0 = the default). */
export const epCtCfg = struct({ timeoutNs: array(u64, 5) });

/** `struct ep_gen_cfg`: per generation, EP_GEN_F_* flags and the rule-set epoch. */
export const epGenCfg = struct({ flags: u32, epoch: u32 });

/** `struct ep_ct_control_key`: a control endpoint whose packets bypass policy (port in host order). */
export const epCtControlKey = struct({ family: u8, proto: u8, port: u16, addr: bytes(16) });

/** `struct ep_lb_cfg`: what one generation of ep_lb_slots and ep_lb_backends holds (written at open). */
export const epLbCfg = struct({ blocks: u32, backends: u32 });

/**
 * `struct ep_ct4_slot` (layout 6): one line of ep_ct4, the IPv4 flow table (bpf/CONNTRACK.md,
 * "The IPv4 table"): its tag, then ep_ct_key's IPv4 key (addresses in network byte order, ports in
 * host byte order) and ep_ct_entry's fields but the two in ep_ct4_cold. ct4-table.ts reads it.
 */
export const epCt4Slot = struct({
  tag: u32,
  epoch: u32,
  a: bytes(4),
  b: bytes(4),
  ap: u16,
  bp: u16,
  proto: u8,
  state: u8,
  flags: u8,
  pad: u8,
  expiresNs: u64,
  packets: array(u64, 2),
  bytes: array(u64, 2),
});

/** `struct ep_ct4_cold`: beside each ep_ct4 slot, what packets never read. */
export const epCt4Cold = struct({ createdNs: u64, ruleId: u32, pad: u32 });

/** `struct ep_ct_sweep_args`: the ctx of the ep_ct_sweep program. */
export const epCtSweepArgs = struct({ budget: u32, pad: u32 });


// ---- L4 load balancing (bpf/LB.md, layout 4) -------------------------------------------------
// In edgeplane.bpf.o (so in tableCodecs below, checked against its BTF by
// datapath-layout.test.ts), from bpf/include/ep_lb.h. lb-tables.ts writes these bytes.

/** `struct ep_lb_vip_key`: key of ep_lb_vip. Port in host byte order; an IPv4 VIP in the first 4 bytes. */
export const epLbVipKey = struct({ gen: u8, family: u8, proto: u8, pad: u8, port: u16, pad2: u16, vip: bytes(16) });

/** `struct ep_lb_svc`: value of ep_lb_vip, one service of one generation. */
export const epLbSvc = struct({
  /** First block of the table in ep_lb_slots (generation-relative). */
  block: u32,
  /** Table size; 0: no backend of positive weight (drop). */
  m: u32,
  /** First of its backends in ep_lb_backends (generation-relative). */
  backendBase: u32,
  /** How many backends; every slot value is below it. */
  backends: u16,
  /** EP_LB_F_* (lbSvcFlags). */
  flags: u16,
  svcId: u32,
});

/**
 * `struct ep_lb_backend`: one backend in ep_lb_backends. Port in network byte order (written into
 * packets as is). Layout 5: `saddr`, the node's source address towards it (zeros: unresolved) and
 * `mtu`, its route's MTU (0: unknown), which DSR and full NAT use.
 */
export const epLbBackend = struct({ family: u8, flags: u8, port: u16be, addr: bytes(16), saddr: bytes(16), mtu: u16, pad: u16 });

/** `struct ep_lb_block`: one 64-byte block of ep_lb_slots, 32 slots of one service's table. */
export const epLbBlock = struct({ backend: array(u16, 32) });

// ---- Shadow classification (issue 18; bpf/include/ep_shadow.h) ------------------------------

/**
 * `struct ep_shadow_cfg`: ep_shadow[0]. The programs read only `flags` (EP_SHADOW_F_ON: a
 * candidate is set); the rest is the agent's record of the candidate, pinned with it.
 */
export const epShadowCfg = struct({
  flags: u32,
  /** Rules of the candidate (slots 1..ruleCount of ep_shadow_rules). */
  ruleCount: u32,
  /** Bytes of `name` used. */
  nameLen: u32,
  /** ep_gen_cfg.epoch of the enforced rule set the union holds; 0: the union holds the candidate only. */
  epoch: u32,
  /** sha-256 of the candidate as compiled (TablesSpec.fingerprint). */
  fingerprint: bytes(32),
  /** The caller's name for the candidate (ShadowCounters.candidate), UTF-8 (EP_SHADOW_NAME_MAX bytes). */
  name: bytes(3072),
});

/** `struct ep_shadow_sample`: one packet whose verdicts differed, in a CPU's ring of ep_shadow_samples. */
export const epShadowSample = struct({
  /** bpf_ktime_get_ns() when taken; 0: an empty slot. */
  ns: u64,
  enforcedRuleId: u32,
  candidateRuleId: u32,
  family: u8,
  proto: u8,
  /** enum ep_shadow_verdict: 1 would drop, 2 would allow. */
  verdict: u8,
  pad: u8,
  /** Destination port, or EP_PORT_NONE (65536). */
  port: u32,
  src: bytes(16),
  dst: bytes(16),
});

/** `struct ep_shadow_slot`: ep_shadow_slots[u], union rule u's slot in each rule set (rule i: i + 1; 0: not its rule). */
export const epShadowSlot = struct({ enforced: u32, candidate: u32 });

/** Every codec of this file by its C struct name: what the layout test compares with the object's BTF. */
export const tableCodecs = {
  ep_meta: epMeta,
  ep_counter: epCounter,
  ep_rule: epRule,
  ep_ct_key: epCtKey,
  ep_ct_entry: epCtEntry,
  ep_ct_cfg: epCtCfg,
  ep_gen_cfg: epGenCfg,
  ep_ct_control_key: epCtControlKey,
  ep_ct_sweep_args: epCtSweepArgs,
  ep_ct4_slot: epCt4Slot,
  ep_ct4_cold: epCt4Cold,
  ep_ct_nat: epCtNat,
  ep_lb_cfg: epLbCfg,
  ep_lb_vip_key: epLbVipKey,
  ep_lb_svc: epLbSvc,
  ep_lb_backend: epLbBackend,
  ep_lb_block: epLbBlock,
  ep_shadow_cfg: epShadowCfg,
  ep_shadow_sample: epShadowSample,
  ep_shadow_slot: epShadowSlot,
} as const;
