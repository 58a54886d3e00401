/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Translating ICMP errors about load-balanced flows (bpf/LB.md, "ICMP errors"), as Linux
 * conntrack's NAT does (nf_nat_icmp_reply_translation, nf_nat_icmpv6_reply_translation in
 * net/netfilter/nf_nat_proto.c): the header an error quotes is rewritten to the tuple its
 * receiver sent, and the outer address that named the NATed side with it.
 *
 * - EP_NAT_ICMP_QDST: an error towards the client about client:cport -> backend:bport (found by
 *   the flow's reverse entry B, the quoted packet in B's original direction): the quoted
 *   destination becomes VIP:vport, and the outer source too when it was the backend.
 * - EP_NAT_ICMP_QSRC: an error towards the VIP about VIP:vport -> client:cport (a reply as it
 *   left; found by the service entry S, the quoted packet in S's reply direction): the quoted
 *   source becomes backend:bport, and the outer destination too when it was the VIP.
 *
 * ep_ct_related (ep_conntrack.h) plans it into the packet's struct ep_nat (ep_icmp_nat_plan);
 * the hook writes it (ep_xdp_nat_icmp, ep_tc_nat_icmp), reading every byte it changes first.
 * Checksums are updated incrementally (RFC 1624), as Linux does for the quoted header: the
 * quoted IPv4 header checksum; the quoted L4 checksum over its pseudo-header and port when the
 * quote holds it (a TCP header only when all its 20 bytes are quoted, as tcp_manip_pkt; an IPv4
 * UDP checksum of 0 stays 0); the outer IPv4 header checksum; and the ICMP checksum over every
 * changed word of the message (ICMPv6's also over the outer address of its pseudo-header, RFC
 * 4443 2.3). Linux recomputes the ICMP checksum over the whole message; the incremental update
 * gives the same value for a message whose checksum was right, and a wrong one stays wrong. The
 * quoted L4 checksum covers bytes a truncated quote does not hold, so it is never verified, only
 * updated. Every offset written is even from the IP header, so the sum over the packet is
 * unchanged and a CHECKSUM_COMPLETE skb's csum stays right without BPF_F_RECOMPUTE_CSUM.
 */
#ifndef EP_NAT_ICMP_H
#define EP_NAT_ICMP_H

#include "ep_structs.h"
#include "ep_nat.h"

/* struct ep_nat.op values of this file, after enum ep_nat_op's. For them ep_nat.proto is the
 * quoted packet's protocol (TCP or UDP), l3_off the outer IP header's offset and l4_off the
 * ICMP header's; new_addr:new_port replace the quoted source or destination. */
#define EP_NAT_ICMP_QDST 0x10
#define EP_NAT_ICMP_QSRC 0x11

static __always_inline bool ep_nat_is_icmp(const struct ep_nat *n)
{
	return n->op == EP_NAT_ICMP_QDST || n->op == EP_NAT_ICMP_QSRC;
}

/* The ICMP error `p` quotes a TCP/UDP packet of protocol `proto` whose tuple found entry `e`,
 * the quoted source being side b of the key when `quoted_src_b`: plans the translation into `n`
 * when `e` is a load-balanced flow's and the quoted packet is of the NATed side (above). */
static __always_inline void ep_icmp_nat_plan(const struct ep_pkt *p, const struct ep_ct_entry *e, __u32 quoted_src_b,
					     __u8 proto, struct ep_nat *n)
{
	bool orig = quoted_src_b == !!(e->flags & EP_CT_F_ORIG_B);
	__u8 op;
	if ((e->nat.flags & EP_CT_NAT_REVNAT) && orig)
		op = EP_NAT_ICMP_QDST;
	else if ((e->nat.flags & EP_CT_NAT_DNAT) && !orig)
		op = EP_NAT_ICMP_QSRC;
	else
		return;
	n->op = op;
	n->family = p->family;
	n->proto = proto;
	n->l3_off = p->l3_off;
	n->l4_off = p->l4_off;
	__builtin_memcpy(n->new_addr, e->nat.addr, 16);
	n->new_port = e->nat.port;
}

/* Where the words a translation changes are in the packet (ep_icmp_nat_where). */
struct ep_icmp_nat_at {
	__u32 oaddr;  /* the outer address that may change (source for QDST, destination for QSRC) */
	__u32 qaddr;  /* the quoted address that changes */
	__u32 qport;  /* the quoted port that changes */
	__u32 l4check; /* the quoted L4 checksum (TCP: 16, UDP: 6 bytes into its header) */
	__u32 alen;   /* 4 or 16 */
};

/* The words a translation reads and writes, in packet byte order. */
struct ep_icmp_nat_words {
	__u8 oaddr[16];
	__u8 qaddr[16];
	__u8 qhdr[12];   /* the quoted IP header's first 12 bytes: version, protocol, IPv4 fragment and checksum */
	__u16 ocheck;    /* the outer IPv4 header checksum */
	__u16 icmpcheck; /* the ICMP checksum */
	__u16 qport;
	__u16 l4check[2]; /* [0] the quoted L4 checksum; [1] TCP's urgent pointer (loaded to know the 20 bytes are quoted) */
	__u16 pad;
} __attribute__((aligned(8)));

/* Fills `at` from the quoted IP header's first bytes `q` (at `inner` in the packet). Returns
 * false when the quote is not the packet ep_ct_related planned for (version, protocol; an IPv4
 * non-first fragment has no ports). */
static __always_inline bool ep_icmp_nat_where(const struct ep_nat *n, const __u8 *q, __u32 inner, struct ep_icmp_nat_at *at)
{
	bool qdst = n->op == EP_NAT_ICMP_QDST;
	__u32 l4;
	if (n->family == 4) {
		if ((q[0] >> 4) != 4 || (q[0] & 0xf) < 5 || q[9] != n->proto || (((q[6] & 0x1f) << 8) | q[7]))
			return false;
		l4 = inner + (q[0] & 0xf) * 4;
		at->alen = 4;
		at->oaddr = n->l3_off + (qdst ? 12 : 16); /* struct iphdr: saddr, daddr */
		at->qaddr = inner + (qdst ? 16 : 12);
	} else {
		if ((q[0] >> 4) != 6 || q[6] != n->proto)
			return false;
		l4 = inner + 40;
		at->alen = 16;
		at->oaddr = n->l3_off + (qdst ? 8 : 24); /* struct ipv6hdr: saddr, daddr */
		at->qaddr = inner + (qdst ? 24 : 8);
	}
	at->qport = l4 + (qdst ? 2 : 0);
	at->l4check = l4 + (n->proto == EP_IPPROTO_TCP ? 16 : 6);
	return true;
}

/* Rewrites the loaded words `w` as `n` says (`l4check`: the quoted L4 checksum is loaded). */
static __always_inline void ep_icmp_nat_edit(const struct ep_nat *n, struct ep_icmp_nat_words *w, bool l4check)
{
	bool v4 = n->family == 4, udp = n->proto == EP_IPPROTO_UDP;
	const __u16 *na = (const __u16 *)n->new_addr;
	__u16 *qa = (__u16 *)w->qaddr, *oa = (__u16 *)w->oaddr;
	/* The outer address changes with the quoted one when they are the same: compared without a
	 * branch per word (a branch per word gave the verifier a path per combination of words). */
	__u16 differ = 0;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		if (i == 2 && v4)
			break;
		differ |= oa[i] ^ qa[i];
	}
	bool outer = differ == 0;
	/* da: ~old + new over the address words; dp: over the port; di: over every changed word
	 * of the ICMP message (and, for ICMPv6, of its pseudo-header). */
	__u32 da = 0;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		if (i == 2 && v4)
			break;
		da += (__u16)~qa[i];
		da += na[i];
		qa[i] = na[i];
		if (outer)
			oa[i] = na[i];
	}
	__u32 dp = (__u16)~w->qport + (__u32)n->new_port;
	w->qport = n->new_port;
	__u32 di = da + dp;
	__u16 c;
	if (v4) {
		__u16 *qcheck = (__u16 *)(w->qhdr + 10);
		c = ~ep_csum_fold((__u16)~*qcheck + da);
		di += (__u16)~*qcheck + (__u32)c;
		*qcheck = c;
	}
	if (l4check && !(udp && v4 && w->l4check[0] == 0)) {
		c = ~ep_csum_fold((__u16)~w->l4check[0] + da + dp);
		if (c == 0 && udp)
			c = 0xffff;
		di += (__u16)~w->l4check[0] + (__u32)c;
		w->l4check[0] = c;
	}
	if (outer) {
		if (v4)
			w->ocheck = ~ep_csum_fold((__u16)~w->ocheck + da);
		else
			di += da;
	}
	w->icmpcheck = ~ep_csum_fold((__u16)~w->icmpcheck + di);
}

