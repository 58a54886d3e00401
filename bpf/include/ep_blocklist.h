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
 * Permanent IPv4 entries of up to three prefix lengths (the lengths with the most entries; an
 * older agent's sets hold up to EP_BLK_HASH_LENS) are held instead in a hashed set, ep_blk4h: an
 * ARRAY of 64-byte buckets the agent writes through mmap (BPF_F_MMAPABLE), so a whole list costs
 * a copy instead of one kernel insert per prefix (~0.8-1.2 us each for a trie or a hash map:
 * bpf/README.md, "The blocklist"). Beside each set, its prefilter (ep_blk4p) says per /24 block
 * whether an entry covers it or lies in it: a packet reads one word, and one bucket (two behind a
 * marked one) per hashed length > 24 only where an entry lies in its block, whatever the number
 * of entries.
 *
 * The check runs first, right after parsing, at the policy hooks (uplink XDP or TC ingress,
 * workload TC): the hashed set's probes, then an LPM lookup that walks at most prefixlen nodes
 * (32 or 128), whatever the number of entries.
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

/* The hashed set (ep_blk4h): a bucket (one cache line) holds EP_BLK_HASH_ENTRIES entries, each a
 * u64 (masked IPv4 address in host order << 32 | prefix length + 1), 0 = free, and in its last
 * slot EP_BLK_HASH_MOVED when an entry whose first bucket it is lives in its second (the first
 * was full). An entry lives in one of its two buckets (ep_blk_hashed4); the agent puts one that
 * fits in neither into the trie. So a packet reads one bucket per length, and the second only
 * behind a marked first (about 4 % of buckets after a whole load). Slots are written by single
 * 8-byte stores; a removed entry leaves a hole (every slot is compared, no entry moves on a
 * remove), and a bucket stays marked until the next whole load. */
#define EP_BLK_HASH_SLOTS 8
#define EP_BLK_HASH_ENTRIES (EP_BLK_HASH_SLOTS - 1)
#define EP_BLK_HASH_MOVED 0xffULL
#define EP_BLK_HASH_LENS 4
struct ep_blk_bucket {
	__u64 slot[EP_BLK_HASH_SLOTS];
};
struct ep_blk4h_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE | BPF_F_INNER_MAP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct ep_blk_bucket));
	__uint(max_entries, 1);
};

/* Per blocklist generation: the hashed set of permanent IPv4 entries (its bucket count and
 * lengths are in ep_blk_active[0]). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_BLK_SLOTS);
	__type(key, __u32);
	__array(values, struct ep_blk4h_inner);
} ep_blk4h SEC(".maps");

/* The prefilter of a hashed set (ep_blk4p): two bits per /24 block of the IPv4 space (2^24
 * blocks, 4 MiB), written by the agent through mmap with the set. EP_BLK_PRE_COVERED: an entry of
 * the set of length <= 24 contains the block (exact: the agent recomputes it when such an entry
 * leaves), so a source there is listed without a bucket read. EP_BLK_PRE_LONGER: an entry of
 * length > 24 lies in the block (a hint: it stays set after that entry leaves, until the next
 * whole load), so only then are the buckets of the lengths > 24 read. A source in neither reads
 * one word and no bucket. Its inner maps are plain arrays of one fixed size (not
 * BPF_F_INNER_MAP), so the verifier inlines the word's lookup: a bucket lookup in ep_blk4h's
 * inner maps, whose size varies, is a call (~10 ns a packet here: BENCHMARKS.md, "The
 * prefilter"). A set has one when the word's fourth length slot holds EP_BLK_PRE_MARK (such a
 * set holds at most three lengths); a word without it (an older agent's set) reads every
 * length's buckets, as before. */
#define EP_BLK_PRE_LEN 24
#define EP_BLK_PRE_WORDS (1U << (EP_BLK_PRE_LEN - 5))
#define EP_BLK_PRE_COVERED 1ULL
#define EP_BLK_PRE_LONGER 2ULL
#define EP_BLK_PRE_MARK 63
struct ep_blk4p_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u64));
	__uint(max_entries, EP_BLK_PRE_WORDS);
};

/* Per blocklist generation: the prefilter of the hashed set in ep_blk4h's same slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_BLK_SLOTS);
	__type(key, __u32);
	__array(values, struct ep_blk4p_inner);
} ep_blk4p SEC(".maps");

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
/* Bits 3-7: log2 of the live hashed set's bucket count; bits 8-31: its prefix lengths, 6 bits
 * each (length + 1; 0 ends the list). A word without lengths (an older agent's, or no permanent
 * IPv4 entry) probes no bucket. Written with the generation, so one read names a set and its
 * shape together. */
#define EP_BLK_HASH_LOG2(word) (((word) >> 3) & 31)
#define EP_BLK_HASH_LEN1(word, i) (((word) >> (8 + 6 * (i))) & 63)

