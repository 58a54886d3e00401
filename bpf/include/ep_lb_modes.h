/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The forwarding modes of a service besides NAT (bpf/LB.md, "Forwarding modes"; layout 5):
 *
 * - DSR (EP_LB_F_DSR): Katran's IP-in-IP. The service entry S pins the backend (EP_CT_NAT_DSR);
 *   every original-direction packet is encapsulated, IPv4 in IPv4 (protocol 4) or IPv6 in IPv6
 *   (next header 41), outer source the node's address towards the backend, outer destination the
 *   backend; the inner packet is not rewritten. There is no reverse entry: the backend answers
 *   from the VIP straight to the client, and a reply that crosses the node finds S and passes as
 *   it is. A packet that would exceed the MTU of the route to the backend once encapsulated is
 *   answered with ICMP frag-needed / packet-too-big (IPv4 with DF set, IPv6) from the VIP to the
 *   client, at XDP only (Katran's ICMP_TOOBIG_GENERATION); IPv4 without DF is encapsulated
 *   without DF and the stack fragments the outer packet.
 * - Full NAT (EP_LB_F_FULLNAT, LoxiLB's term): DNAT to the backend and SNAT to the node's address
 *   towards it with a source port the node allocates (ep_lb_snat_alloc). S carries both
 *   (EP_CT_NAT_DNAT | EP_CT_NAT_SNAT); the reverse entry B is keyed node:nport <-> backend:bport
 *   and carries the VIP and the client. Replies come to the node's own address, so they are
 *   reverse-translated at the policy hook (uplink ingress), before the stack would deliver them.
 *
 * ep_datapath decides and leaves the rewrite in the per-CPU ep_lb_xlat (nat->op EP_NAT_LB); the
 * hook calls ep_xdp_lb or ep_tc_lb. Every function here is a subprogram of its own: the
 * classifier's call chain leaves little of the 512 bytes of stack.
 */
#ifndef EP_LB_MODES_H
#define EP_LB_MODES_H

#include "ep_nat.h"

#define EP_LB_SNAT_TRIES     8     /* source ports probed per new full-NAT flow */
#define EP_LB_SNAT_PORT_MIN  1024  /* allocated ports: 1024..32767, below Linux's ephemeral range */
#define EP_LB_SNAT_PORTS     31744 /* (32768 - 1024) */
#define EP_LB_SNAT_STRIDE    7919  /* probe step: a prime, coprime with EP_LB_SNAT_PORTS */

#define EP_IPPROTO_IPIP 4
#define EP_IPPROTO_IPV6 41
#define EP_LB_L2_COPY   24 /* bytes moved to the front by an XDP encapsulation: Ethernet + 2 VLAN tags fit */

#define EP_ICMP_TOOBIG_QUOTE 48 /* bytes of the offending packet an ICMP too-big quotes: an IPv6 header + 8, or IPv4 + 28 */

enum ep_lb_xlat_op { EP_LB_X_NONE, EP_LB_X_ENCAP, EP_LB_X_FULLNAT, EP_LB_X_ICMP };

/* What the hook writes for a DSR or full-NAT packet (per CPU: XDP and TC programs do not nest on
 * a CPU, and the hook reads it right after ep_datapath wrote it). */
struct ep_lb_xlat {
	struct ep_nat nat[2]; /* EP_LB_X_FULLNAT, EP_LB_X_ICMP: two rewrites, applied in order */
	__u8 op;              /* enum ep_lb_xlat_op */
	__u8 family;
	__u16 l3_off;
	__u16 mtu;            /* EP_LB_X_ENCAP: the route's MTU, 0 unknown */
	__u16 pad;
	__u8 src[16];         /* EP_LB_X_ENCAP: outer source and destination */
	__u8 dst[16];
	/* The hook's buffers (here rather than on a stack the classifier's call chain fills). */
	__u8 inner[40];       /* the packet's IP header */
	__u8 hdr[40];         /* the header being written */
	__u8 l2[EP_LB_L2_COPY];
	__u8 quote[EP_ICMP_TOOBIG_QUOTE];
	__u8 icmp[8];
};

/* Scratch of a full-NAT allocation: the reverse entry being made and its key (off the stack),
 * and what the probe loop's callback reads (bpf_loop: its body is verified once, not once per
 * probe). */
struct ep_lb_alloc {
	struct ep_ct_key k;
	struct ep_ct_entry e;
	__u8 node[16];    /* the node's address towards the backend */
	__u8 backend[16];
	__u32 h;          /* the flow's hash */
	__u16 bport;      /* host order */
	__u16 port;       /* the port allocated, 0 while none */
	__u8 family;
	__u8 proto;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_lb_xlat);
} ep_lb_xlat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ep_lb_alloc);
} ep_lb_alloc SEC(".maps");

