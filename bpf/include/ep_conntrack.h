/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection tracking: bpf/CONNTRACK.md is the contract this file follows step by step (control
 * bypass, lookup, ICMP errors, entry found, no entry) and its TCP state machine. Tables and
 * constants are in ep_tables.h, the maps in ep_maps.h; the IPv4 table ep_ct4 in front of ep_ct
 * (layout 6) in ep_ct4.h. Classification (classifier.h) runs only for packets with no entry (for
 * a SYN that opens a flow, before the lookup: step 3a), and again for the cut re-check.
 *
 * Entries are updated in place without locks (as Cilium's): two CPUs updating one flow at once
 * may lose a state transition or a deadline refresh, never a packet; packet and byte counts are
 * atomic adds.
 */
#ifndef EP_CONNTRACK_H
#define EP_CONNTRACK_H

#include "classifier.h"
#include "ep_hash.h"
#include "ep_nat_icmp.h"
#include "ep_blocklist.h"
#include "ep_shadow.h"

/* Where a packet is met: a policy hook (uplink XDP, workload TC) or uplink egress (track only). */
enum ep_hook { EP_HOOK_POLICY, EP_HOOK_EGRESS };

#define EP_CT_DIR_ORIG  0
#define EP_CT_DIR_REPLY 1
#define EP_EEXIST       17

#define EP_SEC 1000000000ULL

static __always_inline void ep_ct_stat(__u32 which, __u64 len)
{
	ep_count(&ep_ct_stats, which, len);
}

/* Timeout `which` (enum ep_ct_timeout) from ep_ct_cfg, or the default when it is 0. */
static __always_inline __u64 ep_ct_timeout(__u32 which)
{
	__u32 zero = 0;
	struct ep_ct_cfg *cfg = bpf_map_lookup_elem(&ep_ct_cfg, &zero);
	if (cfg && which < EP_CT_TO_COUNT) {
		__u64 v = cfg->timeout_ns[which];
		if (v)
			return v;
	}
	switch (which) {
	case EP_CT_TO_TCP_ESTABLISHED: return 6 * 3600 * EP_SEC;
	case EP_CT_TO_TCP_CLOSING: return 10 * EP_SEC;
	default: return 60 * EP_SEC; /* TCP SYN, UDP, ICMP echo */
	}
}

/* 1 if endpoint (a, ap) sorts after (b, bp): the address compared as bytes (big-endian words,
 * only the first for IPv4, whose other bytes are zero), then the port. */
static __always_inline bool ep_ct_after(const __u8 *a, __u16 ap, const __u8 *b, __u16 bp, __u8 family)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	if (x[0] != y[0])
		return bpf_ntohl(x[0]) > bpf_ntohl(y[0]);
	if (family != 4) {
		if (x[1] != y[1])
			return bpf_ntohl(x[1]) > bpf_ntohl(y[1]);
		if (x[2] != y[2])
			return bpf_ntohl(x[2]) > bpf_ntohl(y[2]);
		if (x[3] != y[3])
			return bpf_ntohl(x[3]) > bpf_ntohl(y[3]);
	}
	return ap > bp;
}

/* Writes key `k` with side a = (a, ap) and side b = (b, bp). */
static __always_inline void ep_ct_key_set(struct ep_ct_key *k, __u8 family, __u8 proto, const __u8 *a, __u16 ap,
					  const __u8 *b, __u16 bp)
{
	k->family = family;
	k->proto = proto;
	k->pad = 0;
	k->sport = ap;
	k->dport = bp;
	__builtin_memcpy(k->src, a, 16);
	__builtin_memcpy(k->dst, b, 16);
}

/* The key of the tuple (src, sport) -> (dst, dport) (CONNTRACK.md, "Tables"): TCP/UDP in
 * canonical order; an ICMP echo with the requester as side a (`echo_reply`: the tuple is the
 * reply, so its destination is the requester). Returns 1 when the tuple's source is side b. */
static __always_inline __u32 ep_ct_key_make(struct ep_ct_key *k, __u8 family, __u8 proto, const __u8 *src, __u16 sport,
					    const __u8 *dst, __u16 dport, bool echo, bool echo_reply)
{
	__u32 src_b = echo ? echo_reply : ep_ct_after(src, sport, dst, dport, family);
	if (src_b)
		ep_ct_key_set(k, family, proto, dst, dport, src, sport);
	else
		ep_ct_key_set(k, family, proto, src, sport, dst, dport);
	return src_b;
}

/* The live entry of `k` in `map`, or NULL. An expired entry is deleted and counted EXPIRED, and
 * the lookup goes on as if it were absent (CONNTRACK.md step 3). */
static __always_inline struct ep_ct_entry *ep_ct_get(void *map, struct ep_ct_key *k, __u64 now)
{
	struct ep_ct_entry *e = bpf_map_lookup_elem(map, k);
	if (e && e->expires_ns <= now) {
		if (bpf_map_delete_elem(map, k) == 0)
			ep_ct_stat(EP_CT_STAT_EXPIRED, 0);
		return NULL;
	}
	return e;
}

/* What the TCP state machine does to an entry: its next state and flags, and the timeout its
 * deadline is refreshed with (enum ep_ct_timeout), or -1 for no refresh. */
struct ep_ct_step {
	__u8 state;
	__u8 flags;
	__s8 timeout;
};

/* The TCP state machine of CONNTRACK.md for a packet of direction `dir` (TCP flags `tcp`) on an
 * entry in state `st` with flags `f`. The rows are tried in the table's order; the first that
 * fits applies. Inline, though the verifier walks it at each caller state: every packet of a TCP
 * flow with an entry comes here, and a call would cost it more than it costs the verifier
 * (bpf/README.md, "Verifier cost", per packet). */
