/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parsing.h - bounds-checked header parsing for XDP programs (BPF only).
 *
 * A struct masque_cursor walks a frame from the Ethernet header on. Every
 * access goes through cursor_pull(), which checks the bytes against the
 * frame's end before handing out a pointer, so the verifier sees one check
 * per header (the xdp-tutorial / xdp-tools habit:
 * "if (hdr + 1 > data_end) return -1;").
 *
 * Parsers return the next protocol (EtherType in host order, or IP protocol
 * number) on success and -1 when a header is truncated or invalid; on
 * success the cursor sits right after the header they parsed.
 *
 * Shared constants and layouts belong in masque_bpf.h, not here.
 */
#ifndef MASQUE_PARSING_H
#define MASQUE_PARSING_H

#ifndef __bpf__
#error "parsing.h is for BPF programs; share definitions through masque_bpf.h"
#endif

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "masque_bpf.h"

/* Largest number of bytes cursor_skip() moves at once (bounds for the verifier). */
#define MASQUE_CURSOR_MAX_SKIP 4096

struct masque_cursor {
	void *pos; /* next unparsed byte */
	void *end; /* one past the frame's last byte (ctx->data_end) */
};

/* 802.1Q / 802.1ad tag as it follows the source MAC (linux/if_vlan.h is not uapi). */
struct masque_vlan_hdr {
	__be16 tci;         /* PCP, DEI, VLAN ID */
	__be16 encap_proto; /* EtherType of what follows */
};

/* IPv6 fragment header (RFC 8200 section 4.5; not in the uapi headers). */
struct masque_ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | M flag */
	__be32 identification;
};

static __always_inline struct masque_cursor cursor_init(struct xdp_md *ctx)
{
	struct masque_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	return c;
}

/*
 * Returns a pointer to the next `len` bytes and moves past them, or NULL
 * (cursor unchanged) if the frame ends first. `len` should be a constant
 * (sizeof a header) so the verifier learns the range of the pointer.
 */
static __always_inline void *cursor_pull(struct masque_cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

#define CURSOR_PULL(c, type) ((type *)cursor_pull((c), sizeof(type)))

/*
 * Moves past `len` bytes that will not be read (options, extension-header
 * bodies). Returns 0, or -1 (cursor unchanged) if the frame ends first or
 * `len` exceeds MASQUE_CURSOR_MAX_SKIP.
 */
static __always_inline int cursor_skip(struct masque_cursor *c, __u32 len)
{
	if (len > MASQUE_CURSOR_MAX_SKIP)
		return -1;
	if (c->pos + len > c->end)
		return -1;
	c->pos += len;
	return 0;
}

static __always_inline int proto_is_vlan(__be16 h_proto)
{
	return h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD);
}

/*
 * Ethernet header plus up to MASQUE_VLAN_MAX_DEPTH VLAN tags. Returns the
 * inner EtherType in host byte order (still a VLAN TPID if there are more
 * tags than that), or -1 if the header or a tag is truncated.
 */
static __always_inline int parse_ethhdr(struct masque_cursor *c, struct ethhdr **ethp)
{
	struct ethhdr *eth = CURSOR_PULL(c, struct ethhdr);
	struct masque_vlan_hdr *vlan;
	__be16 h_proto;
	int i;

	if (!eth)
		return -1;
	h_proto = eth->h_proto;

#pragma unroll
	for (i = 0; i < MASQUE_VLAN_MAX_DEPTH; i++) {
		if (!proto_is_vlan(h_proto))
			break;
		vlan = CURSOR_PULL(c, struct masque_vlan_hdr);
		if (!vlan)
			return -1;
		h_proto = vlan->encap_proto;
	}

	if (ethp)
		*ethp = eth;
	return bpf_ntohs(h_proto);
}

/*
 * IPv4 header including options. Returns the IP protocol number, or -1 if
 * the header is truncated, the version is not 4, IHL < 5, or the total
 * length is shorter than the header or longer than the frame (a frame may
 * be longer than the packet: Ethernet padding).
 */
