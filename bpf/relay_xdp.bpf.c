// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * relay_xdp: the relay's XDP front end for the AF_XDP datagram lane.
 *
 * Ethernet (+ up to two VLAN tags) -> IPv4 / IPv6 -> UDP to the relay's
 * address and port -> QUIC first byte:
 *   - short header whose destination CID is in the lane's CID map:
 *     redirect to the AF_XDP socket of this RX queue (XDP_PASS if there is
 *     none);
 *   - long header: pass to the kernel (aioquic), unless the source is over
 *     its handshake rate;
 *   - cannot be QUIC (too short, fixed bit clear): drop;
 *   - everything else: pass to the kernel.
 * Every frame is counted in exactly one slot of the counters map. The maps,
 * their layouts and the verdict table are in masque_bpf.h.
 */
#include "parsing.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct masque_xdp_config);
} MASQUE_MAP_XDP_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQUE_XDP_MAX_CIDS);
	__type(key, struct masque_xdp_cid_key);
	__type(value, struct masque_xdp_cid_value);
} MASQUE_MAP_XDP_CIDS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MASQUE_XDP_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} MASQUE_MAP_XDP_XSKS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MASQUE_XDP_REASON_COUNT);
	__type(key, __u32);
	__type(value, struct masque_xdp_counter);
} MASQUE_MAP_XDP_COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MASQUE_XDP_HS_SOURCES);
	__type(key, struct masque_xdp_src_key);
	__type(value, struct masque_xdp_hs_bucket);
} MASQUE_MAP_XDP_HS_RATE SEC(".maps");

/* The CID copy below reads MASQUE_XDP_CID_MAX bytes after one length check. */
_Static_assert(MASQUE_XDP_SHORT_MIN_AFTER_CID >= MASQUE_XDP_CID_MAX,
	       "a short-header packet long enough for the lane holds MASQUE_XDP_CID_MAX CID bytes");

/* QUIC first byte (RFC 8999 section 5, RFC 9000 section 17). */
#define QUIC_FORM_LONG 0x80
#define QUIC_FIXED_BIT 0x40

static __always_inline int verdict(struct xdp_md *ctx, __u32 reason, int action)
{
	struct masque_xdp_counter *cnt;

	cnt = bpf_map_lookup_elem(&MASQUE_MAP_XDP_COUNTERS, &reason);
	if (cnt) {
		/* Per-CPU slot: no other CPU writes it, plain increments suffice. */
		cnt->packets += 1;
		cnt->bytes += bpf_xdp_get_buff_len(ctx);
	}
	return action;
}

/* Whether the IPv6 destination is the configured address (all zero = any). */
static __always_inline int ipv6_dst_matches(const struct masque_xdp_config *cfg,
					    const struct ipv6hdr *ip6h)
{
	__u32 want[4];
	int i;

	__builtin_memcpy(want, cfg->addr6, sizeof(want));
	if ((want[0] | want[1] | want[2] | want[3]) == 0)
		return 1;
#pragma unroll
	for (i = 0; i < 4; i++) {
		if (ip6h->daddr.in6_u.u6_addr32[i] != want[i])
			return 0;
	}
	return 1;
}

/*
 * Takes one token from the bucket of `src`. Returns 1 if the packet is
 * within the source's rate (or there is no limit), 0 if it is over.
 * Arithmetic in nanotokens (tokens * 10^9) cannot overflow: cap is at most
 * 2^32 * 10^9 < 2^62, and elapsed * rate is added only while it is below
 * cap (elapsed < cap / rate).
 */
static __always_inline int handshake_allowed(const struct masque_xdp_config *cfg,
					     const struct masque_xdp_src_key *src)
{
	const __u64 one = MASQUE_XDP_NANOTOKENS_PER_TOKEN;
	struct masque_xdp_hs_bucket *bucket, fresh;
	__u32 rate = cfg->hs_rate_pps;
	__u32 burst = cfg->hs_burst;
	__u64 now, cap, elapsed, tokens;

	if (rate == 0)
		return 1;
	if (burst == 0)
		burst = 1;
	cap = (__u64)burst * one;
	now = bpf_ktime_get_ns();

	bucket = bpf_map_lookup_elem(&MASQUE_MAP_XDP_HS_RATE, src);
	if (!bucket) {
		/* New (or evicted) source: a full bucket, minus this packet. */
		fresh.last_ns = now;
		fresh.nanotokens = cap - one;
		bpf_map_update_elem(&MASQUE_MAP_XDP_HS_RATE, src, &fresh, BPF_ANY);
		return 1;
	}

	elapsed = now > bucket->last_ns ? now - bucket->last_ns : 0;
	tokens = bucket->nanotokens;
	if (tokens > cap) /* burst lowered since, or written by userspace */
		tokens = cap;
	if (elapsed >= cap / rate)
		tokens = cap;
	else
		tokens += elapsed * rate;
	if (tokens > cap)
		tokens = cap;
	bucket->last_ns = now;

	if (tokens < one) {
		bucket->nanotokens = tokens;
		return 0;
	}
	bucket->nanotokens = tokens - one;
	return 1;
}