/* XDP: translates the ICMP error as `n` says. Returns 0, or a negative value with the frame
 * unchanged (a helper's error, or a quote that is not what was planned, or no `n`): every read
 * comes before the first write. A global function: its words stay off the main frame, and the
 * verifier checks it once rather than at each of its call sites (the hook calls it for NAT's one
 * translation and full NAT's two; bpf/LB.md, "ICMP errors", verifier). */
__noinline int ep_xdp_nat_icmp(struct xdp_md *ctx, const struct ep_nat *n)
{
	if (!n)
		return -1;
	struct ep_icmp_nat_words w = {};
	struct ep_icmp_nat_at at;
	__u32 inner = n->l4_off + 8;
	bool v4 = n->family == 4;
	long err = bpf_xdp_load_bytes(ctx, inner, w.qhdr, 12);
	if (err)
		return err;
	if (!ep_icmp_nat_where(n, w.qhdr, inner, &at))
		return -1;
	err = bpf_xdp_load_bytes(ctx, at.oaddr, w.oaddr, v4 ? 4 : 16);
	if (!err)
		err = bpf_xdp_load_bytes(ctx, at.qaddr, w.qaddr, v4 ? 4 : 16);
	if (!err)
		err = bpf_xdp_load_bytes(ctx, at.qport, &w.qport, 2);
	if (!err)
		err = bpf_xdp_load_bytes(ctx, n->l4_off + 2, &w.icmpcheck, 2);
	if (!err && v4)
		err = bpf_xdp_load_bytes(ctx, n->l3_off + 10, &w.ocheck, 2);
	if (err)
		return err;
	/* UDP's checksum is within the 8 bytes every quote holds; TCP's only when 20 are quoted. */
	bool l4check = bpf_xdp_load_bytes(ctx, at.l4check, w.l4check, 4) == 0 ||
		       (n->proto == EP_IPPROTO_UDP && bpf_xdp_load_bytes(ctx, at.l4check, w.l4check, 2) == 0);
	ep_icmp_nat_edit(n, &w, l4check);
	err = bpf_xdp_store_bytes(ctx, at.qaddr, w.qaddr, v4 ? 4 : 16);
	if (!err)
		err = bpf_xdp_store_bytes(ctx, at.qport, &w.qport, 2);
	if (!err && v4)
		err = bpf_xdp_store_bytes(ctx, inner + 10, w.qhdr + 10, 2);
	if (!err && l4check)
		err = bpf_xdp_store_bytes(ctx, at.l4check, w.l4check, 2);
	if (!err)
		err = bpf_xdp_store_bytes(ctx, at.oaddr, w.oaddr, v4 ? 4 : 16);
	if (!err && v4)
		err = bpf_xdp_store_bytes(ctx, n->l3_off + 10, &w.ocheck, 2);
	if (!err)
		err = bpf_xdp_store_bytes(ctx, n->l4_off + 2, &w.icmpcheck, 2);
	return err;
}