/* ep_lb_select's last step for a DSR or full-NAT service: the backend `be` becomes S's NAT.
 * Returns 1, or -1 when the agent could not resolve the node's address towards the backend. */
static __always_inline int ep_lb_select_mode(const struct ep_pkt *p, __u16 svc_flags, const struct ep_lb_backend *be,
					     struct ep_ct_nat *out)
{
	const __u32 *s = (const __u32 *)be->saddr;
	if (!(s[0] | s[1] | s[2] | s[3]))
		return -1;
	__builtin_memcpy(out->addr2, be->saddr, 16);
	if (svc_flags & EP_LB_F_DSR) {
		/* DSR: the backend takes the VIP's port (the controller checks it). */
		out->flags = EP_CT_NAT_DSR;
		out->port = bpf_htons(p->dport);
		out->mtu = be->mtu;
	} else {
		out->flags = EP_CT_NAT_DNAT | EP_CT_NAT_SNAT;
	}
	return 1;
}

/* A new full-NAT flow `p` to backend `be` (EP_CT_NAT_SNAT, addr2 = the node's address): picks a
 * source port and creates the flow's reverse entry B under node:nport <-> backend:bport with
 * BPF_NOEXIST, so an allocated tuple is never taken twice. The ports probed are h, h + stride,
 * ... (mod 31,744, from 1024) for h the flow's hash: a flow retried after a drop probes the same
 * ports. A port whose tuple is in ep_ct or ep_ct_new is taken. Returns true with be->port2 set,
 * false after EP_LB_SNAT_TRIES taken ports (the caller drops and counts SNAT_FAILED). */
/* Probe i of ep_lb_snat_alloc (a bpf_loop callback: its state in ep_lb_alloc). Returns 1 (stop)
 * once a port is taken for this flow. */
static long ep_lb_snat_probe(__u32 i, void *unused)
{
	__u32 zero = 0;
	struct ep_lb_alloc *a = bpf_map_lookup_elem(&ep_lb_alloc, &zero);
	if (!a)
		return 1;
	__u16 port = EP_LB_SNAT_PORT_MIN + (a->h + i * EP_LB_SNAT_STRIDE) % EP_LB_SNAT_PORTS;
	__u32 node_b = ep_ct_key_make(&a->k, a->family, a->proto, a->node, port, a->backend, a->bport, false, false);
	a->e.flags = node_b ? EP_CT_F_ORIG_B : 0;
	if (bpf_map_lookup_elem(&ep_ct, &a->k))
		return 0;
	if (bpf_map_update_elem(&ep_ct_new, &a->k, &a->e, BPF_NOEXIST) != 0)
		return 0;
	a->port = port;
	return 1;
}

static __noinline bool ep_lb_snat_alloc(const struct ep_pkt *p, struct ep_ct_nat *be, const struct ep_ct_new_meta *m)
{
	__u32 zero = 0;
	struct ep_lb_alloc *a = bpf_map_lookup_elem(&ep_lb_alloc, &zero);
	if (!a)
		return false;
	struct ep_ct_entry *e = &a->e;
	__builtin_memset(e, 0, sizeof(*e));
	e->expires_ns = ~0ULL;
	e->created_ns = m->now;
	e->rule_id = m->rule_id;
	e->epoch = m->epoch;
	e->state = p->proto == EP_IPPROTO_UDP ? EP_CT_UDP : EP_CT_SYN_SENT;
	__builtin_memcpy(e->nat.addr, p->dst, 16);
	e->nat.port = bpf_htons(p->dport);
	e->nat.flags = EP_CT_NAT_REVNAT | EP_CT_NAT_SNAT;
	e->nat.svc_id = be->svc_id;
	__builtin_memcpy(e->nat.addr2, p->src, 16);
	e->nat.port2 = bpf_htons(p->sport);
	a->h = ep_flow_hash(p->family, p->proto, p->src, p->dst, p->sport, p->dport);
	a->bport = bpf_ntohs(be->port);
	a->port = 0;
	a->family = p->family;
	a->proto = p->proto;
	__builtin_memcpy(a->node, be->addr2, 16);
	__builtin_memcpy(a->backend, be->addr, 16);
	bpf_loop(EP_LB_SNAT_TRIES, ep_lb_snat_probe, NULL, 0);
	if (!a->port)
		return false;
	be->port2 = bpf_htons(a->port);
	return true;
}

