/* SPDX-License-Identifier: Apache-2.0 */
/*
 * L4 load balancing (issue 14): the entries of the load-balancing maps (layout version 4; bpf/LB.md).
 * ep_maps.h declares the maps; services/node-agent/src/datapath/lb-tables.ts writes these bytes,
 * table-codecs.ts describes them, and services/node-agent/test/datapath-layout.test.ts checks the
 * codecs against edgeplane.bpf.o's BTF (lb-layout.test.ts: the constants below).
 */
#ifndef EP_LB_H
#define EP_LB_H

#define EP_LB_BLOCK_SLOTS 32 /* u16 slots per ep_lb_slots block: 64 bytes */

/* ep_lb_svc.flags */
#define EP_LB_F_AFFINITY 0x1 /* client-IP affinity: the slot comes from ep_client_hash() */
#define EP_LB_F_DSR      0x2 /* direct server return: IP-in-IP to the backend, no NAT (layout 5) */
#define EP_LB_F_FULLNAT  0x4 /* full NAT: DNAT to the backend and SNAT to the node (layout 5) */

/* Key of ep_lb_vip (HASH): one service of one generation. */
struct ep_lb_vip_key {
	__u8 gen;     /* generation, as ep_active[0] */
	__u8 family;  /* 4 or 6 */
	__u8 proto;   /* 6 tcp, 17 udp */
	__u8 pad;
	__u16 port;   /* the VIP's port, host byte order (as ep_ct_key) */
	__u16 pad2;
	__u8 vip[16]; /* IPv4 in the first 4 bytes, rest zero */
};                    /* 24 bytes */

/* Value of ep_lb_vip. */
struct ep_lb_svc {
	__u32 block;        /* first block of the table in ep_lb_slots (generation-relative) */
	__u32 m;            /* table size; 0: no backend of positive weight -> drop */
	__u32 backend_base; /* first of its backends in ep_lb_backends (generation-relative) */
	__u16 backends;     /* how many; slot values are < backends */
	__u16 flags;        /* EP_LB_F_* */
	__u32 svc_id;       /* stable nonzero id for counters and reverse NAT */
};                          /* 20 bytes */

/* Value of ep_lb_slots (ARRAY): 32 slots of one service's Maglev table, each the service-local
 * index of a backend; slots past m in a service's last block are 0 and never read. */
struct ep_lb_block {
	__u16 backend[EP_LB_BLOCK_SLOTS];
};                                /* 64 bytes */

/* Value of ep_lb_backends (ARRAY). */
struct ep_lb_backend {
	__u8 family;    /* 4 or 6 */
	__u8 flags;     /* none yet: 0 */
	__be16 port;    /* network byte order, written into the packet as is */
	__u8 addr[16];  /* IPv4 in the first 4 bytes, rest zero */
	/* Layout 5: what the agent resolved of its route to the backend (bpf/LB.md, "The node's
	 * address towards a backend"): the source address (DSR's outer source, full NAT's new
	 * source; zeros: unresolved, and a DSR or full-NAT flow to it is dropped) and the MTU (0: unknown). */
	__u8 saddr[16];
	__u16 mtu;
	__u16 pad;
};                      /* 40 bytes */

#endif /* EP_LB_H */
