/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The edgeplane classifier, shared by the XDP (uplink) and TC (workload) programs.
 * Parse -> three field lookups (source prefix, destination prefix, protocol+port) -> sparse
 * two-level bit-vector AND -> first matching rule -> action, counters, token bucket.
 * bpf/README.md documents the semantics and the table layout.
 */
#ifndef EP_CLASSIFIER_H
#define EP_CLASSIFIER_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "ep_tables.h"

#define EP_ETH_P_IP     0x0800
#define EP_ETH_P_IPV6   0x86DD
#define EP_ETH_P_8021Q  0x8100
#define EP_ETH_P_8021AD 0x88A8

/* IP protocol numbers (vmlinux.h carries only the IPv4 enum, not the IPv6 ones). */
#define EP_IPPROTO_HOPOPTS  0
#define EP_IPPROTO_ICMP     1
#define EP_IPPROTO_TCP      6
#define EP_IPPROTO_UDP      17
#define EP_IPPROTO_ROUTING  43
#define EP_IPPROTO_FRAGMENT 44
#define EP_IPPROTO_AH       51
#define EP_IPPROTO_ICMPV6   58
#define EP_IPPROTO_DSTOPTS  60

#define EP_MAX_VLAN     2    /* tags skipped before the IP header */
#define EP_MAX_EXT      8    /* IPv6 extension headers walked */
#define EP_MAX_L3_OFF   1024 /* bytes of L2 + L3 headers we accept before the L4 header */

enum ep_verdict { EP_PASS, EP_DROP };
enum ep_parse_result { EP_PARSE_OK, EP_PARSE_NON_IP, EP_PARSE_MALFORMED };

/* ---- maps --------------------------------------------------------------------------------
 * The variable-size per-rule-set tables (the LPM trie of all three fields and the sparse class
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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__array(values, struct ep_lpm_inner);
} ep_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__array(values, struct ep_cwords_inner);
} ep_cwords SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS * EP_WILD_COUNT);
	__type(key, __u32);
	__type(value, struct ep_bitvec);
} ep_wild SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS * EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_rule);
} ep_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_GENERATIONS * EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ep_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ep_bucket_key);
	__type(value, struct ep_bucket);
} ep_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_stats SEC(".maps");

/* Agent-only: per generation, what it holds (rule count, fingerprint). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__type(value, struct ep_meta);
} ep_meta SEC(".maps");

/* Agent-only: counts of rule ids carried over from overwritten generations, so a rule's
 * counters continue across applies and agent restarts. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_carry SEC(".maps");

/* Agent-only: writing an element of a map-in-map makes the bpf() syscall wait for an RCU
 * grace period (maybe_wait_bpf_programs in kernel/bpf/syscall.c). The agent writes here to
 * wait until no program still runs with a generation it is about to overwrite. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ep_barrier_inner);
} ep_barrier SEC(".maps");

/* ---- parsing ----------------------------------------------------------------------------- */

struct ep_pkt {
	__u32 family; /* 4 or 6 */
	__u32 proto;  /* IP protocol / IPv6 upper-layer header */
	__u32 port;   /* destination port, or EP_PORT_NONE */
	__u8 src[16];
	__u8 dst[16];
};

struct ep_vlan {
	__be16 tci;
	__be16 proto;
};

static __always_inline int ep_parse_l4(void *data, void *data_end, __u32 off, struct ep_pkt *p)
{
	if (p->proto != EP_IPPROTO_TCP && p->proto != EP_IPPROTO_UDP) {
		p->port = EP_PORT_NONE;
		return EP_PARSE_OK;
	}
	if (off > EP_MAX_L3_OFF)
		return EP_PARSE_MALFORMED;
	__u8 *l4 = data + off;
	if ((void *)(l4 + 4) > data_end)
		return EP_PARSE_MALFORMED;
	p->port = ((__u32)l4[2] << 8) | l4[3];
	return EP_PARSE_OK;
}

static __always_inline int ep_parse_ipv4(void *data, void *data_end, __u32 off, struct ep_pkt *p)
{
	struct iphdr *ip = data + off;
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return EP_PARSE_MALFORMED;
	__u32 hlen = ip->ihl * 4;
	if (data + off + hlen > data_end)
		return EP_PARSE_MALFORMED;
	p->family = 4;
	p->proto = ip->protocol;
	__builtin_memcpy(p->src, &ip->saddr, 4);
	__builtin_memcpy(p->dst, &ip->daddr, 4);
	if (bpf_ntohs(ip->frag_off) & 0x1fff) {
		/* Non-first fragment: no L4 header, so only port-less rules can match. */
		p->port = EP_PORT_NONE;
		return EP_PARSE_OK;
	}
	return ep_parse_l4(data, data_end, off + hlen, p);
}

