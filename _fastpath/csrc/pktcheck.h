/* Packet checks of the data path: the C twin of masque/ippacket.py
 * (parse_ip_packet, is_link_scoped, decrement_ttl) and of
 * ConnectIpSession._check in masque/session.py. Parity tests hold them equal.
 *
 * Addresses are compared as 128-bit unsigned integers (IPv4 in the low 32
 * bits); sets of addresses and route ranges are short arrays of inclusive
 * intervals scanned linearly, O(n) per packet, n = prefixes/ranges of one
 * session (a handful). */
#ifndef MASQUE_PKTCHECK_H
#define MASQUE_PKTCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

/* Rules of masque.errors.PacketError raised by parse_ip_packet (0 = valid). */
enum masque_pkt_rule {
    MASQUE_PKT_OK = 0,
    MASQUE_PKT_EMPTY,
    MASQUE_PKT_BAD_VERSION,
    MASQUE_PKT_V4_TOO_SHORT,
    MASQUE_PKT_V4_IHL_TOO_SMALL,
    MASQUE_PKT_V4_HEADER_TRUNCATED,
    MASQUE_PKT_V4_TOTAL_TOO_SMALL,
    MASQUE_PKT_V4_TRUNCATED,
    MASQUE_PKT_V4_TRAILING,
    MASQUE_PKT_V4_BAD_CHECKSUM,
    MASQUE_PKT_V4_FRAG_OVERFLOW,
    MASQUE_PKT_V4_FRAG_MISALIGNED,
    MASQUE_PKT_V6_TOO_SHORT,
    MASQUE_PKT_V6_TRUNCATED,
    MASQUE_PKT_V6_TRAILING,
    MASQUE_PKT_V6_HBH_NOT_FIRST,
    MASQUE_PKT_V6_TRUNCATED_EXT,
    MASQUE_PKT_V6_FRAG_OVERFLOW,
    MASQUE_PKT_V6_FRAG_MISALIGNED,
    MASQUE_PKT_RULE_COUNT
};

/* masque.session.Verdict */
enum masque_verdict {
    MASQUE_ACCEPT = 0,
    MASQUE_DROP_MALFORMED = 1,
    MASQUE_DROP_LINK_LOCAL = 2,
    MASQUE_DROP_SRC_NOT_ASSIGNED = 3,
    MASQUE_DROP_DST_NOT_IN_SCOPE = 4,
    MASQUE_DROP_PROTO_NOT_IN_SCOPE = 5,
    MASQUE_DROP_SRC_NOT_IN_SCOPE = 6,
    MASQUE_DROP_SESSION_CLOSED = 7,
    MASQUE_VERDICT_COUNT
};

typedef struct masque_u128 {
    uint64_t hi, lo;
} masque_u128;

typedef struct masque_ip_header {
    uint8_t version;
    uint8_t protocol;
    uint8_t ttl;
    uint8_t more_fragments;
    uint32_t header_length; /* may pass 65535 for IPv6 (40 + payload) */
    uint32_t fragment_offset;
    uint32_t total_length;
    const uint8_t *src; /* 4 or 16 bytes inside the packet */
    const uint8_t *dst;
} masque_ip_header;

/* One inclusive interval of addresses of one IP version; for route ranges
 * `protocol` is the advertised IP protocol (0 = all), unused for address sets. */
typedef struct masque_range {
    masque_u128 start, end;
    uint8_t version;
    uint8_t protocol;
} masque_range;

typedef struct masque_range_list {
    masque_range *items;
    size_t len;
} masque_range_list;

typedef struct masque_policy {
    masque_range_list src_addresses; /* assigned to the sender */
    masque_range_list src_routes;    /* advertised by the sender */
    masque_range_list dst_routes;    /* advertised by the receiver */
    masque_range_list dst_addresses; /* assigned to the receiver */
    masque_range_list targets;       /* request scope targets, if has_targets */
    int has_targets;
    int ipproto;        /* request scope ipproto, -1 = any */
    int towards_client; /* the packet travels to the client */
    int aborted;
    uint64_t counters[MASQUE_VERDICT_COUNT];
} masque_policy;

/* parse_ip_packet(packet, verify_checksum=True): a masque_pkt_rule. */
int masque_parse_ip(const uint8_t *pkt, size_t len, masque_ip_header *out);
/* is_link_scoped(addr) for a 4- or 16-byte address. */
int masque_is_link_scoped(const uint8_t *addr, int version);
/* decrement_ttl(packet): the new TTL, 0 if it was <= 1 (packet untouched),
 * or -rule if the buffer is too short / not IPv4 or IPv6. */
int masque_decrement_ttl(uint8_t *pkt, size_t len);
/* ConnectIpSession._check: a masque_verdict (not counted). */
int masque_check_packet(const masque_policy *p, const uint8_t *pkt, size_t len);
/* Check packets 0..count-1 of a batch; verdicts[i] for each; counts them. */
void masque_check_batch(masque_policy *p, const masque_batch *b, uint8_t *verdicts);
/* Verdict byte of a packet no session routes (check_routed_batch). */
#define MASQUE_VERDICT_UNROUTED 255
/* Check packet i of a batch against policies[i] (counted there); verdicts[i]
 * is MASQUE_VERDICT_UNROUTED where policies[i] is NULL. */
void masque_check_routed_batch(masque_policy *const *policies, const masque_batch *b, uint8_t *verdicts);
/* Decrement the TTL of each packet whose verdict is ACCEPT (all if verdicts
 * is NULL); ttls[i] = new TTL, 0 when not forwarded or not decremented. */
void masque_decrement_ttl_batch(masque_batch *b, const uint8_t *verdicts, uint8_t *ttls);

#endif
