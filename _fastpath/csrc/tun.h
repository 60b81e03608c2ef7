/* A Linux TUN device (IFF_TUN | IFF_NO_PI), optionally with IFF_VNET_HDR
 * offloads and IFF_MULTI_QUEUE, probed at open time with quiet fallback.
 *
 * Read path:  read() one frame -> [vnet_hdr?] -> GSO? split (offload.c) into
 *             the queue's segment buffer -> hand packets out one at a time
 *             (a split super-segment is drained across calls).
 * Write path: one packet per write(); with vnet_hdr a zero header (GSO_NONE)
 *             goes in front through writev(). */
#ifndef MASQUE_FASTPATH_TUN_H
#define MASQUE_FASTPATH_TUN_H

#include <stddef.h>
#include <stdint.h>

#define MASQUE_TUN_MAX_QUEUES 16
#define MASQUE_TUN_READ_BUF (10 + 65536 + 64) /* vnet_hdr + largest frame */
#define MASQUE_TUN_SPLIT_BUF (4 * 65536)
#define MASQUE_TUN_MAX_SEGS 1024

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
};

struct masque_tun_queue {
    int fd;
    uint8_t *rbuf;  /* MASQUE_TUN_READ_BUF */
    uint8_t *sbuf;  /* MASQUE_TUN_SPLIT_BUF: segments of the last split */
    uint16_t *seg_len;
    int nsegs;      /* segments in sbuf */
    int next;       /* next segment to hand out */
    size_t next_off;
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

#endif
