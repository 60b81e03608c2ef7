/* QUIC varints, packet numbers and the lane's frames (RFC 9000 16, 17.1, 19,
 * A.2, A.3; RFC 9221 4). No crypto here; see quic_crypto.c. */
#include "quic.h"

#include <string.h>

#define FRAME_PADDING 0x00u
#define FRAME_PING 0x01u
#define FRAME_ACK 0x02u
#define FRAME_ACK_ECN 0x03u
#define FRAME_DATAGRAM 0x30u
#define FRAME_DATAGRAM_LEN 0x31u

size_t masque_quic_varint_len(uint64_t v)
{
    if (v < (UINT64_C(1) << 6))
        return 1;
    if (v < (UINT64_C(1) << 14))
        return 2;
    if (v < (UINT64_C(1) << 30))
        return 4;
    if (v <= MASQUE_QUIC_VARINT_MAX)
        return 8;
    return 0;
}

size_t masque_quic_varint_put(uint8_t *out, size_t cap, uint64_t v)
{
    size_t n = masque_quic_varint_len(v);
    if (n == 0 || n > cap)
        return 0;
    /* two-bit length prefix: 00, 01, 10, 11 for 1, 2, 4, 8 bytes */
    uint8_t prefix = n == 1 ? 0x00 : n == 2 ? 0x40 : n == 4 ? 0x80 : 0xc0;
    for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    out[0] |= prefix;
    return n;
}

int masque_quic_varint_get(const uint8_t *p, size_t len, size_t *pos, uint64_t *v)
{
    if (*pos >= len)
        return -1;
    size_t n = (size_t)1 << (p[*pos] >> 6);
    if (n > len - *pos)
        return -1;
    uint64_t x = p[*pos] & 0x3fu;
    for (size_t i = 1; i < n; i++)
        x = (x << 8) | p[*pos + i];
    *pos += n;
    *v = x;
    return 0;
}

uint64_t masque_quic_decode_pn(int64_t largest_pn, uint64_t truncated, unsigned pn_len)
{
    /* RFC 9000 A.3, in signed arithmetic: every value is below 2^62. */
    int64_t expected = largest_pn + 1;
    int64_t win = (int64_t)1 << (8 * pn_len);
    int64_t hwin = win / 2;
    int64_t candidate = (expected & ~(win - 1)) | (int64_t)truncated;
    if (candidate <= expected - hwin && candidate < ((int64_t)1 << 62) - win)
        return (uint64_t)(candidate + win);
    if (candidate > expected + hwin && candidate >= win)
        return (uint64_t)(candidate - win);
    return (uint64_t)candidate;
}

int masque_quic_pn_len(uint64_t pn, int64_t largest_acked)
{
    /* RFC 9000 A.2: at least one bit more than log2 of the packets in flight,
     * counting the new one: n bytes carry num_unacked <= 2^(8n - 1). */
    uint64_t num_unacked;
    if (pn > MASQUE_QUIC_VARINT_MAX)
        return -1;
    if (largest_acked < 0) {
        num_unacked = pn + 1;
    } else {
        if (pn <= (uint64_t)largest_acked)
            return -1;
        num_unacked = pn - (uint64_t)largest_acked;
    }
    for (int n = 1; n <= 4; n++)
        if (num_unacked <= (UINT64_C(1) << (8 * n - 1)))
            return n;
    return -1;
}

