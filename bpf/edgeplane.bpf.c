// SPDX-License-Identifier: Apache-2.0
/* The edgeplane datapath: one stateful classifier (include/ep_conntrack.h in front of
 * include/classifier.h, which pull in the maps, structs and parsing headers) at three hooks, and
 * the connection table's sweeper. bpf/CONNTRACK.md is the contract of the connection table. Each
 * hook parses its frame (ep_parse_xdp, ep_parse_skb), then runs ep_datapath() on the result. */
#include "ep_conntrack.h"
#include "ep_nat.h"

#define EP_TC_ACT_OK   0
#define EP_TC_ACT_SHOT 2
#define EP_TC_PULL_LEN 256 /* enough for VLANs + IPv6 + a few extension headers + ports */

/* The hook's frame parsed into `p` (include/ep_parsing.h); returns enum ep_parse_result. Global
 * functions, one per context type (a global function reads packet data only through the context
 * it is given): verified once, and the hook then knows nothing of `p` but what it reads back, so
 * the many ways a parse can end (VLAN tags, IPv6 extension headers, ICMP kinds) do not each walk
 * the rest of the program apart (bpf/README.md, "Verifier cost"). */
__noinline int ep_parse_xdp(struct xdp_md *ctx, struct ep_pkt *p)
{
	if (!p)
		return EP_PARSE_MALFORMED;
	return ep_parse((void *)(long)ctx->data, (void *)(long)ctx->data_end, p);
}

__noinline int ep_parse_skb(struct __sk_buff *skb, struct ep_pkt *p)
{
	if (!p)
		return EP_PARSE_MALFORMED;
	return ep_parse((void *)(long)skb->data, (void *)(long)skb->data_end, p);
}

/* Uplink ingress. */
SEC("xdp")
int edge_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ep_pkt p = {};
	int parsed = ep_parse_xdp(ctx, &p);
	struct ep_nat nat;
	if (ep_datapath(data, data_end, data_end - data, EP_HOOK_POLICY, parsed, &p, &nat) == EP_DROP)
		return XDP_DROP;
	/* A DSR or full-NAT flow, or an ICMP error about a full-NAT one (include/ep_lb_modes.h). */
	if (nat.op == EP_NAT_LB) {
		struct ep_nat *icmp = ep_lb_icmp_pair();
		if (!icmp)
			return ep_xdp_lb(ctx);
		return ep_xdp_nat_icmp(ctx, &icmp[0]) == 0 && ep_xdp_nat_icmp(ctx, &icmp[1]) != 0 ? XDP_DROP : XDP_PASS;
	}
	/* An ICMP error about a load-balanced flow: translated, or passed as it is when it
	 * cannot be (its quote is not what the lookup read). */
	if (ep_nat_is_icmp(&nat))
		ep_xdp_nat_icmp(ctx, &nat);
	/* A load-balanced flow: DNAT to its backend (the parser saw every byte the rewrite
	 * touches, so it cannot fail on a frame it passed). */
	else if (nat.op != EP_NAT_NONE && ep_xdp_nat(ctx, &nat) < 0)
		return XDP_DROP;
	return XDP_PASS;
}

/* Pulls up to EP_TC_PULL_LEN bytes into the linear area. */
static __always_inline void ep_tc_pull(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	__u32 want = len < EP_TC_PULL_LEN ? len : EP_TC_PULL_LEN;
	if (skb->data_end - skb->data < want)
		bpf_skb_pull_data(skb, want);
}

/* Workload interfaces, clsact ingress and egress (direct action). */
SEC("tc")
int edge_tc(struct __sk_buff *skb)
{
	ep_tc_pull(skb);
	/* Keep clang from reusing ctx field addresses across the pull: the verifier only accepts
	 * ctx loads at a constant offset from the unmodified ctx pointer. */
	asm volatile("" : "+r"(skb));
	__u32 len = skb->len;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ep_pkt p = {};
	int parsed = ep_parse_skb(skb, &p);
	struct ep_nat nat;
	if (ep_datapath(data, data_end, len, EP_HOOK_POLICY, parsed, &p, &nat) == EP_DROP)
		return EP_TC_ACT_SHOT;
	/* A DSR or full-NAT flow, or an ICMP error about a full-NAT one (include/ep_lb_modes.h). */
	if (nat.op == EP_NAT_LB) {
		struct ep_nat *icmp = ep_lb_icmp_pair();
		if (!icmp)
			return ep_tc_lb(skb);
		return ep_tc_nat_icmp(skb, &icmp[0]) == 0 && ep_tc_nat_icmp(skb, &icmp[1]) != 0 ? EP_TC_ACT_SHOT : EP_TC_ACT_OK;
	}
	/* An uplink in --xdp-mode tc: DNAT of a load-balanced flow (workloads have no services),
	 * or the translation of an ICMP error about one (passed as it is when it cannot be). */
	if (ep_nat_is_icmp(&nat))
		ep_tc_nat_icmp(skb, &nat);
	else if (nat.op != EP_NAT_NONE && ep_tc_nat(skb, &nat) < 0)
		return EP_TC_ACT_SHOT;
	return EP_TC_ACT_OK;
}

/* Uplink clsact egress: connection tracking and the reverse NAT of load-balanced flows (no egress
 * policy on uplinks); always passes. */
