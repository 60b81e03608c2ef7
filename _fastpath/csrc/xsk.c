/* AF_XDP socket with its own UMEM, raw syscalls; see xsk.h for the layout. */
#define _GNU_SOURCE
#include "xsk.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_xdp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "checksum.h"

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif
/* Linux 6.17+ (include/uapi/linux/if_xdp.h); Debian 12's headers predate it.
 * Copy mode only: descriptors one sendto() hands to the driver, 32..TX ring size. */
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9
#endif

#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IPPROTO_UDP_ 17
#define TTL_DEFAULT 64
/* Kicks per send when the kernel stops at its per-call budget (EAGAIN). */
#define MAX_KICKS 8
/* bind() retries while the queue is still held by a socket closed just before. */
#define BIND_BUSY_TRIES 100
#define BIND_BUSY_WAIT_US 5000

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline uint32_t load_acquire(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t load_relaxed(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

static void set_what(char *what, size_t cap, const char *s)
{
    if (what && cap)
        snprintf(what, cap, "%s", s);
}

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* ------------------------------------------------------------------------ */
/* Setup and teardown                                                       */
/* ------------------------------------------------------------------------ */

static int map_ring(struct masque_xsk *x, struct masque_xsk_ring *r, const struct xdp_ring_offset *off,
                    uint32_t entries, size_t desc_size, off_t pgoff)
{
    size_t len = (size_t)off->desc + (size_t)entries * desc_size;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, x->fd, pgoff);
    if (m == MAP_FAILED)
        return -errno;
    r->map = m;
    r->map_len = len;
    r->producer = (uint32_t *)((uint8_t *)m + off->producer);
    r->consumer = (uint32_t *)((uint8_t *)m + off->consumer);
    r->flags = (uint32_t *)((uint8_t *)m + off->flags);
    r->descs = (uint8_t *)m + off->desc;
    r->size = entries;
    r->mask = entries - 1;
    return 0;
}

static void unmap_ring(struct masque_xsk_ring *r)
{
    if (r->map)
        munmap(r->map, r->map_len);
    memset(r, 0, sizeof(*r));
}

void masque_xsk_close(struct masque_xsk *x)
{
    unmap_ring(&x->rx);
    unmap_ring(&x->tx);
    unmap_ring(&x->fill);
    unmap_ring(&x->comp);
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
    if (x->umem)
        munmap(x->umem, x->umem_len);
    x->umem = NULL;
    x->umem_len = 0;
    free(x->tx_free);
    x->tx_free = NULL;
    x->tx_free_count = 0;
}

static int setopt_u32(int fd, int name, uint32_t v)
{
    return setsockopt(fd, SOL_XDP, name, &v, sizeof(v)) < 0 ? -errno : 0;
}

/* One attempt in one bind mode (XDP_COPY or XDP_ZEROCOPY). */
static int open_mode(struct masque_xsk *x, int ifindex, uint32_t queue, uint32_t frames,
                     uint32_t frame_size, uint16_t mode_flag, uint32_t tx_budget, char *what,
                     size_t cap)
{
    int err;
    uint32_t half = frames / 2;
    uint32_t ring = pow2_at_least(half);

    memset(x, 0, sizeof(*x));
    x->fd = -1;
    x->ifindex = ifindex;
    x->queue = queue;
    x->frames = frames;
    x->frame_size = frame_size;

    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0) {
        err = -errno;
        set_what(what, cap, "socket(AF_XDP)");
        return err;
    }

    x->umem_len = (size_t)frames * frame_size;
    void *umem = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (umem == MAP_FAILED) {
        err = -errno;
        x->umem_len = 0;
        set_what(what, cap, "mmap of the UMEM");
        return err;
    }
    x->umem = umem;

    struct xdp_umem_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.addr = (uint64_t)(uintptr_t)x->umem;
    reg.len = x->umem_len;
    reg.chunk_size = frame_size;
    reg.headroom = 0;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) < 0) {
        err = -errno;
        set_what(what, cap, "XDP_UMEM_REG (the UMEM is locked memory: RLIMIT_MEMLOCK or CAP_IPC_LOCK)");
        return err;
    }
    if ((err = setopt_u32(x->fd, XDP_UMEM_FILL_RING, ring)) < 0 ||
        (err = setopt_u32(x->fd, XDP_UMEM_COMPLETION_RING, ring)) < 0 ||
        (err = setopt_u32(x->fd, XDP_RX_RING, ring)) < 0 ||
        (err = setopt_u32(x->fd, XDP_TX_RING, ring)) < 0) {
        set_what(what, cap, "setting the ring sizes");
        return err;
    }

    struct xdp_mmap_offsets off;
    socklen_t optlen = sizeof(off);
    memset(&off, 0, sizeof(off));
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen) < 0) {
        err = -errno;
        set_what(what, cap, "XDP_MMAP_OFFSETS");
        return err;
    }
    if (optlen != sizeof(off)) { /* pre-5.4 layout without the flags word */
        set_what(what, cap, "XDP_MMAP_OFFSETS (kernel too old: no ring flags)");
        return -EOPNOTSUPP;
    }
    if ((err = map_ring(x, &x->rx, &off.rx, ring, sizeof(struct xdp_desc), XDP_PGOFF_RX_RING)) < 0 ||
        (err = map_ring(x, &x->tx, &off.tx, ring, sizeof(struct xdp_desc), XDP_PGOFF_TX_RING)) < 0 ||
        (err = map_ring(x, &x->fill, &off.fr, ring, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING)) < 0 ||
        (err = map_ring(x, &x->comp, &off.cr, ring, sizeof(uint64_t),
                        XDP_UMEM_PGOFF_COMPLETION_RING)) < 0) {
        set_what(what, cap, "mmap of the rings");
        return err;
    }

    /* RX frames onto the fill ring, TX frames onto the free stack. */
    uint64_t *fill = x->fill.descs;
    for (uint32_t i = 0; i < half; i++)
        fill[i & x->fill.mask] = (uint64_t)i * frame_size;
    store_release(x->fill.producer, half);
    x->tx_free = malloc((size_t)(frames - half) * sizeof(uint64_t));
    if (!x->tx_free) {
        set_what(what, cap, "allocating the TX frame stack");
        return -ENOMEM;
    }
    for (uint32_t i = frames; i > half; i--)
        x->tx_free[x->tx_free_count++] = (uint64_t)(i - 1) * frame_size;

    /* Only a socket with a TX ring takes it, at most the ring's size; kernels
     * before 6.17 do not know it. */
    if (tx_budget > ring)
        tx_budget = ring;
    if (tx_budget && setopt_u32(x->fd, XDP_MAX_TX_SKB_BUDGET, tx_budget) == 0)
        x->tx_budget = (int)tx_budget;

    struct sockaddr_xdp sxdp;
    memset(&sxdp, 0, sizeof(sxdp));
    sxdp.sxdp_family = AF_XDP;
    sxdp.sxdp_flags = (uint16_t)(mode_flag | XDP_USE_NEED_WAKEUP);
    sxdp.sxdp_ifindex = (uint32_t)ifindex;
    sxdp.sxdp_queue_id = queue;
    /* A socket closed just now leaves its queue busy until the kernel's
     * deferred pool release has run (a workqueue item): wait a little for it. */
    for (int tries = 0;; tries++) {
        if (bind(x->fd, (struct sockaddr *)&sxdp, sizeof(sxdp)) == 0)
            break;
        if (errno == EBUSY && tries < BIND_BUSY_TRIES) {
            usleep(BIND_BUSY_WAIT_US);
            continue;
        }
        err = -errno;
        set_what(what, cap, mode_flag == XDP_ZEROCOPY ? "bind (zero-copy)" : "bind (copy mode)");
        return err;
    }
    x->need_wakeup = 1;

    struct xdp_options opts;
    optlen = sizeof(opts);
    memset(&opts, 0, sizeof(opts));
    if (getsockopt(x->fd, SOL_XDP, XDP_OPTIONS, &opts, &optlen) == 0)
        x->zero_copy = (opts.flags & XDP_OPTIONS_ZEROCOPY) != 0;
    else
        x->zero_copy = mode_flag == XDP_ZEROCOPY;
    return 0;
}

