/* Batched UDP I/O with GSO/GRO; see udp.h for the pipeline. */
#define _GNU_SOURCE
#include "udp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

int masque_udp_open(const struct masque_udp_addr *addr, int v6only)
{
    int fam = addr->u.sa.sa_family;
    int fd = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (fam == AF_INET6) {
        int on = v6only ? 1 : 0;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) < 0)
            goto fail;
    }
    if (bind(fd, &addr->u.sa, addr->len) < 0)
        goto fail;
    return fd;
fail:;
    int err = errno;
    close(fd);
    return -err;
}

static void *zalloc(size_t n) { return calloc(1, n); }

int masque_udp_init(struct masque_udp *u, int fd, int want_gso, int want_gro)
{
    memset(u, 0, sizeof(*u));
    u->fd = fd;

    int type = 0;
    socklen_t sl = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &sl) < 0)
        return -errno;
    if (type != SOCK_DGRAM)
        return -EPROTOTYPE;
    struct sockaddr_storage ss;
    sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -errno;
    u->family = ss.ss_family;
    if (u->family != AF_INET && u->family != AF_INET6)
        return -EAFNOSUPPORT;

    int on = 1, val = 0;
    if (u->family == AF_INET6) {
        sl = sizeof(val);
        if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &val, &sl) == 0 && !val)
            u->dual_stack = 1;
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_RECVTCLASS, &on, sizeof(on));
    }
    /* On a dual-stack socket IP_RECVTOS covers the IPv4-mapped side. */
    (void)setsockopt(fd, IPPROTO_IP, IP_RECVTOS, &on, sizeof(on));

    /* GSO: the option exists when the kernel knows it (reading gives the
     * socket's default segment size, normally 0). */
    sl = sizeof(val);
    if (want_gso && getsockopt(fd, SOL_UDP, UDP_SEGMENT, &val, &sl) == 0)
        u->features |= MASQUE_UDP_F_GSO;
    if (want_gro && setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on)) == 0)
        u->features |= MASQUE_UDP_F_GRO;

    u->rx_arena = malloc((size_t)MASQUE_UDP_BATCH * MASQUE_UDP_SLOT);
    u->rx_msgs = zalloc(MASQUE_UDP_BATCH * sizeof(*u->rx_msgs));
    u->rx_iov = zalloc(MASQUE_UDP_BATCH * sizeof(*u->rx_iov));
    u->rx_addr = zalloc(MASQUE_UDP_BATCH * sizeof(*u->rx_addr));
    u->rx_ctrl = zalloc(MASQUE_UDP_BATCH * MASQUE_UDP_CTRL);
    u->rx_out = zalloc(MASQUE_UDP_BATCH * MASQUE_UDP_MAX_SEGS * sizeof(*u->rx_out));
    u->tx_msgs = zalloc(MASQUE_UDP_BATCH * sizeof(*u->tx_msgs));
    u->tx_iov = zalloc(MASQUE_UDP_TX_IOV * sizeof(*u->tx_iov));
    u->tx_ctrl = zalloc(MASQUE_UDP_BATCH * CMSG_SPACE(sizeof(uint16_t)));
    u->tx_first = zalloc(MASQUE_UDP_BATCH * sizeof(*u->tx_first));
    u->tx_count = zalloc(MASQUE_UDP_BATCH * sizeof(*u->tx_count));
    if (!u->rx_arena || !u->rx_msgs || !u->rx_iov || !u->rx_addr || !u->rx_ctrl ||
        !u->rx_out || !u->tx_msgs || !u->tx_iov || !u->tx_ctrl || !u->tx_first ||
        !u->tx_count) {
        masque_udp_free(u);
        return -ENOMEM;
    }
    return 0;
}

void masque_udp_free(struct masque_udp *u)
{
    free(u->rx_arena);
    free(u->rx_msgs);
    free(u->rx_iov);
    free(u->rx_addr);
    free(u->rx_ctrl);
    free(u->rx_out);
    free(u->tx_msgs);
    free(u->tx_iov);
    free(u->tx_ctrl);
    free(u->tx_first);
    free(u->tx_count);
    u->rx_arena = NULL;
    u->rx_msgs = NULL;
    u->rx_iov = NULL;
    u->rx_addr = NULL;
    u->rx_ctrl = NULL;
    u->rx_out = NULL;
    u->tx_msgs = NULL;
    u->tx_iov = NULL;
    u->tx_ctrl = NULL;
    u->tx_first = NULL;
    u->tx_count = NULL;
}

/* ECN bits and GRO segment size from one message's control data. */
static void parse_cmsgs(struct msghdr *mh, uint8_t *ecn, unsigned *gso)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        size_t dlen = c->cmsg_len - CMSG_LEN(0);
        const uint8_t *d = CMSG_DATA(c);
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS && dlen >= 1) {
            *ecn = d[0] & 3;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_TCLASS &&
                   dlen >= sizeof(int)) {
            int v;
            memcpy(&v, d, sizeof(v));
            *ecn = (uint8_t)(v & 3);
        } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            if (dlen >= sizeof(int)) {
                int v;
                memcpy(&v, d, sizeof(v));
                *gso = v > 0 ? (unsigned)v : 0;
            } else if (dlen >= sizeof(uint16_t)) {
                uint16_t v;
                memcpy(&v, d, sizeof(v));
                *gso = v;
            }
        }
    }
}

