/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet-side constants and structs of the edgeplane programs: what the parser reads from a
 * frame and the per-packet match state. Nothing here is shared with the agent; the tables the
 * agent writes are in ep_tables.h. (katran keeps these apart the same way: balancer_structs.h.)
 */
#ifndef EP_STRUCTS_H
#define EP_STRUCTS_H

#include "vmlinux.h"
#include "ep_tables.h"

#define EP_ETH_P_IP     0x0800
#define EP_ETH_P_IPV6   0x86DD
#define EP_ETH_P_8021Q  0x8100
#define EP_ETH_P_8021AD 0x88A8

/* IP protocol numbers (vmlinux.h carries only the IPv4 enum, not the IPv6 ones). */
#define EP_IPPROTO_HOPOPTS  0
#define EP_IPPROTO_ICMP     1
#define EP_IPPROTO_TCP      6
#define EP_IPPROTO_UDP      17
#define EP_IPPROTO_ROUTING  43
#define EP_IPPROTO_FRAGMENT 44
#define EP_IPPROTO_AH       51
#define EP_IPPROTO_ICMPV6   58
#define EP_IPPROTO_DSTOPTS  60

#ifndef EP_MAX_VLAN /* fixtures/edgeplane_variant.bpf.c changes it */
#define EP_MAX_VLAN     2    /* tags skipped before the IP header */
#endif
#define EP_MAX_EXT      8    /* IPv6 extension headers walked */
#define EP_MAX_L3_OFF   1024 /* bytes of L2 + L3 headers we accept before the L4 header */

enum ep_verdict { EP_PASS, EP_DROP };
enum ep_parse_result { EP_PARSE_OK, EP_PARSE_NON_IP, EP_PARSE_MALFORMED };

/* What conntrack can do with a parsed packet (struct ep_pkt.ct). */
enum ep_ct_kind {
	EP_CTK_NONE,      /* not tracked: classified every time */
	EP_CTK_FLOW,      /* TCP (ports and flags present), UDP (ports present) */
	EP_CTK_ECHO_REQ,  /* ICMP echo request (8) / ICMPv6 (128): may create an entry */
	EP_CTK_ECHO_REP,  /* ICMP echo reply (0) / ICMPv6 (129): reply direction only */
	EP_CTK_ICMP_ERR,  /* ICMPv4 3, 11, 12; ICMPv6 1, 2, 3, 4: related to the embedded tuple */
};

#define EP_TCP_FIN 0x01
#define EP_TCP_SYN 0x02
#define EP_TCP_RST 0x04
#define EP_TCP_ACK 0x10

struct ep_pkt {
	__u32 family; /* 4 or 6 */
	__u32 proto;  /* IP protocol / IPv6 upper-layer header */
	__u32 port;   /* destination port, or EP_PORT_NONE */
	__u8 src[16];
	__u8 dst[16];
	/* Conntrack only: classification reads none of the fields below. */
	__u16 sport;     /* TCP/UDP source port, ICMP echo identifier (host order) */
	__u16 dport;     /* TCP/UDP destination port, ICMP echo identifier (host order) */
	__u8 tcp_flags;  /* EP_TCP_* */
	__u8 ct;         /* enum ep_ct_kind */
	__u16 l4_off;    /* offset of the L4 header in the frame (the IPv6 walk keeps its offset here meanwhile) */
	__u16 l3_off;    /* offset of the IP header in the frame */
	__u16 pad;
};

/* A rewrite ep_datapath asks its hook to make (bpf/LB.md, "A packet"): the destination (DNAT of
 * a load-balanced flow's original direction) or the source (reverse NAT of its replies) becomes
 * new_addr:new_port. The hook writes it (ep_nat.h), reading the old address and port from the
 * packet: XDP with incremental checksums, TC through the skb helpers. */
enum ep_nat_op { EP_NAT_NONE, EP_NAT_DST, EP_NAT_SRC, EP_NAT_LB /* layout 5: a DSR or full-NAT rewrite, in ep_lb_xlat (ep_lb_modes.h) */ };
struct ep_nat {
	__u8 op;          /* enum ep_nat_op */
	__u8 family;      /* 4 or 6 */
	__u8 proto;       /* 6 or 17 */
	__u8 pad;
	__u16 l3_off;
	__u16 l4_off;
	__u8 new_addr[16];
	__be16 new_port;  /* network byte order, as written */
	__u16 pad2;
};

struct ep_vlan {
	__be16 tci;
	__be16 proto;
};

/* Per-packet match state. It lives in a per-CPU scratch map rather than on the stack: the
 * bpf_loop callback cannot take map pointers from the caller's stack, and the three class
 * summaries would not fit the 512-byte stack anyway. XDP and TC programs do not nest on a CPU.
 */
struct ep_match {
	__u64 cand[EP_SUMMARY_WORDS];       /* candidate words not yet tried */
	__u64 csum[3][EP_SUMMARY_WORDS];    /* class summary per field: src, dst, l4 */
	__u32 cls[3];                       /* class per field */
	__u32 wid[3];                       /* wildcard vector index per field (with generation) */
	__u32 gen;
	__u32 block;                        /* lowest summary word that may hold candidates */
	__s32 rule;                         /* first matching rule, -1 while none; in a union walk the first enforced member */
	__s32 crule;                        /* union walk (ep_shadow.h): the first candidate member, -1 while none */
	__u32 want;                         /* union walk: EP_WANT_* still looked for */
	__u32 lhit[2];                      /* prefix lists (ep_lists.h) holding the source / destination: bits of the rule set's lists */
	__u32 lbase;                        /* ep_lvec index of the generation's source vector of list 0 */
	__u32 lgen;                         /* ep_lists_match: the generation looked at (or EP_LIST_SHADOW), the field << 8 */
	__u64 lsum[2][EP_SUMMARY_WORDS];    /* per address field, the OR of the summaries of the lists in lhit */
	struct {                            /* ep_lists_match's LPM key (off the stack: struct ep_blk6_key's layout) */
		__u32 prefixlen;
		__u8 addr[16];
	} lkey;
};

/* What a walk over the shadow union's tables (ep_shadow.h) looks for: the first rule of the
 * enforced rule set, of the candidate, or both. */
#define EP_WANT_ENFORCED  0x1
#define EP_WANT_CANDIDATE 0x2

#endif
