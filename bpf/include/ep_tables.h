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
 * path needs no separate summary lookup. */
struct ep_class_ref {
	__u32 class_id;
	__u32 pad;
	__u64 summary[EP_SUMMARY_WORDS];
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

#endif
