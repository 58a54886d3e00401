// SPDX-License-Identifier: Apache-2.0
/* The edgeplane datapath: one classifier (include/classifier.h, which pulls in the maps, structs
 * and parsing headers) at two hooks. */
#include "classifier.h"

#define EP_TC_ACT_OK   0
#define EP_TC_ACT_SHOT 2
#define EP_TC_PULL_LEN 256 /* enough for VLANs + IPv6 + a few extension headers + ports */

/* Uplink ingress. */
SEC("xdp")
int edge_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	return ep_classify(data, data_end, data_end - data) == EP_DROP ? XDP_DROP : XDP_PASS;
}

/* Workload interfaces, clsact ingress and egress (direct action). */
SEC("tc")
int edge_tc(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	__u32 want = len < EP_TC_PULL_LEN ? len : EP_TC_PULL_LEN;
	if (skb->data_end - skb->data < want)
		bpf_skb_pull_data(skb, want);
	/* Keep clang from reusing ctx field addresses across the pull: the verifier only accepts
	 * ctx loads at a constant offset from the unmodified ctx pointer. */
	asm volatile("" : "+r"(skb));
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	return ep_classify(data, data_end, len) == EP_DROP ? EP_TC_ACT_SHOT : EP_TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