int masque_xsk_open(struct masque_xsk *x, int ifindex, uint32_t queue, uint32_t frames,
                    uint32_t frame_size, int zero_copy, uint32_t tx_budget, char *what,
                    size_t cap)
{
    long page = sysconf(_SC_PAGESIZE);
    int err;

    memset(x, 0, sizeof(*x));
    x->fd = -1;
    if (frames < 64 || frames % 2 || frames > (1u << 20) || frame_size < 2048 ||
        (page > 0 && frame_size > (uint32_t)page) || (frame_size & (frame_size - 1))) {
        set_what(what, cap, "UMEM geometry (frames: even, 64..2^20; frame_size: a power of two, 2048..page size)");
        return -EINVAL;
    }
    if (zero_copy != MASQUE_XSK_MODE_COPY) {
        err = open_mode(x, ifindex, queue, frames, frame_size, XDP_ZEROCOPY, tx_budget, what, cap);
        if (err == 0 || zero_copy == MASQUE_XSK_MODE_ZEROCOPY || err == -ENODEV) {
            if (err)
                masque_xsk_close(x);
            return err;
        }
        masque_xsk_close(x); /* the driver has no zero-copy: start over in copy mode */
    }
    err = open_mode(x, ifindex, queue, frames, frame_size, XDP_COPY, tx_budget, what, cap);
    if (err)
        masque_xsk_close(x);
    return err;
}