/* An original-direction packet `p` of a DSR or full-NAT flow whose S carries `n`: what its hook
 * writes (nat->op EP_NAT_LB, the rest in ep_lb_xlat). */
static __noinline void ep_lb_mode_nat(const struct ep_pkt *p, const struct ep_ct_nat *n, struct ep_nat *nat)
{
	__u32 zero = 0;
	struct ep_lb_xlat *x = bpf_map_lookup_elem(&ep_lb_xlat, &zero);
	nat->op = EP_NAT_LB;
	if (!x)
		return; /* never: the hook finds no scratch either and drops */
	x->family = p->family;
	x->l3_off = p->l3_off;
	if (n->flags & EP_CT_NAT_DSR) {
		x->op = EP_LB_X_ENCAP;
		x->mtu = n->mtu;
		__builtin_memcpy(x->src, n->addr2, 16);
		__builtin_memcpy(x->dst, n->addr, 16);
	} else {
		x->op = EP_LB_X_FULLNAT;
		ep_nat_set(&x->nat[0], EP_NAT_DST, p, n->addr, n->port);
		ep_nat_set(&x->nat[1], EP_NAT_SRC, p, n->addr2, n->port2);
	}
}

/* A reply `p` of a full-NAT flow (backend:bport -> node:nport) on its reverse entry's NAT `b`:
 * source becomes the VIP, destination the client. */
static __noinline void ep_lb_mode_rev(const struct ep_pkt *p, const struct ep_ct_nat *b, struct ep_nat *nat)
{
	__u32 zero = 0;
	struct ep_lb_xlat *x = bpf_map_lookup_elem(&ep_lb_xlat, &zero);
	nat->op = EP_NAT_LB;
	if (!x)
		return;
	x->op = EP_LB_X_FULLNAT;
	x->family = p->family;
	x->l3_off = p->l3_off;
	ep_nat_set(&x->nat[0], EP_NAT_SRC, p, b->addr, b->port);
	ep_nat_set(&x->nat[1], EP_NAT_DST, p, b->addr2, b->port2);
}

/* An ICMP error about a full-NAT flow (bpf/LB.md, "ICMP errors"), whose first translation
 * ep_icmp_nat_plan planned into `nat` from the entry `e` found by the quoted tuple: full NAT changed
 * both sides of the flow, so the quote's other side changes too (nat->op becomes EP_NAT_LB, the two
 * translations go into ep_lb_xlat, applied in order by the hook):
 * - B, its original direction (node:nport -> backend:bport, an error from the backend's side):
 *   quoted destination -> VIP:vport (planned), then quoted source -> client:cport, and the outer
 *   destination (the node) with it;
 * - S, its reply direction (VIP:vport -> client:cport, an error from the client's side): quoted
 *   source -> backend:bport (planned), then quoted destination -> node:nport, and the outer
 *   source with it when the client itself sent the error. */
static __noinline void ep_lb_icmp_plan(const struct ep_ct_entry *e, struct ep_nat *nat)
{
	__u32 zero = 0;
	struct ep_lb_xlat *x = bpf_map_lookup_elem(&ep_lb_xlat, &zero);
	if (!x)
		return; /* the first translation alone: the quote's other side stays the node's */
	x->op = EP_LB_X_ICMP;
	x->family = nat->family;
	x->l3_off = nat->l3_off;
	x->nat[0] = *nat;
	x->nat[1] = *nat;
	x->nat[1].op = nat->op == EP_NAT_ICMP_QDST ? EP_NAT_ICMP_QSRC : EP_NAT_ICMP_QDST;
	__builtin_memcpy(x->nat[1].new_addr, e->nat.addr2, 16);
	x->nat[1].new_port = e->nat.port2;
	nat->op = EP_NAT_LB;
}

