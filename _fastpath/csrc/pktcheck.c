#include "pktcheck.h"

#include "checksum.h"

/* Each function mirrors the Python function named in its comment; keep the
 * order of the checks identical, the parity tests compare rule by rule. */

#define IPV4_MIN_HEADER 20u
#define IPV6_HEADER 40u
#define IP_MAX_PACKET 65535u

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* IPV6_EXTENSION_HEADERS minus ESP (50), which ends the walk. */
static inline int walkable_extension(uint8_t nh)
{
    switch (nh) {
    case 0: case 43: case 44: case 51: case 60: case 135: case 139: case 140: case 253: case 254:
        return 1;
    default:
        return 0;
    }
}

/* ippacket._parse_ipv4 */
static int parse_ipv4(const uint8_t *pkt, size_t length, masque_ip_header *h)
{
    if (length < IPV4_MIN_HEADER)
        return MASQUE_PKT_V4_TOO_SHORT;
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
    size_t total = rd16(pkt + 2);
    if (ihl < IPV4_MIN_HEADER)
        return MASQUE_PKT_V4_IHL_TOO_SMALL;
    if (ihl > length)
        return MASQUE_PKT_V4_HEADER_TRUNCATED;
    if (total < ihl)
        return MASQUE_PKT_V4_TOTAL_TOO_SMALL;
    if (total > length)
        return MASQUE_PKT_V4_TRUNCATED;
    if (total < length)
        return MASQUE_PKT_V4_TRAILING;
    if (masque_csum_partial(pkt, ihl, 0) != 0xffff)
        return MASQUE_PKT_V4_BAD_CHECKSUM;
    uint16_t frag = rd16(pkt + 6);
    size_t offset = (size_t)(frag & 0x1fff) * 8;
    int more = (frag & 0x2000) != 0;
    size_t data = total - ihl;
    if (offset + data > IP_MAX_PACKET)
        return MASQUE_PKT_V4_FRAG_OVERFLOW;
    if (more && (data % 8))
        return MASQUE_PKT_V4_FRAG_MISALIGNED;
    h->version = 4;
    h->protocol = pkt[9];
    h->ttl = pkt[8];
    h->more_fragments = (uint8_t)more;
    h->header_length = (uint32_t)ihl;
    h->fragment_offset = (uint32_t)offset;
    h->total_length = (uint32_t)total;
    h->src = pkt + 12;
    h->dst = pkt + 16;
    return MASQUE_PKT_OK;
}

/* ippacket._parse_ipv6. Every extension header is at least 8 octets, so the
 * walk ends within total / 8 iterations whatever the input. */
static int parse_ipv6(const uint8_t *pkt, size_t length, masque_ip_header *h)
{
    if (length < IPV6_HEADER)
        return MASQUE_PKT_V6_TOO_SHORT;
    size_t total = IPV6_HEADER + rd16(pkt + 4);
    if (total > length)
        return MASQUE_PKT_V6_TRUNCATED;
    if (total < length)
        return MASQUE_PKT_V6_TRAILING;
    uint8_t nh = pkt[6];
    size_t pos = IPV6_HEADER;
    size_t offset = 0;
    int more = 0;
    while (walkable_extension(nh)) {
        if (nh == 0 && pos != IPV6_HEADER)
            return MASQUE_PKT_V6_HBH_NOT_FIRST;
        if (pos + 2 > total)
            return MASQUE_PKT_V6_TRUNCATED_EXT;
        size_t size;
        if (nh == 44)
            size = 8;
        else if (nh == 51)
            size = ((size_t)pkt[pos + 1] + 2) * 4;
        else
            size = ((size_t)pkt[pos + 1] + 1) * 8;
        if (pos + size > total)
            return MASQUE_PKT_V6_TRUNCATED_EXT;
        if (nh == 44) {
            uint16_t frag = rd16(pkt + pos + 2);
            offset = frag & 0xfff8;
            more = frag & 1;
            nh = pkt[pos];
            pos += size;
            size_t data = total - pos;
            if (offset + data > IP_MAX_PACKET)
                return MASQUE_PKT_V6_FRAG_OVERFLOW;
            if (more && (data % 8))
                return MASQUE_PKT_V6_FRAG_MISALIGNED;
            if (offset)
                break; /* the middle of the original payload: nothing to walk */
            continue;
        }
        nh = pkt[pos];
        pos += size;
    }
    h->version = 6;
    h->protocol = nh;
    h->ttl = pkt[7];
    h->more_fragments = (uint8_t)more;
    h->header_length = (uint32_t)pos;
    h->fragment_offset = (uint32_t)offset;
    h->total_length = (uint32_t)total;
    h->src = pkt + 8;
    h->dst = pkt + 24;
    return MASQUE_PKT_OK;
}

