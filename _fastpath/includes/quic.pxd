# C declarations of _fastpath/csrc/quic.h (quic_packet.c, quic_crypto.c).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int64_t

from _fastpath.includes.csrc cimport masque_batch


cdef extern from "quic.h" nogil:
    enum: MASQUE_QUIC_TAG_LEN
    enum: MASQUE_QUIC_MAX_CID_LEN
    enum: MASQUE_QUIC_MAX_PN_LEN
    enum: MASQUE_QUIC_MAX_SHORT_HEADER
    enum: MASQUE_QUIC_MAX_DATAGRAMS
    enum: MASQUE_QUIC_MAX_ACK_RANGES
    enum: MASQUE_QUIC_STATUS_MIN
    uint64_t MASQUE_QUIC_VARINT_MAX

    enum masque_quic_status:
        MASQUE_QUIC_OK
        MASQUE_QUIC_OTHER_FRAMES
        MASQUE_QUIC_E_SHORT
        MASQUE_QUIC_E_LONG_HEADER
        MASQUE_QUIC_E_FIXED_BIT
        MASQUE_QUIC_E_KEY_PHASE
        MASQUE_QUIC_E_AUTH
        MASQUE_QUIC_E_RESERVED
        MASQUE_QUIC_E_FRAME
        MASQUE_QUIC_E_NO_FRAMES
        MASQUE_QUIC_E_DATAGRAM_SIZE
        MASQUE_QUIC_E_INVALID
        MASQUE_QUIC_E_NO_ROOM
        MASQUE_QUIC_E_CRYPTO

    ctypedef struct masque_quic_keys:
        uint16_t cipher_suite
        uint8_t key_phase

    void masque_quic_keys_init(masque_quic_keys *k)
    int masque_quic_keys_set(masque_quic_keys *k, unsigned cipher_suite,
                             const uint8_t *key, size_t key_len, const uint8_t *iv, size_t iv_len,
                             const uint8_t *hp, size_t hp_len, unsigned key_phase)
    void masque_quic_keys_free(masque_quic_keys *k)

    size_t masque_quic_varint_len(uint64_t v)
    uint64_t masque_quic_decode_pn(int64_t largest_pn, uint64_t truncated, unsigned pn_len)
    int masque_quic_pn_len(uint64_t pn, int64_t largest_acked)

    ctypedef struct masque_quic_span:
        uint32_t off
        uint32_t len
    ctypedef struct masque_quic_range:
        uint64_t start
        uint64_t stop
    # array sizes: MASQUE_QUIC_MAX_ACK_RANGES and MASQUE_QUIC_MAX_DATAGRAMS (64)
    ctypedef struct masque_quic_ack:
        uint64_t delay
        uint64_t ecn[3]
        uint32_t nranges
        uint8_t has_ecn
        masque_quic_range ranges[64]
    ctypedef struct masque_quic_frames:
        uint32_t ndatagrams
        uint8_t ack_eliciting
        uint8_t has_ack
        masque_quic_span datagrams[64]
        masque_quic_ack ack
    int masque_quic_parse_frames(const uint8_t *p, size_t len, uint64_t max_datagram_frame_size,
                                 masque_quic_frames *out)
    long masque_quic_write_ack(uint8_t *out, size_t cap, const masque_quic_ack *ack)
    ctypedef struct masque_quic_iov:
        const uint8_t *data
        size_t len
    size_t masque_quic_write_datagrams(uint8_t *out, size_t cap, const masque_quic_iov *dg,
                                       size_t n, size_t *packed)

    ctypedef struct masque_quic_rx:
        uint64_t pn
        uint32_t hdr_len
        uint32_t payload_len
        int16_t status
        uint8_t pn_len
        uint8_t key_phase
        uint8_t first
    int masque_quic_unprotect(const masque_quic_keys *k, uint8_t *pkt, size_t len,
                              size_t dcid_len, int64_t largest_pn, masque_quic_rx *rx)
    int masque_quic_reprotect(const masque_quic_keys *k, uint8_t *pkt, size_t len,
                              const masque_quic_rx *rx)
    long masque_quic_protect(const masque_quic_keys *k, uint8_t *payload, size_t len,
                             size_t headroom, size_t tailroom, const uint8_t *dcid,
                             size_t dcid_len, uint64_t pn, int64_t largest_acked,
                             unsigned pn_len, uint8_t **start)
    uint32_t masque_quic_unprotect_batch(const masque_quic_keys *k, masque_batch *b,
                                         size_t dcid_len, int64_t *largest_pn,
                                         uint64_t max_datagram_frame_size,
                                         masque_quic_rx *rx, masque_quic_frames *frames)
    uint32_t masque_quic_protect_batch(const masque_quic_keys *k, masque_batch *b,
                                       const uint8_t *dcid, size_t dcid_len, uint64_t first_pn,
                                       int64_t largest_acked, const uint8_t *first_prefix,
                                       size_t first_prefix_len, const uint8_t *prefix,
                                       size_t prefix_len)