static __always_inline struct ep_ct_step ep_ct_tcp_step(__u8 st, __u8 f, __u32 dir, __u8 tcp)
{
	bool syn = tcp & EP_TCP_SYN, ack = tcp & EP_TCP_ACK, fin = tcp & EP_TCP_FIN;
	__s8 to = EP_CT_TO_TCP_CLOSING;

	if (tcp & EP_TCP_RST) {
		st = EP_CT_CLOSED;
	} else if (st == EP_CT_SYN_SENT && dir == EP_CT_DIR_ORIG && syn && !ack) {
		to = EP_CT_TO_TCP_SYN;
	} else if (st == EP_CT_SYN_SENT && dir == EP_CT_DIR_REPLY && syn && ack) {
		st = EP_CT_SYN_RECV;
		to = EP_CT_TO_TCP_SYN;
	} else if (st == EP_CT_SYN_RECV && dir == EP_CT_DIR_ORIG && ack && !syn) {
		st = EP_CT_ESTABLISHED;
		to = EP_CT_TO_TCP_ESTABLISHED;
	} else if ((st == EP_CT_CLOSED || st == EP_CT_CLOSING) && dir == EP_CT_DIR_ORIG && syn && !ack) {
		/* Port reuse: a new connection on the tuple of a closed one (same originator). */
		st = EP_CT_SYN_SENT;
		f &= EP_CT_F_EGRESS | EP_CT_F_ORIG_B;
		to = EP_CT_TO_TCP_SYN;
	} else if ((st == EP_CT_ESTABLISHED || st == EP_CT_SYN_SENT || st == EP_CT_SYN_RECV || st == EP_CT_FIN_WAIT) && fin) {
		f |= dir == EP_CT_DIR_ORIG ? EP_CT_F_FIN_ORIG : EP_CT_F_FIN_REPLY;
		if ((f & (EP_CT_F_FIN_ORIG | EP_CT_F_FIN_REPLY)) == (EP_CT_F_FIN_ORIG | EP_CT_F_FIN_REPLY)) {
			st = EP_CT_CLOSING;
			to = EP_CT_TO_TCP_CLOSING;
		} else {
			st = EP_CT_FIN_WAIT;
			to = EP_CT_TO_TCP_ESTABLISHED;
		}
	} else if (st == EP_CT_SYN_SENT || st == EP_CT_SYN_RECV) {
		to = EP_CT_TO_TCP_SYN;
	} else if (st == EP_CT_ESTABLISHED || st == EP_CT_FIN_WAIT) {
		to = EP_CT_TO_TCP_ESTABLISHED;
	} else {
		/* CLOSING, CLOSED: never extend a closing deadline. */
		to = -1;
	}
	if (dir == EP_CT_DIR_REPLY)
		f |= EP_CT_F_SEEN_REPLY;
	struct ep_ct_step next = { .state = st, .flags = f, .timeout = to };
	return next;
}

/* Step 5's update of entry `e` (a struct ep_ct_entry or ep_ct4_slot: the fields have the same
 * names) by packet `p` of direction `dir` and length `len` at `now`: TCP's state machine
 * (ep_ct_tcp_step), or for UDP and ICMP the reply flag and a fresh deadline; then the counters. */
#define ep_ct_apply(e, dir, p, now, len)                                                                      \
	do {                                                                                                  \
		if ((p)->proto == EP_IPPROTO_TCP) {                                                           \
			struct ep_ct_step next_ = ep_ct_tcp_step((e)->state, (e)->flags, (dir), (p)->tcp_flags); \
			(e)->state = next_.state;                                                             \
			(e)->flags = next_.flags;                                                             \
			if (next_.timeout >= 0)                                                               \
				(e)->expires_ns = (now) + ep_ct_timeout(next_.timeout);                       \
		} else {                                                                                      \
			if ((dir) == EP_CT_DIR_REPLY)                                                         \
				(e)->flags |= EP_CT_F_SEEN_REPLY;                                             \
			(e)->expires_ns = (now) + ep_ct_timeout((p)->proto == EP_IPPROTO_UDP ? EP_CT_TO_UDP : EP_CT_TO_ICMP); \
		}                                                                                             \
		__sync_fetch_and_add(&(e)->packets[(dir) & 1], 1);                                            \
		__sync_fetch_and_add(&(e)->bytes[(dir) & 1], (len));                                          \
	} while (0)

/* The state a packet with no entry creates its flow's entry in (CONNTRACK.md, the state machine's
 * creation rules), its EP_CT_F_* flags added to `*flags`. Returns the timeout of the entry's
 * deadline (enum ep_ct_timeout), or -1 when the packet creates nothing: a TCP RST, anything but
 * TCP, UDP and an ICMP echo request. */
static __always_inline int ep_ct_start(const struct ep_pkt *p, __u8 *state, __u8 *flags)
{
	if (p->ct == EP_CTK_ECHO_REQ) {
		*state = EP_CT_ICMP;
		return EP_CT_TO_ICMP;
	}
	if (p->ct != EP_CTK_FLOW)
		return -1;
	if (p->proto == EP_IPPROTO_UDP) {
		*state = EP_CT_UDP;
		return EP_CT_TO_UDP;
	}
	__u8 tcp = p->tcp_flags;
	if (tcp & EP_TCP_RST)
		return -1;
	if ((tcp & (EP_TCP_SYN | EP_TCP_ACK)) == EP_TCP_SYN) {
		*state = EP_CT_SYN_SENT;
		return EP_CT_TO_TCP_SYN;
	}
	if (tcp & EP_TCP_FIN) {
		/* Loose pickup, then the FIN rule applies to this packet too. */
		*state = EP_CT_FIN_WAIT;
		*flags |= EP_CT_F_FIN_ORIG;
		return EP_CT_TO_TCP_ESTABLISHED;
	}
	*state = EP_CT_ESTABLISHED;
	return EP_CT_TO_TCP_ESTABLISHED;
}

/* What a new entry is made with: the packet's time and length, the rule that admitted it, the
 * live epoch and its EP_CT_F_* flags (EP_CT_F_ORIG_B when the packet comes from side b);
 * `in_new` is ep_lb_reply's (its reverse entry is in ep_ct_new). One struct, as subprograms take
 * at most five arguments. */
struct ep_ct_new_meta {
	__u64 now;
	__u64 len;
	__u32 rule_id;
	__u32 epoch;
	__u8 flags;
	__u8 in_new;
	/* ep_datapath's, here rather than in locals, which the programs' 512 bytes of stack have no
	 * room left for: whether ep_ct_new is empty (ep_ct_new_empty(), -1 until asked), and the
	 * packet's rule slot once classified (step 3a or 6), -2 before. */
	__s8 new_empty;
	__u8 pad;
	__s32 slot;
};