int masque_xsk_kernel_stats(const struct masque_xsk *x, uint64_t out[6])
{
    struct xdp_statistics st;
    socklen_t optlen = sizeof(st);
    memset(&st, 0, sizeof(st));
    if (x->fd < 0)
        return -EBADF;
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &optlen) < 0)
        return -errno;
    out[0] = st.rx_dropped;
    out[1] = st.rx_invalid_descs;
    out[2] = st.tx_invalid_descs;
    out[3] = st.rx_ring_full;
    out[4] = st.rx_fill_ring_empty_descs;
    out[5] = st.tx_ring_empty_descs;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Receive                                                                  */
/* ------------------------------------------------------------------------ */

/* Ethernet [VLAN [VLAN]] IPv4|IPv6 UDP: fills m and the payload's offset and
 * length. Returns 0, or -1 for anything else (or anything inconsistent). */
static int parse_frame(const uint8_t *p, uint32_t len, struct masque_xsk_meta *m, uint32_t *poff,
                       uint32_t *plen)
{
    uint32_t o = MASQUE_XSK_ETH_HLEN, l4, l4len;
    if (len < MASQUE_XSK_ETH_HLEN)
        return -1;
    memcpy(m->dst_mac, p, 6);
    memcpy(m->src_mac, p + 6, 6);
    uint16_t type = rd16(p + 12);
    for (int i = 0; i < MASQUE_XSK_VLAN_MAX && (type == ETH_P_8021Q_ || type == ETH_P_8021AD_); i++) {
        if (len < o + 4)
            return -1;
        type = rd16(p + o + 2);
        o += 4;
    }
    if (type == ETH_P_IPV4) {
        if (len - o < MASQUE_XSK_IPV4_HLEN)
            return -1;
        const uint8_t *ip = p + o;
        uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
        uint32_t total = rd16(ip + 2);
        if ((ip[0] >> 4) != 4 || ihl < MASQUE_XSK_IPV4_HLEN || total < ihl || total > len - o)
            return -1;
        if (rd16(ip + 6) & 0x3fff) /* more fragments or an offset */
            return -1;
        if (ip[9] != IPPROTO_UDP_)
            return -1;
        m->family = 4;
        memset(m->src, 0, sizeof(m->src));
        memset(m->dst, 0, sizeof(m->dst));
        memcpy(m->src, ip + 12, 4);
        memcpy(m->dst, ip + 16, 4);
        l4 = o + ihl;
        l4len = total - ihl;
    } else if (type == ETH_P_IPV6_) {
        if (len - o < MASQUE_XSK_IPV6_HLEN)
            return -1;
        const uint8_t *ip = p + o;
        uint32_t payload = rd16(ip + 4);
        if ((ip[0] >> 4) != 6 || payload > len - o - MASQUE_XSK_IPV6_HLEN)
            return -1;
        if (ip[6] != IPPROTO_UDP_) /* extension headers are not the lane's */
            return -1;
        m->family = 6;
        memcpy(m->src, ip + 8, 16);
        memcpy(m->dst, ip + 24, 16);
        l4 = o + MASQUE_XSK_IPV6_HLEN;
        l4len = payload;
    } else {
        return -1;
    }
    if (l4len < MASQUE_XSK_UDP_HLEN)
        return -1;
    const uint8_t *u = p + l4;
    uint32_t ulen = rd16(u + 4);
    if (ulen < MASQUE_XSK_UDP_HLEN || ulen > l4len)
        return -1;
    m->src_port = rd16(u);
    m->dst_port = rd16(u + 2);
    *poff = l4 + MASQUE_XSK_UDP_HLEN;
    *plen = ulen - MASQUE_XSK_UDP_HLEN;
    return 0;
}

