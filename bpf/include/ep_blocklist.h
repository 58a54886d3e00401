/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The source blocklist: prefix lists used as "source in list -> drop" and emergency blocks that
 * expire (bpf/README.md, "The blocklist"). One LPM trie per address family, sized to the list,
 * installed as an inner map of a 2-slot ARRAY_OF_MAPS (slot = blocklist generation, named by
 * ep_blk_active[0], independent of the rule-set generations): a whole list is built beside the
 * live one and switched in by one write; a single add or remove is written into the live trie
 * in place (an LPM update or delete is atomic for a concurrent lookup: kernel/bpf/lpm_trie.c
 * replaces nodes under RCU).
 *
 * The check runs first, right after parsing, at the policy hooks (uplink XDP or TC ingress,
 * workload TC): an LPM lookup walks at most prefixlen nodes (32 or 128), whatever the number of
 * entries, so it costs the same at 1,000,000 entries as at 10.
 *
 * Layouts (written by services/node-agent/src/datapath/blocklist-tables.ts, held to this header
 * by datapath-layout.test.ts through the object's map definitions):
 *   key   struct ep_blk4_key / ep_blk6_key: LPM prefix length + address (network order)
 *   value struct ep_blk_value: expiry (CLOCK_TAI ns, 0 = never) and the entry's own prefix length
 */
#ifndef EP_BLOCKLIST_H
#define EP_BLOCKLIST_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "ep_tables.h"
#include "ep_structs.h"

#define EP_BLK_SLOTS 2
/* An expired entry may hide a shorter live one that covers it (a 1 h block of a /24 inside a
 * permanent /16): the lookup is repeated below the expired entry's length, at most this many
 * times (nested expired entries deeper than that pass until the agent drops them). */
#define EP_BLK_NEST 4

struct ep_blk4_key {
	__u32 prefixlen;
	__u8 addr[4];
};
struct ep_blk6_key {
	__u32 prefixlen;
	__u8 addr[16];
};
struct ep_blk_value {
	__u64 expires_tai_ns; /* bpf_ktime_get_tai_ns() at which the entry stops matching; 0 = never */
	__u32 prefixlen;      /* the entry's own prefix length, to look below it when it has expired */
	__u32 flags;          /* EP_BLK_F_* */
};
#define EP_BLK_F_BLOCK 1 /* from an emergency block (else from a deny list) */

/* ep_blk_stats indices (per CPU, packets and bytes). */
enum ep_blk_stat { EP_BLK_STAT_DROP4, EP_BLK_STAT_DROP6, EP_BLK_STAT_EXPIRED, EP_BLK_STAT_COUNT };

/* Written by ep_blk_clock: the kernel's CLOCK_TAI when the agent asked (agent reads it back). */
struct ep_blk_clock_value {
	__u64 tai_ns;
};

struct ep_blk4_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct ep_blk4_key));
	__uint(value_size, sizeof(struct ep_blk_value));
	__uint(max_entries, 1);
};
struct ep_blk6_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct ep_blk6_key));
	__uint(value_size, sizeof(struct ep_blk_value));
	__uint(max_entries, 1);
};

/* Per blocklist generation: the IPv4 source trie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_BLK_SLOTS);
	__type(key, __u32);
	__array(values, struct ep_blk4_inner);
} ep_blk4 SEC(".maps");

/* Per blocklist generation: the IPv6 source trie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_BLK_SLOTS);
	__type(key, __u32);
	__array(values, struct ep_blk6_inner);
} ep_blk6 SEC(".maps");

/* Bits of ep_blk_active[0] beside the live generation (bit 0): the live trie of the family holds
 * no entry, so a packet of that family is not looked up. The agent sets them with the switch that
 * installs an empty trie (and on a datapath that has none), and clears one before an add in place
 * takes effect; a word without them (older agents) means "look". */
#define EP_BLK_EMPTY4 0x2
#define EP_BLK_EMPTY6 0x4

/* [0] = the live blocklist generation (bit 0) and EP_BLK_EMPTY4/6. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ep_blk_active SEC(".maps");

/* Per-CPU packets and bytes by enum ep_blk_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_BLK_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_blk_stats SEC(".maps");

/* Agent-only: [0] = CLOCK_TAI as ep_blk_clock read it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_blk_clock_value);
} ep_blk_clock_out SEC(".maps");

static __always_inline void ep_blk_count(__u32 which, __u64 len)
{
	struct ep_counter *c = bpf_map_lookup_elem(&ep_blk_stats, &which);
	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

/* The source's entry in the live trie of its family (blocklist generation `slot`) that has not
 * expired, or NULL. Its own subprogram (one copy for every hook, verified once). */
static __noinline struct ep_blk_value *ep_blk_match(struct ep_pkt *p, __u32 slot)
{
	slot &= 1;
	void *trie = bpf_map_lookup_elem(p->family == 4 ? (void *)&ep_blk4 : (void *)&ep_blk6, &slot);
	if (!trie)
		return NULL;
	/* One key buffer for both families: the IPv4 key is the IPv6 key's first 8 bytes. */
	struct ep_blk6_key k = { .prefixlen = p->family == 4 ? 32 : 128 };
	__builtin_memcpy(k.addr, p->src, 16);
	__u64 now = 0;
	for (int i = 0; i <= EP_BLK_NEST; i++) {
		struct ep_blk_value *v = bpf_map_lookup_elem(trie, &k);
		if (!v)
			return NULL;
		if (!v->expires_tai_ns)
			return v;
		if (!now)
			now = bpf_ktime_get_tai_ns();
		if (now < v->expires_tai_ns)
			return v;
		/* Expired: enforced by this clock without another write; the agent deletes it later. */
		ep_blk_count(EP_BLK_STAT_EXPIRED, 0);
		if (v->prefixlen == 0)
			return NULL;
		k.prefixlen = v->prefixlen - 1;
	}
	return NULL;
}

/* 1 when the packet's source is blocked (the caller drops it), counted; else 0. A family whose
 * live trie is empty (EP_BLK_EMPTY4/6) costs one array read and no call: the blocklist was a
 * tenth of a tracked connection's programs in bench/conntrack-lookup.ts's cold runs with none
 * loaded. Inline: every packet at a policy hook pays one call here (ep_blk_match) at most, not
 * two (bpf/README.md, "Verifier cost", per packet). */
static __always_inline int ep_blocklisted(struct ep_pkt *p, __u64 len)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_blk_active, &zero);
	if (!active)
		return 0;
	/* Read once: the family's empty bit and the slot looked up come from one write. */
	__u32 word = *(volatile __u32 *)active;
	if (word & (p->family == 4 ? EP_BLK_EMPTY4 : EP_BLK_EMPTY6))
		return 0;
	if (!ep_blk_match(p, word))
		return 0;
	ep_blk_count(p->family == 4 ? EP_BLK_STAT_DROP4 : EP_BLK_STAT_DROP6, len);
	return 1;
}

#endif /* EP_BLOCKLIST_H */