/* ACK frame body after the type byte (RFC 9000 19.3). */
static int parse_ack(const uint8_t *p, size_t len, size_t *pos, int ecn, masque_quic_ack *ack)
{
    uint64_t largest, delay, count, first;
    if (masque_quic_varint_get(p, len, pos, &largest) || masque_quic_varint_get(p, len, pos, &delay)
        || masque_quic_varint_get(p, len, pos, &count) || masque_quic_varint_get(p, len, pos, &first))
        return MASQUE_QUIC_E_FRAME;
    if (first > largest)
        return MASQUE_QUIC_E_FRAME; /* a negative packet number */
    if (count >= MASQUE_QUIC_MAX_ACK_RANGES)
        return MASQUE_QUIC_OTHER_FRAMES; /* beyond our table: aioquic takes it whole */
    ack->delay = delay;
    ack->nranges = (uint32_t)count + 1;
    ack->ranges[0].start = largest - first;
    ack->ranges[0].stop = largest + 1;
    uint64_t smallest = largest - first;
    for (uint64_t i = 1; i <= count; i++) {
        uint64_t gap, rlen;
        if (masque_quic_varint_get(p, len, pos, &gap) || masque_quic_varint_get(p, len, pos, &rlen))
            return MASQUE_QUIC_E_FRAME;
        /* largest of this range = smallest of the previous - gap - 2 */
        if (smallest < 2 || gap > smallest - 2)
            return MASQUE_QUIC_E_FRAME;
        uint64_t top = smallest - gap - 2;
        if (rlen > top)
            return MASQUE_QUIC_E_FRAME;
        smallest = top - rlen;
        ack->ranges[i].start = smallest;
        ack->ranges[i].stop = top + 1;
    }
    ack->has_ecn = (uint8_t)ecn;
    ack->ecn[0] = ack->ecn[1] = ack->ecn[2] = 0;
    if (ecn)
        for (int i = 0; i < 3; i++)
            if (masque_quic_varint_get(p, len, pos, &ack->ecn[i]))
                return MASQUE_QUIC_E_FRAME;
    return MASQUE_QUIC_OK;
}

static int add_datagram(masque_quic_frames *out, size_t off, size_t n, size_t frame_len,
                        uint64_t max_frame)
{
    if ((uint64_t)frame_len > max_frame)
        return MASQUE_QUIC_E_DATAGRAM_SIZE;
    if (out->ndatagrams >= MASQUE_QUIC_MAX_DATAGRAMS)
        return MASQUE_QUIC_OTHER_FRAMES;
    out->datagrams[out->ndatagrams].off = (uint32_t)off;
    out->datagrams[out->ndatagrams].len = (uint32_t)n;
    out->ndatagrams++;
    out->ack_eliciting = 1;
    return MASQUE_QUIC_OK;
}

int masque_quic_parse_frames(const uint8_t *p, size_t len, uint64_t max_datagram_frame_size,
                             masque_quic_frames *out)
{
    size_t pos = 0;
    int rc;
    out->ndatagrams = 0;
    out->ack_eliciting = 0;
    out->has_ack = 0;
    if (len == 0)
        return MASQUE_QUIC_E_NO_FRAMES;
    if (len > UINT32_MAX)
        return MASQUE_QUIC_E_INVALID;
    while (pos < len) {
        size_t start = pos;
        /* Frame types are varints; every lane type is one byte, and a longer
         * (or non-minimal) encoding is aioquic's to judge. */
        switch (p[pos++]) {
        case FRAME_PADDING:
            while (pos < len && p[pos] == FRAME_PADDING)
                pos++;
            break;
        case FRAME_PING:
            out->ack_eliciting = 1;
            break;
        case FRAME_ACK:
        case FRAME_ACK_ECN:
            if (out->has_ack)
                return MASQUE_QUIC_OTHER_FRAMES;
            rc = parse_ack(p, len, &pos, p[start] == FRAME_ACK_ECN, &out->ack);
            if (rc != MASQUE_QUIC_OK)
                return rc;
            out->has_ack = 1;
            break;
        case FRAME_DATAGRAM:
            rc = add_datagram(out, pos, len - pos, len - start, max_datagram_frame_size);
            if (rc != MASQUE_QUIC_OK)
                return rc;
            pos = len;
            break;
        case FRAME_DATAGRAM_LEN: {
            uint64_t n;
            if (masque_quic_varint_get(p, len, &pos, &n) || n > len - pos)
                return MASQUE_QUIC_E_FRAME;
            rc = add_datagram(out, pos, (size_t)n, pos + (size_t)n - start, max_datagram_frame_size);
            if (rc != MASQUE_QUIC_OK)
                return rc;
            pos += (size_t)n;
            break;
        }
        default:
            return MASQUE_QUIC_OTHER_FRAMES;
        }
    }
    return MASQUE_QUIC_OK;
}

