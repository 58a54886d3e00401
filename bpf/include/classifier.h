/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The edgeplane classifier, shared by the XDP (uplink) and TC (workload) programs
 * (ep_conntrack.h calls it for packets with no connection entry, and for the cut re-check).
 * Parse (ep_parsing.h) -> three field lookups (source prefix, destination prefix,
 * protocol+port) -> sparse two-level bit-vector AND -> first matching rule -> action, counters,
 * token bucket. The maps are in ep_maps.h, the table layouts in ep_tables.h, packet-side structs
 * in ep_structs.h. bpf/README.md documents the semantics and the table layout.
 */
#ifndef EP_CLASSIFIER_H
#define EP_CLASSIFIER_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "ep_tables.h"
#include "ep_structs.h"
#include "ep_maps.h"
#include "ep_parsing.h"

/* Index of the single set bit of x (x is a power of two): popcount(x - 1), branch-free. */
static __always_inline __u32 ep_bit_index(__u64 x)
{
	x -= 1;
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

/* After ep_bit_index, which it uses. */
#include "ep_lists.h"

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

/* One field's word w: the wildcard vector's word (from `wild`: ep_wild, or the shadow
 * candidate's), OR the class's word when the class summary says it is nonzero (only then is the
 * sparse hash consulted), OR for an address field the words of the prefix lists holding the
 * address (from `lvec`: ep_lvec or the union's; only where their summaries say so). */
static __always_inline __u64 ep_field_word(struct ep_match *m, int f, void *wild, void *cwords, void *lvec,
					   __u32 block, __u64 bit, __u32 w)
{
	__u64 v = 0;
	__u32 wid = m->wid[f];
	struct ep_bitvec *wv = bpf_map_lookup_elem(wild, &wid);
	if (wv)
		v = wv->words[w & (EP_WORDS - 1)];
	if (m->csum[f][block] & bit) {
		struct ep_word_key k = { .class_id = m->cls[f], .word = w };
		__u64 *x = bpf_map_lookup_elem(cwords, &k);
		if (x)
			v |= *x;
	}
	if (f < 2 && m->lhit[f] && (m->lsum[f][block & (EP_SUMMARY_WORDS - 1)] & bit)) {
		__u32 hits = m->lhit[f];
		for (int n = 0; n < EP_LIST_REFS && hits; n++) {
			__u32 low = hits & (~hits + 1);
			hits ^= low;
			__u32 k = m->lbase + f * EP_LIST_REFS + ep_bit_index(low);
			struct ep_bitvec *lv = bpf_map_lookup_elem(lvec, &k);
			if (lv)
				v |= lv->words[w & (EP_WORDS - 1)];
		}
	}
	return v;
}

/* A union walk's step (ep_shadow.h) at word w whose matching rules are `acc`: the first rule of
 * each rule set it still wants, by the membership masks in `member`. 1 when it wants no more. */
static __always_inline long ep_union_found(struct ep_match *m, void *member, __u32 w, __u64 acc)
{
	__u32 zero = 0;
	struct ep_shadow_member *mb = bpf_map_lookup_elem(member, &zero);
	if (!mb)
		return 1;
	__u32 i = w & (EP_WORDS - 1);
	__u64 e = acc & mb->enforced[i];
	__u64 c = acc & mb->candidate[i];
	if ((m->want & EP_WANT_ENFORCED) && e) {
		m->rule = (w << 6) | ep_bit_index(e & (~e + 1));
		m->want &= ~EP_WANT_ENFORCED;
	}
	if ((m->want & EP_WANT_CANDIDATE) && c) {
		m->crule = (w << 6) | ep_bit_index(c & (~c + 1));
		m->want &= ~EP_WANT_CANDIDATE;
	}
	return m->want == 0;
}

/* The body of a bpf_loop callback: try the lowest remaining candidate word; stop at the first
 * rule. `wild` and `cwords_outer` are the tables classified against (ep_wild and ep_cwords, or
 * the shadow union's, ep_shadow.h): always-inline with constant maps, so each callback below
 * looks up fixed maps (a callback cannot take map pointers from its caller's stack). `member`:
 * NULL for a rule set's own tables (the first matching rule ends the walk), the union's
 * membership masks for a union walk (ep_union_found: it ends when each wanted set has its rule). */
static __always_inline long ep_match_word_in(void *wild, void *cwords_outer, void *lvec, void *member)
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
	void *cwords = bpf_map_lookup_elem(cwords_outer, &gen);
	if (!cwords)
		return 1;
	__u64 acc = ep_field_word(m, 0, wild, cwords, lvec, b, bit, w);
	if (!acc)
		return 0;
	acc &= ep_field_word(m, 1, wild, cwords, lvec, b, bit, w);
	if (!acc)
		return 0;
	acc &= ep_field_word(m, 2, wild, cwords, lvec, b, bit, w);
	if (!acc)
		return 0;
	if (member)
		return ep_union_found(m, member, w, acc);
	m->rule = (w << 6) | ep_bit_index(acc & (~acc + 1));
	return 1;
}

