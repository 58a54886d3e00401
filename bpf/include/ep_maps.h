/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map of the edgeplane programs, each with a one-line comment. ep_tables.h gives the key
 * and value layouts; bpf/README.md, "Generations and the switch", says how the agent uses them.
 * (katran: balancer_maps.h.)
 */
#ifndef EP_MAPS_H
#define EP_MAPS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "ep_tables.h"
#include "ep_structs.h"
#include "ep_lb.h"

/* The variable-size per-rule-set tables (the LPM trie of all three fields and the sparse class
 * words) are inner maps of 2-slot ARRAY_OF_MAPS outer maps, slot = generation, sized to their
 * rule set. The fixed-size per-rule-set tables (rules, wildcard vectors, counters) are global
 * arrays with the generation in the index: same isolation, no map-in-map install (each costs
 * the agent an RCU grace period). ep_active[0] names the live generation.
 * Inner definitions give key_size/value_size rather than BTF types: clang 14 emits the types
 * behind a nested map definition only as forward declarations, which libbpf cannot size.
 */
struct ep_lpm_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct ep_lpm_key));
	__uint(value_size, sizeof(struct ep_class_ref));
	__uint(max_entries, 1);
};
struct ep_cwords_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(key_size, sizeof(struct ep_word_key));
	__uint(value_size, sizeof(__u64));
	__uint(max_entries, 1);
};
struct ep_barrier_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 1);
};

/* Per generation: the LPM trie of all three fields (tag byte + prefix) -> class and its summary. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__array(values, struct ep_lpm_inner);
} ep_lpm SEC(".maps");

/* Per generation: sparse class words, { class, word index } -> 64 rule bits. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__array(values, struct ep_cwords_inner);
} ep_cwords SEC(".maps");

/* Wildcard rule vectors, index generation * EP_WILD_COUNT + enum ep_wild. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS * EP_WILD_COUNT);
	__type(key, __u32);
	__type(value, struct ep_bitvec);
} ep_wild SEC(".maps");

/* A small generation's prefixes to scan (struct ep_scan), index generation; read only when its
 * ep_gen_cfg has EP_GEN_F_SCAN. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__type(value, struct ep_scan);
} ep_scan SEC(".maps");

/* Actions and rate limits, index generation * EP_RULE_SLOTS + 0 (default) or rule + 1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS * EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_rule);
} ep_rules SEC(".maps");

/* Per-CPU packets and bytes, indexed as ep_rules. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_GENERATIONS * EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_counters SEC(".maps");

/* [0]: the live generation (0 or 1); read once per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ep_active SEC(".maps");

/* Token buckets by { rule id, family, source address }, kept across switches (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ep_bucket_key);
	__type(value, struct ep_bucket);
} ep_buckets SEC(".maps");

/* Per-CPU counts of frames no rule saw, indexed by enum ep_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_stats SEC(".maps");

/* Agent-only: per generation, what it holds (struct ep_meta: rule count, valid, fingerprint). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__type(value, struct ep_meta);
} ep_meta SEC(".maps");

/* Agent-only: counts by rule id folded out of overwritten generations, so counters continue. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_carry SEC(".maps");

/* Agent-only: the RCU barrier the agent writes before it rewrites an idle generation.
 * Writing an element of a map-in-map makes the bpf() syscall wait for an RCU
 * grace period (maybe_wait_bpf_programs in kernel/bpf/syscall.c). The agent writes here to
 * wait until no program still runs with a generation it is about to overwrite. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ep_barrier_inner);
} ep_barrier SEC(".maps");

/* Per-CPU struct ep_match of the packet being classified (the bpf_loop callback's state). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_match);
} ep_scratch SEC(".maps");

/* ---- Connection tracking (bpf/CONNTRACK.md). Global, not per generation: entries survive
 * switches and agent restarts. */

/* Flows that have not yet seen a reply, created while ep_ct was at its direct mark (half its
 * capacity, ep_ct_below_mark), flow key -> entry (LRU: a SYN flood past the mark churns only
 * this table). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ep_ct_key);
	__type(value, struct ep_ct_entry);
} ep_ct_new SEC(".maps");

/* Flows that have seen a reply, and new flows created below the direct mark (preallocated,
 * never evicted: a full table fails new moves, never an established flow). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ep_ct_key);
	__type(value, struct ep_ct_entry);
} ep_ct SEC(".maps");

/* The IPv4 flow table (layout 6, struct ep_ct4_slot): IPv4 TCP/UDP flows without NAT, looked up
 * before ep_ct. Its size is a power of two (the agent's); 0 slots is not allowed by the kernel,
 * so the smallest is EP_CT4_PROBES. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct ep_ct4_slot);
} ep_ct4 SEC(".maps");

/* Beside ep_ct4, slot by slot: what the packets never read (creation time, rule). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct ep_ct4_cold);
} ep_ct4_cold SEC(".maps");

/* ep_ct_create's entry while it is built (private to the programs, not pinned; per CPU, as XDP and
 * TC programs do not nest on a CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_ct_entry);
} ep_ct_scratch SEC(".maps");

/* [0]: timeouts (struct ep_ct_cfg), written by the agent at start. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_ct_cfg);
} ep_ct_cfg SEC(".maps");

/* Per generation: conntrack flags and the rule-set epoch (struct ep_gen_cfg). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__type(value, struct ep_gen_cfg);
} ep_gen_cfg SEC(".maps");

/* Per-CPU conntrack counters, indexed by enum ep_ct_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_CT_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_ct_stats SEC(".maps");

/* Control endpoints the node must always reach: packets from them bypass policy. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct ep_ct_control_key);
	__type(value, __u32);
} ep_ct_control SEC(".maps");

/* Bit p of word p / 64 set iff a control endpoint has port p (layout 3): a packet whose port's
 * bit is clear skips the ep_ct_control hash lookup, which otherwise every TCP/UDP packet pays. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_CT_CONTROL_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} ep_ct_control_ports SEC(".maps");

/* ---- L4 load balancing (bpf/LB.md, layout 4). Per generation, sized at load from the agent's
 * --lb-* capacities (max_entries below are placeholders the agent overrides). */

/* Services: { generation, family, proto, port, VIP } -> struct ep_lb_svc. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2);
	__type(key, struct ep_lb_vip_key);
	__type(value, struct ep_lb_svc);
} ep_lb_vip SEC(".maps");

/* Maglev tables in 64-byte blocks, index generation * ep_lb_cfg.blocks + block. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ep_lb_block);
} ep_lb_slots SEC(".maps");

/* Backends, index generation * ep_lb_cfg.backends + backend_base + i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ep_lb_backend);
} ep_lb_backends SEC(".maps");

/* [0]: the per-generation sizes of ep_lb_slots and ep_lb_backends (struct ep_lb_cfg), written at open. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_lb_cfg);
} ep_lb_cfg SEC(".maps");

/* Per-CPU load-balancing counters, indexed by enum ep_lb_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_LB_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_lb_stats SEC(".maps");

#endif
