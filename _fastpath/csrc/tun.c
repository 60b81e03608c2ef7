#include "tun.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "offload.h"

/* Debian 12's linux/if_tun.h predates USO (Linux 6.2). */
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

static const unsigned offload_tries[] = {
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
};

static void queue_free(struct masque_tun_queue *q)
{
    if (q->fd >= 0)
        close(q->fd);
    free(q->rbuf);
    free(q->sbuf);
    masque_gro_free(&q->gro);
    memset(q, 0, sizeof(*q));
    q->fd = -1;
}

/* Open one queue: TUNSETIFF with `flags` on a fresh fd. -errno on failure. */
static int queue_open(struct masque_tun_queue *q, char *name, short flags)
{
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    ifr.ifr_flags = flags;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    snprintf(name, IFNAMSIZ, "%s", ifr.ifr_name); /* "%d" resolved */
    q->fd = fd;
    q->rbuf = malloc(MASQUE_TUN_READ_BUF);
    q->sbuf = malloc(MASQUE_TUN_SEG_BUF);
    if (!q->rbuf || !q->sbuf) {
        queue_free(q);
        return -ENOMEM;
    }
    return 0;
}

int masque_tun_open(struct masque_tun *t, const char *name, int want_vnet_hdr, int queues)
{
    unsigned features = 0;
    char ifname[IFNAMSIZ];
    int fd, err = 0;

    memset(t, 0, sizeof(*t));
    for (int i = 0; i < MASQUE_TUN_MAX_QUEUES; i++)
        t->q[i].fd = -1;
    if (strlen(name) >= IFNAMSIZ)
        return -ENAMETOOLONG;
    if (queues < 1 || queues > MASQUE_TUN_MAX_QUEUES)
        return -EINVAL;

    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ioctl(fd, TUNGETFEATURES, &features) < 0)
        features = IFF_TUN | IFF_NO_PI;
    close(fd);

    short flags = IFF_TUN | IFF_NO_PI;
    if (want_vnet_hdr && (features & IFF_VNET_HDR))
        flags |= IFF_VNET_HDR;
    if (queues > 1 && (features & IFF_MULTI_QUEUE))
        flags |= IFF_MULTI_QUEUE;
    else
        queues = 1;

    snprintf(ifname, sizeof(ifname), "%s", name);
    for (;;) {
        err = queue_open(&t->q[0], ifname, flags);
        if (err == 0)
            break;
        /* An existing device with other flags, or a kernel that refuses:
         * drop the optional features one at a time. */
        if (err != -EINVAL && err != -EBUSY && err != -EOPNOTSUPP)
            return err;
        if (flags & IFF_MULTI_QUEUE) {
            flags &= (short)~IFF_MULTI_QUEUE;
            queues = 1;
        } else if (flags & IFF_VNET_HDR) {
            flags &= (short)~IFF_VNET_HDR;
        } else {
            return err;
        }
    }
    t->nqueues = 1;
    for (int i = 1; i < queues; i++) {
        err = queue_open(&t->q[i], ifname, flags);
        if (err) {
            masque_tun_close(t);
            return err;
        }
        t->nqueues++;
    }
    snprintf(t->name, sizeof(t->name), "%s", ifname);
    t->vnet_hdr = !!(flags & IFF_VNET_HDR);
    t->multi_queue = !!(flags & IFF_MULTI_QUEUE);

    /* Offloads are per device, not per queue. */
    fd = t->q[0].fd;
    if (t->vnet_hdr) {
        int le = 1;
        (void)ioctl(fd, TUNSETVNETLE, &le); /* legacy default is LE on LE hosts */
        for (size_t i = 0; i < sizeof(offload_tries) / sizeof(offload_tries[0]); i++) {
            if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)offload_tries[i]) == 0) {
                t->offloads = offload_tries[i];
                break;
            }
        }
        if (!t->offloads)
            (void)ioctl(fd, TUNSETOFFLOAD, 0UL);
    } else {
        (void)ioctl(fd, TUNSETOFFLOAD, 0UL);
    }
    return 0;
}

void masque_tun_close(struct masque_tun *t)
{
    for (int i = 0; i < MASQUE_TUN_MAX_QUEUES; i++)
        if (t->q[i].fd >= 0 || t->q[i].rbuf)
            queue_free(&t->q[i]);
    t->nqueues = 0;
}

static inline void note_read(struct masque_tun *t, size_t flen)
{
    t->stats.reads++;
    if (flen > t->stats.largest_read)
        t->stats.largest_read = flen;
}

/* Plan the split of the GSO frame in q->rbuf: the number of segments now
 * pending, or 0 (malformed, counted). */
