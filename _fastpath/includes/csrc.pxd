# C declarations of _fastpath/csrc, one block per header.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdint cimport int32_t, uint64_t
from posix.uio cimport iovec


cdef extern from "checksum.h" nogil:
    uint16_t masque_csum_partial(const uint8_t *buf, size_t len, uint32_t initial)
    uint16_t masque_csum(const uint8_t *buf, size_t len, uint32_t initial)


cdef extern from "batch.h" nogil:
    ctypedef struct masque_batch:
        uint8_t *arena
        uint32_t *lens
        uint32_t slots
        uint32_t slot_size
        uint32_t headroom
        uint32_t stride
        uint32_t count
    int masque_batch_init(masque_batch *b, uint32_t slots, uint32_t slot_size, uint32_t headroom)
    void masque_batch_free(masque_batch *b)
    uint8_t *masque_batch_packet(const masque_batch *b, uint32_t i)


cdef extern from "pktcheck.h" nogil:
    enum: MASQUE_PKT_RULE_COUNT
    enum: MASQUE_VERDICT_COUNT
    ctypedef struct masque_u128:
        uint64_t hi
        uint64_t lo
    ctypedef struct masque_ip_header:
        uint8_t version
        uint8_t protocol
        uint8_t ttl
        uint8_t more_fragments
        uint32_t header_length
        uint32_t fragment_offset
        uint32_t total_length
        const uint8_t *src
        const uint8_t *dst
    ctypedef struct masque_range:
        masque_u128 start
        masque_u128 end
        uint8_t version
        uint8_t protocol
    ctypedef struct masque_range_list:
        masque_range *items
        size_t len
    ctypedef struct masque_policy:
        masque_range_list src_addresses
        masque_range_list src_routes
        masque_range_list dst_routes
        masque_range_list dst_addresses
        masque_range_list targets
        int has_targets
        int ipproto
        int towards_client
        int aborted
        uint64_t counters[8]
    int masque_parse_ip(const uint8_t *pkt, size_t len, masque_ip_header *out)
    int masque_is_link_scoped(const uint8_t *addr, int version)
    int masque_decrement_ttl(uint8_t *pkt, size_t len)
    int masque_check_packet(const masque_policy *p, const uint8_t *pkt, size_t len)
    void masque_check_batch(masque_policy *p, const masque_batch *b, uint8_t *verdicts)
    void masque_decrement_ttl_batch(masque_batch *b, const uint8_t *verdicts, uint8_t *ttls)
    enum: MASQUE_VERDICT_UNROUTED
    void masque_check_routed_batch(masque_policy **policies, const masque_batch *b, uint8_t *verdicts)


cdef extern from "lpm.h" nogil:
    ctypedef struct masque_lpm:
        uint32_t prefixes
    int masque_lpm_init(masque_lpm *t)
    void masque_lpm_free(masque_lpm *t)
    int masque_lpm_insert(masque_lpm *t, int version, const uint8_t *addr, unsigned plen, int32_t value)
    int32_t masque_lpm_remove(masque_lpm *t, int version, const uint8_t *addr, unsigned plen)
    int32_t masque_lpm_lookup(const masque_lpm *t, int version, const uint8_t *addr)
    void masque_lpm_lookup_batch(const masque_lpm *t, const masque_batch *b, int32_t *out)


cdef extern from "offload.h" nogil:
    enum: MASQUE_VNET_HDR_LEN
    enum: MASQUE_VNET_F_NEEDS_CSUM
    enum: MASQUE_VNET_GSO_NONE
    enum: MASQUE_VNET_GSO_TCPV4
    enum: MASQUE_VNET_GSO_TCPV6
    cdef struct masque_vnet_hdr:
        uint8_t flags
        uint8_t gso_type
        uint16_t hdr_len
        uint16_t gso_size
        uint16_t csum_start
        uint16_t csum_offset
    void masque_vnet_hdr_decode(const uint8_t *p, masque_vnet_hdr *h)
    int masque_vnet_complete_csum(uint8_t *pkt, size_t len, const masque_vnet_hdr *h)
    int masque_gso_split(const uint8_t *inp, size_t len, const masque_vnet_hdr *h, size_t mtu,
                         uint8_t *out, size_t out_cap, uint16_t *seg_len, int max_segs)


