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

/* ------------------------------------------------------------------------
 * relay_xdp: the relay's XDP front end for the AF_XDP datagram lane
 * (bpf/relay_xdp.bpf.c; DESIGN.md section 3)
 * ------------------------------------------------------------------------
 *
 * XDP program MASQUE_PROG_RELAY_XDP redirects to the AF_XDP socket of its
 * RX queue only the frames the lane can consume: UDP to the relay's
 * address and port, QUIC short header, destination connection ID found in
 * MASQUE_MAP_XDP_CIDS. Long-header packets, unknown CIDs and all other
 * traffic pass to the kernel, so aioquic's UDP socket on the same port keeps
 * handling handshakes and whatever the lane hands back. It drops early only
 * what is addressed to the relay's port and cannot be QUIC, and long-header
 * (handshake) packets over a per-source rate limit.
 *
 * Verdicts, in the order the program decides (reason = slot counted in
 * MASQUE_MAP_XDP_COUNTERS; every frame is counted in exactly one slot):
 *
 *   config disabled or unusable (see struct masque_xdp_config)
 *                                        PASS      MASQUE_XDP_PASS_DISABLED
 *   not Ethernet/IPv4|IPv6/UDP to the relay's address and port, or
 *   anything the parser cannot or will not look into: non-IP (ARP, ...),
 *   more than MASQUE_VLAN_MAX_DEPTH VLAN tags, truncated or invalid L2/L3/
 *   UDP headers, IPv4 fragments (first or later: the kernel reassembles),
 *   IPv6 with any extension header, UDP length < 8, beyond the IP payload
 *   or beyond the frame (IPv6 jumbograms)      PASS      MASQUE_XDP_PASS_OTHER
 *       The program never drops what is not the relay's: the kernel decides.
 *
 *   UDP to the relay, payload = the UDP payload (UDP length - 8; Ethernet
 *   padding after the IP packet is ignored), first byte b:
 *   payload empty                        DROP      MASQUE_XDP_DROP_TOO_SHORT
 *   long header (b & 0x80):
 *     payload < MASQUE_XDP_LONG_MIN_LEN  DROP      MASQUE_XDP_DROP_TOO_SHORT
 *     version != 0 and fixed bit (0x40) clear
 *                                        DROP      MASQUE_XDP_DROP_FIXED_BIT
 *       (Version Negotiation, version 0, leaves the fixed bit unspecified)
 *     source over its handshake rate     DROP      MASQUE_XDP_DROP_HANDSHAKE_RATE
 *     otherwise                          PASS      MASQUE_XDP_LONG_HEADER
 *   short header:
 *     payload < MASQUE_XDP_SHORT_MIN_LEN DROP      MASQUE_XDP_DROP_TOO_SHORT
 *     fixed bit (0x40) clear             DROP      MASQUE_XDP_DROP_FIXED_BIT
 *       (RFC 9287 greasing of the fixed bit is never negotiated: aioquic
 *       does not offer grease_quic_bit)
 *     payload < 1 + cid_len + MASQUE_XDP_SHORT_MIN_AFTER_CID, or the DCID
 *     (the first cid_len bytes after b) not in MASQUE_MAP_XDP_CIDS
 *                                        PASS      MASQUE_XDP_UNKNOWN_CID
 *     CID known, bpf_redirect_map(MASQUE_MAP_XDP_XSKS, rx_queue_index,
 *     XDP_PASS) finds a socket           REDIRECT  MASQUE_XDP_REDIRECT
 *     CID known, no socket at that index PASS      MASQUE_XDP_PASS_NO_XSK
 *     CID known, payload > MASQUE_XDP_MAX_LANE_PAYLOAD (a GSO super-packet
 *     on a software link)                PASS      MASQUE_XDP_PASS_TOO_BIG
 *
 * Redirected frames are Ethernet, up to MASQUE_VLAN_MAX_DEPTH VLAN tags,
 * IPv4 (IHL may exceed 5, never a fragment) or IPv6 (no extension header),
 * UDP. The program does not verify the UDP checksum (the lane's AEAD
 * authenticates the payload) and never rewrites a frame.
 *
 * Under BPF_PROG_TEST_RUN (no BPF_F_TEST_XDP_LIVE_FRAMES) the return value
 * is the program's: XDP_REDIRECT when an AF_XDP socket (bound or not)
 * sits at index rx_queue_index (0 for a test run), XDP_PASS (the fallback)
 * when none does; nothing is actually redirected.
 *
 * Maps (userspace writes the first three; the program only reads them):
 *
 *   MASQUE_MAP_XDP_CONFIG    BPF_MAP_TYPE_ARRAY, 1 entry, key __u32 0,
 *                            value struct masque_xdp_config.
 *   MASQUE_MAP_XDP_CIDS      BPF_MAP_TYPE_HASH, MASQUE_XDP_MAX_CIDS entries,
 *                            key struct masque_xdp_cid_key, value struct
 *                            masque_xdp_cid_value. The relay adds every CID
 *                            of a session when it installs the session in
 *                            the lane and removes them when it leaves.
 *   MASQUE_MAP_XDP_XSKS      BPF_MAP_TYPE_XSKMAP, MASQUE_XDP_MAX_QUEUES
 *                            entries, key __u32 RX queue index, value the
 *                            AF_XDP socket fd bound to that queue (a socket
 *                            at the wrong index gets nothing: the kernel
 *                            drops what does not match its bound queue).
 *   MASQUE_MAP_XDP_COUNTERS  BPF_MAP_TYPE_PERCPU_ARRAY, MASQUE_XDP_REASON_COUNT
 *                            entries, key __u32 (enum masque_xdp_reason),
 *                            value struct masque_xdp_counter; userspace sums
 *                            the CPUs and exports the sums as metrics.
 *   MASQUE_MAP_XDP_HS_RATE   BPF_MAP_TYPE_LRU_HASH, MASQUE_XDP_HS_SOURCES
 *                            entries, key struct masque_xdp_src_key, value
 *                            struct masque_xdp_hs_bucket; written by the
 *                            program, readable (and resettable) from
 *                            userspace.
 *
 * Handshake rate limit: a token bucket per source (IPv4 address, or IPv6
 * /64: one end site has at least a /64, so per-address buckets would let a
 * single host evade the limit). A bucket holds up to hs_burst tokens and
 * gains hs_rate_pps per second; each long-header packet takes one, and a
 * packet that finds less than one token is dropped. A source seen for the
 * first time (or evicted from the LRU map) starts with a full bucket. Time
 * is bpf_ktime_get_ns() (CLOCK_MONOTONIC); a last_ns in the future counts
 * as no time elapsed. Buckets are updated without atomics, so concurrent
 * packets of one source on several CPUs may get slightly more than the
 * limit. Spoofed sources each get their own bucket; the per-source limit
 * protects established sessions from a few heavy sources, not from a flood
 * of spoofed addresses bigger than the LRU map.
 */