static int plan_split(struct masque_tun *t, struct masque_tun_queue *q, size_t flen,
                      const struct masque_vnet_hdr *h, size_t mtu)
{
    int segs = masque_gso_plan_init(&q->plan, q->rbuf, flen, h, mtu);
    if (segs <= 0) {
        t->stats.errors++;
        return 0;
    }
    t->stats.gso_frames++;
    t->stats.segments_split += (uint64_t)segs;
    q->pend_next = 0;
    q->pend_segs = segs;
    return segs;
}

int masque_tun_next(struct masque_tun *t, int qi, size_t mtu, const uint8_t **pkt, size_t *len)
{
    struct masque_tun_queue *q = &t->q[qi];

    for (;;) {
        if (q->pend_next < q->pend_segs) {
            *len = masque_gso_plan_emit(&q->plan, q->rbuf, q->pend_next++, q->sbuf);
            *pkt = q->sbuf;
            return 1;
        }
        /* with vnet_hdr the header goes aside: plans and segments refer to
         * the frame at the front of rbuf */
        uint8_t vh[MASQUE_VNET_HDR_LEN];
        struct iovec iov[2] = {
            {.iov_base = vh, .iov_len = sizeof(vh)},
            {.iov_base = q->rbuf, .iov_len = MASQUE_TUN_READ_BUF - MASQUE_VNET_HDR_LEN},
        };
        ssize_t n = t->vnet_hdr ? readv(q->fd, iov, 2) : read(q->fd, q->rbuf, MASQUE_TUN_READ_BUF);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (!t->vnet_hdr) {
            note_read(t, (size_t)n);
            *pkt = q->rbuf;
            *len = (size_t)n;
            return 1;
        }
        if (n < MASQUE_VNET_HDR_LEN) {
            t->stats.reads++;
            t->stats.errors++;
            continue;
        }
        struct masque_vnet_hdr h;
        size_t flen = (size_t)n - MASQUE_VNET_HDR_LEN;
        masque_vnet_hdr_decode(vh, &h);
        note_read(t, flen);
        if (h.gso_type == MASQUE_VNET_GSO_NONE) {
            if ((h.flags & MASQUE_VNET_F_NEEDS_CSUM) && masque_vnet_complete_csum(q->rbuf, flen, &h) < 0) {
                t->stats.errors++;
                continue;
            }
            *pkt = q->rbuf;
            *len = flen;
            return 1;
        }
        plan_split(t, q, flen, &h, mtu); /* 0 segments: dropped, loop */
    }
}

/* Move pending segments of q's plan into the batch while slots are left. */
static int drain_pending(struct masque_tun *t, struct masque_tun_queue *q, masque_batch *b)
{
    int added = 0;
    while (q->pend_next < q->pend_segs && b->count < b->slots) {
        int k = q->pend_next++;
        size_t sl = masque_gso_plan_seg_len(&q->plan, k);
        if (sl > b->slot_size) {
            t->stats.oversize++;
            continue;
        }
        masque_gso_plan_emit(&q->plan, q->rbuf, k, masque_batch_packet(b, b->count));
        b->lens[b->count++] = (uint32_t)sl;
        added++;
    }
    return added;
}

int masque_tun_read_batch(struct masque_tun *t, int qi, masque_batch *b, size_t mtu)
{
    struct masque_tun_queue *q = &t->q[qi];
    const size_t max_frame = MASQUE_TUN_READ_BUF - MASQUE_VNET_HDR_LEN;
    size_t seg_mtu = mtu > 0 && mtu < b->slot_size ? mtu : b->slot_size;
    int added = drain_pending(t, q, b);

    while (b->count < b->slots) {
        /* The frame lands in the slot; what does not fit spills into rbuf
         * right where it would continue a copy of the slot, so a GSO frame is
         * made contiguous in rbuf by copying just the slot's part. */
        uint8_t vh[MASQUE_VNET_HDR_LEN];
        uint8_t *slot = masque_batch_packet(b, b->count);
        size_t in_slot = b->slot_size < max_frame ? b->slot_size : max_frame;
        struct iovec iov[3];
        int niov = 0;
        if (t->vnet_hdr) {
            iov[niov].iov_base = vh;
            iov[niov++].iov_len = sizeof(vh);
        }
        iov[niov].iov_base = slot;
        iov[niov++].iov_len = in_slot;
        if (in_slot < max_frame) {
            iov[niov].iov_base = q->rbuf + in_slot;
            iov[niov++].iov_len = max_frame - in_slot;
        }
        ssize_t n = readv(q->fd, iov, niov);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            if (added == 0)
                return -errno;
            break;
        }
        struct masque_vnet_hdr h = {0};
        size_t flen = (size_t)n;
        if (t->vnet_hdr) {
            if (flen < MASQUE_VNET_HDR_LEN) {
                t->stats.reads++;
                t->stats.errors++;
                continue;
            }
            flen -= MASQUE_VNET_HDR_LEN;
            masque_vnet_hdr_decode(vh, &h);
        }
        note_read(t, flen);
        if (h.gso_type != MASQUE_VNET_GSO_NONE) {
            memcpy(q->rbuf, slot, flen < in_slot ? flen : in_slot);
            if (plan_split(t, q, flen, &h, seg_mtu))
                added += drain_pending(t, q, b);
            continue;
        }
        if (flen > b->slot_size) {
            t->stats.oversize++;
            continue;
        }
        if ((h.flags & MASQUE_VNET_F_NEEDS_CSUM) && masque_vnet_complete_csum(slot, flen, &h) < 0) {
            t->stats.errors++;
            continue;
        }
        b->lens[b->count++] = (uint32_t)flen;
        added++;
    }
    return added;
}