uint32_t masque_xsk_rx_pending(const struct masque_xsk *x)
{
    if (x->fd < 0 || !x->rx.map)
        return 0;
    return load_acquire(x->rx.producer) - load_relaxed(x->rx.consumer);
}

uint32_t masque_xsk_recv(struct masque_xsk *x, masque_batch *b, uint32_t max,
                         struct masque_xsk_meta *meta)
{
    if (x->fd < 0 || b->count >= b->slots)
        return 0;
    if (max > b->slots - b->count)
        max = b->slots - b->count;
    uint32_t cons = load_relaxed(x->rx.consumer);
    uint32_t avail = load_acquire(x->rx.producer) - cons;
    if (avail > max)
        avail = max;
    /* Every RX frame is on the fill ring, in the kernel or on the RX ring, and
     * the fill ring holds them all: there is room for those taken here. */
    uint32_t fprod = load_relaxed(x->fill.producer);
    uint32_t ffree = x->fill.size - (fprod - load_acquire(x->fill.consumer));
    if (avail > ffree)
        avail = ffree;

    const struct xdp_desc *descs = x->rx.descs;
    uint64_t *fill = x->fill.descs;
    uint64_t frame_mask = ~(uint64_t)(x->frame_size - 1);
    uint32_t got = 0;
    for (uint32_t k = 0; k < avail; k++) {
        const struct xdp_desc *d = &descs[(cons + k) & x->rx.mask];
        uint64_t addr = d->addr;
        uint32_t len = d->len;
        fill[(fprod + k) & x->fill.mask] = addr & frame_mask;
        if (addr >= x->umem_len || len > x->umem_len - addr) { /* cannot happen */
            x->stats.rx_dropped_not_udp++;
            continue;
        }
        struct masque_xsk_meta *m = &meta[got];
        uint32_t poff, plen;
        if (parse_frame(x->umem + addr, len, m, &poff, &plen) < 0) {
            x->stats.rx_dropped_not_udp++;
            continue;
        }
        if (plen > b->slot_size) {
            x->stats.rx_dropped_too_big++;
            continue;
        }
        uint32_t slot = b->count + got;
        memcpy(masque_batch_packet(b, slot), x->umem + addr + poff, plen);
        b->lens[slot] = plen;
        x->stats.rx_bytes += plen;
        got++;
    }
    if (avail) {
        store_release(x->rx.consumer, cons + avail);
        store_release(x->fill.producer, fprod + avail);
        x->stats.fill_refills += avail;
    }
    b->count += got;
    x->stats.rx_packets += got;
    if (x->need_wakeup && (load_relaxed(x->fill.flags) & XDP_RING_NEED_WAKEUP)) {
        recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        x->stats.wakeups++;
    }
    return got;
}