/* The kernel's sum of a map's per-CPU element counts (kernel/bpf/map_iter.c, 6.6+): every hash
 * map keeps one counter per possible CPU, bumped on insert and delete (hashtab.c,
 * bpf_map_inc_elem_count), so this is the map's element count, expired entries included. */
extern __s64 bpf_map_sum_elem_count(const struct bpf_map *map) __ksym;

/* Nodes with at most this many possible CPUs skip the ep_ct_new lookup when that table is empty
 * (ep_ct_new_empty). */
#define EP_CT_NEW_COUNT_MAX_CPUS 16

/* True when ep_ct_new holds no element at all, so a lookup there cannot find one (CONNTRACK.md
 * step 3). Below the direct mark new flows go to ep_ct and ep_ct_new is usually empty, and its
 * lookup (a hash of the key and a cold bucket) was a sixth of a new flow's SYN
 * (bench/conntrack-lookup.ts; BENCHMARKS.md). The kernel's element count is exact but costs one
 * load per possible CPU: cheap while nothing writes ep_ct_new (the counters stay in every CPU's
 * cache), cache misses while a flood churns it on every CPU. So only nodes with at most
 * EP_CT_NEW_COUNT_MAX_CPUS possible CPUs count (the per-CPU lookup of slot `max` answers NULL when
 * `max` >= nr_cpu_ids: one helper call); larger ones always look. */
static __always_inline bool ep_ct_new_empty(void)
{
	__u32 zero = 0;
	if (bpf_map_lookup_percpu_elem(&ep_ct_stats, &zero, EP_CT_NEW_COUNT_MAX_CPUS))
		return false;
	return bpf_map_sum_elem_count((const struct bpf_map *)&ep_ct_new) == 0;
}

/* The direct mark (CONNTRACK.md, "The direct mark"): a new flow's entry goes straight into
 * ep_ct while ep_ct holds fewer entries than half its capacity, so a flow that gets its reply
 * needs no move; above it, into ep_ct_new as before, so a flood of flows that never get a reply
 * takes at most half of ep_ct and the rest stays for flows that have seen one. Costs one load per
 * possible CPU, on the creation path only. */
static __always_inline bool ep_ct_below_mark(void)
{
	const struct bpf_map *map = (const struct bpf_map *)&ep_ct;
	return bpf_map_sum_elem_count(map) < (__s64)(map->max_entries >> 1);
}

/* Creates the entry of a packet with no entry under key `k`, this packet as the original
 * direction (CONNTRACK.md step 6 and the creation rules of the state machine): in ep_ct below
 * the direct mark, else (or when that insert fails) in ep_ct_new. A TCP RST and anything but
 * TCP, UDP and an ICMP echo request create nothing. `nat` (may be NULL) is the entry's NAT (a
 * load-balanced flow's service entry). Returns true when the entry was created. The entry is built
 * in the per-CPU ep_ct_scratch, not on the stack: this subprogram ends one of the programs'
 * longest call chains (edge_xdp -> ep_lb_new_flow -> ep_ct_create), whose frames share 512 bytes. */
static __noinline bool ep_ct_create(const struct ep_pkt *p, struct ep_ct_key *k, const struct ep_ct_new_meta *m,
				    const struct ep_ct_nat *nat, bool first)
{
	__u32 zero = 0;
	struct ep_ct_entry *e = bpf_map_lookup_elem(&ep_ct_scratch, &zero);
	if (!e)
		return false;
	__builtin_memset(e, 0, sizeof(*e));
	__u64 now = m->now, len = m->len;
	__u8 flags = m->flags;
	int to = ep_ct_start(p, &e->state, &flags);
	if (to < 0)
		return false;
	e->created_ns = now;
	e->expires_ns = now + ep_ct_timeout(to);
	e->packets[0] = 1;
	e->bytes[0] = len;
	e->rule_id = m->rule_id;
	e->epoch = m->epoch;
	e->flags = flags;
	if (nat)
		e->nat = *nat;
	if (ep_ct_below_mark()) {
		long err = bpf_map_update_elem(&ep_ct, k, e, BPF_NOEXIST);
		if (err == 0) {
			ep_ct_stat(EP_CT_STAT_CREATED, len);
			return true;
		}
		/* `first` (step 3a): the flow may have an entry, live or expired; the lookup decides,
		 * and creates afterwards (ep_ct_new) if it must. */
		if (first)
			return false;
		/* EEXIST: another CPU created the flow's entry first (a second one in ep_ct_new
		 * would hide behind it). E2BIG (other CPUs filled ep_ct past the mark meanwhile):
		 * ep_ct_new, as above the mark. */
		if (err == -EP_EEXIST)
			return true;
	} else if (first) {
		return false;
	}
	if (bpf_map_update_elem(&ep_ct_new, k, e, BPF_ANY) == 0) {
		ep_ct_stat(EP_CT_STAT_CREATED, len);
		return true;
	}
	ep_ct_stat(EP_CT_STAT_INSERT_FAILED, len);
	return false;
}

/* The cut re-check (CONNTRACK.md step 5): classifies the entry's tuple against generation `gen`.
 * An entry a rule created re-classifies its original tuple and is cut by any drop verdict
 * (a deny rule or a default deny); an egress entry re-classifies the reply-direction tuple and
 * is cut only by an explicit deny rule. A rate_limit verdict never cuts. The original tuple is
 * rebuilt from the key and EP_CT_F_ORIG_B (`flags`). Returns 1 to cut. */
