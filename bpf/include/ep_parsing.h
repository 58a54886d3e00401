/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Frame parsing: Ethernet, up to EP_MAX_VLAN VLAN tags, IPv4 (options, fragments) or IPv6 (up
 * to EP_MAX_EXT extension headers), then the ports of TCP/UDP (the destination port for
 * classification; the source port, TCP flags and ICMP type/echo id for conntrack only, in
 * fields classification never reads). Touches no map.
 * (katran: pckt_parsing.h.)
 */
#ifndef EP_PARSING_H
#define EP_PARSING_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "ep_structs.h"

/* ICMP/ICMPv6 type -> enum ep_ct_kind (conntrack only; classification sees port none). */
static __always_inline __u8 ep_icmp_kind(__u32 family, __u32 proto, __u8 type)
{
	if (family == 4 && proto == EP_IPPROTO_ICMP) {
		if (type == 8)
			return EP_CTK_ECHO_REQ;
		if (type == 0)
			return EP_CTK_ECHO_REP;
		if (type == 3 || type == 11 || type == 12)
			return EP_CTK_ICMP_ERR;
	} else if (family == 6 && proto == EP_IPPROTO_ICMPV6) {
		if (type == 128)
			return EP_CTK_ECHO_REQ;
		if (type == 129)
			return EP_CTK_ECHO_REP;
		if (type >= 1 && type <= 4)
			return EP_CTK_ICMP_ERR;
	}
	return EP_CTK_NONE;
}

/* The L4 header at `off`: the destination port (what classification sees) and, for conntrack,
 * the source port, TCP flags or ICMP type and echo id. Only a TCP/UDP header too short for its
 * ports (or past EP_MAX_L3_OFF) is malformed; a TCP header too short for its flags or an ICMP
 * header shorter than 8 bytes is classified as before and simply not tracked. `off` is bounded
 * before the header's address is taken: the walk of IPv6 extension headers hands over an offset
 * the verifier knows nothing about (ep_parse_ipv6). */
static __always_inline int ep_parse_l4(void *data, void *data_end, __u32 off, struct ep_pkt *p)
{
	bool ports = p->proto == EP_IPPROTO_TCP || p->proto == EP_IPPROTO_UDP;
	if (!ports)
		p->port = EP_PORT_NONE;
	if (off > EP_MAX_L3_OFF)
		return ports ? EP_PARSE_MALFORMED : EP_PARSE_OK;
	__u8 *l4 = data + off;
	if (!ports) {
		if ((void *)(l4 + 8) <= data_end) {
			p->l4_off = off;
			p->ct = ep_icmp_kind(p->family, p->proto, l4[0]);
			p->sport = ((__u16)l4[4] << 8) | l4[5];
			p->dport = p->sport;
		}
		return EP_PARSE_OK;
	}
	p->l4_off = off;
	if ((void *)(l4 + 4) > data_end)
		return EP_PARSE_MALFORMED;
	p->port = ((__u32)l4[2] << 8) | l4[3];
	p->sport = ((__u16)l4[0] << 8) | l4[1];
	p->dport = p->port;
	if (p->proto == EP_IPPROTO_UDP) {
		p->ct = EP_CTK_FLOW;
	} else if ((void *)(l4 + 14) <= data_end) {
		p->tcp_flags = l4[13];
		p->ct = EP_CTK_FLOW;
	}
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
	p->l3_off = off;
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
	p->l3_off = off;
	__builtin_memcpy(p->src, &ip6->saddr, 16);
	__builtin_memcpy(p->dst, &ip6->daddr, 16);
	__u32 nh = ip6->nexthdr;
	off += sizeof(*ip6);

	for (int i = 0; i < EP_MAX_EXT && ep_is_ext(nh); i++) {
		if (off > EP_MAX_L3_OFF)
			return EP_PARSE_MALFORMED;
		__u8 *h = data + off;
		if ((void *)(h + 8) > data_end)
			return EP_PARSE_MALFORMED;
		__u32 len;
		if (nh == EP_IPPROTO_FRAGMENT) {
			if ((((__u32)h[2] << 8) | h[3]) >> 3) {
				p->proto = h[0];
				p->port = EP_PORT_NONE;
				return EP_PARSE_OK;
			}
			len = 8;
		} else if (nh == EP_IPPROTO_AH) {
			len = ((__u32)h[1] + 2) * 4;
		} else {
			len = ((__u32)h[1] + 1) * 8;
		}
		nh = h[0];
		/* The offset reached goes through p->l4_off (where the L4 header will be) and is read
		 * back as a value the verifier knows only as a u16: each chain of header types would
		 * otherwise reach the next header with a range of its own (a constant after fragment
		 * headers, multiples of 4 after AH, of 8 after the others), and the verifier would
		 * walk every chain of up to EP_MAX_EXT headers apart (115,000 of the 276,000
		 * instructions edge_xdp took with the parse a global function), against a few thousand
		 * with one state per depth. */
		p->l4_off = off + len;
		off = *(volatile __u16 *)&p->l4_off;
	}
	/* Still inside the extension-header chain after EP_MAX_EXT headers. */
	if (ep_is_ext(nh))
		return EP_PARSE_MALFORMED;
	p->proto = nh;
	return ep_parse_l4(data, data_end, off, p);
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

#endif