SEC("xdp")
int MASQUE_PROG_RELAY_XDP(struct xdp_md *ctx)
{
	struct masque_cursor c = cursor_init(ctx);
	struct masque_xdp_src_key src = {};
	struct masque_xdp_cid_key cid = {};
	const struct masque_xdp_config *cfg;
	struct ipv6hdr *ip6h = NULL;
	struct iphdr *iph = NULL;
	struct udphdr *udph;
	__u32 key0 = 0, udp_len, ip_payload_len, payload_len, cid_len, i;
	__u8 *payload, *version;
	int eth_type, proto, action;

	cfg = bpf_map_lookup_elem(&MASQUE_MAP_XDP_CONFIG, &key0);
	if (!cfg || !(cfg->flags & MASQUE_XDP_F_ENABLED) || cfg->port == 0 ||
	    cfg->cid_len == 0 || cfg->cid_len > MASQUE_XDP_CID_MAX)
		return verdict(ctx, MASQUE_XDP_PASS_DISABLED, XDP_PASS);
	cid_len = cfg->cid_len;

	/* --- L2/L3: anything unexpected is the kernel's to judge. --- */
	eth_type = parse_ethhdr(&c, NULL);
	switch (eth_type) {
	case ETH_P_IP:
		proto = parse_iphdr(&c, &iph);
		if (proto != IPPROTO_UDP || !iph || ipv4_is_fragment(iph))
			goto pass_other;
		if (cfg->addr4 != 0 && iph->daddr != cfg->addr4)
			goto pass_other;
		ip_payload_len = bpf_ntohs(iph->tot_len) - iph->ihl * 4;
		break;
	case ETH_P_IPV6:
		/* Extension headers (fragments included) are left to the kernel. */
		proto = parse_ipv6hdr(&c, &ip6h);
		if (proto != IPPROTO_UDP || !ip6h || !ipv6_dst_matches(cfg, ip6h))
			goto pass_other;
		ip_payload_len = bpf_ntohs(ip6h->payload_len);
		if ((void *)(ip6h + 1) + ip_payload_len > c.end)
			goto pass_other;
		break;
	default: /* non-IP, too many VLAN tags, truncated Ethernet/VLAN header */
		goto pass_other;
	}

	/* --- UDP to the relay's port, with a consistent length. --- */
	if (parse_udphdr(&c, &udph) < 0)
		goto pass_other;
	if (udph->dest != cfg->port)
		goto pass_other;
	udp_len = bpf_ntohs(udph->len);
	if (udp_len < sizeof(*udph) || udp_len > ip_payload_len)
		goto pass_other;
	payload_len = udp_len - sizeof(*udph);

	/* --- QUIC. From here on the packet is addressed to the relay. --- */
	payload = cursor_pull(&c, 1);
	if (payload_len == 0 || !payload)
		return verdict(ctx, MASQUE_XDP_DROP_TOO_SHORT, XDP_DROP);

	if (*payload & QUIC_FORM_LONG) {
		if (payload_len < MASQUE_XDP_LONG_MIN_LEN)
			return verdict(ctx, MASQUE_XDP_DROP_TOO_SHORT, XDP_DROP);
		version = cursor_pull(&c, 4);
		if (!version) /* cannot happen: payload_len bytes are in the frame */
			goto pass_other;
		if (!(*payload & QUIC_FIXED_BIT) &&
		    (version[0] | version[1] | version[2] | version[3]) != 0)
			return verdict(ctx, MASQUE_XDP_DROP_FIXED_BIT, XDP_DROP);

		if (iph) {
			src.addr[10] = 0xff;
			src.addr[11] = 0xff;
			__builtin_memcpy(&src.addr[12], &iph->saddr, 4);
		} else if (ip6h) {
			__builtin_memcpy(src.addr, &ip6h->saddr, 8); /* the /64 */
		}
		if (!handshake_allowed(cfg, &src))
			return verdict(ctx, MASQUE_XDP_DROP_HANDSHAKE_RATE, XDP_DROP);
		return verdict(ctx, MASQUE_XDP_LONG_HEADER, XDP_PASS);
	}

	if (payload_len < MASQUE_XDP_SHORT_MIN_LEN)
		return verdict(ctx, MASQUE_XDP_DROP_TOO_SHORT, XDP_DROP);
	if (!(*payload & QUIC_FIXED_BIT))
		return verdict(ctx, MASQUE_XDP_DROP_FIXED_BIT, XDP_DROP);
	if (payload_len < 1 + cid_len + MASQUE_XDP_SHORT_MIN_AFTER_CID)
		return verdict(ctx, MASQUE_XDP_UNKNOWN_CID, XDP_PASS);

	/*
	 * The DCID: cid_len bytes right after the first byte, zero-padded.
	 * The payload holds at least 1 + cid_len + 20 >= 1 + MASQUE_XDP_CID_MAX
	 * bytes by now, so one check covers every byte the loop may read.
	 */
	if (payload + 1 + MASQUE_XDP_CID_MAX > (__u8 *)c.end) /* cannot happen */
		goto pass_other;
#pragma unroll
	for (i = 0; i < MASQUE_XDP_CID_MAX; i++) {
		if (i < cid_len)
			cid.cid[i] = payload[1 + i];
	}
	if (!bpf_map_lookup_elem(&MASQUE_MAP_XDP_CIDS, &cid))
		return verdict(ctx, MASQUE_XDP_UNKNOWN_CID, XDP_PASS);
	if (payload_len > MASQUE_XDP_MAX_LANE_PAYLOAD)
		return verdict(ctx, MASQUE_XDP_PASS_TOO_BIG, XDP_PASS);

	action = bpf_redirect_map(&MASQUE_MAP_XDP_XSKS, ctx->rx_queue_index, XDP_PASS);
	if (action == XDP_REDIRECT)
		return verdict(ctx, MASQUE_XDP_REDIRECT, XDP_REDIRECT);
	return verdict(ctx, MASQUE_XDP_PASS_NO_XSK, action);

pass_other:
	return verdict(ctx, MASQUE_XDP_PASS_OTHER, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
