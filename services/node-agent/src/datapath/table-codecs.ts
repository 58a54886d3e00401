// The structs of bpf/include/ep_tables.h that the agent reads and writes field by field, each
// described once as a libbpf-ts codec. test/datapath-layout.test.ts checks every field's offset
// and size against the BTF clang wrote into bpf/build/edgeplane.bpf.o, so the C header and this
// file cannot drift apart unnoticed. (compile-tables.ts writes whole tables as packed arrays
// for speed; the same test checks its entry sizes against the object.)
import { bytes, struct, u32, u64 } from 'libbpf-ts';

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

/** Every codec above by its C struct name: what the layout test compares with the object's BTF. */
export const tableCodecs = { ep_meta: epMeta, ep_counter: epCounter, ep_rule: epRule } as const;