#define MASQUE_PROG_RELAY_XDP xdp_relay
#define MASQUE_PROG_RELAY_XDP_NAME MASQUE_STR(MASQUE_PROG_RELAY_XDP)

#define MASQUE_MAP_XDP_CONFIG relay_config
#define MASQUE_MAP_XDP_CONFIG_NAME MASQUE_STR(MASQUE_MAP_XDP_CONFIG)
#define MASQUE_MAP_XDP_CIDS relay_cids
#define MASQUE_MAP_XDP_CIDS_NAME MASQUE_STR(MASQUE_MAP_XDP_CIDS)
#define MASQUE_MAP_XDP_XSKS xsks_map
#define MASQUE_MAP_XDP_XSKS_NAME MASQUE_STR(MASQUE_MAP_XDP_XSKS)
#define MASQUE_MAP_XDP_COUNTERS relay_counters
#define MASQUE_MAP_XDP_COUNTERS_NAME MASQUE_STR(MASQUE_MAP_XDP_COUNTERS)
#define MASQUE_MAP_XDP_HS_RATE relay_hs_rate
#define MASQUE_MAP_XDP_HS_RATE_NAME MASQUE_STR(MASQUE_MAP_XDP_HS_RATE)

/* Longest QUIC connection ID (RFC 9000 section 17.2); CID keys have this size. */
#define MASQUE_XDP_CID_MAX 20
/* Capacity of MASQUE_MAP_XDP_CIDS: lane sessions times the CIDs each has issued. */
#define MASQUE_XDP_MAX_CIDS 65536
/* Capacity of MASQUE_MAP_XDP_XSKS: highest RX queue index + 1 that can get a socket. */
#define MASQUE_XDP_MAX_QUEUES 64
/* Capacity of MASQUE_MAP_XDP_HS_RATE: sources tracked at once (LRU evicts the rest). */
#define MASQUE_XDP_HS_SOURCES 65536

