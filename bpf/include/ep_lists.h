/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Prefix lists that rules name as source or destination (bpf/README.md, "Prefix lists in rules").
 *
 * A list lives in a membership trie of its own per address family (ep_lst4 / ep_lst6: 2
 * ARRAY_OF_MAPS of EP_LIST_SLOTS LPM tries, one slot per list a node holds, whatever generation
 * names it): a whole list is built beside and swapped into its slot by one write, a few prefixes
 * are added or removed in place (an LPM update is atomic for a concurrent lookup). The tries have
 * the blocklist's layout (ep_blocklist.h: the agent writes both with one code); a list entry's
 * value never expires and is not read.
 *
 * A rule set names at most EP_LIST_REFS lists; its list i (in name order) is ep_lref's slot[i].
 * Per generation, ep_lvec holds for each list i the rules naming it as source
 * ((gen * 2 + 0) * EP_LIST_REFS + i) and as destination ((gen * 2 + 1) * EP_LIST_REFS + i), as
 * struct ep_bitvec. The classifier (classifier.h) looks the packet's source up in the lists its
 * generation names as sources (ep_lref.src, a bit per list), the destination likewise, and ORs the
 * vectors of the lists that hold the address into that field's word and summary, beside the
 * prefix classes and the wildcard vector: a rule matches a field by a prefix or by a list.
 * Per packet: nothing when the generation names no list; else one LPM lookup per list named in
 * each field, and per word walked one array read per list holding the address.
 *
 * The shadow union (ep_shadow.h) has its own ep_shadow_lref and ep_shadow_lvec (generation 0) and
 * shares the tries: a list is held once by name.
 */
#ifndef EP_LISTS_H
#define EP_LISTS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "ep_tables.h"
#include "ep_structs.h"
#include "ep_maps.h"
#include "ep_blocklist.h"

#define EP_LIST_REFS  16 /* lists one rule set names (MAX_RULE_SET_PREFIX_LISTS) */
#define EP_LIST_SLOTS 64 /* membership tries held at once: both generations', the shadow union's, one being written */

/* Per generation (ep_lref) or for the shadow union (ep_shadow_lref[0]): which lists it names. */
struct ep_lref {
	__u32 src;                 /* bit i: list i is named as a source (its vector is nonempty) */
	__u32 dst;                 /* bit i: as a destination */
	__u8 slot[EP_LIST_REFS];   /* list i's membership tries: ep_lst4 / ep_lst6 [slot[i]] */
};

/* Per list slot: the IPv4 membership trie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_LIST_SLOTS);
	__type(key, __u32);
	__array(values, struct ep_blk4_inner);
} ep_lst4 SEC(".maps");

/* Per list slot: the IPv6 membership trie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EP_LIST_SLOTS);
	__type(key, __u32);
	__array(values, struct ep_blk6_inner);
} ep_lst6 SEC(".maps");

/* Per generation: the lists its rules name. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS);
	__type(key, __u32);
	__type(value, struct ep_lref);
} ep_lref SEC(".maps");

/* Per generation, field and list: the rules naming the list there. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_GENERATIONS * 2 * EP_LIST_REFS);
	__type(key, __u32);
	__type(value, struct ep_bitvec);
} ep_lvec SEC(".maps");

/* [0]: the prefix lists the union's rules name (the tries are shared). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_lref);
} ep_shadow_lref SEC(".maps");

/* The union's list vectors: field * EP_LIST_REFS + list (ep_lvec's layout for generation 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * EP_LIST_REFS);
	__type(key, __u32);
	__type(value, struct ep_bitvec);
} ep_shadow_lvec SEC(".maps");

/* ep_match.lgen of the shadow union's lists. */
#define EP_LIST_SHADOW 2

/* bpf_loop callback, step i = list: when the rule set names the list in field lgen >> 8 and its
 * trie holds the address in lkey, sets the list's bit in lhit[field] and ORs its vector's summary
 * into lsum[field]. Stops after the field's last list. Verified once, whatever the lists (a loop
 * in the caller would be walked by the verifier path by path). */
