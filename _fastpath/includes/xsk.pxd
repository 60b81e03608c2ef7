# C declarations of _fastpath/csrc/xsk.h (xsk.c): the AF_XDP socket.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from _fastpath.includes.csrc cimport masque_batch


cdef extern from "xsk.h" nogil:
    enum: MASQUE_XSK_ETH_HLEN
    enum: MASQUE_XSK_IPV4_HLEN
    enum: MASQUE_XSK_IPV6_HLEN
    enum: MASQUE_XSK_UDP_HLEN
    enum: MASQUE_XSK_MODE_AUTO
    enum: MASQUE_XSK_MODE_COPY
    enum: MASQUE_XSK_MODE_ZEROCOPY

    cdef struct masque_xsk_stats:
        uint64_t rx_packets
        uint64_t rx_bytes
        uint64_t rx_dropped_not_udp
        uint64_t rx_dropped_too_big
        uint64_t fill_refills
        uint64_t tx_packets
        uint64_t tx_bytes
        uint64_t tx_full
        uint64_t tx_dropped_too_big
        uint64_t tx_completions
        uint64_t tx_kick_errors
        uint64_t wakeups

    cdef struct masque_xsk_meta:
        uint8_t family
        uint8_t src_mac[6]
        uint8_t dst_mac[6]
        uint16_t src_port
        uint16_t dst_port
        uint8_t src[16]
        uint8_t dst[16]

    cdef struct masque_xsk_flow:
        uint8_t family
        uint8_t src_mac[6]
        uint8_t dst_mac[6]
        uint16_t src_port
        uint16_t dst_port
        uint8_t src[16]
        uint8_t dst[16]

    cdef struct masque_xsk_iov:
        const uint8_t *data
        size_t len

    cdef struct masque_xsk:
        int fd
        int ifindex
        uint32_t queue
        int zero_copy
        int need_wakeup
        int tx_budget
        uint32_t frames
        uint32_t frame_size
        uint32_t tx_free_count
        masque_xsk_stats stats

    int masque_xsk_open(masque_xsk *x, int ifindex, uint32_t queue, uint32_t frames,
                        uint32_t frame_size, int zero_copy, uint32_t tx_budget, char *what,
                        size_t cap)
    void masque_xsk_close(masque_xsk *x)
    uint32_t masque_xsk_recv(masque_xsk *x, masque_batch *b, uint32_t max, masque_xsk_meta *meta)
    uint32_t masque_xsk_send(masque_xsk *x, const masque_xsk_flow *f, const masque_xsk_iov *p,
                             uint32_t n)
    uint32_t masque_xsk_send_batch(masque_xsk *x, const masque_xsk_flow *f, const masque_batch *b,
                                   uint32_t n)
    uint32_t masque_xsk_flush(masque_xsk *x)
    uint32_t masque_xsk_rx_pending(const masque_xsk *x)
    uint32_t masque_xsk_tx_free(masque_xsk *x)
    int masque_xsk_kernel_stats(const masque_xsk *x, uint64_t *out)
    int masque_xsk_addr_format(int family, const uint8_t *addr, char *out, size_t cap)
    int masque_xsk_addr_parse(const char *text, uint8_t *out)
