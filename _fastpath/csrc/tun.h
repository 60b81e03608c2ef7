/* A Linux TUN device (IFF_TUN | IFF_NO_PI), optionally with IFF_VNET_HDR
 * offloads and IFF_MULTI_QUEUE, probed at open time with quiet fallback.
 *
 * Read path:  read one frame -> [vnet_hdr?] -> GSO? plan its split
 *             (offload.c) and produce the segments one by one, straight into
 *             PacketBatch slots (masque_tun_read_batch, which reads a plain
 *             frame straight into its slot) or into the queue's segment buffer
 *             (masque_tun_next). A super-segment whose segments
 *             do not all fit stays pending in the queue (the frame in rbuf, the
 *             plan, the next segment) and is drained first by the next call.
 * Write path: one packet per write(); with vnet_hdr a zero header (GSO_NONE)
 *             goes in front through writev(). masque_tun_write_batch coalesces
 *             TCP segments of one flow into one GSO super-frame (gro.c). */
#ifndef MASQUE_FASTPATH_TUN_H
#define MASQUE_FASTPATH_TUN_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "gro.h"
#include "offload.h"

#define MASQUE_TUN_MAX_QUEUES 16
#define MASQUE_TUN_READ_BUF (10 + 65536 + 64) /* vnet_hdr + largest frame */
#define MASQUE_TUN_SEG_BUF 65536 /* one split segment (masque_tun_next) */

/* Offloads as TUNSETOFFLOAD bits (linux/if_tun.h TUN_F_*). */
#define MASQUE_TUN_F_CSUM 0x01
#define MASQUE_TUN_F_TSO4 0x02
#define MASQUE_TUN_F_TSO6 0x04
#define MASQUE_TUN_F_USO4 0x20
#define MASQUE_TUN_F_USO6 0x40

struct masque_tun_stats {
    uint64_t reads;          /* frames read from the device */
    uint64_t writes;         /* packets written */
    uint64_t gso_frames;     /* frames that were GSO super-segments */
    uint64_t segments_split; /* packets produced by splitting GSO frames */
    uint64_t errors;         /* malformed frames dropped, failed writes */
    uint64_t largest_read;   /* largest frame read, in bytes without vnet_hdr */
    uint64_t oversize;       /* packets dropped by read_batch: larger than a slot */
    uint64_t gro_frames;     /* super-frames written (coalesced TCP segments) */
    uint64_t segments_coalesced; /* packets written inside those super-frames */
    uint64_t write_errors;   /* failed writes (also counted in errors) */
};

struct masque_tun_queue {
    int fd;
    uint8_t *rbuf;  /* MASQUE_TUN_READ_BUF: the last frame read */
    uint8_t *sbuf;  /* MASQUE_TUN_SEG_BUF: the segment masque_tun_next hands out */
    struct masque_gso_plan plan; /* of the GSO frame in rbuf */
    int pend_next;  /* next segment of `plan` to hand out */
    int pend_segs;  /* segments of `plan` (pend_next == pend_segs: none pending) */
    struct masque_gro gro; /* write_batch scratch */
};

struct masque_tun {
    char name[16];
    int nqueues;
    int vnet_hdr;      /* IFF_VNET_HDR negotiated */
    int multi_queue;   /* IFF_MULTI_QUEUE negotiated */
    unsigned offloads; /* TUN_F_* accepted by TUNSETOFFLOAD */
    struct masque_tun_queue q[MASQUE_TUN_MAX_QUEUES];
    struct masque_tun_stats stats;
};

/* Open (or attach to) the TUN `name` ("mqtun%d" lets the kernel pick) with
 * `queues` queues. want_vnet_hdr asks for IFF_VNET_HDR and then the largest
 * offload set TUNSETOFFLOAD accepts (CSUM|TSO4|TSO6|USO4|USO6, then without
 * USO, then CSUM, then none); without it TUNSETOFFLOAD(0) clears what a
 * persistent device may keep. queues > 1 asks for IFF_MULTI_QUEUE; if the
 * kernel refuses, one queue. All fds are non-blocking, close-on-exec.
 * Returns 0 or -errno (then nothing is left open). */
int masque_tun_open(struct masque_tun *t, const char *name, int want_vnet_hdr, int queues);

void masque_tun_close(struct masque_tun *t);

/* The next packet from queue `qi`: a pending split segment or a fresh read.
 * mtu caps TCP segment size when splitting (0: the sender's gso_size).
 * Returns 1 with *pkt and *len set (valid until the next call on this queue),
 * 0 when nothing is ready (EAGAIN), -errno on a read error. */
int masque_tun_next(struct masque_tun *t, int qi, size_t mtu, const uint8_t **pkt, size_t *len);

/* Write one packet to queue `qi`: 0, or -errno (-EAGAIN when full). */
int masque_tun_write(struct masque_tun *t, int qi, const uint8_t *pkt, size_t len);

/* Append packets read from queue `qi` to `b`, from slot b->count on (each at
 * the slot's packet start, after the headroom), until the batch is full or
 * the queue is empty. Pending segments of an earlier super-segment come
 * first. GSO frames are split into TCP segments of at most min(mtu, slot_size)
 * bytes (mtu 0: slot_size) and UDP datagrams of the sender's size; partial
 * checksums are completed. A packet larger than a slot is dropped (oversize).
 * Returns the number of packets appended, or -errno when a read failed before
 * any packet was appended. */
int masque_tun_read_batch(struct masque_tun *t, int qi, masque_batch *b, size_t mtu);

/* Write packets 0..count-1 of `b` whose verdict is 0 (all when verdicts is
 * NULL; empty packets are skipped) to queue `qi`. With vnet_hdr, TCP segments
 * are coalesced (gro.c) into super-frames written in one writev() each.
 * Stops at EAGAIN/ENOBUFS; a write the kernel refuses is counted and skipped
 * (a refused super-frame is retried segment by segment). Returns the number
 * of packets written (a super-frame counts all its segments). */
int masque_tun_write_batch(struct masque_tun *t, int qi, const masque_batch *b, const uint8_t *verdicts);

#endif