static __noinline int ep_ct_recheck(struct ep_ct_key *k, __u32 flags, __u32 gen)
{
	struct ep_pkt q = {};
	__u32 egress_entry = flags & EP_CT_F_EGRESS;
	/* The re-classified tuple's source is side b when the original's is (a rule entry) or
	 * when the original's destination is (an egress entry, re-checked as its reply). */
	bool from_b = !(flags & EP_CT_F_ORIG_B) != !egress_entry;
	q.family = k->family;
	q.proto = k->proto;
	if (from_b) {
		__builtin_memcpy(q.src, k->dst, 16);
		__builtin_memcpy(q.dst, k->src, 16);
		q.port = k->sport;
	} else {
		__builtin_memcpy(q.src, k->src, 16);
		__builtin_memcpy(q.dst, k->dst, 16);
		q.port = k->dport;
	}
	if (q.proto != EP_IPPROTO_TCP && q.proto != EP_IPPROTO_UDP)
		q.port = EP_PORT_NONE;
	int slot = ep_rule_slot(&q, gen);
	if (slot < 0)
		return 0;
	__u32 idx = slot;
	struct ep_rule *r = bpf_map_lookup_elem(&ep_rules, &idx);
	if (!r || (r->action & EP_ACT_MASK) != EP_ACT_DENY)
		return 0;
	if (egress_entry && idx == (gen & 1) * EP_RULE_SLOTS)
		return 0; /* the default action */
	return 1;
}

/* The first reply packet of an entry in ep_ct_new moves it to ep_ct. A full ep_ct fails the
 * move (INSERT_FAILED) and the entry stays where it is; it tries again at its next reply. */
static __always_inline void ep_ct_promote(struct ep_ct_key *k, struct ep_ct_entry *e)
{
	long err = bpf_map_update_elem(&ep_ct, k, e, BPF_NOEXIST);
	if (err == 0 || err == -EP_EEXIST) {
		/* EEXIST: another CPU moved it first. */
		bpf_map_delete_elem(&ep_ct_new, k);
		if (err == 0)
			ep_ct_stat(EP_CT_STAT_PROMOTED, 0);
		return;
	}
	ep_ct_stat(EP_CT_STAT_INSERT_FAILED, 0);
}

#include "ep_ct4.h"

/* Step 3a (CONNTRACK.md): the entry of a SYN that rule slot `slot` classified, inserted before any
 * lookup when the rule is a tracking allow (`m`'s rule_id is set to the rule's): an IPv4 flow's
 * into ep_ct4 while ep_ct is empty (else ep_ct could hold the flow: the lookup decides), any
 * other into ep_ct while it is below its mark. Returns true when it was created; false when the
 * rule is not a tracking allow, the table is not as said, or the insert found the flow's entry or
 * no room: the caller goes on as if step 3a had not been, the class kept. */
static __always_inline bool ep_ct_syn_first(const struct ep_pkt *p, struct ep_ct_key *k, struct ep_ct_new_meta *m, __u32 slot)
{
	struct ep_rule *r = bpf_map_lookup_elem(&ep_rules, &slot);
	if (!r || (r->action & (EP_ACT_MASK | EP_RULE_F_TRACK)) != (EP_ACT_ALLOW | EP_RULE_F_TRACK))
		return false;
	m->rule_id = r->rule_id;
	if (p->family == 4)
		return bpf_map_sum_elem_count((const struct bpf_map *)&ep_ct) == 0 && ep_ct4_create(p, k, m) == EP_CT4_CREATED;
	return ep_ct_create(p, k, m, NULL, true);
}

/* ---- L4 load balancing (bpf/LB.md, "A packet" and "Connection entries of a load-balanced flow") */

static __always_inline void ep_lb_stat(__u32 which, __u64 len)
{
	ep_count(&ep_lb_stats, which, len);
}

#include "ep_lb_modes.h"

/* LB.md "A packet" steps 3-6 for a new TCP/UDP flow `p` in generation `gen`: returns 0 when its
 * destination is not a VIP, -1 when it is one without a backend (m = 0, or tables that do not
 * hold what the entry says: drop), 1 with `out` = the backend (EP_CT_NAT_DNAT). */
static __noinline int ep_lb_select(const struct ep_pkt *p, __u32 gen, struct ep_ct_nat *out)
{
	struct ep_lb_vip_key vk = {};
	vk.gen = gen;
	vk.family = p->family;
	vk.proto = p->proto;
	vk.port = p->dport;
	__builtin_memcpy(vk.vip, p->dst, 16);
	struct ep_lb_svc *svc = bpf_map_lookup_elem(&ep_lb_vip, &vk);
	if (!svc)
		return 0;
	__u32 m = svc->m;
	if (m == 0)
		return -1;
	__u32 zero = 0;
	struct ep_lb_cfg *cfg = bpf_map_lookup_elem(&ep_lb_cfg, &zero);
	if (!cfg)
		return -1;
	__u32 h = (svc->flags & EP_LB_F_AFFINITY) ? ep_client_hash(p->family, p->src)
						   : ep_flow_hash(p->family, p->proto, p->src, p->dst, p->sport, p->dport);
	__u32 slot = ep_maglev_slot(h, m);
	__u32 bi = gen * cfg->blocks + svc->block + slot / EP_LB_BLOCK_SLOTS;
	struct ep_lb_block *block = bpf_map_lookup_elem(&ep_lb_slots, &bi);
	if (!block)
		return -1;
	__u32 index = block->backend[slot & (EP_LB_BLOCK_SLOTS - 1)];
	if (index >= svc->backends)
		return -1;
	__u32 bei = gen * cfg->backends + svc->backend_base + index;
	struct ep_lb_backend *be = bpf_map_lookup_elem(&ep_lb_backends, &bei);
	if (!be || be->family != p->family)
		return -1;
	__builtin_memcpy(out->addr, be->addr, 16);
	out->port = be->port;
	out->flags = EP_CT_NAT_DNAT;
	out->pad = 0;
	out->svc_id = svc->svc_id;
	if (svc->flags & (EP_LB_F_DSR | EP_LB_F_FULLNAT))
		return ep_lb_select_mode(p, svc->flags, be, out);
	return 1;
}

/* The reverse entry B of a new load-balanced flow whose service entry was just created: key
 * client:cport <-> backend:bport, NAT = the VIP (EP_CT_NAT_REVNAT), in ep_ct_new beside S with
 * S's state; it never expires by itself (it lives as long as S: the egress program and the
 * sweeper delete it when S is gone). */
