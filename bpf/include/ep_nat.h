/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Writing the NAT of a load-balanced flow into a packet (bpf/LB.md, "A packet"): ep_datapath
 * decides (struct ep_nat: which address and port become what, at which offsets); the hook
 * writes, reading the old values from the packet. Subprograms of their own: their buffers stay
 * off the main frame. XDP writes the frame directly and updates the checksums incrementally (RFC 1624:
 * HC' = ~(~HC + ~m + m') over the changed 16-bit words; the one's-complement sum does not depend
 * on byte order, RFC 1071 2(B), so the words are summed as loaded). TC goes through
 * bpf_skb_store_bytes and bpf_l3/l4_csum_replace, which also keep a CHECKSUM_PARTIAL or
 * CHECKSUM_COMPLETE skb right (net/core/filter.c, inet_proto_csum_replace4). An IPv4 UDP
 * checksum of 0 (none) stays 0; a computed 0 is written as 0xffff (RFC 768).
 */
#ifndef EP_NAT_H
#define EP_NAT_H

#include "ep_structs.h"

/* Fills `n` to rewrite packet `p`'s destination (EP_NAT_DST) or source (EP_NAT_SRC) to addr:port
 * (port in network order). */
static __always_inline void ep_nat_set(struct ep_nat *n, __u8 op, const struct ep_pkt *p, const __u8 *addr, __be16 port)
{
	n->op = op;
	n->family = p->family;
	n->proto = p->proto;
	n->l3_off = p->l3_off;
	n->l4_off = p->l4_off;
	__builtin_memcpy(n->new_addr, addr, 16);
	n->new_port = port;
}

/* Offsets of what an ep_nat changes: the address, the port and the L4 checksum field. */
static __always_inline void ep_nat_offsets(const struct ep_nat *n, __u32 *aoff, __u32 *poff, __u32 *coff)
{
	bool dst = n->op == EP_NAT_DST;
	if (n->family == 4)
		*aoff = n->l3_off + (dst ? 16 : 12); /* struct iphdr: saddr, daddr */
	else
		*aoff = n->l3_off + (dst ? 24 : 8);  /* struct ipv6hdr: saddr, daddr */
	*poff = n->l4_off + (dst ? 2 : 0);
	*coff = n->l4_off + (n->proto == EP_IPPROTO_TCP ? 16 : 6);
}

static __always_inline __u16 ep_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* ~old + new over the address words (2 for IPv4, 8 for IPv6), unfolded. */
static __always_inline __u32 ep_nat_addr_diff(const struct ep_nat *n, const __u8 *old)
{
	const __u16 *o = (const __u16 *)old, *w = (const __u16 *)n->new_addr;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		if (i == 2 && n->family == 4)
			break;
		sum += (__u16)~o[i];
		sum += w[i];
	}
	return sum;
}

/* XDP: writes `n` into the frame. Returns 0, or a helper's negative error (the frame is then
 * unchanged: every read comes before the first write). Through bpf_xdp_load_bytes and
 * bpf_xdp_store_bytes rather than packet pointers: offsets passed to helpers are not tracked
 * precisely by the verifier, so the header offsets do not multiply its states across the
 * classifier (packet-pointer arithmetic with them would). */
static __noinline int ep_xdp_nat(struct xdp_md *ctx, const struct ep_nat *n)
{
	__u32 aoff, poff, coff;
	__u8 old[16] = {};
	__u16 old_port, check, ipcheck = 0;
	ep_nat_offsets(n, &aoff, &poff, &coff);
	long err = bpf_xdp_load_bytes(ctx, aoff, old, n->family == 4 ? 4 : 16);
	if (!err)
		err = bpf_xdp_load_bytes(ctx, poff, &old_port, 2);
	if (!err)
		err = bpf_xdp_load_bytes(ctx, coff, &check, 2);
	if (!err && n->family == 4)
		err = bpf_xdp_load_bytes(ctx, n->l3_off + 10, &ipcheck, 2);
	if (err)
		return err;
	__u32 diff = ep_nat_addr_diff(n, old);
	bool udp = n->proto == EP_IPPROTO_UDP;
	if (!(udp && n->family == 4 && check == 0)) {
		__u16 sum = ~ep_csum_fold((__u16)~check + diff + (__u16)~old_port + n->new_port);
		check = udp && sum == 0 ? 0xffff : sum;
	}
	if (n->family == 4) {
		ipcheck = ~ep_csum_fold((__u16)~ipcheck + diff);
		err = bpf_xdp_store_bytes(ctx, n->l3_off + 10, &ipcheck, 2);
		if (!err)
			err = bpf_xdp_store_bytes(ctx, aoff, (void *)n->new_addr, 4);
	} else {
		err = bpf_xdp_store_bytes(ctx, aoff, (void *)n->new_addr, 16);
	}
	if (!err)
		err = bpf_xdp_store_bytes(ctx, coff, &check, 2);
	if (!err)
		err = bpf_xdp_store_bytes(ctx, poff, (void *)&n->new_port, 2);
	return err;
}

/* TC: writes `n` into the skb through the helpers. Returns 0 or a helper's negative error. */
static __noinline int ep_tc_nat(struct __sk_buff *skb, const struct ep_nat *n)
{
	__u32 aoff, poff, coff;
	__u8 old[16] = {};
	__u16 old_port;
	ep_nat_offsets(n, &aoff, &poff, &coff);
	__u64 mangled0 = n->proto == EP_IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	long err = bpf_skb_load_bytes(skb, aoff, old, n->family == 4 ? 4 : 16);
	if (!err)
		err = bpf_skb_load_bytes(skb, poff, &old_port, 2);
	if (err)
		return err;
	if (n->family == 4) {
		__u32 from, to;
		__builtin_memcpy(&from, old, 4);
		__builtin_memcpy(&to, n->new_addr, 4);
		err = bpf_l4_csum_replace(skb, coff, from, to, BPF_F_PSEUDO_HDR | mangled0 | 4);
		if (!err)
			err = bpf_l3_csum_replace(skb, n->l3_off + 10, from, to, 4);
		if (!err)
			err = bpf_skb_store_bytes(skb, aoff, n->new_addr, 4, 0);
	} else {
		__s64 diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)n->new_addr, 16, 0);
		err = bpf_l4_csum_replace(skb, coff, 0, diff, BPF_F_PSEUDO_HDR | mangled0);
		if (!err)
			err = bpf_skb_store_bytes(skb, aoff, n->new_addr, 16, 0);
	}
	if (!err)
		err = bpf_l4_csum_replace(skb, coff, old_port, n->new_port, mangled0 | 2);
	if (!err)
		err = bpf_skb_store_bytes(skb, poff, &n->new_port, 2, 0);
	return err;
}

#endif