/*
 * Smallest UDP payload that can be a long-header packet (RFC 8999 section
 * 5.1): first byte, version (4), DCID length (1), SCID length (1).
 */
#define MASQUE_XDP_LONG_MIN_LEN 7
/*
 * Smallest UDP payload with a short-header first byte that may be for the
 * relay: a Stateless Reset, 5 unpredictable bytes plus a 16-byte token
 * (RFC 9000 section 10.3), is the shortest such datagram.
 */
#define MASQUE_XDP_SHORT_MIN_LEN 21
/*
 * Bytes a short-header packet needs after the first byte and the DCID before
 * the lane can use it: header protection samples 16 bytes starting 4 bytes
 * after the packet number's start (RFC 9001 section 5.4.2), so shorter
 * packets are discarded by any receiver. Shorter ones (and Stateless Resets
 * of up to 1 + cid_len + 19 bytes) pass to the kernel as unknown CIDs.
 */
#define MASQUE_XDP_SHORT_MIN_AFTER_CID 20
/*
 * Largest UDP payload redirected to the lane's AF_XDP socket. One QUIC packet
 * on an Ethernet link is at most ~1500 bytes; a larger "datagram" is a GSO
 * super-packet a software link (veth) delivers whole to generic XDP, which an
 * AF_XDP frame cannot hold: it passes to the kernel's UDP stack (GRO), where
 * the lane still gets it through the socket path.
 */
#define MASQUE_XDP_MAX_LANE_PAYLOAD 1700

/* struct masque_xdp_config.flags */
#define MASQUE_XDP_F_ENABLED 0x1u /* act on packets; clear: pass everything */

/* One nanosecond-scaled token: bucket contents are tokens * 10^9. */
#define MASQUE_XDP_NANOTOKENS_PER_TOKEN 1000000000ull

/*
 * The single value of MASQUE_MAP_XDP_CONFIG (key 0). All zero (the state
 * after the object loads) is disabled. The program treats the config as
 * disabled (MASQUE_XDP_PASS_DISABLED) unless MASQUE_XDP_F_ENABLED is set,
 * port != 0 and 1 <= cid_len <= MASQUE_XDP_CID_MAX.
 */
struct masque_xdp_config {
	__u32 flags;       /* MASQUE_XDP_F_* */
	__be32 addr4;      /* relay IPv4 address, network order; 0 = any */
	__u8 addr6[16];    /* relay IPv6 address; all zero = any */
	__be16 port;       /* relay UDP port, network order */
	__u8 cid_len;      /* length of every CID the relay issues (e.g. 8) */
	__u8 reserved0;    /* 0 */
	__u32 hs_rate_pps; /* long-header packets per second per source; 0 = no limit */
	__u32 hs_burst;    /* bucket size in packets; 0 is taken as 1 */
	__u32 reserved1;   /* 0 */
};

