/* An AF_XDP socket with its own UMEM, driven in batches (raw syscalls, no libxdp).
 *
 * Layout: one UMEM of `frames` frames of `frame_size` bytes. Frames
 * 0 .. frames/2-1 belong to RX and live on the fill ring (or in the kernel, or
 * on the RX ring, for the short time between a receive and its refill); frames
 * frames/2 .. frames-1 belong to TX and sit on a free stack until a send takes
 * one and the completion ring gives it back. The four rings hold a power of two
 * >= frames/2 entries each, so a free frame always has a ring slot.
 *
 * Receive: consume RX descriptors -> parse Ethernet (+ up to two 802.1Q/802.1ad
 *          tags) / IPv4 (no fragment) or IPv6 (no extension header) / UDP with
 *          bounds checks -> copy the UDP payload into batch slots from
 *          batch->count on, with the addresses in a side array -> give every
 *          frame back to the fill ring at once (copy mode never asks for a
 *          wakeup there; if the kernel does ask, recvfrom(MSG_DONTWAIT) kicks).
 * Send:    reclaim completed TX frames -> build Ethernet/IPv4|IPv6/UDP headers
 *          (IPv4 header checksum and full UDP checksum) in front of each payload
 *          in a TX frame -> publish the descriptors -> sendto(MSG_DONTWAIT) when
 *          the TX ring asks for a wakeup (always, in copy mode).
 *
 * One struct is used by one thread at a time. Stats are plain counters. */
#ifndef MASQUE_FASTPATH_XSK_H
#define MASQUE_FASTPATH_XSK_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

#define MASQUE_XSK_ETH_HLEN 14
#define MASQUE_XSK_IPV4_HLEN 20
#define MASQUE_XSK_IPV6_HLEN 40
#define MASQUE_XSK_UDP_HLEN 8
/* VLAN tags the receive parser looks through (as the XDP program does). */
#define MASQUE_XSK_VLAN_MAX 2

/* zero_copy argument of masque_xsk_open */
#define MASQUE_XSK_MODE_AUTO (-1) /* zero-copy if the driver can, else copy */
#define MASQUE_XSK_MODE_COPY 0
#define MASQUE_XSK_MODE_ZEROCOPY 1

struct masque_xsk_stats {
    uint64_t rx_packets;          /* UDP payloads appended to a batch */
    uint64_t rx_bytes;            /* their payload bytes */
    uint64_t rx_dropped_not_udp;  /* frames that were not Ethernet/IP/UDP as parsed here */
    uint64_t rx_dropped_too_big;  /* payloads larger than the batch's slot size */
    uint64_t fill_refills;        /* frames given back to the fill ring */
    uint64_t tx_packets;          /* frames queued on the TX ring */
    uint64_t tx_bytes;            /* their UDP payload bytes */
    uint64_t tx_full;             /* packets not queued: no free TX frame */
    uint64_t tx_dropped_too_big;  /* packets dropped: headers + payload > frame size */
    uint64_t tx_completions;      /* TX frames returned by the completion ring */
    uint64_t tx_kick_errors;      /* sendto() kicks that failed other than EAGAIN/EBUSY/ENOBUFS */
    uint64_t wakeups;             /* sendto()/recvfrom() kicks issued */
};

/* One ring as mapped from the kernel; cached_* are our private copies. */
struct masque_xsk_ring {
    uint32_t *producer;
    uint32_t *consumer;
    uint32_t *flags;
    void *descs;         /* struct xdp_desc[] (RX/TX) or uint64_t[] (fill/completion) */
    uint32_t size;       /* entries, a power of two */
    uint32_t mask;
    void *map;
    size_t map_len;
};

/* Addresses of one received datagram (network byte order in the arrays). */
struct masque_xsk_meta {
    uint8_t family;      /* 4 or 6 */
    uint8_t src_mac[6];
    uint8_t dst_mac[6];
    uint16_t src_port;   /* host order */
    uint16_t dst_port;   /* host order */
    uint8_t src[16];     /* IPv4 uses the first 4 bytes */
    uint8_t dst[16];
};

