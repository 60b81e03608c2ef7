/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * masque_bpf.h - the ONE header shared by the BPF programs in bpf/ and the
 * userspace fast path in _fastpath/csrc.
 *
 * Everything a BPF program and userspace must agree on lives here: program
 * and map names, map key/value layouts, constants. Nothing is duplicated on
 * the other side (katran kept two copies and had to keep them in sync).
 *
 * Rules for this file, because it is compiled in two worlds
 * (clang -target bpf and gcc -Wall -Wextra for userspace):
 *   - include only <linux/types.h>; use __u8/__u16/__u32/__u64 and the
 *     __be16/__be32 byte-order types, never <stdint.h> or kernel-internal
 *     types;
 *   - no BPF helpers, no SEC()/__uint()/__type() macros, no
 *     <bpf/bpf_helpers.h>: BPF-only code goes into parsing.h and friends;
 *   - map key and value structs have explicit sizes and no implicit
 *     padding (checked by static assertions below);
 *   - names are given as identifiers (for the BPF C side, where a map's name
 *     is the variable's name) and as strings (for userspace look-ups by
 *     name); kernel object names are limited to 15 characters.
 *
 * Python reads these values by compiling this header (tests/test_bpf_*.py);
 * it never re-types them by hand.
 */
#ifndef MASQUE_BPF_H
#define MASQUE_BPF_H

#include <linux/types.h>

#define MASQUE_STR_(x) #x
#define MASQUE_STR(x) MASQUE_STR_(x)

/*
 * Compile-time check: _Static_assert in C11 and later, a negative array
 * size for older dialects (where `msg` only documents the intent).
 */
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define MASQUE_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#else
#define MASQUE_CONCAT_(a, b) a##b
#define MASQUE_CONCAT(a, b) MASQUE_CONCAT_(a, b)
#define MASQUE_STATIC_ASSERT(cond, msg) \
	typedef char MASQUE_CONCAT(masque_static_assert_, __LINE__)[(cond) ? 1 : -1]
#endif

/* ------------------------------------------------------------------------
 * count_proto: per-protocol packet counters (bpf/count_proto.bpf.c)
 * ------------------------------------------------------------------------
 *
 * XDP program MASQUE_PROG_COUNT_PROTO counts every frame it sees in map
 * MASQUE_MAP_PROTO_COUNTERS and returns:
 *   XDP_PASS  for every frame whose headers parse (IPv4, IPv6, non-IP);
 *   XDP_DROP  for frames whose L2/L3 headers are truncated or invalid
 *             (shorter than an Ethernet header, truncated VLAN tag,
 *             truncated IPv4/IPv6 header or extension header, IPv4 with a
 *             wrong version, IHL < 5 or total length beyond the frame;
 *             IPv6 with a wrong version). The kernel's own IP receive path
 *             would drop these too; counting them in MASQUE_PROTO_MALFORMED
 *             makes them visible.
 *
 * Map: BPF_MAP_TYPE_PERCPU_ARRAY, key __u32 (enum masque_proto_slot),
 * value struct masque_proto_counter, MASQUE_PROTO_SLOTS entries. Userspace
 * sums the per-CPU values (each value is 8-byte aligned in a per-CPU
 * look-up, which struct masque_proto_counter already is).
 */
#define MASQUE_PROG_COUNT_PROTO xdp_count_proto
#define MASQUE_PROG_COUNT_PROTO_NAME MASQUE_STR(MASQUE_PROG_COUNT_PROTO)

#define MASQUE_MAP_PROTO_COUNTERS proto_counters
#define MASQUE_MAP_PROTO_COUNTERS_NAME MASQUE_STR(MASQUE_MAP_PROTO_COUNTERS)

/* How many 802.1Q/802.1ad tags the parser looks through (QinQ = 2). */
#define MASQUE_VLAN_MAX_DEPTH 2
/* How many IPv6 extension headers the parser walks to find the L4 protocol. */
#define MASQUE_IPV6_EXT_MAX_DEPTH 6

enum masque_proto_slot {
	MASQUE_PROTO_OTHER = 0,     /* IPv4/IPv6 with an L4 protocol not listed
	                             * below, or more extension headers than
	                             * MASQUE_IPV6_EXT_MAX_DEPTH */
	MASQUE_PROTO_TCP = 1,       /* IPPROTO_TCP (6) */
	MASQUE_PROTO_UDP = 2,       /* IPPROTO_UDP (17) */
	MASQUE_PROTO_ICMP = 3,      /* IPPROTO_ICMP (1), counted for IPv4 only */
	MASQUE_PROTO_ICMPV6 = 4,    /* IPPROTO_ICMPV6 (58), counted for IPv6 only */
	MASQUE_PROTO_NON_IP = 5,    /* EtherType neither IPv4 nor IPv6 (ARP, ...) */
	MASQUE_PROTO_MALFORMED = 6, /* truncated/invalid headers: XDP_DROP */
	MASQUE_PROTO_SLOTS = 7,     /* number of slots = the map's max_entries */
};

struct masque_proto_counter {
	__u64 packets; /* frames counted in this slot */
	__u64 bytes;   /* their length from the Ethernet header on */
};

MASQUE_STATIC_ASSERT(sizeof(struct masque_proto_counter) == 16,
		     "struct masque_proto_counter must be 16 bytes without padding");
MASQUE_STATIC_ASSERT(sizeof(enum masque_proto_slot) == sizeof(__u32),
		     "map keys are __u32");

#endif /* MASQUE_BPF_H */