static int write_frame(struct masque_tun *t, struct masque_tun_queue *q, const struct iovec *iov, int n)
{
    ssize_t r;
    do {
        r = writev(q->fd, iov, n);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        int err = -errno;
        if (err != -EAGAIN && err != -EWOULDBLOCK && err != -ENOBUFS) {
            t->stats.errors++;
            t->stats.write_errors++;
        }
        return err;
    }
    return 0;
}

int masque_tun_write(struct masque_tun *t, int qi, const uint8_t *pkt, size_t len)
{
    static const uint8_t zero_hdr[MASQUE_VNET_HDR_LEN];
    struct iovec iov[2] = {
        {.iov_base = (void *)zero_hdr, .iov_len = sizeof(zero_hdr)},
        {.iov_base = (void *)pkt, .iov_len = len},
    };
    int err = t->vnet_hdr ? write_frame(t, &t->q[qi], iov, 2) : write_frame(t, &t->q[qi], iov + 1, 1);
    if (err == 0)
        t->stats.writes++;
    return err;
}

static inline int backpressure(int err)
{
    return err == -EAGAIN || err == -EWOULDBLOCK || err == -ENOBUFS;
}

int masque_tun_write_batch(struct masque_tun *t, int qi, const masque_batch *b, const uint8_t *verdicts)
{
    struct masque_tun_queue *q = &t->q[qi];
    int coalesce = t->vnet_hdr;
    int written = 0, err;

    if (masque_gro_reserve(&q->gro, b->count) < 0) {
        /* no scratch: write one by one, in order */
        for (uint32_t i = 0; i < b->count; i++) {
            if ((verdicts && verdicts[i]) || b->lens[i] == 0)
                continue;
            err = masque_tun_write(t, qi, masque_batch_packet(b, i), b->lens[i]);
            if (err == 0)
                written++;
            else if (backpressure(err))
                break;
        }
        return written;
    }
    struct masque_gro *g = &q->gro;
    masque_gro_plan(g, b, verdicts, coalesce);
    for (uint32_t i = 0; i < b->count; i++) {
        int32_t role = g->role[i];
        if (role == MASQUE_GRO_SKIP)
            continue;
        if (role >= 0) {
            const struct masque_gro_item *it = &g->items[role];
            if (it->first != i)
                continue; /* written with its bucket */
            if (it->nsegs > 1) {
                uint8_t hdrbuf[MASQUE_GRO_HDR_BUF];
                struct iovec iov[MASQUE_GRO_MAX_SEGS + 1];
                int n = masque_gro_frame(g, b, (uint32_t)role, hdrbuf, iov);
                err = write_frame(t, q, iov, n);
                if (err == 0) {
                    written += (int)it->nsegs;
                    t->stats.writes += it->nsegs;
                    t->stats.gro_frames++;
                    t->stats.segments_coalesced += it->nsegs;
                    continue;
                }
                if (backpressure(err))
                    return written;
                /* refused: try its segments one by one */
                for (int32_t j = (int32_t)i; j >= 0; j = g->next[j]) {
                    err = masque_tun_write(t, qi, masque_batch_packet(b, (uint32_t)j), b->lens[j]);
                    if (err == 0)
                        written++;
                    else if (backpressure(err))
                        return written;
                }
                continue;
            }
        }
        err = masque_tun_write(t, qi, masque_batch_packet(b, i), b->lens[i]);
        if (err == 0)
            written++;
        else if (backpressure(err))
            return written;
    }
    return written;
}