/* Where send puts every packet of one call. */
struct masque_xsk_flow {
    uint8_t family;      /* 4 or 6 */
    uint8_t src_mac[6];
    uint8_t dst_mac[6];
    uint16_t src_port;   /* host order */
    uint16_t dst_port;
    uint8_t src[16];
    uint8_t dst[16];
};

/* One payload for masque_xsk_send. */
struct masque_xsk_iov {
    const uint8_t *data;
    size_t len;
};

struct masque_xsk {
    int fd;
    int ifindex;
    uint32_t queue;
    int zero_copy;            /* bound in zero-copy mode */
    int need_wakeup;          /* XDP_USE_NEED_WAKEUP in effect */
    int tx_budget;            /* XDP_MAX_TX_SKB_BUDGET in effect, 0 = kernel default */
    uint8_t *umem;
    size_t umem_len;
    uint32_t frames;
    uint32_t frame_size;
    struct masque_xsk_ring fill, comp, rx, tx;
    uint64_t *tx_free;        /* stack of free TX frame addresses */
    uint32_t tx_free_count;
    uint16_t ip_id;           /* next IPv4 identification */
    struct masque_xsk_stats stats;
};

/* Open an AF_XDP socket bound to ifindex/queue with its UMEM and rings.
 * frames: even, >= 64; frame_size: a power of two in 2048..page size.
 * zero_copy: MASQUE_XSK_MODE_*; tx_budget: XDP_MAX_TX_SKB_BUDGET to ask for
 * (0: leave the kernel default; failure is ignored). On failure returns
 * -errno and writes which step failed into `what` (cap bytes). */
int masque_xsk_open(struct masque_xsk *x, int ifindex, uint32_t queue, uint32_t frames,
                    uint32_t frame_size, int zero_copy, uint32_t tx_budget, char *what,
                    size_t cap);

/* Unmap the rings, close the socket, unmap the UMEM. Idempotent. */
void masque_xsk_close(struct masque_xsk *x);

/* Receive up to max datagrams (also bounded by the batch's free slots) without
 * waiting: payloads appended to b from b->count on, addresses in meta[k] for
 * the k-th appended. Returns how many were appended. */
uint32_t masque_xsk_recv(struct masque_xsk *x, masque_batch *b, uint32_t max,
                         struct masque_xsk_meta *meta);

/* Queue n UDP payloads to f and kick the kernel. Returns how many from the
 * front were handled (queued, or dropped as too big for a frame); fewer than n
 * only when TX frames ran out (the rest counted in tx_full). */
uint32_t masque_xsk_send(struct masque_xsk *x, const struct masque_xsk_flow *f,
                         const struct masque_xsk_iov *p, uint32_t n);

/* Same with packets 0..n-1 of a batch. */
uint32_t masque_xsk_send_batch(struct masque_xsk *x, const struct masque_xsk_flow *f,
                               const masque_batch *b, uint32_t n);

/* Reclaim completions and kick the kernel if descriptors wait on the TX ring.
 * Returns the descriptors the kernel has not taken yet. */
uint32_t masque_xsk_flush(struct masque_xsk *x);

/* Descriptors waiting on the RX ring (not yet received). */
uint32_t masque_xsk_rx_pending(const struct masque_xsk *x);

/* TX frames free right now (after reclaiming completions). */
uint32_t masque_xsk_tx_free(struct masque_xsk *x);

/* Text of an IPv4 (family 4, first 4 bytes) or IPv6 address, as Python's socket
 * module writes it (IPv6 compressed). Returns 0 or -1. cap >= 46. */
int masque_xsk_addr_format(int family, const uint8_t *addr, char *out, size_t cap);

/* Parse an IPv4 or IPv6 literal into out[16] (IPv4: first 4 bytes, rest zero).
 * Returns 4, 6 or -1. */
int masque_xsk_addr_parse(const char *text, uint8_t out[16]);

/* The kernel's struct xdp_statistics (6 counters: rx_dropped, rx_invalid_descs,
 * tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs, tx_ring_empty_descs).
 * Returns 0 or -errno. */
int masque_xsk_kernel_stats(const struct masque_xsk *x, uint64_t out[6]);

#endif
