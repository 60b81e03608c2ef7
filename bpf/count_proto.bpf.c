// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * count_proto: count frames per L4 protocol (see masque_bpf.h for the map
 * layout and the verdicts).
 *
 * Ethernet (+ up to two VLAN tags) -> IPv4 / IPv6 (+ extension headers) ->
 * one slot of MASQUE_MAP_PROTO_COUNTERS. Parseable frames pass to the
 * kernel; frames with truncated or invalid L2/L3 headers are dropped and
 * counted as MASQUE_PROTO_MALFORMED.
 */
#include "parsing.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MASQUE_PROTO_SLOTS);
	__type(key, __u32);
	__type(value, struct masque_proto_counter);
} MASQUE_MAP_PROTO_COUNTERS SEC(".maps");

static __always_inline __u32 slot_for_ipproto(int proto, int is_ipv6)
{
	switch (proto) {
	case IPPROTO_TCP:
		return MASQUE_PROTO_TCP;
	case IPPROTO_UDP:
		return MASQUE_PROTO_UDP;
	case IPPROTO_ICMP:
		return is_ipv6 ? MASQUE_PROTO_OTHER : MASQUE_PROTO_ICMP;
	case IPPROTO_ICMPV6:
		return is_ipv6 ? MASQUE_PROTO_ICMPV6 : MASQUE_PROTO_OTHER;
	default:
		return MASQUE_PROTO_OTHER;
	}
}

static __always_inline void count(struct xdp_md *ctx, __u32 slot)
{
	struct masque_proto_counter *cnt;

	cnt = bpf_map_lookup_elem(&MASQUE_MAP_PROTO_COUNTERS, &slot);
	if (!cnt)
		return;
	/* Per-CPU slot: no other CPU writes it, plain increments suffice. */
	cnt->packets += 1;
	cnt->bytes += bpf_xdp_get_buff_len(ctx);
}

SEC("xdp")
int MASQUE_PROG_COUNT_PROTO(struct xdp_md *ctx)
{
	struct masque_cursor c = cursor_init(ctx);
	int eth_type, proto;
	__u32 slot;

	eth_type = parse_ethhdr(&c, NULL);
	if (eth_type < 0)
		goto malformed;

	switch (eth_type) {
	case ETH_P_IP:
		proto = parse_iphdr(&c, NULL);
		if (proto < 0)
			goto malformed;
		slot = slot_for_ipproto(proto, 0);
		break;
	case ETH_P_IPV6:
		proto = parse_ipv6hdr(&c, NULL);
		if (proto < 0)
			goto malformed;
		proto = skip_ipv6_exthdrs(&c, proto);
		if (proto < 0)
			goto malformed;
		slot = slot_for_ipproto(proto, 1);
		break;
	default:
		slot = MASQUE_PROTO_NON_IP;
		break;
	}

	count(ctx, slot);
	return XDP_PASS;

malformed:
	count(ctx, MASQUE_PROTO_MALFORMED);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
