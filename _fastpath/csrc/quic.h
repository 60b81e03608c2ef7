/* QUIC 1-RTT (short header) packet protection and the frames of the datagram lane.
 *
 * RFC 9000 (packets, frames, packet numbers), RFC 9001 (packet and header
 * protection), RFC 9221 (DATAGRAM frames). aioquic stays the authority of the
 * connection: this layer only protects/unprotects short-header packets with
 * keys Python installs (derived by aioquic's own derive_key_iv_hp) and walks
 * or writes the few frame types the lane handles (PADDING, PING, ACK, DATAGRAM).
 *
 * quic_packet.c: varints, packet numbers, frame walk and frame writers (no crypto).
 * quic_crypto.c: key sets (OpenSSL libcrypto EVP), protect/unprotect, batches.
 *
 * Buffer contract of unprotect: it works in place, and whenever it does not
 * return MASQUE_QUIC_OK the buffer holds exactly the bytes it was given, so the
 * packet can go to aioquic unchanged. A key set is not thread-safe: its EVP
 * contexts are reused for every packet. */
#ifndef MASQUE_QUIC_H
#define MASQUE_QUIC_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

#define MASQUE_QUIC_TAG_LEN 16u
#define MASQUE_QUIC_SAMPLE_LEN 16u
#define MASQUE_QUIC_IV_LEN 12u
#define MASQUE_QUIC_MAX_CID_LEN 20u
#define MASQUE_QUIC_MAX_PN_LEN 4u
/* first byte + longest DCID + longest packet number */
#define MASQUE_QUIC_MAX_SHORT_HEADER (1u + MASQUE_QUIC_MAX_CID_LEN + MASQUE_QUIC_MAX_PN_LEN)
#define MASQUE_QUIC_VARINT_MAX ((UINT64_C(1) << 62) - 1)
/* Per packet, beyond these the packet is left to aioquic (MASQUE_QUIC_OTHER_FRAMES). */
#define MASQUE_QUIC_MAX_DATAGRAMS 64u
#define MASQUE_QUIC_MAX_ACK_RANGES 64u

/* TLS 1.3 cipher suites (RFC 8446 B.4) QUIC uses. */
#define MASQUE_QUIC_AES_128_GCM_SHA256 0x1301u
#define MASQUE_QUIC_AES_256_GCM_SHA384 0x1302u
#define MASQUE_QUIC_CHACHA20_POLY1305_SHA256 0x1303u

/* Results. 0 and 1: the packet authenticated; < 0: it did not, or it is not
 * for the lane. Only MASQUE_QUIC_OK leaves plaintext in the buffer. */
enum masque_quic_status {
    MASQUE_QUIC_OK = 0,             /* unprotected (frame walk: only lane frames) */
    MASQUE_QUIC_OTHER_FRAMES = 1,   /* authentic, holds frames for aioquic: restored */
    MASQUE_QUIC_E_SHORT = -1,       /* too short to be a protected short-header packet */
    MASQUE_QUIC_E_LONG_HEADER = -2, /* header form bit set: handshake etc., aioquic's */
    MASQUE_QUIC_E_FIXED_BIT = -3,   /* fixed bit 0x40 clear: not QUIC v1/v2 */
    MASQUE_QUIC_E_KEY_PHASE = -4,   /* key phase differs from the key set's (key update) */
    MASQUE_QUIC_E_AUTH = -5,        /* AEAD authentication failed */
    MASQUE_QUIC_E_RESERVED = -6,    /* authentic but reserved bits set (PROTOCOL_VIOLATION) */
    MASQUE_QUIC_E_FRAME = -7,       /* malformed frame (FRAME_ENCODING_ERROR) */
    MASQUE_QUIC_E_NO_FRAMES = -8,   /* empty payload (PROTOCOL_VIOLATION) */
    MASQUE_QUIC_E_DATAGRAM_SIZE = -9, /* DATAGRAM frame above max_datagram_frame_size */
    MASQUE_QUIC_E_INVALID = -10,    /* bad argument (key sizes, CID length, PN, ranges) */
    MASQUE_QUIC_E_NO_ROOM = -11,    /* output does not fit the buffer */
    MASQUE_QUIC_E_CRYPTO = -12,     /* libcrypto failed (allocation, unsupported cipher) */
};
#define MASQUE_QUIC_STATUS_MIN (-12)