/* [0] = the live blocklist generation (bit 0), EP_BLK_EMPTY4/6 and the hashed set's shape. */
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

/* murmur3's 32-bit finalizer: the agent's hashed set uses the same (blocklist-hash.ts). */
static __always_inline __u32 ep_blk_mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

/* 1 when the IPv4 source is in the live hashed set (`word`: ep_blk_active[0], with at least one
 * length). With a prefilter: one inlined word read, and the buckets of the lengths > 24 only
 * behind EP_BLK_PRE_LONGER; without: one bucket read per length. Two buckets behind a marked
 * first. Inline: a call to a subprogram cost ~10 ns a packet here (BENCHMARKS.md, "The
 * prefilter"), against a few hundred more instructions verified per hook. */
static __always_inline int ep_blk_hashed4(struct ep_pkt *p, __u32 word)
{
	__u32 slot = word & 1;
	__u32 raw;
	__builtin_memcpy(&raw, p->src, 4);
	__u32 addr = bpf_ntohl(raw);
	/* Lengths (+ 1) up to this one are answered by the prefilter: not probed. */
	__u32 answered = 0;
	if (EP_BLK_HASH_LEN1(word, EP_BLK_HASH_LENS - 1) == EP_BLK_PRE_MARK) {
		void *pre = bpf_map_lookup_elem(&ep_blk4p, &slot);
		__u32 block = addr >> (32 - EP_BLK_PRE_LEN);
		__u32 at = block >> 5;
		__u64 *bits = pre ? bpf_map_lookup_elem(pre, &at) : NULL;
		if (bits) {
			__u64 mine = *bits >> ((block & 31) * 2);
			if (mine & EP_BLK_PRE_COVERED)
				return 1;
			if (!(mine & EP_BLK_PRE_LONGER))
				return 0;
			answered = EP_BLK_PRE_LEN + 1;
		}
		/* No prefilter installed (never with the agent's writes): every length is probed. */
	}
	void *set = bpf_map_lookup_elem(&ep_blk4h, &slot);
	if (!set)
		return 0;
	__u32 mask = (1U << EP_BLK_HASH_LOG2(word)) - 1;
	for (int i = 0; i < EP_BLK_HASH_LENS; i++) {
		__u32 len1 = EP_BLK_HASH_LEN1(word, i);
		/* Lengths come longest first; the mark ends them too. */
		if (!len1 || len1 <= answered || len1 == EP_BLK_PRE_MARK)
			return 0;
		__u32 a = len1 == 1 ? 0 : addr & (0xffffffffU << (33 - len1));
		__u64 want = ((__u64)a << 32) | len1;
		__u32 h = ep_blk_mix(a ^ (len1 * 0x9e3779b9U));
		__u32 b = h & mask;
		for (int j = 0; j < 2; j++) {
			struct ep_blk_bucket *bucket = bpf_map_lookup_elem(set, &b);
			if (!bucket)
				break;
			for (int k = 0; k < EP_BLK_HASH_ENTRIES; k++)
				if (bucket->slot[k] == want)
					return 1;
			if (bucket->slot[EP_BLK_HASH_ENTRIES] != EP_BLK_HASH_MOVED)
				break;
			b = ep_blk_mix(h + 0x7f4a7c15U) & mask;
		}
	}
	return 0;
}

/* 1 when the packet's source is blocked (the caller drops it), counted; else 0. A family whose
 * live trie is empty (EP_BLK_EMPTY4/6) and no hashed set costs one array read and no call: the
 * blocklist was a tenth of a tracked connection's programs in bench/conntrack-lookup.ts's cold
 * runs with none loaded. Inline, so a packet pays only what it needs here: ep_blk_hashed4 for an
 * IPv4 source while a set is live (inline too), the call to ep_blk_match while its family's trie
 * is not empty (bpf/README.md, "Verifier cost", per packet). */
static __always_inline int ep_blocklisted(struct ep_pkt *p, __u64 len)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_blk_active, &zero);
	if (!active)
		return 0;
	/* Read once: the family's empty bit and the slot looked up come from one write. */
	__u32 word = *(volatile __u32 *)active;
	if (p->family == 4 && EP_BLK_HASH_LEN1(word, 0) && ep_blk_hashed4(p, word)) {
		ep_blk_count(EP_BLK_STAT_DROP4, len);
		return 1;
	}
	if (word & (p->family == 4 ? EP_BLK_EMPTY4 : EP_BLK_EMPTY6))
		return 0;
	if (!ep_blk_match(p, word))
		return 0;
	ep_blk_count(p->family == 4 ? EP_BLK_STAT_DROP4 : EP_BLK_STAT_DROP6, len);
	return 1;
}

#endif /* EP_BLOCKLIST_H */