/* ---- The hooks' side: writing what ep_lb_xlat says. ---- */

/* The two translations of an ICMP error about a full-NAT flow (EP_LB_X_ICMP), or NULL when
 * ep_lb_xlat holds another rewrite. The hook applies them itself, calling ep_xdp_nat_icmp /
 * ep_tc_nat_icmp from its own frame: through ep_xdp_lb / ep_tc_lb the three frames would pass the
 * 512 bytes of stack. Each is passed as it is when its quote is not what the lookup read (the first
 * translation then changes nothing), and dropped when only the first was written. */
static __always_inline struct ep_nat *ep_lb_icmp_pair(void)
{
	__u32 zero = 0;
	struct ep_lb_xlat *x = bpf_map_lookup_elem(&ep_lb_xlat, &zero);
	return x && x->op == EP_LB_X_ICMP ? x->nat : NULL;
}

/* Writes the header checksum of the 20-byte IPv4 header at `hdr` (its checksum field zero). */
static __always_inline void ep_ipv4_hdr_csum(__u8 *hdr)
{
	const __u16 *w = (const __u16 *)hdr;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	__u16 check = ~ep_csum_fold(sum);
	__builtin_memcpy(hdr + 10, &check, 2);
}

/* The outer header of an encapsulation into `hdr` (20 or 40 bytes) for the inner IP header
 * `inner` of `inner_len` bytes in all. IPv4: the inner TOS, DF only when the inner packet has it,
 * TTL 64, checksum computed; IPv6: the inner version/class/flow label, hop limit 64. */
static __always_inline void ep_lb_outer(const struct ep_lb_xlat *x, const __u8 *inner, __u32 inner_len, __u8 *hdr)
{
	if (x->family == 4) {
		hdr[0] = 0x45;
		hdr[1] = inner[1];
		hdr[2] = (inner_len + 20) >> 8;
		hdr[3] = (inner_len + 20) & 0xff;
		hdr[4] = 0;
		hdr[5] = 0;
		hdr[6] = inner[6] & 0x40; /* DF */
		hdr[7] = 0;
		hdr[8] = 64;
		hdr[9] = EP_IPPROTO_IPIP;
		hdr[10] = 0;
		hdr[11] = 0;
		__builtin_memcpy(hdr + 12, x->src, 4);
		__builtin_memcpy(hdr + 16, x->dst, 4);
		ep_ipv4_hdr_csum(hdr);
	} else {
		__builtin_memcpy(hdr, inner, 4);
		hdr[4] = inner_len >> 8;
		hdr[5] = inner_len & 0xff;
		hdr[6] = EP_IPPROTO_IPV6;
		hdr[7] = 64;
		__builtin_memcpy(hdr + 8, x->src, 16);
		__builtin_memcpy(hdr + 24, x->dst, 16);
	}
}

/* Length of the inner packet from its IP header: IPv4 total length, IPv6 payload length + 40. */
static __always_inline __u32 ep_lb_inner_len(__u8 family, const __u8 *inner)
{
	return family == 4 ? ((__u32)inner[2] << 8 | inner[3]) : ((__u32)inner[4] << 8 | inner[5]) + 40;
}

/* Does the inner packet forbid fragmentation (IPv4 DF; IPv6 always)? */
static __always_inline bool ep_lb_no_frag(__u8 family, const __u8 *inner)
{
	return family != 4 || (inner[6] & 0x40);
}


/* XDP: answers the frame (whose IP header is at `l3`, `inner` its first 40 bytes) with an ICMP
 * frag-needed (IPv4, type 3 code 4) or packet-too-big (IPv6, type 2) from its destination (the
 * VIP) to its source, quoting its first 48 bytes of IP, with MTU `mtu` - the encapsulation's
 * overhead: the frame becomes that ICMP message, Ethernet addresses swapped, and goes back out
 * (XDP_TX). Katran's send_icmp_too_big, through the load/store helpers. Returns the XDP action. */