SEC("tc")
int edge_tc_egress(struct __sk_buff *skb)
{
	ep_tc_pull(skb);
	asm volatile("" : "+r"(skb));
	__u32 len = skb->len;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ep_pkt p = {};
	int parsed = ep_parse_skb(skb, &p);
	struct ep_nat nat;
	ep_datapath(data, data_end, len, EP_HOOK_EGRESS, parsed, &p, &nat);
	/* A reply of a load-balanced flow: its source becomes the VIP (full NAT: both sides,
	 * include/ep_lb_modes.h); an ICMP error about one (towards its client) quotes the VIP. */
	struct ep_nat *icmp = nat.op == EP_NAT_LB ? ep_lb_icmp_pair() : NULL;
	if (icmp) {
		if (ep_tc_nat_icmp(skb, &icmp[0]) == 0)
			ep_tc_nat_icmp(skb, &icmp[1]);
	} else if (nat.op == EP_NAT_LB)
		ep_tc_lb(skb);
	else if (ep_nat_is_icmp(&nat))
		ep_tc_nat_icmp(skb, &nat);
	else if (nat.op != EP_NAT_NONE)
		ep_tc_nat(skb, &nat);
	return EP_TC_ACT_OK;
}

/* ---- The sweeper: deletes expired entries (the datapath deletes only those it meets). ---- */

struct ep_ct_sweep_state {
	__u64 now;
	__u32 budget;
	__u32 deleted;
};

static long ep_ct_sweep_one(struct bpf_map *map, struct ep_ct_key *key, struct ep_ct_entry *e,
			    struct ep_ct_sweep_state *s)
{
	if (s->deleted >= s->budget)
		return 1;
	if (e->expires_ns <= s->now && bpf_map_delete_elem(map, key) == 0) {
		s->deleted++;
		ep_ct_stat(EP_CT_STAT_EXPIRED, 0);
		return 0;
	}
	/* A load-balanced flow's reverse entry never expires by itself: it goes with its service
	 * entry (bpf/LB.md, "Connection entries of a load-balanced flow"). */
	if (e->nat.flags & EP_CT_NAT_REVNAT) {
		struct ep_ct_key ks;
		ep_lb_service_key(&ks, key, e);
		struct ep_ct_entry *svc = bpf_map_lookup_elem(&ep_ct, &ks);
		if (!svc || svc->expires_ns <= s->now)
			svc = bpf_map_lookup_elem(&ep_ct_new, &ks);
		if ((!svc || svc->expires_ns <= s->now || !(svc->nat.flags & EP_CT_NAT_DNAT)) && bpf_map_delete_elem(map, key) == 0) {
			s->deleted++;
			ep_lb_stat(EP_LB_STAT_ORPHAN, 0);
		}
	}
	return 0;
}

/* ep_ct4's expired flows: DEAD, as the datapath leaves the ones it meets (ep_ct4.h). */
static long ep_ct4_sweep_one(struct bpf_map *map, __u32 *idx, struct ep_ct4_slot *line, struct ep_ct_sweep_state *s)
{
	if (s->deleted >= s->budget)
		return 1;
	__u32 tag = line->tag;
	if ((tag & EP_CT4_LIVE) && line->expires_ns <= s->now && ep_ct4_kill(line, tag)) {
		s->deleted++;
		ep_ct_stat(EP_CT_STAT_EXPIRED, 0);
	}
	return 0;
}

/* Run by the agent with BPF_PROG_TEST_RUN, ctx = struct ep_ct_sweep_args: deletes up to
 * args->budget expired entries of ep_ct, then of ep_ct_new, and the reverse entries of
 * load-balanced flows whose service entry is gone or expired, then the expired flows of ep_ct4
 * (last: the hash tables' expired entries hold memory and count towards ep_ct's mark, ep_ct4's
 * only wait to be taken again). Returns how many it deleted (the budget: there may be more). */
SEC("syscall")
int ep_ct_sweep(struct ep_ct_sweep_args *args)
{
	/* CLOCK_MONOTONIC: syscall programs may not read the coarse clock the datapath stamps
	 * entries with, which is up to a tick behind; an entry may go a tick before its deadline. */
	struct ep_ct_sweep_state s = { .now = bpf_ktime_get_ns(), .budget = args->budget };
	bpf_for_each_map_elem(&ep_ct, ep_ct_sweep_one, &s, 0);
	bpf_for_each_map_elem(&ep_ct_new, ep_ct_sweep_one, &s, 0);
	bpf_for_each_map_elem(&ep_ct4, ep_ct4_sweep_one, &s, 0);
	return s.deleted;
}

/* ---- ep_ct4's occupancy: its live slots, counted in the kernel (the agent would read every line). */

struct ep_ct4_count_state {
	__u64 now;
	__u32 live;
};

static long ep_ct4_count_one(struct bpf_map *map, __u32 *idx, struct ep_ct4_slot *s, struct ep_ct4_count_state *st)
{
	if ((s->tag & EP_CT4_LIVE) && s->expires_ns > st->now)
		st->live++;
	return 0;
}

/* Run by the agent with BPF_PROG_TEST_RUN: returns how many flows ep_ct4 holds (live tag, not
 * expired). One pass over the array in the kernel: about 2 ms a 100,000 slots (bench/README.md,
 * "conntrack-sweep"). */
SEC("syscall")
int ep_ct4_count(void *args)
{
	struct ep_ct4_count_state st = { .now = bpf_ktime_get_ns() };
	bpf_for_each_map_elem(&ep_ct4, ep_ct4_count_one, &st, 0);
	return st.live;
}

/* Run by the agent with BPF_PROG_TEST_RUN: stores the kernel's CLOCK_TAI in ep_blk_clock_out[0],
 * the clock ep_blk_match() compares expiries with, so the agent converts a UTC expiry to it. */
SEC("syscall")
int ep_blk_clock(void *args)
{
	__u32 zero = 0;
	struct ep_blk_clock_value *out = bpf_map_lookup_elem(&ep_blk_clock_out, &zero);
	if (out)
		out->tai_ns = bpf_ktime_get_tai_ns();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