/* One direction's keys: AEAD key + IV and the header-protection key. */
typedef struct masque_quic_keys {
    struct evp_cipher_ctx_st *seal; /* AEAD, encrypt; key set once, nonce per packet */
    struct evp_cipher_ctx_st *open; /* AEAD, decrypt; same key */
    struct evp_cipher_ctx_st *hp;   /* AES-ECB or ChaCha20 (sample as counter || nonce) */
    uint8_t iv[MASQUE_QUIC_IV_LEN];
    uint16_t cipher_suite;          /* 0 = no keys installed */
    uint8_t key_phase;              /* 0/1: the phase these packet keys belong to */
    uint8_t hp_chacha;
} masque_quic_keys;

/* Zero the struct (no keys). */
void masque_quic_keys_init(masque_quic_keys *k);
/* Install keys: key and hp are 16 bytes (AES-128-GCM) or 32 (AES-256-GCM,
 * ChaCha20-Poly1305), iv 12. 0, MASQUE_QUIC_E_INVALID or MASQUE_QUIC_E_CRYPTO
 * (then the set holds no keys). */
int masque_quic_keys_set(masque_quic_keys *k, unsigned cipher_suite,
                         const uint8_t *key, size_t key_len, const uint8_t *iv, size_t iv_len,
                         const uint8_t *hp, size_t hp_len, unsigned key_phase);
void masque_quic_keys_free(masque_quic_keys *k);

/* ---- varints and packet numbers (quic_packet.c) ---- */

/* Encoded size of v (1, 2, 4 or 8), 0 when v > MASQUE_QUIC_VARINT_MAX. */
size_t masque_quic_varint_len(uint64_t v);
/* Write v at out (cap bytes); bytes written, 0 when it does not fit or is too large. */
size_t masque_quic_varint_put(uint8_t *out, size_t cap, uint64_t v);
/* Read a varint at p[*pos], advance *pos; 0 or -1 when truncated. */
int masque_quic_varint_get(const uint8_t *p, size_t len, size_t *pos, uint64_t *v);

/* RFC 9000 A.3: the full packet number closest to largest_pn + 1
 * (largest_pn -1: nothing received yet). */
uint64_t masque_quic_decode_pn(int64_t largest_pn, uint64_t truncated, unsigned pn_len);
/* RFC 9000 A.2: bytes (1..4) to send pn when largest_acked (-1: none) is the
 * largest acknowledged; -1 when pn <= largest_acked or the gap needs > 4 bytes. */
int masque_quic_pn_len(uint64_t pn, int64_t largest_acked);

/* ---- frames (quic_packet.c) ---- */

typedef struct masque_quic_span {
    uint32_t off; /* from the start of the walked plaintext */
    uint32_t len;
} masque_quic_span;

/* Packet numbers [start, stop), like aioquic's RangeSet items. */
typedef struct masque_quic_range {
    uint64_t start;
    uint64_t stop;
} masque_quic_range;

/* An ACK frame (RFC 9000 19.3). ranges[0] holds the largest acknowledged
 * (its stop - 1) and the First ACK Range (stop - 1 - start); then the other
 * ranges, descending, as the Gap/ACK Range Length pairs decode. */
typedef struct masque_quic_ack {
    uint64_t delay;   /* as encoded: scale by the peer's ack_delay_exponent */
    uint64_t ecn[3];  /* ECT(0), ECT(1), ECN-CE counts when has_ecn (type 0x03) */
    uint32_t nranges; /* 1 .. MASQUE_QUIC_MAX_ACK_RANGES */
    uint8_t has_ecn;
    masque_quic_range ranges[MASQUE_QUIC_MAX_ACK_RANGES];
} masque_quic_ack;

typedef struct masque_quic_frames {
    uint32_t ndatagrams;
    uint8_t ack_eliciting; /* a PING or DATAGRAM frame: the peer expects an ACK */
    uint8_t has_ack;
    masque_quic_span datagrams[MASQUE_QUIC_MAX_DATAGRAMS]; /* DATAGRAM payloads */
    masque_quic_ack ack;
} masque_quic_frames;

/* Walk a plaintext payload. MASQUE_QUIC_OK: only PADDING, PING, ACK and
 * DATAGRAM frames (out filled); MASQUE_QUIC_OTHER_FRAMES: some other frame
 * type, a second ACK frame, or more datagrams/ranges than the limits above;
 * MASQUE_QUIC_E_FRAME / _E_NO_FRAMES / _E_DATAGRAM_SIZE: the peer broke the
 * protocol (aioquic closes the connection when it sees the packet).
 * max_datagram_frame_size: our transport parameter (whole frame: type, length
 * and payload), UINT64_MAX for no limit. */
int masque_quic_parse_frames(const uint8_t *p, size_t len, uint64_t max_datagram_frame_size,
                             masque_quic_frames *out);

/* Write an ACK frame (type 0x03 when has_ecn) from ack->ranges (descending,
 * non-empty, at least one unacknowledged packet between neighbours).
 * Bytes written, MASQUE_QUIC_E_INVALID or MASQUE_QUIC_E_NO_ROOM. */