/* TC: the same through the skb helpers. The sum over the packet does not change (above), so a
 * CHECKSUM_COMPLETE skb needs no csum update; ICMP errors are not CHECKSUM_PARTIAL (the kernel's
 * icmp_send and icmp6_send checksum them whole). */
__noinline int ep_tc_nat_icmp(struct __sk_buff *skb, const struct ep_nat *n)
{
	if (!n)
		return -1;
	struct ep_icmp_nat_words w = {};
	struct ep_icmp_nat_at at;
	__u32 inner = n->l4_off + 8;
	bool v4 = n->family == 4;
	long err = bpf_skb_load_bytes(skb, inner, w.qhdr, 12);
	if (err)
		return err;
	if (!ep_icmp_nat_where(n, w.qhdr, inner, &at))
		return -1;
	err = bpf_skb_load_bytes(skb, at.oaddr, w.oaddr, v4 ? 4 : 16);
	if (!err)
		err = bpf_skb_load_bytes(skb, at.qaddr, w.qaddr, v4 ? 4 : 16);
	if (!err)
		err = bpf_skb_load_bytes(skb, at.qport, &w.qport, 2);
	if (!err)
		err = bpf_skb_load_bytes(skb, n->l4_off + 2, &w.icmpcheck, 2);
	if (!err && v4)
		err = bpf_skb_load_bytes(skb, n->l3_off + 10, &w.ocheck, 2);
	if (err)
		return err;
	bool l4check = bpf_skb_load_bytes(skb, at.l4check, w.l4check, 4) == 0 ||
		       (n->proto == EP_IPPROTO_UDP && bpf_skb_load_bytes(skb, at.l4check, w.l4check, 2) == 0);
	ep_icmp_nat_edit(n, &w, l4check);
	err = bpf_skb_store_bytes(skb, at.qaddr, w.qaddr, v4 ? 4 : 16, 0);
	if (!err)
		err = bpf_skb_store_bytes(skb, at.qport, &w.qport, 2, 0);
	if (!err && v4)
		err = bpf_skb_store_bytes(skb, inner + 10, w.qhdr + 10, 2, 0);
	if (!err && l4check)
		err = bpf_skb_store_bytes(skb, at.l4check, w.l4check, 2, 0);
	if (!err)
		err = bpf_skb_store_bytes(skb, at.oaddr, w.oaddr, v4 ? 4 : 16, 0);
	if (!err && v4)
		err = bpf_skb_store_bytes(skb, n->l3_off + 10, &w.ocheck, 2, 0);
	if (!err)
		err = bpf_skb_store_bytes(skb, n->l4_off + 2, &w.icmpcheck, 2, 0);
	return err;
}

#endif