int masque_udp_recv(struct masque_udp *u, unsigned max_msgs, int timeout_ms)
{
    if (max_msgs == 0)
        return 0;
    if (max_msgs > MASQUE_UDP_BATCH)
        max_msgs = MASQUE_UDP_BATCH;
    if (timeout_ms != 0) {
        struct pollfd p = {.fd = u->fd, .events = POLLIN};
        u->stats.syscalls++;
        int r = poll(&p, 1, timeout_ms);
        if (r < 0)
            return errno == EINTR ? 0 : -errno;
        if (r == 0)
            return 0;
    }
    for (unsigned i = 0; i < max_msgs; i++) {
        struct msghdr *mh = &u->rx_msgs[i].msg_hdr;
        u->rx_iov[i].iov_base = u->rx_arena + (size_t)i * MASQUE_UDP_SLOT;
        u->rx_iov[i].iov_len = MASQUE_UDP_SLOT;
        memset(&u->rx_addr[i], 0, sizeof(u->rx_addr[i]));
        mh->msg_name = &u->rx_addr[i].u;
        mh->msg_namelen = sizeof(u->rx_addr[i].u);
        mh->msg_iov = &u->rx_iov[i];
        mh->msg_iovlen = 1;
        mh->msg_control = u->rx_ctrl + (size_t)i * MASQUE_UDP_CTRL;
        mh->msg_controllen = MASQUE_UDP_CTRL;
        mh->msg_flags = 0;
        u->rx_msgs[i].msg_len = 0;
    }
    int r;
    do {
        u->stats.syscalls++;
        r = recvmmsg(u->fd, u->rx_msgs, max_msgs, MSG_DONTWAIT, NULL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        u->stats.recv_errors++;
        return -errno;
    }

    unsigned out = 0;
    const unsigned cap = MASQUE_UDP_BATCH * MASQUE_UDP_MAX_SEGS;
    for (int i = 0; i < r; i++) {
        struct msghdr *mh = &u->rx_msgs[i].msg_hdr;
        u->rx_addr[i].len = mh->msg_namelen;
        if (mh->msg_flags & MSG_TRUNC) {
            u->stats.truncated++;
            continue;
        }
        uint8_t ecn = 0;
        unsigned gso = 0;
        parse_cmsgs(mh, &ecn, &gso);
        const uint8_t *p = u->rx_iov[i].iov_base;
        size_t len = u->rx_msgs[i].msg_len;
        if (gso == 0 || len <= gso)
            gso = len ? (unsigned)len : 1;
        else
            u->stats.gro_splits++;
        size_t off = 0;
        do {
            if (out == cap)
                goto done;
            size_t seg = len - off < gso ? len - off : gso;
            u->rx_out[out].data = p + off;
            u->rx_out[out].len = (uint32_t)seg;
            u->rx_out[out].msg = (uint16_t)i;
            u->rx_out[out].ecn = ecn;
            out++;
            off += seg;
        } while (off < len);
    }
done:
    u->stats.dgrams_received += out;
    return (int)out;
}

static int same_addr(const struct masque_udp_addr *a, const struct masque_udp_addr *b)
{
    return a->len == b->len && memcmp(&a->u, &b->u, a->len) == 0;
}

size_t masque_udp_send(struct masque_udp *u, const struct masque_udp_out *d, size_t n)
{
    size_t i = 0;
    size_t no_gso_until = 0; /* datagrams before this index go out one by one */
    const size_t cspace = CMSG_SPACE(sizeof(uint16_t));

    while (i < n) {
        /* Build up to MASQUE_UDP_BATCH messages starting at datagram i. */
        unsigned m = 0, iov_used = 0;
        size_t j = i;
        while (j < n && m < MASQUE_UDP_BATCH && iov_used < MASQUE_UDP_TX_IOV) {
            size_t seg = d[j].len, total = seg, k = j + 1;
            int gso = (u->features & MASQUE_UDP_F_GSO) && j >= no_gso_until && seg > 0;
            if (gso) {
                while (k < n && k - j < MASQUE_UDP_MAX_SEGS &&
                       iov_used + (k - j) < MASQUE_UDP_TX_IOV && d[k].len > 0 &&
                       d[k].len <= seg && total + d[k].len <= MASQUE_UDP_GSO_MAX &&
                       same_addr(&d[k].addr, &d[j].addr)) {
                    total += d[k].len;
                    k++;
                    if (d[k - 1].len < seg)
                        break; /* a shorter datagram ends the run */
                }
            }
            struct msghdr *mh = &u->tx_msgs[m].msg_hdr;
            memset(mh, 0, sizeof(*mh));
            mh->msg_name = (void *)&d[j].addr.u;
            mh->msg_namelen = d[j].addr.len;
            mh->msg_iov = &u->tx_iov[iov_used];
            mh->msg_iovlen = k - j;
            for (size_t x = j; x < k; x++) {
                u->tx_iov[iov_used].iov_base = (void *)d[x].data;
                u->tx_iov[iov_used].iov_len = d[x].len;
                iov_used++;
            }
            if (k - j > 1) {
                uint8_t *ctrl = u->tx_ctrl + (size_t)m * cspace;
                memset(ctrl, 0, cspace);
                mh->msg_control = ctrl;
                mh->msg_controllen = cspace;
                struct cmsghdr *c = CMSG_FIRSTHDR(mh);
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t s16 = (uint16_t)seg;
                memcpy(CMSG_DATA(c), &s16, sizeof(s16));
            }
            u->tx_first[m] = (uint32_t)(j - i);
            u->tx_count[m] = (uint32_t)(k - j);
            m++;
            j = k;
        }

        /* Send them; a failed message is retried without GSO or dropped. */
        unsigned off = 0;
        while (off < m) {
            u->stats.syscalls++;
            int r = sendmmsg(u->fd, u->tx_msgs + off, m - off, MSG_DONTWAIT);
            if (r > 0) {
                for (unsigned x = off; x < off + (unsigned)r; x++) {
                    u->stats.dgrams_sent += u->tx_count[x];
                    if (u->tx_count[x] > 1)
                        u->stats.gso_batches++;
                }
                off += (unsigned)r;
                continue;
            }
            int err = errno;
            if (err == EINTR)
                continue;
            if (err == EAGAIN || err == EWOULDBLOCK)
                return i + u->tx_first[off];
            if (u->tx_count[off] > 1 && (err == EIO || err == EINVAL || err == EMSGSIZE)) {
                /* EIO: the device cannot offload (e.g. checksum off): stop
                 * using GSO. Otherwise (segment above the path MTU...) resend
                 * just this run without it. */
                if (err == EIO)
                    u->features &= ~MASQUE_UDP_F_GSO;
                no_gso_until = i + u->tx_first[off] + u->tx_count[off];
                break;
            }
            u->stats.send_errors += u->tx_count[off];
            off++;
        }
        if (off < m) {
            i += u->tx_first[off]; /* rebuild from the failed GSO run */
            continue;
        }
        i = j;
    }
    return n;
}

int masque_udp_addr_parse(struct masque_udp_addr *a, int family, const char *host,
                          uint16_t port, uint32_t flowinfo, uint32_t scope_id)
{
    struct in_addr v4;
    struct in6_addr v6;
    memset(a, 0, sizeof(*a));
    if (inet_pton(AF_INET, host, &v4) == 1) {
        if (family == AF_INET) {
            a->u.v4.sin_family = AF_INET;
            a->u.v4.sin_port = htons(port);
            a->u.v4.sin_addr = v4;
            a->len = sizeof(a->u.v4);
            return 0;
        }
        memset(&v6, 0, sizeof(v6));
        v6.s6_addr[10] = 0xff;
        v6.s6_addr[11] = 0xff;
        memcpy(&v6.s6_addr[12], &v4, 4);
        flowinfo = scope_id = 0;
    } else if (inet_pton(AF_INET6, host, &v6) != 1) {
        return -EINVAL;
    }
    if (family == AF_INET) {
        if (!IN6_IS_ADDR_V4MAPPED(&v6))
            return -EAFNOSUPPORT;
        a->u.v4.sin_family = AF_INET;
        a->u.v4.sin_port = htons(port);
        memcpy(&a->u.v4.sin_addr, &v6.s6_addr[12], 4);
        a->len = sizeof(a->u.v4);
        return 0;
    }
    a->u.v6.sin6_family = AF_INET6;
    a->u.v6.sin6_port = htons(port);
    a->u.v6.sin6_flowinfo = htonl(flowinfo);
    a->u.v6.sin6_addr = v6;
    a->u.v6.sin6_scope_id = scope_id;
    a->len = sizeof(a->u.v6);
    return 0;
}

int masque_udp_addr_format(const struct masque_udp_addr *a, char *host, size_t cap)
{
    if (a->u.sa.sa_family == AF_INET) {
        if (!inet_ntop(AF_INET, &a->u.v4.sin_addr, host, (socklen_t)cap))
            return -1;
        return ntohs(a->u.v4.sin_port);
    }
    if (a->u.sa.sa_family == AF_INET6) {
        const struct in6_addr *v6 = &a->u.v6.sin6_addr;
        const char *ok = IN6_IS_ADDR_V4MAPPED(v6)
                             ? inet_ntop(AF_INET, &v6->s6_addr[12], host, (socklen_t)cap)
                             : inet_ntop(AF_INET6, v6, host, (socklen_t)cap);
        if (!ok)
            return -1;
        return ntohs(a->u.v6.sin6_port);
    }
    return -1;
}