cdef extern from "gro.h" nogil:
    enum: MASQUE_GRO_MAX_SEGS
    enum: MASQUE_GRO_HDR_BUF
    enum: MASQUE_GRO_SKIP
    enum: MASQUE_GRO_ALONE
    cdef struct masque_gro_item:
        uint32_t first
        uint32_t nsegs
    cdef struct masque_gro:
        uint32_t cap
        int32_t *role
        int32_t *next
        masque_gro_item *items
        uint32_t nitems
    int masque_gro_reserve(masque_gro *g, uint32_t n)
    void masque_gro_free(masque_gro *g)
    void masque_gro_plan(masque_gro *g, const masque_batch *b, const uint8_t *verdicts, int coalesce)
    int masque_gro_frame(const masque_gro *g, const masque_batch *b, uint32_t it, uint8_t *hdrbuf,
                         iovec *iov)


cdef extern from "tun.h" nogil:
    enum: MASQUE_TUN_F_CSUM
    enum: MASQUE_TUN_F_TSO4
    enum: MASQUE_TUN_F_TSO6
    enum: MASQUE_TUN_F_USO4
    enum: MASQUE_TUN_F_USO6
    cdef struct masque_tun_stats:
        uint64_t reads
        uint64_t writes
        uint64_t gso_frames
        uint64_t segments_split
        uint64_t errors
        uint64_t largest_read
        uint64_t oversize
        uint64_t gro_frames
        uint64_t segments_coalesced
        uint64_t write_errors
    cdef struct masque_tun_queue:
        int fd
    cdef struct masque_tun:
        char name[16]
        int nqueues
        int vnet_hdr
        int multi_queue
        unsigned offloads
        masque_tun_queue q[16]
        masque_tun_stats stats
    int masque_tun_open(masque_tun *t, const char *name, int want_vnet_hdr, int queues)
    void masque_tun_close(masque_tun *t)
    int masque_tun_next(masque_tun *t, int qi, size_t mtu, const uint8_t **pkt, size_t *len)
    int masque_tun_write(masque_tun *t, int qi, const uint8_t *pkt, size_t len)
    int masque_tun_read_batch(masque_tun *t, int qi, masque_batch *b, size_t mtu)
    int masque_tun_write_batch(masque_tun *t, int qi, const masque_batch *b, const uint8_t *verdicts)


cdef extern from "udp.h" nogil:
    enum: MASQUE_UDP_BATCH
    enum: MASQUE_UDP_F_GSO
    enum: MASQUE_UDP_F_GRO
    cdef struct masque_udp_addr:
        uint32_t len
    cdef struct masque_udp_stats:
        uint64_t syscalls
        uint64_t dgrams_sent
        uint64_t dgrams_received
        uint64_t gso_batches
        uint64_t gro_splits
        uint64_t send_errors
        uint64_t recv_errors
        uint64_t truncated
    cdef struct masque_udp_out:
        const uint8_t *data
        size_t len
        masque_udp_addr addr
    cdef struct masque_udp_in:
        const uint8_t *data
        uint32_t len
        uint16_t msg
        uint8_t ecn
    cdef struct masque_udp:
        int fd
        int family
        int dual_stack
        unsigned features
        masque_udp_stats stats
        masque_udp_addr *rx_addr
        masque_udp_in *rx_out
    int masque_udp_open(const masque_udp_addr *addr, int v6only)
    int masque_udp_init(masque_udp *u, int fd, int want_gso, int want_gro)
    void masque_udp_free(masque_udp *u)
    int masque_udp_recv(masque_udp *u, unsigned max_msgs, int timeout_ms)
    size_t masque_udp_send(masque_udp *u, const masque_udp_out *d, size_t n)
    int masque_udp_addr_parse(masque_udp_addr *a, int family, const char *host,
                              uint16_t port, uint32_t flowinfo, uint32_t scope_id)
    int masque_udp_addr_format(const masque_udp_addr *a, char *host, size_t cap)