/* ------------------------------------------------------------------------ */
/* Send                                                                     */
/* ------------------------------------------------------------------------ */

static void reclaim(struct masque_xsk *x)
{
    uint32_t cons = load_relaxed(x->comp.consumer);
    uint32_t avail = load_acquire(x->comp.producer) - cons;
    uint32_t cap = x->frames - x->frames / 2;
    const uint64_t *comp = x->comp.descs;
    uint64_t frame_mask = ~(uint64_t)(x->frame_size - 1);
    if (!avail)
        return;
    for (uint32_t k = 0; k < avail; k++) {
        if (x->tx_free_count < cap) /* always: only our TX frames complete */
            x->tx_free[x->tx_free_count++] = comp[(cons + k) & x->comp.mask] & frame_mask;
    }
    store_release(x->comp.consumer, cons + avail);
    x->stats.tx_completions += avail;
}

static uint32_t tx_pending(const struct masque_xsk *x)
{
    return load_relaxed(x->tx.producer) - load_acquire(x->tx.consumer);
}

/* Let the kernel take what waits on the TX ring (copy mode: it transmits
 * synchronously, up to its per-call budget). */
static void kick(struct masque_xsk *x)
{
    for (int i = 0; i < MAX_KICKS && tx_pending(x); i++) {
        if (x->need_wakeup && !(load_relaxed(x->tx.flags) & XDP_RING_NEED_WAKEUP))
            return;
        x->stats.wakeups++;
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            continue;
        if (errno == EAGAIN) { /* budget used up, or completions to make room for */
            reclaim(x);
            continue;
        }
        if (errno != EBUSY && errno != ENOBUFS && errno != EINTR)
            x->stats.tx_kick_errors++;
        return;
    }
}

uint32_t masque_xsk_flush(struct masque_xsk *x)
{
    if (x->fd < 0)
        return 0;
    reclaim(x);
    kick(x);
    reclaim(x);
    return tx_pending(x);
}

uint32_t masque_xsk_tx_free(struct masque_xsk *x)
{
    if (x->fd < 0)
        return 0;
    reclaim(x);
    return x->tx_free_count;
}

/* Headers + payload into one frame; returns the frame length. */
static uint32_t build_frame(struct masque_xsk *x, uint8_t *fr, const struct masque_xsk_flow *f,
                            const uint8_t *data, size_t len)
{
    uint8_t *ip = fr + MASQUE_XSK_ETH_HLEN, *u;
    uint16_t ulen = (uint16_t)(len + MASQUE_XSK_UDP_HLEN);
    uint32_t pseudo;

    memcpy(fr, f->dst_mac, 6);
    memcpy(fr + 6, f->src_mac, 6);
    if (f->family == 4) {
        wr16(fr + 12, ETH_P_IPV4);
        ip[0] = 0x45;
        ip[1] = 0;
        wr16(ip + 2, (uint16_t)(MASQUE_XSK_IPV4_HLEN + ulen));
        wr16(ip + 4, x->ip_id++);
        wr16(ip + 6, 0x4000); /* DF */
        ip[8] = TTL_DEFAULT;
        ip[9] = IPPROTO_UDP_;
        wr16(ip + 10, 0);
        memcpy(ip + 12, f->src, 4);
        memcpy(ip + 16, f->dst, 4);
        wr16(ip + 10, masque_csum(ip, MASQUE_XSK_IPV4_HLEN, 0));
        u = ip + MASQUE_XSK_IPV4_HLEN;
        pseudo = masque_csum_partial(ip + 12, 8, 0);
    } else {
        wr16(fr + 12, ETH_P_IPV6_);
        ip[0] = 0x60;
        ip[1] = ip[2] = ip[3] = 0;
        wr16(ip + 4, ulen);
        ip[6] = IPPROTO_UDP_;
        ip[7] = TTL_DEFAULT;
        memcpy(ip + 8, f->src, 16);
        memcpy(ip + 24, f->dst, 16);
        u = ip + MASQUE_XSK_IPV6_HLEN;
        pseudo = masque_csum_partial(ip + 8, 32, 0);
    }
    wr16(u, f->src_port);
    wr16(u + 2, f->dst_port);
    wr16(u + 4, ulen);
    wr16(u + 6, 0);
    memcpy(u + MASQUE_XSK_UDP_HLEN, data, len);
    uint16_t c = masque_csum(u, ulen, pseudo + IPPROTO_UDP_ + ulen);
    wr16(u + 6, c ? c : 0xffff);
    return (uint32_t)(u + ulen - fr);
}

