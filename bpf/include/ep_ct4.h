/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The IPv4 flow table (CONNTRACK.md, "The IPv4 table"; layout 6): an IPv4 TCP or UDP flow without
 * NAT lives in one 64-byte line of ep_ct4, looked up before ep_ct. Open addressing in an ARRAY map:
 * a flow's hash gives its home slot and its tag; it sits in one of the EP_CT4_PROBES slots from
 * its home, and a lookup walks them until it finds its tag and key or an EMPTY slot (one that never
 * held a flow, so none was ever placed past it). A deleted or expired flow's slot is never made
 * EMPTY again (DEAD, or left live and expired): that would hide the flows placed past it. A new
 * flow takes the first free slot of its window (EMPTY, DEAD or expired) by compare-and-swap of the
 * tag to its busy tag, writes the line, then publishes its live tag; a window without a free slot
 * sends it to ep_ct as before (the caller's ep_ct_create), so a full ep_ct4 costs speed, never a
 * flow. Why a table of our own: BENCHMARKS.md, "A flow in one line".
 *
 * Included by ep_conntrack.h, whose state machine, timeouts, counters and cut re-check it uses.
 */
#ifndef EP_CT4_H
#define EP_CT4_H

/* Whether the flow of packet `p` may live in ep_ct4: IPv4 TCP or UDP (a load-balanced flow's
 * entries, which carry NAT, never do: ep_lb_new_flow creates them in ep_ct). */
#define ep_ct4_flow(p) ((p)->family == 4 && (p)->ct == EP_CTK_FLOW)

/* ep_ct4_create's outcomes. */
enum ep_ct4_made {
	EP_CT4_FULL = -1,   /* no free slot in the window (or lost to another CPU): create in ep_ct */
	EP_CT4_NOTHING = 0, /* the packet creates no entry (a TCP RST) */
	EP_CT4_CREATED = 1,
	EP_CT4_EXISTS = 2,  /* the flow has a live entry, or another CPU is writing it */
};

/* ep_ct4_packet's `how`: these flags. */
#define EP_CT4_HOW_CUT     0x2 /* the generation cuts flows it denies (EP_GEN_F_CUT) */
#define EP_CT4_HOW_POLICY  0x4 /* a policy hook (the epoch is checked and set), not uplink egress */
#define EP_CT4_HOW_CHECKED 0x8 /* the cut re-check kept the flow */
/* ep_ct4_packet's answer when the cut re-check must run first: this, or'ed with the entry's flags. */
#define EP_CT4_RECHECK 0x100

/* BPF_STX | BPF_ATOMIC | BPF_W, imm BPF_CMPXCHG, dst r1, src r2: *p becomes `new` if it holds
 * `old`; returns what it held. A full barrier. Written as bytes: clang 14 assembles no cmpxchg
 * for the default CPU, and with -mcpu=v3 the programs exceed the verifier's stack
 * (BENCHMARKS.md, "A flow in one line"); the kernel takes the instruction from any object. */
static __always_inline __u32 ep_cas32(__u32 *p, __u32 old, __u32 new)
{
	register __u64 r0 asm("r0") = old;
	register __u32 *r1 asm("r1") = p;
	register __u64 r2 asm("r2") = new;
	asm volatile(".byte 0xc3, 0x21, 0, 0, 0xf1, 0, 0, 0" : "+r"(r0) : "r"(r1), "r"(r2) : "memory");
	return (__u32)r0;
}

/* A flow of ep_ct4 as its lookups need it: its key as two words (the slot's a, b and ap, bp,
 * proto read as little-endian words), its home slot and its tags. */
struct ep_ct4_ref {
	__u64 ab;
	__u64 rest;
	__u32 home;
	__u32 busy; /* the hash's high bits, low two bits set (never EMPTY or DEAD), EP_CT4_LIVE clear */
};

/* Fills `r` from key `k` (an IPv4 TCP/UDP key): the hash is splitmix64's finalizer over the two
 * words; the slot count is a power of two (the agent's). Agrees with ct4Hash (ct4-table.ts). */
static __always_inline void ep_ct4_ref(const struct ep_ct_key *k, struct ep_ct4_ref *r)
{
	__u32 a, b;
	__builtin_memcpy(&a, k->src, 4);
	__builtin_memcpy(&b, k->dst, 4);
	r->ab = ((__u64)b << 32) | a;
	r->rest = ((__u64)k->proto << 32) | ((__u32)k->dport << 16) | k->sport;
	__u64 x = r->ab * 0x9E3779B97F4A7C15ULL;
	x = (x ^ r->rest) * 0x9E3779B97F4A7C15ULL;
	x ^= x >> 30;
	x *= 0xBF58476D1CE4E5B9ULL;
	x ^= x >> 27;
	x *= 0x94D049BB133111EBULL;
	x ^= x >> 31;
	r->home = (__u32)x & (((const struct bpf_map *)&ep_ct4)->max_entries - 1);
	r->busy = ((__u32)(x >> 32) & ~EP_CT4_LIVE) | 3;
}

static __always_inline bool ep_ct4_same(const struct ep_ct4_slot *s, const struct ep_ct4_ref *r)
{
	return *(const __u64 *)&s->a == r->ab && (*(const __u64 *)&s->ap & 0xffffffffffULL) == r->rest;
}

/* The slot holding flow `r` (its live tag and key), expired or not; NULL when it has none. */
static __always_inline struct ep_ct4_slot *ep_ct4_find(const struct ep_ct4_ref *r)
{
	__u32 mask = ((const struct bpf_map *)&ep_ct4)->max_entries - 1;
	for (__u32 i = 0; i < EP_CT4_PROBES; i++) {
		__u32 idx = (r->home + i) & mask;
		struct ep_ct4_slot *s = bpf_map_lookup_elem(&ep_ct4, &idx);
		if (!s)
			return NULL;
		__u32 tag = *(volatile __u32 *)&s->tag;
		if (tag == EP_CT4_EMPTY)
			return NULL;
		if (tag == (r->busy | EP_CT4_LIVE) && ep_ct4_same(s, r))
			return s;
	}
	return NULL;
}

/* Deletes the flow in slot `s` (live tag `live`): DEAD, unless another CPU changed it first.
 * Returns true when this call deleted it. */
static __always_inline bool ep_ct4_kill(struct ep_ct4_slot *s, __u32 live)
{
	return ep_cas32(&s->tag, live, EP_CT4_DEAD) == live;
}

/* The live entry of key `k` in ep_ct4, or NULL; an expired one is deleted and counted EXPIRED,
 * as ep_ct_get does in the hash tables. */
static __always_inline struct ep_ct4_slot *ep_ct4_get(const struct ep_ct_key *k, __u64 now)
{
	struct ep_ct4_ref r;
	ep_ct4_ref(k, &r);
	struct ep_ct4_slot *s = ep_ct4_find(&r);
	if (s && s->expires_ns <= now) {
		if (ep_ct4_kill(s, r.busy | EP_CT4_LIVE))
			ep_ct_stat(EP_CT_STAT_EXPIRED, 0);
		return NULL;
	}
	return s;
}

/* Deletes the entry of key `k` from ep_ct4, if it has one: the cut re-check's verdict, or a
 * load-balanced flow's reverse entry taking its tuple (ep_lb_create_rev). A global function. */
__noinline int ep_ct4_delete(const struct ep_ct_key *k)
{
	if (!k)
		return 0;
	struct ep_ct4_ref r;
	ep_ct4_ref(k, &r);
	struct ep_ct4_slot *s = ep_ct4_find(&r);
	return s && ep_ct4_kill(s, r.busy | EP_CT4_LIVE);
}

/* Creates the entry of packet `p` (an IPv4 TCP/UDP flow without one) under key `k`, as
 * ep_ct_create does in ep_ct (the same start state, flags and counts), in the first free slot of
 * its window. On the way, the flow's own expired entry is deleted and counted EXPIRED (as the
 * lookup would have); reusing another flow's expired slot counts EXPIRED too. Returns enum
 * ep_ct4_made. A global function, verified once (bpf/README.md, "Verifier cost"). */
__noinline int ep_ct4_create(const struct ep_pkt *p, const struct ep_ct_key *k, const struct ep_ct_new_meta *m)
{
	if (!p || !k || !m)
		return EP_CT4_NOTHING;
	__u8 state, flags = m->flags;
	int to = ep_ct_start(p, &state, &flags);
	if (to < 0)
		return EP_CT4_NOTHING;
	__u64 now = m->now;
	struct ep_ct4_ref r;
	ep_ct4_ref(k, &r);
	__u32 live = r.busy | EP_CT4_LIVE;
	__u32 mask = ((const struct bpf_map *)&ep_ct4)->max_entries - 1;
	struct ep_ct4_slot *free = NULL;
	__u32 fidx = 0, ftag = 0;
	for (__u32 i = 0; i < EP_CT4_PROBES; i++) {
		__u32 idx = (r.home + i) & mask;
		struct ep_ct4_slot *s = bpf_map_lookup_elem(&ep_ct4, &idx);
		if (!s)
			break;
		__u32 tag = *(volatile __u32 *)&s->tag;
		if (tag == r.busy)
			return EP_CT4_EXISTS; /* another CPU is writing this flow (or one of the same tag) */
		if (tag == live && ep_ct4_same(s, &r)) {
			if (s->expires_ns > now)
				return EP_CT4_EXISTS;
			if (!ep_ct4_kill(s, live))
				return EP_CT4_EXISTS;
			ep_ct_stat(EP_CT_STAT_EXPIRED, 0);
			tag = EP_CT4_DEAD;
		}
		if (!free && (tag == EP_CT4_EMPTY || tag == EP_CT4_DEAD || ((tag & EP_CT4_LIVE) && s->expires_ns <= now))) {
			free = s;
			fidx = idx;
			ftag = tag;
		}
		if (tag == EP_CT4_EMPTY)
			break;
	}
	if (!free)
		return EP_CT4_FULL;
	/* Another CPU changed the slot since it was read: if to this flow's tag, it is creating this
	 * flow (nothing more to do); if to another's, this flow goes to ep_ct. */
	__u32 seen = ep_cas32(&free->tag, ftag, r.busy);
	if (seen != ftag)
		return (seen | EP_CT4_LIVE) == live ? EP_CT4_EXISTS : EP_CT4_FULL;
	if (ftag & EP_CT4_LIVE)
		ep_ct_stat(EP_CT_STAT_EXPIRED, 0);
	free->epoch = m->epoch;
	*(__u64 *)&free->a = r.ab;
	free->ap = k->sport;
	free->bp = k->dport;
	free->proto = k->proto;
	free->state = state;
	free->flags = flags;
	free->pad = 0;
	free->expires_ns = now + ep_ct_timeout(to);
	free->packets[0] = 1;
	free->packets[1] = 0;
	free->bytes[0] = m->len;
	free->bytes[1] = 0;
	struct ep_ct4_cold *c = bpf_map_lookup_elem(&ep_ct4_cold, &fidx);
	if (c) {
		c->created_ns = now;
		c->rule_id = m->rule_id;
		c->pad = 0;
	}
	/* Published by compare-and-swap: a full barrier, so no CPU sees the live tag before the line. */
	ep_cas32(&free->tag, r.busy, live);
	ep_ct_stat(EP_CT_STAT_CREATED, m->len);
	return EP_CT4_CREATED;
}

/* Step 5 (CONNTRACK.md) for a flow in ep_ct4: state, deadline and counters; at a policy hook of
 * a newer epoch the epoch is set, unless the generation cuts (EP_CT4_HOW_CUT) and the re-check has
 * not run (EP_CT4_HOW_CHECKED): then nothing changes and the answer asks for it. `m->flags`:
 * EP_CT_F_ORIG_B when the packet comes from side b. Returns 0 when the flow has no live entry in
 * ep_ct4, 1 when the packet passes by it, EP_CT4_RECHECK | the entry's flags for the re-check
 * (the caller's: ep_ct_recheck's frames do not fit below this one's in the programs' 512 bytes).
 * A global function, verified once. */
__noinline int ep_ct4_packet(const struct ep_pkt *p, struct ep_ct_key *k, const struct ep_ct_new_meta *m, __u32 how)
{
	if (!p || !k || !m)
		return 0;
	struct ep_ct4_slot *s = ep_ct4_get(k, m->now);
	if (!s)
		return 0;
	__u32 src_b = !!(m->flags & EP_CT_F_ORIG_B);
	__u32 dir = src_b == !!(s->flags & EP_CT_F_ORIG_B) ? EP_CT_DIR_ORIG : EP_CT_DIR_REPLY;
	if ((how & EP_CT4_HOW_POLICY) && s->epoch != m->epoch) {
		if ((how & (EP_CT4_HOW_CUT | EP_CT4_HOW_CHECKED)) == EP_CT4_HOW_CUT)
			return EP_CT4_RECHECK | s->flags;
		s->epoch = m->epoch;
	}
	ep_ct_apply(s, dir, p, m->now, m->len);
	ep_ct_stat(EP_CT_STAT_ESTABLISHED, m->len);
	return 1;
}

#endif