/* bpf_loop callback of the enforced rule sets (ep_rule_slot). */
static long ep_match_word(__u32 index, void *arg)
{
	return ep_match_word_in(&ep_wild, &ep_cwords, &ep_lvec, NULL);
}

static __always_inline void ep_count(void *map, __u32 idx, __u64 len)
{
	struct ep_counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

/* Token bucket per (rule id, source address); 1 = within the limit. The read-modify-write
 * is not atomic across CPUs: two CPUs refilling the same bucket at once may admit one extra
 * packet each, which a rate limiter tolerates. A global function: its key and new bucket stay off
 * the programs' main frame, and it is verified once (bpf/README.md, "Verifier cost"). */
__noinline int ep_rate_ok(const struct ep_rule *r, const struct ep_pkt *p)
{
	if (!r || !p)
		return false;
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

/* The LPM key of field `f` of a packet (0 SRC, 1 DST, 2 L4: bpf/README.md, "Classification"),
 * and (returned) the index of that field's wildcard vector in generation `gen`. The compiler
 * stores a tag-only entry for every field, so a lookup of the key never misses in tables it
 * wrote. */
static __always_inline __u32 ep_field_key(const struct ep_pkt *p, __u32 gen, int f, struct ep_lpm_key *key)
{
	__u32 family = p->family;
	__u32 base = gen * EP_WILD_COUNT;
	__builtin_memset(key, 0, sizeof(*key));
	if (f < 2) {
		key->prefixlen = 8 + (family == 4 ? 32 : 128);
		key->data[0] = (f == 0 ? EP_TAG_SRC : EP_TAG_DST) | family;
		__builtin_memcpy(&key->data[1], f == 0 ? p->src : p->dst, 16);
		if (f == 0)
			return base + (family == 4 ? EP_WILD_SRC4 : EP_WILD_SRC6);
		return base + (family == 4 ? EP_WILD_DST4 : EP_WILD_DST6);
	}
	__u32 slot = ep_slot(p->proto);
	__u32 port = p->port;
	key->prefixlen = 8 + 24;
	key->data[0] = EP_TAG_L4 | slot;
	if (port == EP_PORT_NONE) {
		key->data[1] = 1;
	} else {
		key->data[2] = port >> 8;
		key->data[3] = port & 0xff;
	}
	return base + EP_WILD_L4 + slot;
}

/* Classification of one parsed packet against slot `gen` of the tables `lpm_outer` (an
 * ARRAY_OF_MAPS of LPM tries), `wild` (wildcard vectors at gen * EP_WILD_COUNT) and the class
 * words that `match_word` (a bpf_loop callback built on ep_match_word_in) reads: three LPM
 * lookups, then the bit-vector AND in a bpf_loop. Always inlined into a subprogram that names
 * its maps as constants: ep_rule_slot (the enforced generations) and the shadow union's walks
 * (ep_shadow.h); one source, one copy of the code per table set. `want`: 0 for a rule set's own
 * tables, EP_WANT_* for a union walk (its results in ep_scratch: rule and crule).
 * Returns gen * EP_RULE_SLOTS + the slot of the first matching rule (rule i: i + 1, the default
 * action: 0), or -1 if the tables are missing. Counts nothing. */
static __always_inline int ep_rule_slot_in(const struct ep_pkt *p, __u32 gen, void *lpm_outer, void *wild,
					   void *lvec, __u32 shadow, long (*match_word)(__u32, void *), __u32 want)
{
	__u32 zero = 0;
	void *lpm = bpf_map_lookup_elem(lpm_outer, &gen);
	struct ep_match *m = bpf_map_lookup_elem(&ep_scratch, &zero);
	if (!lpm || !m)
		return -1;

	struct ep_class_ref *ref[3];
	struct ep_lpm_key key;
	for (int f = 0; f < 3; f++) {
		m->wid[f] = ep_field_key(p, gen, f, &key);
		ref[f] = bpf_map_lookup_elem(lpm, &key);
	}
	struct ep_bitvec *w0 = bpf_map_lookup_elem(wild, &m->wid[0]);
	struct ep_bitvec *w1 = bpf_map_lookup_elem(wild, &m->wid[1]);
	struct ep_bitvec *w2 = bpf_map_lookup_elem(wild, &m->wid[2]);
	if (!ref[0] || !ref[1] || !ref[2] || !w0 || !w1 || !w2)
		return -1;

	m->gen = gen;
	m->block = 0;
	m->rule = -1;
	m->crule = -1;
	m->want = want;
	m->cls[0] = ref[0]->class_id;
	m->cls[1] = ref[1]->class_id;
	m->cls[2] = ref[2]->class_id;
	/* Prefix lists (ep_lists.h): which of the generation's lists hold the addresses. */
	__u32 lists = ep_lists_match(p, gen, shadow);
	__u64 any = 0;
	for (int i = 0; i < EP_SUMMARY_WORDS; i++) {
		__u64 s0 = ref[0]->summary[i], s1 = ref[1]->summary[i], s2 = ref[2]->summary[i];
		m->csum[0][i] = s0;
		m->csum[1][i] = s1;
		m->csum[2][i] = s2;
		__u64 a0 = w0->summary[i] | s0, a1 = w1->summary[i] | s1;
		if (lists) {
			a0 |= m->lsum[0][i];
			a1 |= m->lsum[1][i];
		}
		m->cand[i] = a0 & a1 & (w2->summary[i] | s2);
		any |= m->cand[i];
	}
	if (any)
		bpf_loop(EP_WORDS, match_word, NULL, 0);

	__s32 rule = m->rule;
	return gen * EP_RULE_SLOTS + (rule >= 0 ? (__u32)rule + 1 : 0);
}

/* Classification of a small generation (EP_GEN_F_SMALL: at most EP_SMALL_RULES rules, none naming
 * a prefix list): every rule is a bit of the first vector word, so per field the class's `low`
 * bits OR the wildcard vector's first word, ANDed over the three fields, hold every matching rule;
 * the lowest is the first. The same answer as ep_rule_slot_in over the same tables (the class's
 * words and the wildcard's other words hold no rule), without the summaries, the scratch and the
 * word walk, which for a new flow's packet are a dozen cold cache lines (BENCHMARKS.md, "A floor
 * for goal (a)"). Returns what ep_rule_slot_in returns. */
static __always_inline int ep_rule_slot_small(const struct ep_pkt *p, __u32 gen)
{
	void *lpm = bpf_map_lookup_elem(&ep_lpm, &gen);
	if (!lpm)
		return -1;
	__u64 acc = (1ULL << EP_SMALL_RULES) - 1; /* the bits `low` holds */
	for (int f = 0; f < 3; f++) {
		struct ep_lpm_key key;
		__u32 wid = ep_field_key(p, gen, f, &key);
		struct ep_class_ref *ref = bpf_map_lookup_elem(lpm, &key);
		struct ep_bitvec *wild = bpf_map_lookup_elem(&ep_wild, &wid);
		if (!ref || !wild)
			return -1;
		acc &= ref->low | wild->words[0];
	}
	return gen * EP_RULE_SLOTS + (acc ? ep_bit_index(acc & (~acc + 1)) + 1 : 0);
}

/* Field `f` of a scan (struct ep_scan): the `low` bits of the first entry matching `key`, 0 when
 * none does (tables the compiler wrote always match). */
static __always_inline __u32 ep_scan_field(const struct ep_scan *s, int f, __u32 key)
{
	__u32 n = s->count[f];
	for (__u32 i = 0; i < EP_SCAN_ENTRIES; i++) {
		if (i >= n)
			break;
		const struct ep_scan_entry *e = &s->entries[f][i];
		if ((key & e->mask) == e->value)
			return e->low;
	}
	return 0;
}

/* Classification of an IPv4 packet in a generation with EP_GEN_F_SCAN: each field's prefixes
 * scanned (struct ep_scan) instead of looked up in the LPM trie, whose lookups were most of a
 * small generation's classification (BENCHMARKS.md, "Small rule sets scanned"). The same answer
 * as ep_rule_slot_small: each scan finds the entry the trie would, with the wildcard word
 * already in its bits. A global function of its own: inlined, it grew ep_rule_slot's frame past
 * what the programs' deepest call chain leaves (512 bytes in all). Returns what ep_rule_slot_in
 * returns. */
__noinline int ep_rule_slot_scan(const struct ep_pkt *p, __u32 gen)
{
	if (!p)
		return -1;
	gen &= 1;
	const struct ep_scan *s = bpf_map_lookup_elem(&ep_scan, &gen);
	if (!s)
		return -1;
	/* Loaded in place (src and dst are 4-byte aligned in struct ep_pkt): the programs' call
	 * chains through here have no stack to spare. */
	__u32 port = p->port;
	__u32 l4 = (ep_slot(p->proto) << 24) | (port == EP_PORT_NONE ? 1 << 16 : port);
	__u32 acc = ep_scan_field(s, 0, bpf_ntohl(*(const __u32 *)p->src));
	if (acc)
		acc &= ep_scan_field(s, 1, bpf_ntohl(*(const __u32 *)p->dst));
	if (acc)
		acc &= ep_scan_field(s, 2, l4);
	return gen * EP_RULE_SLOTS + (acc ? ep_bit_index(acc & (~acc + 1)) + 1 : 0);
}

/* Classification against enforced generation `gen` (0 or 1): ep_rule_slot_scan for an IPv4
 * packet when the generation has EP_GEN_F_SCAN, ep_rule_slot_small when it is small, else
 * ep_rule_slot_in over ep_lpm, ep_wild and ep_cwords. A global function: the programs call it
 * twice per packet (conntrack's cut re-check classifies an entry's tuple), and the verifier
 * checks it once rather than at each call site with each caller's state (bpf/README.md,
 * "Verifier cost").
 * Returns the ep_rules index of the first matching rule (or of the default action), or -1 if
 * the generation holds no tables (unconfigured). Counts nothing. */
__noinline int ep_rule_slot(const struct ep_pkt *p, __u32 gen)
{
	if (!p)
		return -1;
	gen &= 1;
	struct ep_gen_cfg *gc = bpf_map_lookup_elem(&ep_gen_cfg, &gen);
	__u32 flags = gc ? gc->flags : 0;
	if ((flags & EP_GEN_F_SCAN) && p->family == 4)
		return ep_rule_slot_scan(p, gen);
	if (flags & EP_GEN_F_SMALL)
		return ep_rule_slot_small(p, gen);
	return ep_rule_slot_in(p, gen, &ep_lpm, &ep_wild, &ep_lvec, 0, ep_match_word, 0);
}

/* The action of rule slot `idx` (from ep_rule_slot) on a packet with no connection entry: count
 * it under its rule, then allow, deny or rate-limit. *track is set when the rule passes the
 * packet and carries EP_RULE_F_TRACK, *rule_id to the rule's id. */
static __always_inline int ep_act(__u32 idx, struct ep_pkt *p, __u64 len, bool *track, __u32 *rule_id)
{
	struct ep_rule *r = bpf_map_lookup_elem(&ep_rules, &idx);
	if (!r) {
		ep_count(&ep_stats, EP_STAT_UNCONFIGURED, len);
		return EP_PASS;
	}
	ep_count(&ep_counters, idx, len);
	__u32 action = r->action;
	*rule_id = r->rule_id;
	*track = (action & EP_RULE_F_TRACK) != 0;
	switch (action & EP_ACT_MASK) {
	case EP_ACT_ALLOW:
		return EP_PASS;
	case EP_ACT_RATE_LIMIT:
		if (ep_rate_ok(r, p))
			return EP_PASS;
		ep_count(&ep_stats, EP_STAT_RATE_LIMITED, len);
		*track = false;
		return EP_DROP;
	default:
		*track = false;
		return EP_DROP;
	}
}

#endif
