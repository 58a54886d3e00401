/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shadow classification (issue 18; bpf/README.md, "Shadow classification"): a candidate rule set
 * held beside the enforced one. Every packet the enforced rule set classifies (no connection
 * entry, not bypassed, not blocklisted) is classified by the candidate too; the enforced verdict
 * decides, the candidate's is only counted: per candidate rule, the packets both classified, and
 * the packets whose verdicts differ (would-be drops, would-be allows) with a ring of samples.
 *
 * One walk for both (bpf/README.md, "One walk for both rule sets"): the candidate's tables are
 * those of the **union** of the enforced rule set and the candidate, as the agent merged them (a
 * rule of both, same match, is one union rule): ep_shadow_member says which union rules belong to
 * which set, ep_shadow_slots maps a union rule to its slot in each. The first union rule of each
 * set that matches is that set's first match, so one classification (three LPM lookups and one
 * bit-vector walk) yields both verdicts. ep_shadow[0].epoch names the enforced generation the
 * union was built against: a packet of that generation takes both from the union walk
 * (ep_shadow_both); after an apply (a new epoch) the enforced verdict comes from the generation's
 * own tables and the union walk looks for the candidate's rule alone, as two classifications.
 *
 * They are not a third slot of the generation maps: the idle generation is the incremental
 * writer's, the background bring-up's and an instant rollback's, and growing the generation maps
 * would change every one of them (an upgrade copies each changed map), where these maps are only
 * added. ep_shadow[0].flags says whether a candidate is set: without one a packet pays that one
 * array lookup and nothing else.
 *
 * Layouts: ep_tables.h (struct ep_shadow_cfg, ep_shadow_sample, enum ep_shadow_stat); the agent
 * side is services/node-agent/src/datapath/shadow-tables.ts.
 */
#ifndef EP_SHADOW_H
#define EP_SHADOW_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "ep_tables.h"
#include "ep_structs.h"
#include "ep_maps.h"
#include "classifier.h"

/* [0]: struct ep_shadow_cfg; EP_SHADOW_F_ON in flags when a candidate is set. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_shadow_cfg);
} ep_shadow SEC(".maps");

/* The union's LPM trie of all three fields (slot 0), as ep_lpm's. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ep_lpm_inner);
} ep_shadow_lpm SEC(".maps");

/* The union's sparse class words (slot 0), as ep_cwords'. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ep_cwords_inner);
} ep_shadow_cwords SEC(".maps");

/* The union's wildcard vectors, index enum ep_wild. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_WILD_COUNT);
	__type(key, __u32);
	__type(value, struct ep_bitvec);
} ep_shadow_wild SEC(".maps");

/* Union rule -> its slot in the enforced rule set and in the candidate (struct ep_shadow_slot). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_MAX_RULES);
	__type(key, __u32);
	__type(value, struct ep_shadow_slot);
} ep_shadow_slots SEC(".maps");

/* [0]: which union rules are the enforced rule set's and which the candidate's. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_shadow_member);
} ep_shadow_member SEC(".maps");


/* The candidate's actions, index 0 (default) or rule + 1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_rule);
} ep_shadow_rules SEC(".maps");

/* Per-CPU packets and bytes the candidate's rules would have counted, indexed as ep_shadow_rules. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_shadow_counters SEC(".maps");

/* Per-CPU shadow counts, indexed by enum ep_shadow_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_SHADOW_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct ep_counter);
} ep_shadow_stats SEC(".maps");

/* Per CPU, a ring of the newest EP_SHADOW_SAMPLES packets whose verdicts differed (no atomics:
 * XDP and TC programs do not nest on a CPU, so a slot is never written by two at once). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EP_SHADOW_SAMPLES);
	__type(key, __u32);
	__type(value, struct ep_shadow_sample);
} ep_shadow_samples SEC(".maps");

/* bpf_loop callback of the union walk. */
static long ep_shadow_match_word(__u32 index, void *arg)
{
	return ep_match_word_in(&ep_shadow_wild, &ep_shadow_cwords, &ep_shadow_lvec, &ep_shadow_member);
}

/* Union rule u's slot in the enforced rule set or the candidate; no rule (u < 0): the default, 0. */
static __always_inline __u32 ep_shadow_slot_of(__s32 u, bool candidate)
{
	if (u < 0)
		return 0;
	__u32 k = u;
	struct ep_shadow_slot *s = bpf_map_lookup_elem(&ep_shadow_slots, &k);
	if (!s)
		return 0;
	return candidate ? s->candidate : s->enforced;
}

/* Both classifications in one union walk, for a packet of enforced generation `gen` when the
 * union was built against it (ep_shadow_mode). Returns the enforced rule set's ep_rules index, as
 * ep_rule_slot would, and leaves the candidate's union rule in ep_scratch's crule; -1 if the
 * union's tables are missing. A global function (verified once). */