static __always_inline bool ep_is_ext(__u32 nh)
{
	return nh == EP_IPPROTO_HOPOPTS || nh == EP_IPPROTO_ROUTING || nh == EP_IPPROTO_DSTOPTS ||
	       nh == EP_IPPROTO_FRAGMENT || nh == EP_IPPROTO_AH;
}

static __always_inline int ep_parse_ipv6(void *data, void *data_end, __u32 off, struct ep_pkt *p)
{
	struct ipv6hdr *ip6 = data + off;
	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return EP_PARSE_MALFORMED;
	p->family = 6;
	__builtin_memcpy(p->src, &ip6->saddr, 16);
	__builtin_memcpy(p->dst, &ip6->daddr, 16);
	__u32 nh = ip6->nexthdr;
	off += sizeof(*ip6);

	for (int i = 0; i < EP_MAX_EXT; i++) {
			if (!ep_is_ext(nh)) {
			p->proto = nh;
			return ep_parse_l4(data, data_end, off, p);
		}
		if (off > EP_MAX_L3_OFF)
			return EP_PARSE_MALFORMED;
		__u8 *h = data + off;
		if ((void *)(h + 8) > data_end)
			return EP_PARSE_MALFORMED;
		if (nh == EP_IPPROTO_FRAGMENT) {
			__u32 frag = ((__u32)h[2] << 8) | h[3];
			nh = h[0];
			off += 8;
			if (frag >> 3) {
				p->proto = nh;
				p->port = EP_PORT_NONE;
				return EP_PARSE_OK;
			}
		} else if (nh == EP_IPPROTO_AH) {
			nh = h[0];
			off += ((__u32)h[1] + 2) * 4;
		} else {
			nh = h[0];
			off += ((__u32)h[1] + 1) * 8;
		}
	}
	/* Still inside the extension-header chain after EP_MAX_EXT headers. */
	if (!ep_is_ext(nh)) {
		p->proto = nh;
		return ep_parse_l4(data, data_end, off, p);
	}
	return EP_PARSE_MALFORMED;
}

static __always_inline int ep_parse(void *data, void *data_end, struct ep_pkt *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return EP_PARSE_NON_IP;
	__u16 proto = bpf_ntohs(eth->h_proto);
	__u32 off = sizeof(*eth);

	for (int i = 0; i < EP_MAX_VLAN; i++) {
		if (proto != EP_ETH_P_8021Q && proto != EP_ETH_P_8021AD)
			break;
		struct ep_vlan *vh = data + off;
		if ((void *)(vh + 1) > data_end)
			return EP_PARSE_MALFORMED;
		proto = bpf_ntohs(vh->proto);
		off += sizeof(*vh);
	}
	if (proto == EP_ETH_P_IP)
		return ep_parse_ipv4(data, data_end, off, p);
	if (proto == EP_ETH_P_IPV6)
		return ep_parse_ipv6(data, data_end, off, p);
	return EP_PARSE_NON_IP;
}

/* ---- classification ---------------------------------------------------------------------- */

/* Index of the single set bit of x (x is a power of two): popcount(x - 1), branch-free. */
static __always_inline __u32 ep_bit_index(__u64 x)
{
	x -= 1;
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

static __always_inline __u32 ep_slot(__u32 proto)
{
	switch (proto) {
	case EP_IPPROTO_TCP: return EP_SLOT_TCP;
	case EP_IPPROTO_UDP: return EP_SLOT_UDP;
	case EP_IPPROTO_ICMP: return EP_SLOT_ICMP;
	case EP_IPPROTO_ICMPV6: return EP_SLOT_ICMPV6;
	default: return EP_SLOT_OTHER;
	}
}

/* Per-packet match state. It lives in a per-CPU scratch map rather than on the stack: the
 * bpf_loop callback cannot take map pointers from the caller's stack, and the three class
 * summaries would not fit the 512-byte stack anyway. XDP and TC programs do not nest on a CPU.
 */
struct ep_match {
	__u64 cand[EP_SUMMARY_WORDS];       /* candidate words not yet tried */
	__u64 csum[3][EP_SUMMARY_WORDS];    /* class summary per field: src, dst, l4 */
	__u32 cls[3];                       /* class per field */
	__u32 wid[3];                       /* wildcard vector index per field (with generation) */
	__u32 gen;
	__u32 block;                        /* lowest summary word that may hold candidates */
	__s32 rule;                         /* first matching rule, -1 while none */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_match);
} ep_scratch SEC(".maps");