static uint32_t send_common(struct masque_xsk *x, const struct masque_xsk_flow *f,
                            const struct masque_xsk_iov *p, const masque_batch *b, uint32_t n)
{
    if (x->fd < 0 || n == 0)
        return 0;
    uint32_t hdr = MASQUE_XSK_ETH_HLEN + MASQUE_XSK_UDP_HLEN +
                   (f->family == 4 ? MASQUE_XSK_IPV4_HLEN : MASQUE_XSK_IPV6_HLEN);
    size_t max_payload = x->frame_size - hdr;
    if (max_payload > 65535u - MASQUE_XSK_UDP_HLEN - MASQUE_XSK_IPV4_HLEN)
        max_payload = 65535u - MASQUE_XSK_UDP_HLEN - MASQUE_XSK_IPV4_HLEN;
    struct xdp_desc *descs = x->tx.descs;
    uint32_t prod = load_relaxed(x->tx.producer);
    uint32_t queued = 0, room, i;

    reclaim(x);
    room = x->tx.size - (prod - load_acquire(x->tx.consumer));
    for (i = 0; i < n; i++) {
        const uint8_t *data;
        size_t len;
        if (p) {
            data = p[i].data;
            len = p[i].len;
        } else {
            data = masque_batch_packet(b, i);
            len = b->lens[i];
        }
        if (len > max_payload) {
            x->stats.tx_dropped_too_big++;
            continue;
        }
        if (x->tx_free_count == 0 || queued == room) {
            /* Out of frames: publish what we have, let the kernel send, reclaim. */
            store_release(x->tx.producer, prod + queued);
            prod += queued;
            queued = 0;
            kick(x);
            reclaim(x);
            room = x->tx.size - (prod - load_acquire(x->tx.consumer));
            if (x->tx_free_count == 0 || room == 0)
                break;
        }
        uint64_t addr = x->tx_free[--x->tx_free_count];
        struct xdp_desc *d = &descs[(prod + queued) & x->tx.mask];
        d->addr = addr;
        d->len = build_frame(x, x->umem + addr, f, data, len);
        d->options = 0;
        queued++;
        x->stats.tx_packets++;
        x->stats.tx_bytes += len;
    }
    if (queued)
        store_release(x->tx.producer, prod + queued);
    x->stats.tx_full += n - i;
    kick(x);
    reclaim(x);
    return i;
}

uint32_t masque_xsk_send(struct masque_xsk *x, const struct masque_xsk_flow *f,
                         const struct masque_xsk_iov *p, uint32_t n)
{
    return send_common(x, f, p, NULL, n);
}

uint32_t masque_xsk_send_batch(struct masque_xsk *x, const struct masque_xsk_flow *f,
                               const masque_batch *b, uint32_t n)
{
    if (n > b->count)
        n = b->count;
    return send_common(x, f, NULL, b, n);
}

int masque_xsk_addr_format(int family, const uint8_t *addr, char *out, size_t cap)
{
    int af = family == 4 ? AF_INET : family == 6 ? AF_INET6 : -1;
    if (af < 0 || !inet_ntop(af, addr, out, (socklen_t)cap))
        return -1;
    return 0;
}

int masque_xsk_addr_parse(const char *text, uint8_t out[16])
{
    memset(out, 0, 16);
    if (inet_pton(AF_INET, text, out) == 1)
        return 4;
    if (inet_pton(AF_INET6, text, out) == 1)
        return 6;
    return -1;
}