__noinline int ep_shadow_both(const struct ep_pkt *p, __u32 gen)
{
	__u32 zero = 0;
	if (!p)
		return -1;
	if (ep_rule_slot_in(p, 0, &ep_shadow_lpm, &ep_shadow_wild, &ep_shadow_lvec, 1, ep_shadow_match_word, EP_WANT_ENFORCED | EP_WANT_CANDIDATE) < 0)
		return -1;
	struct ep_match *m = bpf_map_lookup_elem(&ep_scratch, &zero);
	if (!m)
		return -1;
	return (gen & 1) * EP_RULE_SLOTS + ep_shadow_slot_of(m->rule, false);
}

enum ep_shadow_mode { EP_SHADOW_OFF, EP_SHADOW_TWO /* two classifications */, EP_SHADOW_ONE /* one union walk */ };

/* Whether a candidate is set, and whether the union holds the enforced rule set of `epoch` (the
 * packet's generation's): one array lookup. */
static __always_inline int ep_shadow_mode(__u32 epoch)
{
	__u32 zero = 0;
	struct ep_shadow_cfg *cfg = bpf_map_lookup_elem(&ep_shadow, &zero);
	if (!cfg || !(cfg->flags & EP_SHADOW_F_ON))
		return EP_SHADOW_OFF;
	return cfg->epoch != 0 && cfg->epoch == epoch ? EP_SHADOW_ONE : EP_SHADOW_TWO;
}

/* Whether a rule's action passes a packet: allow, and rate_limit as its action (the candidate
 * consumes no tokens, and the enforced rule set's bucket is not the rule set's verdict). An
 * unknown action drops, as in ep_act. */
static __always_inline bool ep_shadow_passes(__u32 action)
{
	__u32 a = action & EP_ACT_MASK;
	return a == EP_ACT_ALLOW || a == EP_ACT_RATE_LIMIT;
}

/* Writes a sample into this CPU's ring. */
static __always_inline void ep_shadow_sample(const struct ep_pkt *p, __u8 verdict, __u32 enforced, __u32 candidate,
					     __u64 len)
{
	__u32 k = EP_SHADOW_STAT_SAMPLED;
	struct ep_counter *cursor = bpf_map_lookup_elem(&ep_shadow_stats, &k);
	if (!cursor)
		return;
	__u32 i = cursor->packets & (EP_SHADOW_SAMPLES - 1);
	cursor->packets += 1;
	cursor->bytes += len;
	struct ep_shadow_sample *s = bpf_map_lookup_elem(&ep_shadow_samples, &i);
	if (!s)
		return;
	s->ns = bpf_ktime_get_ns();
	s->enforced_rule_id = enforced;
	s->candidate_rule_id = candidate;
	s->family = p->family;
	s->proto = p->proto;
	s->verdict = verdict;
	s->pad = 0;
	s->port = p->port;
	__builtin_memcpy(s->src, p->src, 16);
	__builtin_memcpy(s->dst, p->dst, 16);
}

/* Counts the candidate's verdict on `p`, after the enforced rule set gave it ep_rules slot
 * `enforced_slot`: with `one`, the candidate's union rule the walk already found (ep_shadow_both
 * left it in ep_scratch), else it walks the union for the candidate's rule alone. Counts the
 * candidate's slot, and AGREED when the two verdicts are the same, else WOULD_DROP or WOULD_ALLOW
 * and a sample (one stat per packet: enum ep_shadow_stat). Returns 1 when they differ, else 0.
 * Changes nothing the enforced verdict depends on (it reuses ep_scratch, which the enforced
 * classification is done with). A global function: the verifier checks it once per program, not
 * with each caller's state (bpf/README.md, "Shadow classification", verifier). */
__noinline int ep_shadow_classify(const struct ep_pkt *p, __u32 enforced_slot, __u64 len, int one)
{
	__u32 zero = 0;
	if (!p)
		return 0;
	struct ep_rule *er = bpf_map_lookup_elem(&ep_rules, &enforced_slot);
	if (!er)
		return 0;
	if (!one && ep_rule_slot_in(p, 0, &ep_shadow_lpm, &ep_shadow_wild, &ep_shadow_lvec, 1, ep_shadow_match_word, EP_WANT_CANDIDATE) < 0)
		return 0;
	struct ep_match *m = bpf_map_lookup_elem(&ep_scratch, &zero);
	if (!m)
		return 0;
	__u32 idx = ep_shadow_slot_of(m->crule, true);
	struct ep_rule *cr = bpf_map_lookup_elem(&ep_shadow_rules, &idx);
	if (!cr)
		return 0;
	ep_count(&ep_shadow_counters, idx, len);
	bool enforced_pass = ep_shadow_passes(er->action);
	if (enforced_pass == ep_shadow_passes(cr->action)) {
		ep_count(&ep_shadow_stats, EP_SHADOW_STAT_AGREED, len);
		return 0;
	}
	ep_count(&ep_shadow_stats, enforced_pass ? EP_SHADOW_STAT_WOULD_DROP : EP_SHADOW_STAT_WOULD_ALLOW, len);
	ep_shadow_sample(p, enforced_pass ? EP_SHADOW_WOULD_DROP : EP_SHADOW_WOULD_ALLOW, er->rule_id, cr->rule_id, len);
	return 1;
}

#endif
