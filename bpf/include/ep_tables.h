/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Layout of every table shared between the edgeplane datapath programs and the agent
 * (services/node-agent/src/datapath/compile-tables.ts and table-codecs.ts write these bytes;
 * services/node-agent/test/datapath-layout.test.ts checks them against the object's BTF).
 * bpf/README.md explains the classification scheme.
 */
#ifndef EP_TABLES_H
#define EP_TABLES_H

#define EP_MAX_RULES     65536              /* bits in one rule vector */
#define EP_WORDS         (EP_MAX_RULES / 64) /* 1024 u64 words */
#define EP_SUMMARY_WORDS (EP_WORDS / 64)     /* 16 u64: bit w set iff word w is nonzero */
#define EP_PORT_NONE     65536              /* "no port": not TCP/UDP, or a non-first fragment */
#define EP_RULE_SLOTS    (EP_MAX_RULES + 1) /* per generation: default action + rules */
#define EP_GENERATIONS   2

/* Protocol slots of the L4 field. */
enum ep_slot { EP_SLOT_TCP, EP_SLOT_UDP, EP_SLOT_ICMP, EP_SLOT_ICMPV6, EP_SLOT_OTHER, EP_SLOT_COUNT };

/* Wildcard vectors (rules that do not constrain a field), one per (field, wildcard id). */
enum ep_wild {
	EP_WILD_SRC4, EP_WILD_SRC6, EP_WILD_DST4, EP_WILD_DST6,
	EP_WILD_L4 /* + slot */, EP_WILD_COUNT = EP_WILD_L4 + EP_SLOT_COUNT,
};

/* LPM key tag byte (data[0]): field in the high nibble; family (4 or 6) for SRC/DST, the
 * protocol slot for L4 in the low one. All three fields share one trie, so an apply installs
 * one LPM map. L4 keys: data[1] = 0 and data[2..3] = destination port (big endian), or
 * data[1] = 1 for "no port"; port ranges are stored as prefixes of that 24-bit space. */
#define EP_TAG_SRC 0x00
#define EP_TAG_DST 0x10
#define EP_TAG_L4  0x20

enum ep_action { EP_ACT_ALLOW = 0, EP_ACT_DENY = 1, EP_ACT_RATE_LIMIT = 2 };

/* Global per-CPU counters for frames that never reach a rule. */
enum ep_stat { EP_STAT_NON_IP, EP_STAT_MALFORMED, EP_STAT_UNCONFIGURED, EP_STAT_RATE_LIMITED, EP_STAT_COUNT };

#define EP_NANO 1000000000ULL /* token unit: 1 packet = 1e9 nano-tokens */

struct ep_lpm_key {
	__u32 prefixlen; /* 8 + CIDR length; the tag byte is always part of the prefix */
	__u8 data[20];   /* data[0] = tag, data[1..] = address (4 or 16 bytes) */
};

struct ep_bitvec {
	__u64 summary[EP_SUMMARY_WORDS];
	__u64 words[EP_WORDS];
};

/* LPM value: the class of the longest matching prefix, with its summary inline so the fast
 * path needs no separate summary lookup, and (fingerprint format 3) the class's rules 0..31 as
 * bits (`low`: bit i = rule i), which a small generation (EP_GEN_F_SMALL) classifies with alone. */
struct ep_class_ref {
	__u32 class_id;
	__u32 low;
	__u64 summary[EP_SUMMARY_WORDS];
};

/* A small generation's prefixes as lists to scan (EP_GEN_F_SCAN; bpf/README.md, "Small rule
 * sets"): per field (0 source IPv4, 1 destination IPv4, 2 protocol slot + port) the LPM entries of
 * that field, longest prefix first, so the first entry whose masked value equals the packet's key
 * is the one the LPM lookup would find. Keys: an IPv4 address as a number; for the L4 field the
 * slot << 24 | the LPM key's 24 bits (a port, or 1 << 16 for none). `low`: the entry's class's
 * rules 0..31 OR the field's wildcard rules 0..31 (for the L4 field, its slot's), so the three
 * answers ANDed hold every matching rule. The compiler always stores each field's tag-only entry
 * (mask 0, or the slot's byte), so the scan of tables it wrote always ends at a match. */
#define EP_SCAN_ENTRIES 64
struct ep_scan_entry {
	__u32 value;
	__u32 mask;
	__u32 low;
};
struct ep_scan {
	__u32 count[3];
	__u32 pad;
	struct ep_scan_entry entries[3][EP_SCAN_ENTRIES];
};

/* Agent-only bookkeeping per generation (never read by the programs). */
struct ep_meta {
	__u32 rule_count;
	__u32 valid;         /* 0 while the generation is being rewritten */
	__u8 fingerprint[32]; /* sha-256 of the compiled tables */
};

struct ep_word_key {
	__u32 class_id;
	__u32 word;
};

/* Rules table: index gen * EP_RULE_SLOTS + 0 is the default action, + i + 1 is rule i. */
struct ep_rule {
	__u32 action;
	__u32 rule_id;
	__u64 pps;
	__u64 burst_nt; /* burst in nano-tokens */
	__u64 fill_ns;  /* time to refill an empty bucket: ceil(burst * 1e9 / pps) */
};

struct ep_counter {
	__u64 packets;
	__u64 bytes;
};

struct ep_bucket_key {
	__u32 rule_id;
	__u32 family;
	__u8 addr[16];
};

struct ep_bucket {
	__u64 tokens_nt;
	__u64 last_ns;
};

/* ---- Shadow classification (issue 18; bpf/README.md, "Shadow classification") ---------------- */

/* ep_shadow[0].flags: a candidate is installed; packets the enforced rule set classifies are
 * classified by it too. */
#define EP_SHADOW_F_ON 0x1
/* ep_shadow_cfg.flags, the agent's alone (the programs never read it): the candidate's stats were
 * counted once per packet, AGREED or a verdict (enum ep_shadow_stat), since the candidate was set
 * or since these programs replaced ones that counted every packet CLASSIFIED and its verdict too
 * (shadow-tables.ts, ShadowTables.recount). */
#define EP_SHADOW_F_ONCE 0x2
/* Bytes of the candidate's name (the caller's name for it) kept in ep_shadow[0]: a name of
 * MAX_SHADOW_CANDIDATE_LENGTH (1,024) UTF-16 code units (proto/src/limits.ts) needs at most 3 bytes
 * of UTF-8 for each, whatever its characters. The programs never read it: its size costs a packet
 * nothing. */
#define EP_SHADOW_NAME_MAX 3072
/* Differing packets sampled per CPU (ep_shadow_samples, a ring per CPU); the agent keeps the
 * newest EP_SHADOW_SAMPLES of all CPUs. */
#define EP_SHADOW_SAMPLES 64

/* ep_shadow[0]. The programs read only `flags`; the rest is the agent's, kept beside the flag so
 * that the candidate and what it is called survive an agent restart with it. */
struct ep_shadow_cfg {
	__u32 flags;          /* EP_SHADOW_F_ON, EP_SHADOW_F_ONCE */
	__u32 rule_count;     /* rules of the candidate (slots 1..rule_count of ep_shadow_rules) */
	__u32 name_len;       /* bytes of name used */
	__u32 epoch;          /* ep_gen_cfg.epoch of the enforced rule set the union holds; 0: the union holds the candidate only */
	__u8 fingerprint[32]; /* sha-256 of the candidate as compiled (TablesSpec.fingerprint) */
	__u8 name[EP_SHADOW_NAME_MAX];
};                            /* 48 + EP_SHADOW_NAME_MAX bytes */

/* Per-CPU shadow counters (ep_shadow_stats), packets and bytes. A packet classified by both rule
 * sets is counted in exactly one of the first three, so that a reading of them, one syscall each
 * while packets are counted, is never torn: the packets classified are their sum. (Before
 * EP_SHADOW_F_ONCE, slot 0 counted every packet classified, and a reading could show a packet
 * classified whose verdict it had not read yet.) */
enum ep_shadow_stat {
	EP_SHADOW_STAT_AGREED /* classified by both the enforced rule set and the candidate, the same verdict */,
	EP_SHADOW_STAT_WOULD_DROP /* the enforced rule set passed it, the candidate would drop it */,
	EP_SHADOW_STAT_WOULD_ALLOW /* the enforced rule set dropped it, the candidate would pass it */,
	EP_SHADOW_STAT_SAMPLED /* samples written on this CPU: packets mod EP_SHADOW_SAMPLES is its ring's next slot */,
	EP_SHADOW_STAT_COUNT,
};

enum ep_shadow_verdict { EP_SHADOW_WOULD_DROP = 1, EP_SHADOW_WOULD_ALLOW = 2 };

/* ep_shadow_slots[u]: union rule u's slot in each rule set (rule i: i + 1; 0: not one of its rules). */
struct ep_shadow_slot {
	__u32 enforced;  /* slot of the live generation's ep_rules (with the generation added by the program) */
	__u32 candidate; /* slot of ep_shadow_rules and ep_shadow_counters */
};

/* ep_shadow_member[0]: which union rules belong to which rule set, one bit per union rule. */
struct ep_shadow_member {
	__u64 enforced[EP_WORDS];
	__u64 candidate[EP_WORDS];
};

/* One packet whose verdicts differed (ep_shadow_samples, per CPU). */
struct ep_shadow_sample {
	__u64 ns;                /* bpf_ktime_get_ns() when taken (orders samples across CPUs); 0: an empty slot */
	__u32 enforced_rule_id;  /* ep_rule.rule_id of the enforced slot (the default action's id for slot 0) */
	__u32 candidate_rule_id; /* the same of the candidate's slot */
	__u8 family;             /* 4 or 6 */
	__u8 proto;
	__u8 verdict;            /* enum ep_shadow_verdict */
	__u8 pad;
	__u32 port;              /* destination port, or EP_PORT_NONE */
	__u8 src[16];            /* IPv4 in the first 4 bytes */
	__u8 dst[16];
};                               /* 56 bytes */

/* ---- Connection tracking (bpf/CONNTRACK.md is the contract) ---------------------------------- */

/* 1: the object before conntrack (it has no marker); 2: conntrack keyed by the original
 * direction; 3: the direction-independent key below (bpf/CONNTRACK.md, "Upgrades"); 4: the
 * connection entry carries its NAT (struct ep_ct_nat) and the load-balancing maps exist
 * (bpf/LB.md); 5: forwarding modes (struct ep_ct_nat's second half); 6: the IPv4 flow table
 * (ep_ct4, ep_ct4_cold) in front of ep_ct. */
#define EP_LAYOUT_VERSION 6

/* Rule flags live in the high bits of ep_rule.action (the layout of ep_rule is unchanged). */
#define EP_ACT_MASK     0xff
#define EP_RULE_F_TRACK 0x100 /* an allowed packet creates an entry */

/* ep_ct_entry.rule_id of entries no rule created. */
#define EP_CT_RULE_EGRESS  0xfffffffe /* uplink egress tracking */
#define EP_CT_RULE_DEFAULT 0xffffffff /* the default action */

/* Key of both connection tables (layout 3): the same for both directions of a flow, so a packet
 * is looked up once. TCP/UDP: the two endpoints in canonical order, side a (src, sport) the lower
 * of the two compared as (address bytes, then port), side b (dst, dport) the other; the entry's
 * EP_CT_F_ORIG_B says which side opened the flow. ICMP echo: side a is the requester (the
 * identifier is both ports); a request each way is a flow of its own, as in Linux. */
struct ep_ct_key {
	__u8 family;   /* 4 or 6 */
	__u8 proto;    /* 6 tcp, 17 udp, 1 icmp, 58 icmpv6 */
	__u16 pad;
	__u16 sport;   /* side a's port, host byte order; ICMP echo: the identifier */
	__u16 dport;   /* side b's port; ICMP echo: the identifier too */
	__u8 src[16];  /* side a's address; IPv4 in the first 4 bytes, rest zero */
	__u8 dst[16];  /* side b's address */
};                     /* 40 bytes */

/* The NAT of a load-balanced flow (layout 4; bpf/LB.md, "Connection entries of a load-balanced
 * flow"). On the service entry S (key: client <-> VIP) the backend, flag EP_CT_NAT_DNAT; on the
 * reverse entry B (key: client <-> backend) the VIP, flag EP_CT_NAT_REVNAT. Zeros: not NATed. */
#define EP_CT_NAT_DNAT   0x1 /* original-direction packets get destination addr:port */
#define EP_CT_NAT_REVNAT 0x2 /* reply-direction packets get source addr:port; lives as long as its S */
/* Layout 5 (bpf/LB.md, "Forwarding modes"): */
#define EP_CT_NAT_DSR    0x4 /* S of a DSR flow: original-direction packets are encapsulated towards addr, from addr2 */
#define EP_CT_NAT_SNAT   0x8 /* full NAT: on S original-direction packets also get source addr2:port2; on B
			      * reply-direction packets also get destination addr2:port2 (the client) */
struct ep_ct_nat {
	__u8 addr[16];     /* IPv4 in the first 4 bytes, rest zero */
	__be16 port;       /* network byte order, written into the packet as is */
	__u8 flags;        /* EP_CT_NAT_* */
	__u8 pad;
	__u32 svc_id;      /* the service (ep_lb_svc.svc_id), nonzero */
	/* Layout 5: the other side of a DSR or full-NAT flow (zeros otherwise). S: the node's source
	 * address towards the backend (DSR: the outer source; full NAT: the new source, with the
	 * allocated port in port2). B of full NAT: the client and its port. */
	__u8 addr2[16];
	__be16 port2;
	__u16 mtu;         /* S of DSR: the MTU of the node's route to the backend (0: unknown) */
	__u32 pad2;
};                         /* 48 bytes */

struct ep_ct_entry {
	__u64 expires_ns;  /* deadline, bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC at tick resolution) */
	__u64 created_ns;
	__u64 packets[2];  /* [0] original direction, [1] reply (atomic adds) */
	__u64 bytes[2];
	__u32 rule_id;     /* rule id that admitted it; EP_CT_RULE_EGRESS, EP_CT_RULE_DEFAULT */
	__u32 epoch;       /* rule-set epoch it was last checked against */
	__u8 state;        /* enum ep_ct_state */
	__u8 flags;        /* EP_CT_F_* */
	__u16 pad0;
	__u32 pad1;
	struct ep_ct_nat nat; /* layout 4: zeros when the flow is not NATed (layout 5: 48 bytes) */
};                         /* 112 bytes */

enum ep_ct_state {
	EP_CT_NONE, EP_CT_SYN_SENT, EP_CT_SYN_RECV, EP_CT_ESTABLISHED, EP_CT_FIN_WAIT,
	EP_CT_CLOSING, EP_CT_CLOSED, EP_CT_UDP, EP_CT_ICMP,
};
#define EP_CT_F_SEEN_REPLY 0x01
#define EP_CT_F_FIN_ORIG   0x02
#define EP_CT_F_FIN_REPLY  0x04
#define EP_CT_F_EGRESS     0x08 /* created by uplink egress tracking */
#define EP_CT_F_ORIG_B     0x10 /* layout 3: side b of the key opened the flow (original direction b -> a) */

enum ep_ct_timeout {
	EP_CT_TO_TCP_SYN, EP_CT_TO_TCP_ESTABLISHED, EP_CT_TO_TCP_CLOSING, EP_CT_TO_UDP, EP_CT_TO_ICMP,
	EP_CT_TO_COUNT,
};
/* ep_ct_cfg[0]; a zero timeout means the default (Cilium's: 60 s, 6 h, 10 s, 60 s, 60 s). */
struct ep_ct_cfg {
	__u64 timeout_ns[EP_CT_TO_COUNT];
};

/* Per generation (ep_gen_cfg[gen]), read after ep_active. */
#define EP_GEN_F_TRACK_EGRESS 0x1 /* uplink egress creates entries for new outbound flows */
#define EP_GEN_F_CUT          0x2 /* established flows are re-checked when the epoch changes */
#define EP_GEN_F_SERVICES     0x4 /* layout 4: the generation has services (ep_lb_vip is looked up) */
#define EP_GEN_F_SMALL        0x8 /* at most EP_SMALL_RULES rules and no prefix list: classified
				   * from the class refs' `low` bits and the wildcards' first word */
#define EP_SMALL_RULES        32
#define EP_GEN_F_SCAN         0x10 /* small, and its IPv4 and port prefixes fit ep_scan: IPv4
				   * packets are classified by scanning them (ep_rule_slot_scan) */
struct ep_gen_cfg {
	__u32 flags;
	__u32 epoch; /* increases with every apply, never 0 */
};

/* Control endpoints (ep_ct_control): packets FROM {family, proto, addr, port} always pass.
 * ep_ct_control_ports: a bitmap of their ports (EP_CT_CONTROL_PORT_WORDS u64 words), a filter
 * before the hash lookup. */
#define EP_CT_CONTROL_PORT_WORDS (65536 / 64)
struct ep_ct_control_key {
	__u8 family;
	__u8 proto;
	__u16 port;    /* host byte order */
	__u8 addr[16];
};

enum ep_ct_stat {
	EP_CT_STAT_ESTABLISHED /* packets passed by an entry */, EP_CT_STAT_RELATED, EP_CT_STAT_CREATED,
	EP_CT_STAT_PROMOTED, EP_CT_STAT_INSERT_FAILED, EP_CT_STAT_EXPIRED, EP_CT_STAT_CUT,
	EP_CT_STAT_CONTROL, EP_CT_STAT_COUNT,
};

/* The IPv4 flow table (layout 6; CONNTRACK.md, "The IPv4 table"): an IPv4 TCP or UDP flow
 * without NAT in one 64-byte line of ep_ct4 (an ARRAY of a power of two slots, open addressing,
 * EP_CT4_PROBES slots from the flow's home), what only listings read in ep_ct4_cold at the same
 * index. The key is ep_ct_key's (side a, side b, ports in host byte order) without family and
 * padding; the other fields are ep_ct_entry's. */
struct ep_ct4_slot {
	__u32 tag;         /* EP_CT4_EMPTY, EP_CT4_DEAD, a flow's busy tag while written, its live tag */
	__u32 epoch;
	__u32 a;           /* side a's address, network byte order */
	__u32 b;           /* side b's address */
	__u16 ap;          /* side a's port, host byte order */
	__u16 bp;
	__u8 proto;
	__u8 state;        /* enum ep_ct_state */
	__u8 flags;        /* EP_CT_F_* */
	__u8 pad;
	__u64 expires_ns;
	__u64 packets[2];  /* atomic adds */
	__u64 bytes[2];
} __attribute__((aligned(64)));  /* 64 bytes: one cache line */

struct ep_ct4_cold {
	__u64 created_ns;
	__u32 rule_id;
	__u32 pad;
};                                /* 16 bytes */

#define EP_CT4_EMPTY  0          /* never held a flow: every probe sequence ends here */
#define EP_CT4_DEAD   2          /* held one (deleted): free, probe sequences go on past it */
#define EP_CT4_LIVE   0x80000000 /* a live tag is the flow's busy tag with this bit */
#define EP_CT4_PROBES 8          /* slots from a flow's home that may hold it */

/* ctx of the ep_ct_sweep program (BPF_PROG_TEST_RUN of a BPF_PROG_TYPE_SYSCALL program). */
struct ep_ct_sweep_args {
	__u32 budget;  /* most entries deleted by one run */
	__u32 pad;
};

/* ---- L4 load balancing (bpf/LB.md; the entries are in ep_lb.h) ------------------------------ */

/* ep_lb_cfg[0], written by the agent at open: what one generation of ep_lb_slots and
 * ep_lb_backends holds (half of each map), so generation g's block i is g * blocks + i. */
struct ep_lb_cfg {
	__u32 blocks;   /* EP_LB_BLOCKS */
	__u32 backends; /* EP_LB_BACKENDS */
};

/* Per-CPU load-balancing counters (ep_lb_stats). */
enum ep_lb_stat {
	EP_LB_STAT_SELECTED /* new flows given a backend */, EP_LB_STAT_NO_BACKEND /* new flows to a VIP without one: dropped */,
	EP_LB_STAT_REVNAT /* replies reverse-NATed */, EP_LB_STAT_ORPHAN /* reverse entries deleted: their service entry was gone */,
	/* Layout 5 (forwarding modes): */
	EP_LB_STAT_ENCAP /* DSR packets encapsulated towards their backend */,
	EP_LB_STAT_SNAT_FAILED /* full-NAT new flows dropped: no free source port in EP_LB_SNAT_TRIES probes */,
	EP_LB_STAT_TOO_BIG /* DSR packets too big once encapsulated: answered with ICMP frag-needed / packet-too-big, or dropped */,
	EP_LB_STAT_COUNT,
};

#endif
