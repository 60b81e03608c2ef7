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
    free(q->seg_len);
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
    q->sbuf = malloc(MASQUE_TUN_SPLIT_BUF);
    q->seg_len = malloc(MASQUE_TUN_MAX_SEGS * sizeof(*q->seg_len));
    if (!q->rbuf || !q->sbuf || !q->seg_len) {
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

int masque_tun_next(struct masque_tun *t, int qi, size_t mtu, const uint8_t **pkt, size_t *len)
{
    struct masque_tun_queue *q = &t->q[qi];

    if (q->next < q->nsegs) {
        *pkt = q->sbuf + q->next_off;
        *len = q->seg_len[q->next];
        q->next_off += q->seg_len[q->next];
        q->next++;
        return 1;
    }
    for (;;) {
        ssize_t n = read(q->fd, q->rbuf, MASQUE_TUN_READ_BUF);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -errno;
        }
        t->stats.reads++;
        if (!t->vnet_hdr) {
            *pkt = q->rbuf;
            *len = (size_t)n;
            return 1;
        }
        if (n < MASQUE_VNET_HDR_LEN) {
            t->stats.errors++;
            continue;
        }
        struct masque_vnet_hdr h;
        uint8_t *frame = q->rbuf + MASQUE_VNET_HDR_LEN;
        size_t flen = (size_t)n - MASQUE_VNET_HDR_LEN;
        masque_vnet_hdr_decode(q->rbuf, &h);
        if (h.gso_type == MASQUE_VNET_GSO_NONE) {
            if ((h.flags & MASQUE_VNET_F_NEEDS_CSUM) && masque_vnet_complete_csum(frame, flen, &h) < 0) {
                t->stats.errors++;
                continue;
            }
            *pkt = frame;
            *len = flen;
            return 1;
        }
        int segs = masque_gso_split(frame, flen, &h, mtu, q->sbuf, MASQUE_TUN_SPLIT_BUF, q->seg_len,
                                    MASQUE_TUN_MAX_SEGS);
        if (segs <= 0) {
            t->stats.errors++;
            continue;
        }
        t->stats.gso_frames++;
        t->stats.segments_split += (uint64_t)segs;
        q->nsegs = segs;
        q->next = 1;
        q->next_off = q->seg_len[0];
        *pkt = q->sbuf;
        *len = q->seg_len[0];
        return 1;
    }
}

int masque_tun_write(struct masque_tun *t, int qi, const uint8_t *pkt, size_t len)
{
    static const uint8_t zero_hdr[MASQUE_VNET_HDR_LEN];
    struct masque_tun_queue *q = &t->q[qi];
    ssize_t n;

    do {
        if (t->vnet_hdr) {
            struct iovec iov[2] = {
                {.iov_base = (void *)zero_hdr, .iov_len = sizeof(zero_hdr)},
                {.iov_base = (void *)pkt, .iov_len = len},
            };
            n = writev(q->fd, iov, 2);
        } else {
            n = write(q->fd, pkt, len);
        }
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        int err = -errno;
        if (err != -EAGAIN)
            t->stats.errors++;
        return err;
    }
    t->stats.writes++;
    return 0;
}