long masque_quic_write_ack(uint8_t *out, size_t cap, const masque_quic_ack *ack);

typedef struct masque_quic_iov {
    const uint8_t *data;
    size_t len;
} masque_quic_iov;

/* Pack DATAGRAM frames for dg[0..n) into cap bytes, in order, as many as fit:
 * type 0x31 (with length) for all but the last packed one, which is 0x30 and
 * extends to the end of the packet (nothing may follow it). Bytes written;
 * *packed = datagrams written (0 if the first does not fit). */
size_t masque_quic_write_datagrams(uint8_t *out, size_t cap, const masque_quic_iov *dg, size_t n,
                                   size_t *packed);

/* ---- packet protection (quic_crypto.c) ---- */

/* What unprotect learnt about a packet. */
typedef struct masque_quic_rx {
    uint64_t pn;          /* full packet number (also set for MASQUE_QUIC_E_KEY_PHASE) */
    uint32_t hdr_len;     /* 1 + DCID + PN length = offset of the plaintext */
    uint32_t payload_len; /* plaintext bytes (the tag follows them) */
    int16_t status;       /* batch: the masque_quic_status of this packet */
    uint8_t pn_len;
    uint8_t key_phase;
    uint8_t first;        /* first byte without header protection */
    uint8_t mask[5];      /* header-protection mask, to restore the wire bytes */
} masque_quic_rx;

/* Remove header and packet protection of the short-header packet in pkt
 * (a whole UDP payload: a short header runs to the end of the datagram) in
 * place. dcid_len: our connection ID length; largest_pn: the largest packet
 * number received in this space (-1: none). MASQUE_QUIC_OK: the buffer holds the
 * unprotected header and plaintext (rx->hdr_len, rx->payload_len); any other
 * result leaves the buffer as it was. */
int masque_quic_unprotect(const masque_quic_keys *k, uint8_t *pkt, size_t len, size_t dcid_len,
                          int64_t largest_pn, masque_quic_rx *rx);
/* Turn a packet unprotect returned MASQUE_QUIC_OK for back into its wire bytes. */
int masque_quic_reprotect(const masque_quic_keys *k, uint8_t *pkt, size_t len,
                          const masque_quic_rx *rx);

/* Build a short-header packet in place around `len` bytes of plaintext frames
 * at `payload`: PADDING frames (when the header-protection sample needs them,
 * RFC 9001 5.4.2) and the header go into the `headroom` bytes in front, the
 * tag into the `tailroom` bytes after. pn_len 0 picks the RFC 9000 A.2 length
 * from largest_acked (-1: none). Returns the packet length and sets *start to
 * its first byte; or MASQUE_QUIC_E_INVALID / _E_NO_ROOM / _E_CRYPTO. */
long masque_quic_protect(const masque_quic_keys *k, uint8_t *payload, size_t len,
                         size_t headroom, size_t tailroom, const uint8_t *dcid, size_t dcid_len,
                         uint64_t pn, int64_t largest_acked, unsigned pn_len, uint8_t **start);

/* Unprotect packets 0..count-1 of b in place (one connection, one key set).
 * rx[i].status is each packet's result; *largest_pn rises with each authentic
 * packet, so later packets of the batch decode against it. With frames
 * non-NULL, each MASQUE_QUIC_OK packet is walked into frames[i] and, unless it
 * holds only lane frames, restored to its wire bytes with the walk's status.
 * Returns the number of packets left as plaintext (MASQUE_QUIC_OK). */
uint32_t masque_quic_unprotect_batch(const masque_quic_keys *k, masque_batch *b, size_t dcid_len,
                                     int64_t *largest_pn, uint64_t max_datagram_frame_size,
                                     masque_quic_rx *rx, masque_quic_frames *frames);

/* Protect packets 0..count-1 of b, packet numbers first_pn, first_pn + 1, ...
 * Each slot holds plaintext frames; `prefix` (first_prefix for packet 0) is
 * put in front of them first (e.g. an ACK frame and/or a DATAGRAM type byte
 * 0x30 when the slot holds one datagram payload). The packet is built in the
 * headroom and moved to the slot's packet start; lens[i] becomes its length.
 * Returns how many packets from the front were protected (a slot lacking room
 * stops the batch and stays as it was). */
uint32_t masque_quic_protect_batch(const masque_quic_keys *k, masque_batch *b,
                                   const uint8_t *dcid, size_t dcid_len, uint64_t first_pn,
                                   int64_t largest_acked, const uint8_t *first_prefix,
                                   size_t first_prefix_len, const uint8_t *prefix,
                                   size_t prefix_len);

#endif