static __always_inline int parse_iphdr(struct masque_cursor *c, struct iphdr **iphp)
{
	struct iphdr *iph = CURSOR_PULL(c, struct iphdr);
	__u32 hdr_len, tot_len;

	if (!iph)
		return -1;
	if (iph->version != 4 || iph->ihl < 5)
		return -1;
	hdr_len = iph->ihl * 4;
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < hdr_len || (void *)iph + tot_len > c->end)
		return -1;
	if (cursor_skip(c, hdr_len - sizeof(*iph)) < 0)
		return -1;

	if (iphp)
		*iphp = iph;
	return iph->protocol;
}

/*
 * IPv6 fixed header. Returns its Next Header value (which may name an
 * extension header: see skip_ipv6_exthdrs()), or -1 if the header is
 * truncated or the version is not 6.
 */
static __always_inline int parse_ipv6hdr(struct masque_cursor *c, struct ipv6hdr **ip6hp)
{
	struct ipv6hdr *ip6h = CURSOR_PULL(c, struct ipv6hdr);

	if (!ip6h)
		return -1;
	if (ip6h->version != 6)
		return -1;

	if (ip6hp)
		*ip6hp = ip6h;
	return ip6h->nexthdr;
}

/*
 * Walks up to MASQUE_IPV6_EXT_MAX_DEPTH extension headers (hop-by-hop,
 * routing, destination options, fragment, AH) starting with Next Header
 * value `nexthdr`. Returns the first value that is not one of those (the
 * upper-layer protocol, or 59 "no next header", or ESP 50 whose payload is
 * opaque) - or the extension header reached when the depth runs out - or -1
 * if an extension header is truncated.
 */
static __always_inline int skip_ipv6_exthdrs(struct masque_cursor *c, __u8 nexthdr)
{
	struct ipv6_opt_hdr *opt;
	struct masque_ipv6_frag_hdr *frag;
	int i;

#pragma unroll
	for (i = 0; i < MASQUE_IPV6_EXT_MAX_DEPTH; i++) {
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			/* Length in 8-octet units, not counting the first 8. */
			opt = CURSOR_PULL(c, struct ipv6_opt_hdr);
			if (!opt)
				return -1;
			nexthdr = opt->nexthdr;
			if (cursor_skip(c, (opt->hdrlen + 1) * 8 - sizeof(*opt)) < 0)
				return -1;
			break;
		case IPPROTO_AH:
			/* Length in 4-octet units, minus 2 (RFC 4302 section 2.2). */
			opt = CURSOR_PULL(c, struct ipv6_opt_hdr);
			if (!opt)
				return -1;
			nexthdr = opt->nexthdr;
			if (cursor_skip(c, (opt->hdrlen + 2) * 4 - sizeof(*opt)) < 0)
				return -1;
			break;
		case IPPROTO_FRAGMENT:
			/* Fixed 8 bytes. Later fragments carry no L4 header, but
			 * their Next Header still names the protocol. */
			frag = CURSOR_PULL(c, struct masque_ipv6_frag_hdr);
			if (!frag)
				return -1;
			nexthdr = frag->nexthdr;
			break;
		default:
			return nexthdr;
		}
	}
	return nexthdr;
}

/* IPv4 "more fragments" flag and fragment offset mask (network order on the wire). */
#define MASQUE_IP_MF 0x2000
#define MASQUE_IP_OFFSET 0x1fff

/*
 * Whether an IPv4 header belongs to a fragment, first or later: MF set or a
 * non-zero offset. Only a non-fragment carries a whole UDP datagram.
 */
static __always_inline int ipv4_is_fragment(const struct iphdr *iph)
{
	return (iph->frag_off & bpf_htons(MASQUE_IP_MF | MASQUE_IP_OFFSET)) != 0;
}

/*
 * UDP header. Returns 0, or -1 if the header is truncated. The length field
 * is not checked: callers compare it with what the IP header says and what
 * the frame holds.
 */
static __always_inline int parse_udphdr(struct masque_cursor *c, struct udphdr **udphp)
{
	struct udphdr *udph = CURSOR_PULL(c, struct udphdr);

	if (!udph)
		return -1;
	if (udphp)
		*udphp = udph;
	return 0;
}

#endif /* MASQUE_PARSING_H */