static __noinline int ep_xdp_too_big(struct xdp_md *ctx, struct ep_lb_xlat *x, __u32 mtu)
{
	__u8 *ip = x->hdr, *l2 = x->l2, *quote = x->quote, *icmp = x->icmp;
	__u32 l3 = x->l3_off, family = x->family;
	__builtin_memset(icmp, 0, 8);
	__u32 hlen = family == 4 ? 20 : 40;
	__u32 len = ctx->data_end - ctx->data;
	if (l3 > EP_LB_L2_COPY - 2 || len < l3 + EP_ICMP_TOOBIG_QUOTE)
		return XDP_DROP;
	if (bpf_xdp_load_bytes(ctx, 0, l2, EP_LB_L2_COPY) || bpf_xdp_load_bytes(ctx, l3, quote, EP_ICMP_TOOBIG_QUOTE))
		return XDP_DROP;
	/* The frame: L2, new IP header, ICMP header, the quote. Trim it, then grow the head. */
	__u32 want = l3 + hlen + 8 + EP_ICMP_TOOBIG_QUOTE;
	if (bpf_xdp_adjust_tail(ctx, (int)(l3 + EP_ICMP_TOOBIG_QUOTE) - (int)len))
		return XDP_DROP;
	if (bpf_xdp_adjust_head(ctx, -(int)(hlen + 8)))
		return XDP_DROP;
	if ((__u32)(ctx->data_end - ctx->data) != want)
		return XDP_DROP;
	/* Ethernet: back to where it came from. */
	__u8 mac[6];
	__builtin_memcpy(mac, l2, 6);
	__builtin_memcpy(l2, l2 + 6, 6);
	__builtin_memcpy(l2 + 6, mac, 6);
	__u32 sum = 0;
	const __u16 *qw = (const __u16 *)quote;
#pragma unroll
	for (int i = 0; i < EP_ICMP_TOOBIG_QUOTE / 2; i++)
		sum += qw[i];
	__u32 icmp_len = 8 + EP_ICMP_TOOBIG_QUOTE;
	if (family == 4) {
		icmp[0] = 3;
		icmp[1] = 4;
		icmp[6] = mtu >> 8;
		icmp[7] = mtu & 0xff;
		ip[0] = 0x45;
		ip[1] = 0;
		ip[2] = (20 + icmp_len) >> 8;
		ip[3] = (20 + icmp_len) & 0xff;
		ip[4] = 0;
		ip[5] = 0;
		ip[6] = 0;
		ip[7] = 0;
		ip[8] = 64;
		ip[9] = EP_IPPROTO_ICMP;
		ip[10] = 0;
		ip[11] = 0;
		__builtin_memcpy(ip + 12, quote + 16, 4); /* from the VIP */
		__builtin_memcpy(ip + 16, quote + 12, 4); /* to the client */
		ep_ipv4_hdr_csum(ip);
	} else {
		icmp[0] = 2;
		icmp[1] = 0;
		icmp[4] = mtu >> 24;
		icmp[5] = (mtu >> 16) & 0xff;
		icmp[6] = (mtu >> 8) & 0xff;
		icmp[7] = mtu & 0xff;
		ip[0] = 0x60;
		ip[1] = 0;
		ip[2] = 0;
		ip[3] = 0;
		ip[4] = icmp_len >> 8;
		ip[5] = icmp_len & 0xff;
		ip[6] = EP_IPPROTO_ICMPV6;
		ip[7] = 64;
		__builtin_memcpy(ip + 8, quote + 24, 16);  /* from the VIP */
		__builtin_memcpy(ip + 24, quote + 8, 16);  /* to the client */
		/* The pseudo-header (RFC 8200 8.1): addresses, length, next header. */
		const __u16 *w = (const __u16 *)(ip + 8);
#pragma unroll
		for (int i = 0; i < 16; i++)
			sum += w[i];
		sum += bpf_htons(icmp_len);
		sum += bpf_htons(EP_IPPROTO_ICMPV6);
	}
	const __u16 *iw = (const __u16 *)icmp;
#pragma unroll
	for (int i = 0; i < 4; i++)
		sum += iw[i];
	__u16 check = ~ep_csum_fold(sum);
	__builtin_memcpy(icmp + 2, &check, 2);
	/* Write front to back: L2 (the copy also covers the start of the IP header, rewritten next). */
	if (bpf_xdp_store_bytes(ctx, 0, l2, EP_LB_L2_COPY) || bpf_xdp_store_bytes(ctx, l3, ip, family == 4 ? 20 : 40) ||
	    bpf_xdp_store_bytes(ctx, l3 + hlen, icmp, 8) || bpf_xdp_store_bytes(ctx, l3 + hlen + 8, quote, EP_ICMP_TOOBIG_QUOTE))
		return XDP_DROP;
	ep_lb_stat(EP_LB_STAT_TOO_BIG, 0);
	return XDP_TX;
}