/*
 * Key of MASQUE_MAP_XDP_CIDS: the CID's cid_len bytes, the rest zero. The
 * relay's CIDs all have the configured length, so a CID is found only with
 * exactly those bytes.
 */
struct masque_xdp_cid_key {
	__u8 cid[MASQUE_XDP_CID_MAX];
};

/* Value of MASQUE_MAP_XDP_CIDS. */
struct masque_xdp_cid_value {
	__u32 session_id; /* the relay's lane session, for userspace */
	__u32 flags;      /* reserved, 0 */
};

/* Key of MASQUE_MAP_XDP_HS_RATE: a source address. */
struct masque_xdp_src_key {
	/* IPv6: the /64 prefix, the low 64 bits zero.
	 * IPv4: the v4-mapped address ::ffff:a.b.c.d. */
	__u8 addr[16];
};

/* Value of MASQUE_MAP_XDP_HS_RATE: one source's token bucket. */
struct masque_xdp_hs_bucket {
	__u64 last_ns;    /* bpf_ktime_get_ns() of the last refill */
	__u64 nanotokens; /* tokens * MASQUE_XDP_NANOTOKENS_PER_TOKEN */
};

enum masque_xdp_reason {
	MASQUE_XDP_REDIRECT = 0,            /* redirected to the lane's AF_XDP socket */
	MASQUE_XDP_PASS_OTHER = 1,          /* not QUIC to the relay: passed */
	MASQUE_XDP_LONG_HEADER = 2,         /* long header within its rate: passed */
	MASQUE_XDP_UNKNOWN_CID = 3,         /* short header not for the lane: passed */
	MASQUE_XDP_DROP_TOO_SHORT = 4,      /* to the relay port, too short for QUIC */
	MASQUE_XDP_DROP_FIXED_BIT = 5,      /* to the relay port, fixed bit clear */
	MASQUE_XDP_DROP_HANDSHAKE_RATE = 6, /* long header over its source's rate */
	MASQUE_XDP_PASS_NO_XSK = 7,         /* lane CID, but no socket on this RX queue */
	MASQUE_XDP_PASS_DISABLED = 8,       /* config disabled or unusable: passed */
	MASQUE_XDP_PASS_TOO_BIG = 9,        /* lane CID, larger than one lane packet: passed */
	MASQUE_XDP_REASON_COUNT = 10,       /* number of slots = the map's max_entries */
};

struct masque_xdp_counter {
	__u64 packets; /* frames counted in this slot */
	__u64 bytes;   /* their length from the Ethernet header on */
};

MASQUE_STATIC_ASSERT(sizeof(struct masque_xdp_config) == 40,
		     "struct masque_xdp_config must be 40 bytes without padding");
MASQUE_STATIC_ASSERT(sizeof(struct masque_xdp_cid_key) == MASQUE_XDP_CID_MAX,
		     "struct masque_xdp_cid_key must be MASQUE_XDP_CID_MAX bytes");
MASQUE_STATIC_ASSERT(sizeof(struct masque_xdp_cid_value) == 8,
		     "struct masque_xdp_cid_value must be 8 bytes without padding");
MASQUE_STATIC_ASSERT(sizeof(struct masque_xdp_src_key) == 16,
		     "struct masque_xdp_src_key must be 16 bytes");
MASQUE_STATIC_ASSERT(sizeof(struct masque_xdp_hs_bucket) == 16,
		     "struct masque_xdp_hs_bucket must be 16 bytes without padding");
MASQUE_STATIC_ASSERT(sizeof(struct masque_xdp_counter) == 16,
		     "struct masque_xdp_counter must be 16 bytes without padding");
MASQUE_STATIC_ASSERT(sizeof(enum masque_xdp_reason) == sizeof(__u32),
		     "map keys are __u32");

#endif /* MASQUE_BPF_H */
