/* A UDP socket read and written in batches: recvmmsg/sendmmsg, with UDP GSO
 * (UDP_SEGMENT) and GRO (UDP_GRO) probed at run time and falling back quietly.
 *
 * Receive: poll (optional) -> one recvmmsg into fixed 64 KB slots -> per message
 *          read ECN (IP_TOS / IPV6_TCLASS) and the GRO segment size from the
 *          control data -> split coalesced buffers -> a flat list of datagrams
 *          pointing into the slots (valid until the next receive).
 * Send:    consecutive datagrams to the same address with the same size (the
 *          last of a run may be shorter) become one UDP_SEGMENT message, others
 *          one message each -> sendmmsg of up to 64 messages per syscall.
 *
 * The fd may be shared (aioquic's/asyncio's socket); this code never closes it.
 * One struct is used by one thread at a time. */
#ifndef MASQUE_FASTPATH_UDP_H
#define MASQUE_FASTPATH_UDP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>

#define MASQUE_UDP_BATCH 64          /* messages per recvmmsg/sendmmsg */
#define MASQUE_UDP_MAX_SEGS 64       /* datagrams per GSO message / GRO buffer */
#define MASQUE_UDP_SLOT 65536        /* receive buffer per message */
#define MASQUE_UDP_GSO_MAX 65000     /* payload bytes per GSO message */
#define MASQUE_UDP_CTRL 128          /* control buffer per received message */
#define MASQUE_UDP_TX_IOV (MASQUE_UDP_BATCH * 8)

#define MASQUE_UDP_F_GSO 0x1
#define MASQUE_UDP_F_GRO 0x2

/* An IPv4 or IPv6 socket address; zero-filled so that memcmp compares. */
struct masque_udp_addr {
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } u;
    socklen_t len;
};

struct masque_udp_stats {
    uint64_t syscalls;       /* recvmmsg + sendmmsg + poll calls */
    uint64_t dgrams_sent;
    uint64_t dgrams_received;
    uint64_t gso_batches;    /* messages sent with UDP_SEGMENT */
    uint64_t gro_splits;     /* received buffers split into several datagrams */
    uint64_t send_errors;    /* datagrams dropped on a send error */
    uint64_t recv_errors;
    uint64_t truncated;      /* received messages dropped as MSG_TRUNC */
};

/* One datagram handed to masque_udp_send. */
struct masque_udp_out {
    const uint8_t *data;
    size_t len;
    struct masque_udp_addr addr;
};

/* One received datagram; data points into the socket's receive slots. */
struct masque_udp_in {
    const uint8_t *data;
    uint32_t len;
    uint16_t msg;            /* index of the message it came in (for its address) */
    uint8_t ecn;
};

struct masque_udp {
    int fd;
    int family;              /* AF_INET or AF_INET6 */
    int dual_stack;          /* AF_INET6 with IPV6_V6ONLY off */
    unsigned features;       /* MASQUE_UDP_F_* in effect */
    struct masque_udp_stats stats;
    /* receive state */
    uint8_t *rx_arena;
    struct mmsghdr *rx_msgs;
    struct iovec *rx_iov;
    struct masque_udp_addr *rx_addr;
    uint8_t *rx_ctrl;
    struct masque_udp_in *rx_out;      /* MASQUE_UDP_BATCH * MASQUE_UDP_MAX_SEGS */
    /* send state */
    struct mmsghdr *tx_msgs;
    struct iovec *tx_iov;
    uint8_t *tx_ctrl;
    uint32_t *tx_first;
    uint32_t *tx_count;
};

/* Create a UDP socket bound to addr (non-blocking, close-on-exec). For AF_INET6
 * v6only selects IPV6_V6ONLY. Returns the fd or -errno. */
int masque_udp_open(const struct masque_udp_addr *addr, int v6only);

/* Set up u around fd (not taken over) and probe GSO/GRO as asked; enables
 * IP_RECVTOS/IPV6_RECVTCLASS. Returns 0 or -errno (-ENOTSOCK, -EPROTOTYPE...). */
int masque_udp_init(struct masque_udp *u, int fd, int want_gso, int want_gro);

/* Release u's buffers (never closes the fd). */
void masque_udp_free(struct masque_udp *u);

/* Receive up to max_msgs messages (timeout_ms: 0 = don't wait, <0 = forever).
 * Returns the number of datagrams in u->rx_out, 0 when none, or -errno. */
int masque_udp_recv(struct masque_udp *u, unsigned max_msgs, int timeout_ms);

/* Send n datagrams in order. Returns how many from the front were handled
 * (sent, or dropped on a hard error and counted in send_errors); fewer than n
 * only when the socket would block. */
size_t masque_udp_send(struct masque_udp *u, const struct masque_udp_out *d, size_t n);

/* Fill a from host text (IPv4 or IPv6 literal) and port, for a socket of u's
 * family: IPv4 becomes IPv4-mapped IPv6 on an AF_INET6 socket and
 * IPv4-mapped IPv6 becomes IPv4 on an AF_INET socket. Returns 0 or -EINVAL /
 * -EAFNOSUPPORT. */
int masque_udp_addr_parse(struct masque_udp_addr *a, int family, const char *host,
                          uint16_t port, uint32_t flowinfo, uint32_t scope_id);

/* Write the host (IPv4-mapped shown as IPv4) into host (>= 46 bytes) and return
 * the port, or -1 for an unknown family. */
int masque_udp_addr_format(const struct masque_udp_addr *a, char *host, size_t cap);

#endif