/* XDP: a full-NAT or DSR frame as rewritten, sent straight back out of the interface it came in
 * on when the kernel's FIB (bpf_fib_lookup: routes, policy rules and neighbours) says its next hop
 * is there, which is the hairpin of an edge node whose backends and clients are both behind its
 * uplink. The frame then never enters the stack, so its source (one of the node's addresses, or the
 * VIP of a turned-back full-NAT reply) is not a martian and no reverse-path filter sees it
 * (bpf/LB.md, "What the node needs"). `forwarded`: the frame was forwarded (full NAT: its TTL or
 * hop limit is decremented, as the stack's forwarding would); a DSR frame's outer header is the
 * node's own. Anything else (another interface, a neighbour not yet resolved, a TTL at its end, a
 * frame larger than the route's MTU) is left to the stack: XDP_PASS. Returns the XDP action. */
static __noinline int ep_xdp_fib_tx(struct xdp_md *ctx, struct ep_lb_xlat *x, bool forwarded)
{
	struct bpf_fib_lookup f = {};
	__u8 *ip = x->hdr;
	__u32 l3 = x->l3_off, family = x->family;
	__u32 ifindex = ctx->ingress_ifindex;
	if (l3 > EP_LB_L2_COPY - 2 || bpf_xdp_load_bytes(ctx, l3, ip, family == 4 ? 20 : 40))
		return XDP_PASS;
	if (family == 4) {
		if (forwarded && ip[8] <= 1)
			return XDP_PASS;
		f.family = 2; /* AF_INET */
		f.tos = ip[1];
		f.l4_protocol = ip[9];
		f.tot_len = (ip[2] << 8) | ip[3];
		__builtin_memcpy(&f.ipv4_src, ip + 12, 4);
		__builtin_memcpy(&f.ipv4_dst, ip + 16, 4);
	} else {
		if (forwarded && ip[7] <= 1)
			return XDP_PASS;
		f.family = 10; /* AF_INET6 */
		__builtin_memcpy(&f.flowinfo, ip, 4);
		f.flowinfo &= bpf_htonl(0x0fffffff);
		f.l4_protocol = ip[6];
		f.tot_len = ((ip[4] << 8) | ip[5]) + 40;
		__builtin_memcpy(f.ipv6_src, ip + 8, 16);
		__builtin_memcpy(f.ipv6_dst, ip + 24, 16);
	}
	f.ifindex = ifindex;
	if (bpf_fib_lookup(ctx, &f, sizeof(f), 0) != BPF_FIB_LKUP_RET_SUCCESS || f.ifindex != ifindex)
		return XDP_PASS;
	if (forwarded && family == 4) {
		/* ip_decrease_ttl: the TTL is the high byte of header word 4, so the checksum gains 0x0100. */
		__u16 check;
		__builtin_memcpy(&check, ip + 10, 2);
		__u32 c = check + (__u32)bpf_htons(0x0100);
		check = c + (c >= 0xffff);
		ip[8] -= 1;
		__builtin_memcpy(ip + 10, &check, 2);
		if (bpf_xdp_store_bytes(ctx, l3 + 8, ip + 8, 4))
			return XDP_DROP;
	} else if (forwarded) {
		ip[7] -= 1;
		if (bpf_xdp_store_bytes(ctx, l3 + 7, ip + 7, 1))
			return XDP_DROP;
	}
	if (bpf_xdp_store_bytes(ctx, 0, f.dmac, 6) || bpf_xdp_store_bytes(ctx, 6, f.smac, 6))
		return XDP_DROP;
	return XDP_TX;
}

