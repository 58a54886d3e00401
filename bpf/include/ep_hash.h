/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The flow hash of L4 load balancing (issue 14, bpf/LB.md): which slot of a service's Maglev
 * table a new flow takes. jhash2 (Bob Jenkins' lookup3 hashword(), as Linux's
 * include/linux/jhash.h has it, and as Cilium's and Katran's datapaths hash flows) of the tuple
 * with a fixed seed. Touches no map.
 *
 * Twin: services/node-agent/src/datapath/flow-hash.ts (reference model, tests), held to this one
 * by flow-hash-differential.test.ts through BPF_PROG_TEST_RUN of fixtures/flow_hash.bpf.c.
 *
 * Compatibility rule: the words below, jhash2 and EP_FLOW_HASH_SEED are part of the datapath
 * contract (every node must map a flow to the same slot, across versions too); change them only
 * as a new, versioned hash. The seed is fixed and public, so a client can predict which backend
 * a tuple reaches (it chooses its source port anyway); a per-fleet secret seed would need to be
 * the same on every node.
 */
#ifndef EP_HASH_H
#define EP_HASH_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define EP_FLOW_HASH_SEED  0x45504c42 /* "EPLB" */
#define EP_FLOW_HASH_WORDS 10
#define EP_JHASH_INITVAL   0xdeadbeef

static __always_inline __u32 ep_rol32(__u32 x, int k)
{
	return (x << k) | (x >> (32 - k));
}

#define ep_jhash_mix(a, b, c)                                    \
	do {                                                     \
		a -= c; a ^= ep_rol32(c, 4);  c += b;            \
		b -= a; b ^= ep_rol32(a, 6);  a += c;            \
		c -= b; c ^= ep_rol32(b, 8);  b += a;            \
		a -= c; a ^= ep_rol32(c, 16); c += b;            \
		b -= a; b ^= ep_rol32(a, 19); a += c;            \
		c -= b; c ^= ep_rol32(b, 4);  b += a;            \
	} while (0)

#define ep_jhash_final(a, b, c)                                  \
	do {                                                     \
		c ^= b; c -= ep_rol32(b, 14);                    \
		a ^= c; a -= ep_rol32(c, 11);                    \
		b ^= a; b -= ep_rol32(a, 25);                    \
		c ^= b; c -= ep_rol32(b, 16);                    \
		a ^= c; a -= ep_rol32(c, 4);                     \
		b ^= a; b -= ep_rol32(a, 14);                    \
		c ^= b; c -= ep_rol32(b, 24);                    \
	} while (0)

/* jhash2 of EP_FLOW_HASH_WORDS words (10: three mixes, then one word and the final mix),
 * unrolled: the length is fixed, so there is no loop for the verifier. */
static __always_inline __u32 ep_jhash2_10(const __u32 k[EP_FLOW_HASH_WORDS], __u32 initval)
{
	__u32 a, b, c;

	a = b = c = EP_JHASH_INITVAL + (EP_FLOW_HASH_WORDS << 2) + initval;
	a += k[0]; b += k[1]; c += k[2];
	ep_jhash_mix(a, b, c);
	a += k[3]; b += k[4]; c += k[5];
	ep_jhash_mix(a, b, c);
	a += k[6]; b += k[7]; c += k[8];
	ep_jhash_mix(a, b, c);
	a += k[9];
	ep_jhash_final(a, b, c);
	return c;
}

/* 4 address bytes as a little-endian word: defined on bytes, so the hash is the same on any
 * host (and needs no aligned load). */
static __always_inline __u32 ep_hash_word(const __u8 *b)
{
	return (__u32)b[0] | ((__u32)b[1] << 8) | ((__u32)b[2] << 16) | ((__u32)b[3] << 24);
}

/*
 * The hash of a new flow: words 0-3 the source address (16 bytes, IPv4 in the first 4 and the
 * rest zero), 4-7 the destination, 8 `sport | dport << 16` (host order), 9 `family | proto << 8`.
 */
static __always_inline __u32 ep_flow_hash(__u32 family, __u32 proto, const __u8 saddr[16], const __u8 daddr[16],
					  __u16 sport, __u16 dport)
{
	__u32 k[EP_FLOW_HASH_WORDS];

	k[0] = ep_hash_word(saddr);
	k[1] = ep_hash_word(saddr + 4);
	k[2] = ep_hash_word(saddr + 8);
	k[3] = ep_hash_word(saddr + 12);
	k[4] = ep_hash_word(daddr);
	k[5] = ep_hash_word(daddr + 4);
	k[6] = ep_hash_word(daddr + 8);
	k[7] = ep_hash_word(daddr + 12);
	k[8] = (__u32)sport | ((__u32)dport << 16);
	k[9] = (family & 0xff) | ((proto & 0xff) << 8);
	return ep_jhash2_10(k, EP_FLOW_HASH_SEED);
}

/* Client-IP session affinity: every flow of one source address hashes alike (ep_flow_hash with
 * only family and source kept). */
static __always_inline __u32 ep_client_hash(__u32 family, const __u8 saddr[16])
{
	__u8 none[16] = {};

	return ep_flow_hash(family, 0, saddr, none, 0, 0);
}

/* The slot of a flow hash in a table of m slots (m <= 131071: modulo bias under 2^-15). */
static __always_inline __u32 ep_maglev_slot(__u32 hash, __u32 m)
{
	return hash % m;
}

#endif