static long ep_list_step(__u32 i, void *arg)
{
	__u32 zero = 0;
	struct ep_match *m = bpf_map_lookup_elem(&ep_scratch, &zero);
	if (!m)
		return 1;
	__u32 lgen = m->lgen & 0xff, f = (m->lgen >> 8) & 1, n = i & (EP_LIST_REFS - 1);
	struct ep_lref *lr = lgen == EP_LIST_SHADOW ? bpf_map_lookup_elem(&ep_shadow_lref, &zero) : bpf_map_lookup_elem(&ep_lref, &lgen);
	if (!lr)
		return 1;
	__u32 mask = f ? lr->dst : lr->src;
	long last = !(mask >> n >> 1);
	if (!(mask & (1u << n)))
		return last;
	__u32 slot = lr->slot[n] & (EP_LIST_SLOTS - 1);
	void *trie = m->lkey.prefixlen == 32 ? bpf_map_lookup_elem(&ep_lst4, &slot) : bpf_map_lookup_elem(&ep_lst6, &slot);
	/* The IPv4 key is the IPv6 key's first 8 bytes (prefixlen, then 4 address bytes). */
	if (!trie || !bpf_map_lookup_elem(trie, &m->lkey))
		return last;
	m->lhit[f] |= 1u << n;
	__u32 k = m->lbase + f * EP_LIST_REFS + n;
	struct ep_bitvec *lv = lgen == EP_LIST_SHADOW ? bpf_map_lookup_elem(&ep_shadow_lvec, &k) : bpf_map_lookup_elem(&ep_lvec, &k);
	if (lv)
		for (int w = 0; w < EP_SUMMARY_WORDS; w++)
			m->lsum[f][w] |= lv->summary[w];
	return last;
}

/* For classification of `p` against generation `gen` (or the shadow union's tables: `shadow`):
 * which of the lists it names hold the source and the destination (ep_scratch's lhit), and the OR
 * of those lists' vector summaries per field (lsum). Returns lhit[0] | lhit[1]: 0 when no list
 * holds either address, or the rule set names none. A global function: verified once, its frame
 * apart from the classifier's. */
__noinline __u32 ep_lists_match(const struct ep_pkt *p, __u32 gen, __u32 shadow)
{
	__u32 zero = 0;
	if (!p)
		return 0;
	struct ep_match *m = bpf_map_lookup_elem(&ep_scratch, &zero);
	if (!m)
		return 0;
	m->lhit[0] = 0;
	m->lhit[1] = 0;
	__u32 lgen = shadow ? EP_LIST_SHADOW : gen & 1;
	struct ep_lref *lr = shadow ? bpf_map_lookup_elem(&ep_shadow_lref, &zero) : bpf_map_lookup_elem(&ep_lref, &lgen);
	if (!lr || !(lr->src | lr->dst))
		return 0;
	m->lbase = shadow ? 0 : (gen & 1) * 2 * EP_LIST_REFS;
	for (int w = 0; w < EP_SUMMARY_WORDS; w++) {
		m->lsum[0][w] = 0;
		m->lsum[1][w] = 0;
	}
	m->lkey.prefixlen = p->family == 4 ? 32 : 128;
	if (lr->src) {
		__builtin_memcpy(m->lkey.addr, p->src, 16);
		m->lgen = lgen;
		bpf_loop(EP_LIST_REFS, ep_list_step, NULL, 0);
	}
	if (lr->dst) {
		__builtin_memcpy(m->lkey.addr, p->dst, 16);
		m->lgen = lgen | 1 << 8; /* the destination's field */
		bpf_loop(EP_LIST_REFS, ep_list_step, NULL, 0);
	}
	return m->lhit[0] | m->lhit[1];
}

#endif /* EP_LISTS_H */