/* One field's word w: the wildcard vector's word, OR the class's word when the class summary
 * says it is nonzero (only then is the sparse hash consulted). */
static __always_inline __u64 ep_field_word(struct ep_match *m, int f, void *cwords, __u32 block,
					   __u64 bit, __u32 w)
{
	__u64 v = 0;
	__u32 wid = m->wid[f];
	struct ep_bitvec *wv = bpf_map_lookup_elem(&ep_wild, &wid);
	if (wv)
		v = wv->words[w & (EP_WORDS - 1)];
	if (m->csum[f][block] & bit) {
		struct ep_word_key k = { .class_id = m->cls[f], .word = w };
		__u64 *x = bpf_map_lookup_elem(cwords, &k);
		if (x)
			v |= *x;
	}
	return v;
}

/* bpf_loop callback: try the lowest remaining candidate word; stop at the first rule. */
static long ep_match_word(__u32 index, void *arg)
{
	__u32 zero = 0;
	struct ep_match *m = bpf_map_lookup_elem(&ep_scratch, &zero);
	if (!m)
		return 1;
	__u32 b = m->block;
	__u64 c = 0;

	for (int k = 0; k < EP_SUMMARY_WORDS; k++) {
		if (b >= EP_SUMMARY_WORDS)
			return 1;
		c = m->cand[b & (EP_SUMMARY_WORDS - 1)];
		if (c)
			break;
		b++;
	}
	if (!c)
		return 1;
	/* clang knows b < 16 here and drops a mask; hide b from it so the verifier sees one. */
	asm volatile("" : "+r"(b));
	b &= EP_SUMMARY_WORDS - 1;
	m->block = b;
	__u64 bit = c & (~c + 1);
	m->cand[b] = c ^ bit;
	__u32 w = (b << 6) | ep_bit_index(bit);

	__u32 gen = m->gen;
	void *cwords = bpf_map_lookup_elem(&ep_cwords, &gen);
	if (!cwords)
		return 1;
	__u64 acc = ep_field_word(m, 0, cwords, b, bit, w);
	if (!acc)
		return 0;
	acc &= ep_field_word(m, 1, cwords, b, bit, w);
	if (!acc)
		return 0;
	acc &= ep_field_word(m, 2, cwords, b, bit, w);
	if (!acc)
		return 0;
	m->rule = (w << 6) | ep_bit_index(acc & (~acc + 1));
	return 1;
}

