/* TUN offloads (IFF_VNET_HDR): the virtio_net_hdr in front of every packet, the
 * split of a GSO super-segment into wire-sized packets, and the completion of
 * a partial (CHECKSUM_PARTIAL) transport checksum.
 *
 * Approach after wireguard-go's tun/offload_linux.go (gsoSplit): copy the
 * headers in front of each slice of payload, then fix per segment the IP
 * length (and IPv4 ID + header checksum), the TCP sequence number and flags or
 * the UDP length, and compute the transport checksum in full. The header
 * length is derived from the packet itself, never trusted from hdr_len. */
#ifndef MASQUE_FASTPATH_OFFLOAD_H
#define MASQUE_FASTPATH_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

/* include/uapi/linux/virtio_net.h: 10 bytes on the wire, little-endian (we
 * ask for TUNSETVNETLE; legacy virtio on x86 is little-endian anyway). */
#define MASQUE_VNET_HDR_LEN 10

#define MASQUE_VNET_F_NEEDS_CSUM 1
#define MASQUE_VNET_GSO_NONE 0
#define MASQUE_VNET_GSO_TCPV4 1
#define MASQUE_VNET_GSO_UDP 3 /* UFO: never negotiated by us */
#define MASQUE_VNET_GSO_TCPV6 4
#define MASQUE_VNET_GSO_UDP_L4 5
#define MASQUE_VNET_GSO_ECN 0x80

struct masque_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
};

/* Decode the 10 wire bytes at `p` (host-order fields out). */
void masque_vnet_hdr_decode(const uint8_t *p, struct masque_vnet_hdr *h);

/* Finish the partial checksum of a non-GSO packet (VIRTIO_NET_HDR_F_NEEDS_CSUM):
 * the field at csum_start + csum_offset holds the pseudo-header sum; sum from
 * csum_start to the end and store the complement. 0 or -EINVAL. */
int masque_vnet_complete_csum(uint8_t *pkt, size_t len, const struct masque_vnet_hdr *h);

/* A GSO super-segment parsed once, its segments produced one at a time (into
 * any buffer: TUN reads write them straight into PacketBatch slots, and keep
 * the plan to resume where the batch filled up). Filled by masque_gso_plan_init. */
struct masque_gso_plan {
    size_t len;     /* bytes of the super-segment */
    size_t hlen;    /* IP + transport header bytes copied in front of each segment */
    size_t l4;      /* transport header offset */
    size_t ihl;     /* IPv4 header length (40 for IPv6, unused) */
    size_t seg;     /* payload bytes per segment (the last may carry less) */
    size_t payload; /* payload bytes in total */
    size_t csum_at; /* offset of the transport checksum */
    uint32_t addr_sum;
    uint32_t seq;
    uint16_t ip_id;
    uint8_t version;
    uint8_t tcp;
    uint8_t proto;
    uint8_t flags;
    int nsegs; /* segments the plan produces (>= 1) */
};

/* Check the super-segment `in` against `h` and plan its split (mtu as for
 * masque_gso_split). Returns the number of segments, -EINVAL (malformed) or
 * -EPROTONOSUPPORT (gso_type / IP version), -ENOSPC (a segment > 65535 bytes). */
int masque_gso_plan_init(struct masque_gso_plan *p, const uint8_t *in, size_t len,
                         const struct masque_vnet_hdr *h, size_t mtu);

/* Length of segment k (0 <= k < nsegs) in bytes. */
static inline size_t masque_gso_plan_seg_len(const struct masque_gso_plan *p, int k)
{
    size_t done = (size_t)k * p->seg;
    size_t left = p->payload - done;
    return p->hlen + (left < p->seg ? left : p->seg);
}

/* Write segment k of the plan (headers fixed, complete checksums) to `out`,
 * which must hold masque_gso_plan_seg_len(p, k) bytes; returns that length.
 * `in` is the super-segment the plan was made for (not modified). */
size_t masque_gso_plan_emit(const struct masque_gso_plan *p, const uint8_t *in, int k, uint8_t *out);

/* Split the super-segment `in` (IP header first, `len` bytes; described by `h`,
 * gso_type TCPV4, TCPV6 or UDP_L4) into packets written back to back into
 * `out` (capacity `out_cap`), their lengths into seg_len[0..max_segs).
 * A TCP segment carries at most min(gso_size, mtu - headers) payload bytes
 * (mtu 0: gso_size); a UDP segment exactly gso_size (the last one less): the
 * sender chose the datagram boundaries. Every packet gets complete IP and
 * transport checksums. `in` is not modified.
 * Returns the number of packets, or -EINVAL (malformed), -EPROTONOSUPPORT
 * (gso_type / IP version), -ENOSPC (out or seg_len too small). */
int masque_gso_split(const uint8_t *in, size_t len, const struct masque_vnet_hdr *h, size_t mtu,
                     uint8_t *out, size_t out_cap, uint16_t *seg_len, int max_segs);

#endif