/* XDP: encapsulates the frame as `x` says (EP_LB_X_ENCAP). Returns the XDP action. */
static __noinline int ep_xdp_encap(struct xdp_md *ctx, struct ep_lb_xlat *x)
{
	__u8 *inner = x->inner, *l2 = x->l2, *hdr = x->hdr;
	__u32 l3 = x->l3_off;
	__u32 family = x->family;
	__u32 hlen = family == 4 ? 20 : 40;
	if (l3 > EP_LB_L2_COPY - 2 || bpf_xdp_load_bytes(ctx, l3, inner, family == 4 ? 20 : 40))
		return XDP_DROP;
	__u32 inner_len = ep_lb_inner_len(family, inner);
	__u32 mtu = x->mtu;
	if (mtu && inner_len + hlen > mtu) {
		if (ep_lb_no_frag(family, inner))
			return ep_xdp_too_big(ctx, x, mtu - hlen);
		/* IPv4 without DF: the outer header has no DF either; the stack fragments it. */
	}
	ep_lb_outer(x, inner, inner_len, hdr);
	if (bpf_xdp_adjust_head(ctx, -(int)hlen))
		return XDP_DROP;
	/* Move L2 to the new front (EP_LB_L2_COPY bytes: what follows L2 there is overwritten by
	 * the outer header next), then write the outer header. */
	if (bpf_xdp_load_bytes(ctx, hlen, l2, EP_LB_L2_COPY) || bpf_xdp_store_bytes(ctx, 0, l2, EP_LB_L2_COPY) ||
	    bpf_xdp_store_bytes(ctx, l3, hdr, family == 4 ? 20 : 40))
		return XDP_DROP;
	ep_lb_stat(EP_LB_STAT_ENCAP, 0);
	return ep_xdp_fib_tx(ctx, x, false);
}

/* XDP: writes ep_lb_xlat into the frame. Returns the XDP action (XDP_TX: an ICMP too-big). */
static __noinline int ep_xdp_lb(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct ep_lb_xlat *x = bpf_map_lookup_elem(&ep_lb_xlat, &zero);
	if (!x)
		return XDP_DROP;
	if (x->op == EP_LB_X_ENCAP)
		return ep_xdp_encap(ctx, x);
	if (x->op != EP_LB_X_FULLNAT || ep_xdp_nat(ctx, &x->nat[0]) < 0 || ep_xdp_nat(ctx, &x->nat[1]) < 0)
		return XDP_DROP;
	return ep_xdp_fib_tx(ctx, x, true);
}

#define EP_LB_TC_OK   0
#define EP_LB_TC_SHOT 2

/* TC (an uplink in --xdp-mode tc, or uplink egress): writes ep_lb_xlat into the skb. The
 * encapsulation goes through bpf_skb_adjust_room (room after the MAC header, marked as an L3
 * encapsulation for GSO); a packet too big once encapsulated is dropped and counted TOO_BIG
 * (no ICMP at TC: the XDP mode is the one that answers). Returns the TC action. */
static __noinline int ep_tc_lb(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ep_lb_xlat *x = bpf_map_lookup_elem(&ep_lb_xlat, &zero);
	if (!x)
		return EP_LB_TC_SHOT;
	if (x->op == EP_LB_X_FULLNAT)
		return ep_tc_nat(skb, &x->nat[0]) < 0 || ep_tc_nat(skb, &x->nat[1]) < 0 ? EP_LB_TC_SHOT : EP_LB_TC_OK;

	if (x->op != EP_LB_X_ENCAP)
		return EP_LB_TC_SHOT;
	__u8 *inner = x->inner, *hdr = x->hdr;
	__u32 l3 = x->l3_off;
	__u32 family = x->family;
	__u32 hlen = family == 4 ? 20 : 40;
	if (l3 > 1024 || bpf_skb_load_bytes(skb, l3, inner, family == 4 ? 20 : 40))
		return EP_LB_TC_SHOT;
	__u32 inner_len = ep_lb_inner_len(family, inner);
	if (x->mtu && inner_len + hlen > x->mtu && ep_lb_no_frag(family, inner)) {
		ep_lb_stat(EP_LB_STAT_TOO_BIG, 0);
		return EP_LB_TC_SHOT;
	}
	ep_lb_outer(x, inner, inner_len, hdr);
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | (family == 4 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV6);
	if (bpf_skb_adjust_room(skb, hlen, BPF_ADJ_ROOM_MAC, flags))
		return EP_LB_TC_SHOT;
	if (bpf_skb_store_bytes(skb, l3, hdr, family == 4 ? 20 : 40, 0))
		return EP_LB_TC_SHOT;
	ep_lb_stat(EP_LB_STAT_ENCAP, 0);
	return EP_LB_TC_OK;
}

#endif
