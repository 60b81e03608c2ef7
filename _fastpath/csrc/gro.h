/* TCP GRO for writes to a vnet_hdr TUN: TCP segments of one flow in a
 * PacketBatch are coalesced into one super-frame (a virtio_net_hdr with
 * GSO_TCPV4/TCPV6 + NEEDS_CSUM, the first segment's headers, all payloads),
 * which the kernel takes as one skb and segments again only if it has to.
 *
 * In the spirit of wireguard-go's tun/offload_linux.go (tcpGRO), with per-flow
 * buckets over the whole batch, but stricter: a segment joins the open bucket
 * of its flow only when splitting the super-frame gives back exactly the
 * packets that went in (IPv4 ID aside), i.e. when
 *   - both are IPv4 without options, not fragments, with equal TOS, TTL and
 *     DF/reserved bits; or IPv6 without extension headers with equal traffic
 *     class, flow label and hop limit;
 *   - TCP: equal ACK number, header length, window, urgent pointer and option
 *     bytes (timestamps included); flags ACK only, ACK|PSH allowed on the last;
 *     reserved bits clear; payload not empty;
 *   - the sequence number continues the bucket; every segment carries exactly
 *     gso_size (the first one's payload) bytes, only the last may carry less;
 *   - both TCP checksums (and the IPv4 header checksum) are valid: the kernel
 *     trusts NEEDS_CSUM, so a corrupt segment must not be laundered;
 *   - the super-frame stays <= 65535 bytes and MASQUE_GRO_MAX_SEGS segments.
 * A TCP packet of a flow that cannot join closes the flow's open bucket, so
 * the packets of one flow leave in batch order; a bucket is written at the
 * position of its first packet. Everything else is written alone. */
#ifndef MASQUE_FASTPATH_GRO_H
#define MASQUE_FASTPATH_GRO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "batch.h"

#define MASQUE_GRO_MAX_SEGS 256
/* vnet_hdr + IPv6 header + the longest TCP header */
#define MASQUE_GRO_HDR_BUF (10 + 40 + 60)

/* Roles of a packet in a plan (masque_gro.role); >= 0: index of its item. */
#define MASQUE_GRO_SKIP (-1)  /* not written: verdict != 0 or empty */
#define MASQUE_GRO_ALONE (-2) /* written alone */

struct masque_gro_item {
    uint32_t first;    /* batch index of the first segment (the frame's position) */
    uint32_t last;     /* batch index of the last segment */
    uint32_t nsegs;    /* segments in the bucket */
    uint32_t total;    /* bytes of the coalesced IP packet */
    uint32_t next_seq; /* sequence number the next segment must carry */
    uint32_t hash;     /* of the flow's 5-tuple */
    uint16_t gso_size; /* payload bytes of the first segment */
    uint16_t last_payload;
    uint8_t l4;       /* TCP header offset (20 or 40) */
    uint8_t hlen;     /* l4 + TCP header length */
    uint8_t psh;      /* the last segment has PSH: the bucket is complete */
    uint8_t closed;   /* no more segments may join */
    uint8_t verified; /* the first segment's checksums were checked */
};

struct masque_gro {
    uint32_t cap;     /* packets the per-packet arrays hold */
    int32_t *role;    /* per packet: MASQUE_GRO_SKIP, MASQUE_GRO_ALONE or an item */
    int32_t *next;    /* per packet: the next segment of its item, -1 at the end */
    struct masque_gro_item *items;
    uint32_t nitems;
    int32_t *table;   /* open addressing: flow -> its latest item, -1 = empty */
    uint32_t table_mask;
};

/* Size the scratch for batches of up to n packets: 0 or -ENOMEM. */
int masque_gro_reserve(struct masque_gro *g, uint32_t n);
void masque_gro_free(struct masque_gro *g);

/* Plan the writes of packets 0..count-1 whose verdict is 0 (all when verdicts
 * is NULL). With coalesce 0 every packet is planned alone. Needs
 * masque_gro_reserve(g, b->count) first. */
void masque_gro_plan(struct masque_gro *g, const masque_batch *b, const uint8_t *verdicts, int coalesce);

/* The iovecs of item `it`'s super-frame (nsegs >= 2): iov[0] points into
 * `hdrbuf` (MASQUE_GRO_HDR_BUF bytes: the virtio_net_hdr and the patched
 * headers), then one iovec per segment payload. `iov` holds nsegs + 1
 * entries. Returns the number of iovecs. The batch is not modified. */
int masque_gro_frame(const struct masque_gro *g, const masque_batch *b, uint32_t it, uint8_t *hdrbuf,
                     struct iovec *iov);

#endif