static __noinline void ep_lb_create_rev(const struct ep_pkt *p, const struct ep_ct_nat *be, __u32 rule_id, __u32 epoch,
					__u64 now)
{
	/* Key and entry in the per-CPU ep_lb_alloc, not on the stack (layout 5's entry is 112 bytes). */
	__u32 zero = 0;
	struct ep_lb_alloc *a = bpf_map_lookup_elem(&ep_lb_alloc, &zero);
	if (!a)
		return;
	struct ep_ct_key *kb = &a->k;
	struct ep_ct_entry *e = &a->e;
	__u32 client_b = ep_ct_key_make(kb, p->family, p->proto, p->src, p->sport, be->addr, bpf_ntohs(be->port), false, false);
	__builtin_memset(e, 0, sizeof(*e));
	e->expires_ns = ~0ULL;
	e->created_ns = now;
	e->rule_id = rule_id;
	e->epoch = epoch;
	e->state = p->proto == EP_IPPROTO_UDP ? EP_CT_UDP : EP_CT_SYN_SENT;
	e->flags = client_b ? EP_CT_F_ORIG_B : 0;
	__builtin_memcpy(e->nat.addr, p->dst, 16);
	e->nat.port = bpf_htons(p->dport);
	e->nat.flags = EP_CT_NAT_REVNAT;
	e->nat.svc_id = be->svc_id;
	/* The tuple client:cport <-> backend:bport is this flow's now (the backend can hold one
	 * connection on it): a B left in ep_ct by an earlier flow on it (closed, through another VIP
	 * or before a port reuse) would be found first and reverse-NAT this flow's replies from that
	 * flow's VIP until its S expired. */
	bpf_map_delete_elem(&ep_ct, kb);
	if (kb->family == 4)
		ep_ct4_delete(kb);
	if (bpf_map_update_elem(&ep_ct_new, kb, e, BPF_ANY) != 0)
		ep_ct_stat(EP_CT_STAT_INSERT_FAILED, 0);
}

/* The service entry S of reverse entry `b` (key `kb`): key client <-> VIP, the client being B's
 * originator. Returns EP_CT_F_ORIG_B's value for a packet from the VIP to the client. */
static __always_inline __u32 ep_lb_service_key(struct ep_ct_key *ks, const struct ep_ct_key *kb, const struct ep_ct_entry *b)
{
	bool client_b = b->flags & EP_CT_F_ORIG_B;
	const __u8 *client = client_b ? kb->dst : kb->src;
	__u16 cport = client_b ? kb->dport : kb->sport;
	if (b->nat.flags & EP_CT_NAT_SNAT) {
		/* Full NAT: B's key is node:nport <-> backend; the client is in the NAT. */
		client = b->nat.addr2;
		cport = bpf_ntohs(b->nat.port2);
	}
	return ep_ct_key_make(ks, kb->family, kb->proto, b->nat.addr, bpf_ntohs(b->nat.port), client, cport, false, false);
}

/* Uplink egress, a reply (backend -> client) that found its reverse entry `b` under `kb`
 * (`m->in_new`: in ep_ct_new): the packet is applied to the service entry S as a reply (state,
 * counters, promotion of S and of B at the first reply) and its source becomes the VIP. Without
 * a live S, B is deleted and false returned: the packet is then untracked. A global function:
 * S's key stays off the main frame, and it is verified once, not for each state of the lookup
 * before it (bpf/README.md, "Verifier cost"). */
__noinline int ep_lb_reply(const struct ep_pkt *p, struct ep_ct_key *kb, struct ep_ct_entry *b,
			   const struct ep_ct_new_meta *m, struct ep_nat *nat)
{
	if (!p || !kb || !b || !m || !nat)
		return false;
	__u64 now = m->now, len = m->len;
	bool b_new = m->in_new;
	struct ep_ct_key ks;
	__u32 src_b = ep_lb_service_key(&ks, kb, b);
	bool s_new = false;
	struct ep_ct_entry *s = ep_ct_get(&ep_ct, &ks, now);
	if (!s) {
		s_new = true;
		s = ep_ct_get(&ep_ct_new, &ks, now);
	}
	if (!s || !(s->nat.flags & EP_CT_NAT_DNAT)) {
		if (b_new)
			bpf_map_delete_elem(&ep_ct_new, kb);
		else
			bpf_map_delete_elem(&ep_ct, kb);
		ep_lb_stat(EP_LB_STAT_ORPHAN, len);
		return false;
	}
	__u32 dir = src_b == !!(s->flags & EP_CT_F_ORIG_B) ? EP_CT_DIR_ORIG : EP_CT_DIR_REPLY;
	ep_ct_apply(s, dir, p, now, len);
	b->state = s->state;
	if (b->nat.flags & EP_CT_NAT_SNAT)
		ep_lb_mode_rev(p, &b->nat, nat);
	else
		ep_nat_set(nat, EP_NAT_SRC, p, b->nat.addr, b->nat.port);
	ep_ct_stat(EP_CT_STAT_ESTABLISHED, len);
	ep_lb_stat(EP_LB_STAT_REVNAT, len);
	if (dir == EP_CT_DIR_REPLY) {
		b->flags |= EP_CT_F_SEEN_REPLY;
		if (s_new)
			ep_ct_promote(&ks, s);
		if (b_new)
			ep_ct_promote(kb, b);
	}
	return true;
}

/* LB.md "A packet" 3-7: a new TCP/UDP flow `p` that a rule passed, under key `k`, in generation
 * `gen`, its entry to be made with `m`. Returns 0 when its destination is not a VIP; -1 to drop it
 * (a VIP without a backend, or no source port left for full NAT), counted; 1 when it is
 * scheduled: its service entry created (with NAT, its reverse entry too) and the rewrite its hook
 * writes planned into `nat`. A global function: verified once, not with each state of the
 * classification that precedes it (bpf/README.md, "Verifier cost"). */