long masque_quic_write_ack(uint8_t *out, size_t cap, const masque_quic_ack *ack)
{
    const masque_quic_range *r = ack->ranges;
    uint32_t n = ack->nranges;
    if (n == 0 || n > MASQUE_QUIC_MAX_ACK_RANGES)
        return MASQUE_QUIC_E_INVALID;
    for (uint32_t i = 0; i < n; i++) {
        if (r[i].start >= r[i].stop || r[i].stop - 1 > MASQUE_QUIC_VARINT_MAX)
            return MASQUE_QUIC_E_INVALID;
        if (i > 0 && r[i].stop >= r[i - 1].start)
            return MASQUE_QUIC_E_INVALID; /* overlapping, adjacent or not descending */
    }
    if (ack->delay > MASQUE_QUIC_VARINT_MAX)
        return MASQUE_QUIC_E_INVALID;
    for (int i = 0; ack->has_ecn && i < 3; i++)
        if (ack->ecn[i] > MASQUE_QUIC_VARINT_MAX)
            return MASQUE_QUIC_E_INVALID;

    size_t pos = 0, w;
    uint64_t fields[4] = {r[0].stop - 1, ack->delay, (uint64_t)n - 1, r[0].stop - 1 - r[0].start};
    if (cap < 1)
        return MASQUE_QUIC_E_NO_ROOM;
    out[pos++] = ack->has_ecn ? FRAME_ACK_ECN : FRAME_ACK;
    for (int i = 0; i < 4; i++) {
        if (!(w = masque_quic_varint_put(out + pos, cap - pos, fields[i])))
            return MASQUE_QUIC_E_NO_ROOM;
        pos += w;
    }
    for (uint32_t i = 1; i < n; i++) {
        uint64_t gap = r[i - 1].start - r[i].stop - 1;
        uint64_t rlen = r[i].stop - 1 - r[i].start;
        if (!(w = masque_quic_varint_put(out + pos, cap - pos, gap)))
            return MASQUE_QUIC_E_NO_ROOM;
        pos += w;
        if (!(w = masque_quic_varint_put(out + pos, cap - pos, rlen)))
            return MASQUE_QUIC_E_NO_ROOM;
        pos += w;
    }
    for (int i = 0; ack->has_ecn && i < 3; i++) {
        if (!(w = masque_quic_varint_put(out + pos, cap - pos, ack->ecn[i])))
            return MASQUE_QUIC_E_NO_ROOM;
        pos += w;
    }
    return (long)pos;
}

size_t masque_quic_write_datagrams(uint8_t *out, size_t cap, const masque_quic_iov *dg, size_t n,
                                   size_t *packed)
{
    /* Plan first: datagram i fits when the frames before it, all with a
     * length, plus 1 + len(i) as the last frame fit. */
    size_t used = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t vlen = masque_quic_varint_len(dg[i].len);
        if (vlen == 0 || used > cap || dg[i].len > cap - used || 1 > cap - used - dg[i].len)
            break;
        k = i + 1;
        used += 1 + vlen + dg[i].len; /* its cost if another one follows */
    }
    size_t pos = 0;
    for (size_t i = 0; i < k; i++) {
        if (i + 1 < k) {
            out[pos++] = FRAME_DATAGRAM_LEN;
            pos += masque_quic_varint_put(out + pos, cap - pos, dg[i].len);
        } else {
            out[pos++] = FRAME_DATAGRAM;
        }
        if (dg[i].len)
            memcpy(out + pos, dg[i].data, dg[i].len);
        pos += dg[i].len;
    }
    *packed = k;
    return pos;
}