static __always_inline void ep_count(void *map, __u32 idx, __u64 len)
{
	struct ep_counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

/* Token bucket per (rule id, source address); true = within the limit. The read-modify-write
 * is not atomic across CPUs: two CPUs refilling the same bucket at once may admit one extra
 * packet each, which a rate limiter tolerates. */
static __always_inline bool ep_rate_ok(const struct ep_rule *r, const struct ep_pkt *p)
{
	struct ep_bucket_key k = { .rule_id = r->rule_id, .family = p->family };
	__builtin_memcpy(k.addr, p->src, 16);
	__u64 now = bpf_ktime_get_ns();
	struct ep_bucket *b = bpf_map_lookup_elem(&ep_buckets, &k);
	if (!b) {
		if (r->burst_nt < EP_NANO)
			return false;
		struct ep_bucket nb = { .tokens_nt = r->burst_nt - EP_NANO, .last_ns = now };
		bpf_map_update_elem(&ep_buckets, &k, &nb, BPF_ANY);
		return true;
	}
	__u64 last = b->last_ns;
	__u64 elapsed = now > last ? now - last : 0;
	__u64 tokens = b->tokens_nt;
	if (elapsed >= r->fill_ns) {
		tokens = r->burst_nt;
	} else {
		tokens += elapsed * r->pps;
		if (tokens > r->burst_nt)
			tokens = r->burst_nt;
	}
	if (now > last)
		b->last_ns = now;
	if (tokens >= EP_NANO) {
		b->tokens_nt = tokens - EP_NANO;
		return true;
	}
	b->tokens_nt = tokens;
	return false;
}

static __always_inline int ep_classify(void *data, void *data_end, __u64 len)
{
	struct ep_pkt p = {};
	int parsed = ep_parse(data, data_end, &p);
	if (parsed == EP_PARSE_NON_IP) {
		ep_count(&ep_stats, EP_STAT_NON_IP, len);
		return EP_PASS;
	}
	if (parsed != EP_PARSE_OK) {
		ep_count(&ep_stats, EP_STAT_MALFORMED, len);
		return EP_DROP;
	}

	/* Read the live generation exactly once: every lookup below uses this value, so one
	 * packet's verdict comes wholly from one rule set. */
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_active, &zero);
	if (!active)
		goto unconfigured;
	__u32 gen = *(volatile __u32 *)active & 1;
	void *lpm = bpf_map_lookup_elem(&ep_lpm, &gen);
	struct ep_match *m = bpf_map_lookup_elem(&ep_scratch, &zero);
	if (!lpm || !m)
		goto unconfigured;

	struct ep_class_ref *ref[3];
	struct ep_lpm_key key = {};
	key.prefixlen = 8 + (p.family == 4 ? 32 : 128);
	key.data[0] = EP_TAG_SRC | p.family;
	__builtin_memcpy(&key.data[1], p.src, 16);
	ref[0] = bpf_map_lookup_elem(lpm, &key);
	key.data[0] = EP_TAG_DST | p.family;
	__builtin_memcpy(&key.data[1], p.dst, 16);
	ref[1] = bpf_map_lookup_elem(lpm, &key);
	__u32 slot = ep_slot(p.proto);
	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 8 + 24;
	key.data[0] = EP_TAG_L4 | slot;
	if (p.port == EP_PORT_NONE) {
		key.data[1] = 1;
	} else {
		key.data[2] = p.port >> 8;
		key.data[3] = p.port & 0xff;
	}
	ref[2] = bpf_map_lookup_elem(lpm, &key);

	__u32 base = gen * EP_WILD_COUNT;
	m->wid[0] = base + (p.family == 4 ? EP_WILD_SRC4 : EP_WILD_SRC6);
	m->wid[1] = base + (p.family == 4 ? EP_WILD_DST4 : EP_WILD_DST6);
	m->wid[2] = base + EP_WILD_L4 + slot;
	struct ep_bitvec *w0 = bpf_map_lookup_elem(&ep_wild, &m->wid[0]);
	struct ep_bitvec *w1 = bpf_map_lookup_elem(&ep_wild, &m->wid[1]);
	struct ep_bitvec *w2 = bpf_map_lookup_elem(&ep_wild, &m->wid[2]);
	/* The compiler stores a tag-only entry for every field, so a lookup never misses. */
	if (!ref[0] || !ref[1] || !ref[2] || !w0 || !w1 || !w2)
		goto unconfigured;

	m->gen = gen;
	m->block = 0;
	m->rule = -1;
	m->cls[0] = ref[0]->class_id;
	m->cls[1] = ref[1]->class_id;
	m->cls[2] = ref[2]->class_id;
	__u64 any = 0;
	for (int i = 0; i < EP_SUMMARY_WORDS; i++) {
		__u64 s0 = ref[0]->summary[i], s1 = ref[1]->summary[i], s2 = ref[2]->summary[i];
		m->csum[0][i] = s0;
		m->csum[1][i] = s1;
		m->csum[2][i] = s2;
		m->cand[i] = (w0->summary[i] | s0) & (w1->summary[i] | s1) & (w2->summary[i] | s2);
		any |= m->cand[i];
	}
	if (any)
		bpf_loop(EP_WORDS, ep_match_word, NULL, 0);

	__s32 rule = m->rule;
	__u32 idx = gen * EP_RULE_SLOTS + (rule >= 0 ? (__u32)rule + 1 : 0);
	struct ep_rule *r = bpf_map_lookup_elem(&ep_rules, &idx);
	if (!r)
		goto unconfigured;
	ep_count(&ep_counters, idx, len);
	switch (r->action) {
	case EP_ACT_ALLOW:
		return EP_PASS;
	case EP_ACT_RATE_LIMIT:
		if (ep_rate_ok(r, &p))
			return EP_PASS;
		ep_count(&ep_stats, EP_STAT_RATE_LIMITED, len);
		return EP_DROP;
	default:
		return EP_DROP;
	}

unconfigured:
	ep_count(&ep_stats, EP_STAT_UNCONFIGURED, len);
	return EP_PASS;
}

#endif