__noinline int ep_lb_new_flow(const struct ep_pkt *p, struct ep_ct_key *k, const struct ep_ct_new_meta *m, __u32 gen,
			      struct ep_nat *nat)
{
	if (!p || !k || !m || !nat)
		return 0;
	struct ep_ct_nat be = {};
	int selected = ep_lb_select(p, gen, &be);
	if (selected < 0) {
		ep_lb_stat(EP_LB_STAT_NO_BACKEND, m->len);
		return -1;
	}
	if (selected == 0)
		return 0;
	bool mode = be.flags & (EP_CT_NAT_DSR | EP_CT_NAT_SNAT);
	/* Full NAT: the source port first (its reverse entry), then S, which carries it. */
	if ((be.flags & EP_CT_NAT_SNAT) && !ep_lb_snat_alloc(p, &be, m)) {
		ep_lb_stat(EP_LB_STAT_SNAT_FAILED, m->len);
		return -1;
	}
	ep_lb_stat(EP_LB_STAT_SELECTED, m->len);
	if (ep_ct_create(p, k, m, &be, false) && !mode)
		ep_lb_create_rev(p, &be, m->rule_id, m->epoch, m->now);
	if (mode)
		ep_lb_mode_nat(p, &be, nat);
	else
		ep_nat_set(nat, EP_NAT_DST, p, be.addr, be.port);
	return 1;
}

/* Looks the tuple `q` an ICMP error `p` quotes (ep_ct_related: ct EP_CTK_FLOW for TCP/UDP, or an
 * echo's EP_CTK_ECHO_REQ / EP_CTK_ECHO_REP) up once in each table, changing no state
 * (CONNTRACK.md step 4). Returns 1 when it names a tracked flow; for a load-balanced flow's, its
 * translation is planned into `nat` (ep_nat_icmp.h). A global function: the key, the lookups and
 * the plan are verified once, not for each state that reaches step 4 (bpf/README.md, "Verifier
 * cost"). */
__noinline int ep_ct_related_lookup(const struct ep_pkt *p, const struct ep_pkt *q, __u64 now, struct ep_nat *nat)
{
	if (!p || !q || !nat)
		return false;
	struct ep_ct_key k;
	bool ports = q->ct == EP_CTK_FLOW;
	__u32 src_b = ep_ct_key_make(&k, q->family, q->proto, q->src, q->sport, q->dst, q->dport, !ports,
				     q->ct == EP_CTK_ECHO_REP);
	/* ep_ct4 first, as at step 3; its flows have no NAT to plan. */
	if (ep_ct4_flow(q) && ep_ct4_get(&k, now))
		return true;
	struct ep_ct_entry *e = ep_ct_get(&ep_ct, &k, now);
	if (!e)
		e = ep_ct_get(&ep_ct_new, &k, now);
	if (!e)
		return false;
	if (ports) {
		ep_icmp_nat_plan(p, e, src_b, q->proto, nat);
		/* Full NAT changed both sides of the flow: the quote's other side too (ep_lb_modes.h). */
		if ((e->nat.flags & EP_CT_NAT_SNAT) && ep_nat_is_icmp(nat))
			ep_lb_icmp_plan(e, nat);
	}
	return true;
}

/* Is the ICMP error in `p` about a tracked flow? Reads the embedded IP header and the 8 bytes
 * after it (ports, or an echo's identifier) into a tuple of its own and looks it up
 * (ep_ct_related_lookup). An IPv6 inner header followed by extension headers is not looked into. */
static __noinline bool ep_ct_related(void *data, void *data_end, const struct ep_pkt *p, __u64 now, struct ep_nat *nat)
{
	struct ep_pkt q = {};
	__u32 off = p->l4_off;
	if (off > EP_MAX_L3_OFF)
		return false;
	off += 8;
	__u8 *l4;
	if (p->family == 4) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
			return false;
		q.family = 4;
		q.proto = ip->protocol;
		__builtin_memcpy(q.src, &ip->saddr, 4);
		__builtin_memcpy(q.dst, &ip->daddr, 4);
		l4 = (__u8 *)ip + ip->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
			return false;
		q.family = 6;
		q.proto = ip6->nexthdr;
		__builtin_memcpy(q.src, &ip6->saddr, 16);
		__builtin_memcpy(q.dst, &ip6->daddr, 16);
		l4 = (__u8 *)(ip6 + 1);
	}
	if ((void *)(l4 + 8) > data_end)
		return false;
	if (q.proto == EP_IPPROTO_TCP || q.proto == EP_IPPROTO_UDP) {
		q.ct = EP_CTK_FLOW;
		q.sport = ((__u16)l4[0] << 8) | l4[1];
		q.dport = ((__u16)l4[2] << 8) | l4[3];
	} else {
		q.ct = ep_icmp_kind(q.family, q.proto, l4[0]);
		if (q.ct != EP_CTK_ECHO_REQ && q.ct != EP_CTK_ECHO_REP)
			return false;
		q.sport = ((__u16)l4[4] << 8) | l4[5];
		q.dport = q.sport;
	}
	return ep_ct_related_lookup(p, &q, now, nat);
}

/* One packet, CONNTRACK.md "A packet, in order", after its hook parsed it into `p` (`parsed`:
 * enum ep_parse_result; the hook's global parse function, edgeplane.bpf.c): control bypass,
 * lookup, ICMP errors, entry found, no entry; for a load-balanced flow (LB.md, "A packet") the NAT
 * its hook must write goes into `nat` (op EP_NAT_NONE: none). At EP_HOOK_EGRESS (uplink egress)
 * every packet passes and no rule is consulted. Returns EP_PASS or EP_DROP. */
static __always_inline int ep_datapath(void *data, void *data_end, __u64 len, int hook, int parsed, struct ep_pkt *p,
				       struct ep_nat *nat)
{
	nat->op = EP_NAT_NONE;
	if (hook == EP_HOOK_EGRESS && parsed != EP_PARSE_OK)
		return EP_PASS;
	if (parsed == EP_PARSE_NON_IP) {
		ep_count(&ep_stats, EP_STAT_NON_IP, len);
		return EP_PASS;
	}
	if (parsed != EP_PARSE_OK) {
		ep_count(&ep_stats, EP_STAT_MALFORMED, len);
		return EP_DROP;
	}
	/* 1. The source blocklist (ep_blocklist.h): before anything else, tracked flows included. */
	if (hook == EP_HOOK_POLICY && ep_blocklisted(p, len))
		return EP_DROP;