/* ippacket.parse_ip_packet (verify_checksum=True) */
int masque_parse_ip(const uint8_t *pkt, size_t len, masque_ip_header *out)
{
    if (len == 0)
        return MASQUE_PKT_EMPTY;
    switch (pkt[0] >> 4) {
    case 4:
        return parse_ipv4(pkt, len, out);
    case 6:
        return parse_ipv6(pkt, len, out);
    default:
        return MASQUE_PKT_BAD_VERSION;
    }
}

/* ippacket.is_link_scoped */
int masque_is_link_scoped(const uint8_t *a, int version)
{
    if (version == 4)
        return (a[0] == 169 && a[1] == 254) || (a[0] == 224 && a[1] == 0 && a[2] == 0);
    if (a[0] == 0xff)
        return (a[1] & 0x0f) == 1 || (a[1] & 0x0f) == 2;
    return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

/* ippacket.checksum_adjust: RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'). */
static uint16_t checksum_adjust(uint16_t csum, uint16_t old_word, uint16_t new_word)
{
    uint32_t total = (uint32_t)(uint16_t)~csum + (uint16_t)~old_word + new_word;
    total = (total & 0xffff) + (total >> 16);
    total = (total & 0xffff) + (total >> 16);
    return (uint16_t)~total;
}

/* ippacket.decrement_ttl */
int masque_decrement_ttl(uint8_t *pkt, size_t len)
{
    if (len == 0)
        return -MASQUE_PKT_EMPTY;
    switch (pkt[0] >> 4) {
    case 4: {
        if (len < IPV4_MIN_HEADER)
            return -MASQUE_PKT_V4_TOO_SHORT;
        uint8_t ttl = pkt[8];
        if (ttl <= 1)
            return 0;
        uint8_t proto = pkt[9];
        uint16_t csum = checksum_adjust(rd16(pkt + 10), (uint16_t)((ttl << 8) | proto),
                                        (uint16_t)(((ttl - 1) << 8) | proto));
        pkt[8] = (uint8_t)(ttl - 1);
        pkt[10] = (uint8_t)(csum >> 8);
        pkt[11] = (uint8_t)csum;
        return ttl - 1;
    }
    case 6: {
        if (len < IPV6_HEADER)
            return -MASQUE_PKT_V6_TOO_SHORT;
        uint8_t hop_limit = pkt[7];
        if (hop_limit <= 1)
            return 0;
        pkt[7] = (uint8_t)(hop_limit - 1); /* no header checksum in IPv6 */
        return hop_limit - 1;
    }
    default:
        return -MASQUE_PKT_BAD_VERSION;
    }
}

static inline masque_u128 address_value(const uint8_t *a, int version)
{
    masque_u128 v;
    if (version == 4) {
        v.hi = 0;
        v.lo = ((uint64_t)a[0] << 24) | ((uint64_t)a[1] << 16) | ((uint64_t)a[2] << 8) | a[3];
    } else {
        v.hi = rd64(a);
        v.lo = rd64(a + 8);
    }
    return v;
}

static inline int u128_le(masque_u128 a, masque_u128 b)
{
    return a.hi < b.hi || (a.hi == b.hi && a.lo <= b.lo);
}

static inline int range_contains(const masque_range *r, int version, masque_u128 v)
{
    return r->version == version && u128_le(r->start, v) && u128_le(v, r->end);
}

/* session._AddressSet.contains */
static int set_contains(const masque_range_list *set, int version, masque_u128 v)
{
    for (size_t i = 0; i < set->len; i++)
        if (range_contains(&set->items[i], version, v))
            return 1;
    return 0;
}

enum match { MATCH_YES, MATCH_WRONG_PROTOCOL, MATCH_NO };

/* session._RouteTable.match */
static enum match route_match(const masque_range_list *routes, int version, masque_u128 v,
                              uint8_t protocol, int icmp)
{
    int covered = 0;
    for (size_t i = 0; i < routes->len; i++) {
        const masque_range *r = &routes->items[i];
        if (!range_contains(r, version, v))
            continue;
        if (r->protocol == 0 || r->protocol == protocol)
            return MATCH_YES;
        covered = 1;
    }
    if (!covered)
        return MATCH_NO;
    /* ICMP is allowed on every range whatever its protocol (RFC 9484 §4.7.3). */
    return icmp ? MATCH_YES : MATCH_WRONG_PROTOCOL;
}

/* ConnectIpSession._check */
int masque_check_packet(const masque_policy *p, const uint8_t *pkt, size_t len)
{
    masque_ip_header h;
    if (p->aborted)
        return MASQUE_DROP_SESSION_CLOSED;
    if (masque_parse_ip(pkt, len, &h) != MASQUE_PKT_OK)
        return MASQUE_DROP_MALFORMED;
    int version = h.version;
    if (masque_is_link_scoped(h.src, version) || masque_is_link_scoped(h.dst, version))
        return MASQUE_DROP_LINK_LOCAL;
    uint8_t protocol = h.protocol;
    int icmp = protocol == (version == 4 ? 1 : 58);
    masque_u128 src = address_value(h.src, version);
    masque_u128 dst = address_value(h.dst, version);
    enum match m;

    /* Source (BCP 38). ICMP sent by the relay may come from any router (§7.2.1). */
    if (!(icmp && p->towards_client) && !set_contains(&p->src_addresses, version, src)) {
        m = route_match(&p->src_routes, version, src, protocol, icmp);
        if (m == MATCH_WRONG_PROTOCOL)
            return MASQUE_DROP_PROTO_NOT_IN_SCOPE;
        if (m == MATCH_NO)
            return MASQUE_DROP_SRC_NOT_ASSIGNED;
    }
    /* Destination: routed by the receiver, or the receiver itself. */
    if (!set_contains(&p->dst_addresses, version, dst)) {
        m = route_match(&p->dst_routes, version, dst, protocol, icmp);
        if (m == MATCH_WRONG_PROTOCOL)
            return MASQUE_DROP_PROTO_NOT_IN_SCOPE;
        if (m == MATCH_NO)
            return MASQUE_DROP_DST_NOT_IN_SCOPE;
    }
    /* Request scope (§4.6): ipproto, then target on the far side. */
    if (p->ipproto >= 0 && !icmp && protocol != p->ipproto)
        return MASQUE_DROP_PROTO_NOT_IN_SCOPE;
    if (p->has_targets) {
        if (p->towards_client) {
            if (!icmp && !set_contains(&p->targets, version, src))
                return MASQUE_DROP_SRC_NOT_IN_SCOPE;
        } else if (!set_contains(&p->targets, version, dst)) {
            return MASQUE_DROP_DST_NOT_IN_SCOPE;
        }
    }
    return MASQUE_ACCEPT;
}

void masque_check_batch(masque_policy *p, const masque_batch *b, uint8_t *verdicts)
{
    for (uint32_t i = 0; i < b->count; i++) {
        int v = masque_check_packet(p, masque_batch_packet(b, i), b->lens[i]);
        verdicts[i] = (uint8_t)v;
        p->counters[v]++;
    }
}

void masque_check_routed_batch(masque_policy *const *policies, const masque_batch *b, uint8_t *verdicts)
{
    for (uint32_t i = 0; i < b->count; i++) {
        masque_policy *p = policies[i];
        if (p == NULL) {
            verdicts[i] = MASQUE_VERDICT_UNROUTED;
            continue;
        }
        int v = masque_check_packet(p, masque_batch_packet(b, i), b->lens[i]);
        verdicts[i] = (uint8_t)v;
        p->counters[v]++;
    }
}

void masque_decrement_ttl_batch(masque_batch *b, const uint8_t *verdicts, uint8_t *ttls)
{
    for (uint32_t i = 0; i < b->count; i++) {
        int ttl = 0;
        if (verdicts == NULL || verdicts[i] == MASQUE_ACCEPT)
            ttl = masque_decrement_ttl(masque_batch_packet(b, i), b->lens[i]);
        ttls[i] = (uint8_t)(ttl > 0 ? ttl : 0);
    }
}