	/* Read the live generation exactly once: every lookup below uses this value, so one
	 * packet's verdict comes wholly from one rule set. */
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_active, &zero);
	if (!active) {
		if (hook == EP_HOOK_POLICY)
			ep_count(&ep_stats, EP_STAT_UNCONFIGURED, len);
		return EP_PASS;
	}
	__u32 gen = *(volatile __u32 *)active & 1;
	struct ep_gen_cfg *gc = bpf_map_lookup_elem(&ep_gen_cfg, &gen);
	__u32 gflags = gc ? gc->flags : 0;
	__u32 epoch = gc ? gc->epoch : 0;
	__u64 now = bpf_ktime_get_coarse_ns();

	/* 2. Control bypass: TCP/UDP from a control endpoint (at uplink egress: to one, so the
	 * control plane's flows take no room in the connection tables). */
	if ((p->proto == EP_IPPROTO_TCP || p->proto == EP_IPPROTO_UDP) && p->port != EP_PORT_NONE) {
		/* The port bitmap first (ep_ct_control_ports): most packets are not from a control
		 * port, and an array lookup costs a fraction of the hash lookup. */
		__u16 cport = hook == EP_HOOK_EGRESS ? p->dport : p->sport;
		__u32 word = cport >> 6;
		__u64 *bits = bpf_map_lookup_elem(&ep_ct_control_ports, &word);
		if (bits && ((*bits >> (cport & 63)) & 1)) {
			struct ep_ct_control_key c = { .family = p->family, .proto = p->proto, .port = cport };
			__builtin_memcpy(c.addr, hook == EP_HOOK_EGRESS ? p->dst : p->src, 16);
			if (bpf_map_lookup_elem(&ep_ct_control, &c)) {
				ep_ct_stat(EP_CT_STAT_CONTROL, len);
				return EP_PASS;
			}
		}
	}

	/* 3. Lookup: the packet's key (the same for both directions) once in ep_ct, and only when it
	 * is not there once in ep_ct_new. The direction comes from the entry: the packet is
	 * original when it comes from the side that opened the flow. An echo request is always
	 * original, an echo reply always a reply (the key's side a is the requester). */
	bool trackable = p->ct == EP_CTK_FLOW || p->ct == EP_CTK_ECHO_REQ || p->ct == EP_CTK_ECHO_REP;
	struct ep_ct_new_meta meta = { .now = now, .len = len, .epoch = epoch, .new_empty = -1, .slot = -2 };
	struct ep_ct_key k;
	__u32 src_b = 0;
	bool track = false;
	if (trackable) {
		src_b = ep_ct_key_make(&k, p->family, p->proto, p->src, p->sport, p->dst, p->dport, p->ct != EP_CTK_FLOW,
				       p->ct == EP_CTK_ECHO_REP);
		/* 3a. SYN first: a TCP SYN that opens a flow is classified before the lookup, and when
		 * a tracking allow rule admits it its entry is inserted straight away (BPF_NOEXIST),
		 * which finds out whether the flow has an entry in the same bucket walk. Only where
		 * the lookup could have found nothing else: ep_ct_new empty, ep_ct below its mark, no
		 * services, no shadow candidate. Any other outcome goes on to the lookup below with
		 * the class kept for step 6: an entry (live or expired), a rule that is not a tracking
		 * allow, no room. */
		if (hook == EP_HOOK_POLICY && p->ct == EP_CTK_FLOW && p->proto == EP_IPPROTO_TCP &&
		    (p->tcp_flags & (EP_TCP_SYN | EP_TCP_ACK | EP_TCP_RST)) == EP_TCP_SYN && !(gflags & EP_GEN_F_SERVICES) &&
		    ep_shadow_mode(epoch) == EP_SHADOW_OFF && (meta.new_empty = ep_ct_new_empty())) {
			meta.slot = ep_rule_slot(p, gen);
			if (meta.slot >= 0) {
				meta.flags = src_b ? EP_CT_F_ORIG_B : 0;
				if (ep_ct_syn_first(p, &k, &meta, meta.slot))
					return ep_act(meta.slot, p, len, &track, &meta.rule_id);
			}
		}
		/* ep_ct4 first: an IPv4 TCP/UDP flow without NAT is there (unless its window was full
		 * when it was created, or it predates layout 6: then in ep_ct or ep_ct_new, below). */
		if (ep_ct4_flow(p)) {
			meta.flags = src_b ? EP_CT_F_ORIG_B : 0;
			__u32 how = ((gflags & EP_GEN_F_CUT) ? EP_CT4_HOW_CUT : 0) | (hook == EP_HOOK_POLICY ? EP_CT4_HOW_POLICY : 0);
			int found = ep_ct4_packet(p, &k, &meta, how);
			if (found >= EP_CT4_RECHECK) {
				if (ep_ct_recheck(&k, found & 0xff, gen)) {
					ep_ct4_delete(&k);
					ep_ct_stat(EP_CT_STAT_CUT, len);
					return EP_DROP;
				}
				found = ep_ct4_packet(p, &k, &meta, how | EP_CT4_HOW_CHECKED);
			}
			if (found)
				return EP_PASS;
		}
		bool in_new = false;
		struct ep_ct_entry *e = ep_ct_get(&ep_ct, &k, now);
		if (!e && meta.new_empty < 0)
			meta.new_empty = ep_ct_new_empty();
		if (!e && !meta.new_empty) {
			in_new = true;
			e = ep_ct_get(&ep_ct_new, &k, now);
		}
		if (e && (e->nat.flags & EP_CT_NAT_REVNAT)) {
			__u32 bdir = src_b == !!(e->flags & EP_CT_F_ORIG_B) ? EP_CT_DIR_ORIG : EP_CT_DIR_REPLY;
			/* Full NAT's replies come to the node's own address: translated at the policy
			 * hook, before the stack would deliver them (ep_lb_modes.h). */
			int reply_hook = (e->nat.flags & EP_CT_NAT_SNAT) ? EP_HOOK_POLICY : EP_HOOK_EGRESS;
			if (bdir == EP_CT_DIR_REPLY && hook == reply_hook) {
				meta.in_new = in_new;
				if (ep_lb_reply(p, &k, e, &meta, nat))
					return EP_PASS;
			} else if (hook == EP_HOOK_POLICY) {
				/* A reverse entry (LB.md) is no entry for the packet at the policy
				 * hook: it is classified as new and creates nothing over it
				 * (untrackable from here on). */
				trackable = false;
			} else if (bdir == EP_CT_DIR_ORIG) {
				/* The DNATed packet itself leaving through the uplink (a backend behind it). */
				return EP_PASS;
			}
			e = NULL;
		}
		if (e && hook == EP_HOOK_POLICY && (e->nat.flags & (EP_CT_NAT_DNAT | EP_CT_NAT_DSR)) && p->proto == EP_IPPROTO_TCP &&
		    (e->state == EP_CT_CLOSED || e->state == EP_CT_CLOSING) &&
		    src_b == !!(e->flags & EP_CT_F_ORIG_B) &&
		    (p->tcp_flags & (EP_TCP_SYN | EP_TCP_ACK | EP_TCP_RST)) == EP_TCP_SYN) {
			/* Port reuse on a closed load-balanced flow (LB.md, "Connection entries"): a new
			 * connection, scheduled anew like any new flow, as Linux conntrack deletes a
			 * closed entry a SYN reuses and NATs afresh (nf_conntrack_proto_tcp.c,
			 * nf_conntrack_tcp_packet, TCP_CONNTRACK_IGNORE/CLOSE). Keeping S would send the
			 * client to the backend it had, even one the service no longer has or that
			 * failed its health check. Its reverse entry is then an orphan (deleted at
			 * egress or by the sweeper), or overwritten when the same backend is chosen. */
			if (in_new)
				bpf_map_delete_elem(&ep_ct_new, &k);
			else
				bpf_map_delete_elem(&ep_ct, &k);
			e = NULL;
		}
		if (e) {
			/* 5. Entry found. */
			__u32 dir = src_b == !!(e->flags & EP_CT_F_ORIG_B) ? EP_CT_DIR_ORIG : EP_CT_DIR_REPLY;
			if (hook == EP_HOOK_POLICY && e->epoch != epoch) {
				if ((gflags & EP_GEN_F_CUT) && ep_ct_recheck(&k, e->flags, gen)) {
					if (in_new)
						bpf_map_delete_elem(&ep_ct_new, &k);
					else
						bpf_map_delete_elem(&ep_ct, &k);
					ep_ct_stat(EP_CT_STAT_CUT, len);
					return EP_DROP;
				}
				e->epoch = epoch;
			}
			ep_ct_apply(e, dir, p, now, len);
			ep_ct_stat(EP_CT_STAT_ESTABLISHED, len);
			/* A load-balanced flow's service entry: its original direction goes to its
			 * backend, whatever the tables say now. */
			if (hook == EP_HOOK_POLICY && dir == EP_CT_DIR_ORIG && (e->nat.flags & (EP_CT_NAT_DSR | EP_CT_NAT_SNAT)))
				ep_lb_mode_nat(p, &e->nat, nat);
			else if (hook == EP_HOOK_POLICY && dir == EP_CT_DIR_ORIG && (e->nat.flags & EP_CT_NAT_DNAT))
				ep_nat_set(nat, EP_NAT_DST, p, e->nat.addr, e->nat.port);
			if (in_new && dir == EP_CT_DIR_REPLY)
				ep_ct_promote(&k, e);
			return EP_PASS;
		}
	}

	/* 4. ICMP errors about a tracked flow pass (path MTU discovery needs them); one about a
	 * load-balanced flow is translated by the hook (ep_nat_icmp.h, LB.md "ICMP errors"). At
	 * uplink egress, which passes everything anyway, only the translation (no RELATED count). */
	if (p->ct == EP_CTK_ICMP_ERR && ep_ct_related(data, data_end, p, now, nat)) {
		if (hook != EP_HOOK_EGRESS)
			ep_ct_stat(EP_CT_STAT_RELATED, len);
		return EP_PASS;
	}

	meta.flags = src_b ? EP_CT_F_ORIG_B : 0;
	if (hook == EP_HOOK_EGRESS) {
		if (trackable && (gflags & EP_GEN_F_TRACK_EGRESS)) {
			meta.rule_id = EP_CT_RULE_EGRESS;
			meta.flags |= EP_CT_F_EGRESS;
			if (!ep_ct4_flow(p) || ep_ct4_create(p, &k, &meta) == EP_CT4_FULL)
				ep_ct_create(p, &k, &meta, NULL, false);
		}
		return EP_PASS;
	}

	/* 6. No entry: classify; a pass by a tracking rule creates an entry. With a shadow candidate
	 * whose union holds this generation's rule set, both in one walk (ep_shadow.h). */
	int shadow = EP_SHADOW_OFF;
	int slot = meta.slot;
	if (slot == -2) {
		shadow = ep_shadow_mode(epoch);
		slot = shadow == EP_SHADOW_ONE ? ep_shadow_both(p, gen) : -1;
		if (slot < 0) {
			if (shadow == EP_SHADOW_ONE)
				shadow = EP_SHADOW_TWO;
			slot = ep_rule_slot(p, gen);
		}
	}
	if (slot < 0) {
		ep_count(&ep_stats, EP_STAT_UNCONFIGURED, len);
		return EP_PASS;
	}
	__u32 rule_id = 0;
	int verdict = ep_act(slot, p, len, &track, &rule_id);
	/* The shadow candidate, if one is set (ep_shadow.h): counted, never deciding. */
	if (shadow != EP_SHADOW_OFF)
		ep_shadow_classify(p, slot, len, shadow == EP_SHADOW_ONE);
	if (verdict != EP_PASS || !trackable)
		return verdict;
	meta.rule_id = rule_id;
	/* A new flow to a VIP (LB.md "A packet" 3-7): always tracked, whatever the rule says. */
	if (p->ct == EP_CTK_FLOW && (gflags & EP_GEN_F_SERVICES)) {
		int scheduled = ep_lb_new_flow(p, &k, &meta, gen, nat);
		if (scheduled != 0)
			return scheduled > 0 ? EP_PASS : EP_DROP;
	}
	if (track && (!ep_ct4_flow(p) || ep_ct4_create(p, &k, &meta) == EP_CT4_FULL))
		ep_ct_create(p, &k, &meta, NULL, false);
	return verdict;
}

#endif
