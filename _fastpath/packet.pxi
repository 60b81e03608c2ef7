# Packet checks (csrc/pktcheck.c): the C twin of masque.ippacket and of
# ConnectIpSession.check_incoming / check_outgoing, held equal by parity tests.

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memcpy, memset

from _fastpath.includes.csrc cimport (
    masque_ip_header, masque_range, masque_range_list, masque_policy,
    masque_parse_ip, masque_is_link_scoped, masque_decrement_ttl,
    masque_check_packet, masque_check_batch, masque_decrement_ttl_batch,
    masque_check_routed_batch, masque_batch_packet,
    MASQUE_VERDICT_COUNT, MASQUE_VERDICT_UNROUTED,
)

#: The verdict byte :func:`check_routed_batch` gives a packet no session routes.
UNROUTED = MASQUE_VERDICT_UNROUTED

#: masque.errors.PacketError rules, indexed by the C enum masque_pkt_rule.
PACKET_RULES = (
    "",
    "empty",
    "bad-version",
    "ipv4-too-short",
    "ipv4-ihl-too-small",
    "ipv4-header-truncated",
    "ipv4-total-length-too-small",
    "ipv4-truncated",
    "ipv4-trailing-bytes",
    "ipv4-bad-checksum",
    "ipv4-fragment-overflow",
    "ipv4-fragment-misaligned",
    "ipv6-too-short",
    "ipv6-truncated",
    "ipv6-trailing-bytes",
    "ipv6-hop-by-hop-not-first",
    "ipv6-truncated-extension-header",
    "ipv6-fragment-overflow",
    "ipv6-fragment-misaligned",
)


def parse_ip_header(const uint8_t[::1] packet not None):
    """Validate one packet as ``masque.ippacket.parse_ip_packet`` does.

    Returns ``(version, protocol, ttl, header_length, total_length,
    fragment_offset, more_fragments)``; raises ``ValueError(rule)`` with the
    same rule string as the Python ``PacketError``.
    """
    cdef masque_ip_header h
    cdef size_t n = <size_t>packet.shape[0]
    cdef int rc = masque_parse_ip(&packet[0] if n else NULL, n, &h)
    if rc:
        raise ValueError(PACKET_RULES[rc])
    return (h.version, h.protocol, h.ttl, h.header_length, h.total_length,
            h.fragment_offset, bool(h.more_fragments))


def is_link_scoped(const uint8_t[::1] address not None) -> bool:
    """``masque.ippacket.is_link_scoped`` for a packed 4- or 16-byte address."""
    cdef Py_ssize_t n = address.shape[0]
    if n != 4 and n != 16:
        raise ValueError(f"an address is 4 or 16 bytes, not {n}")
    return bool(masque_is_link_scoped(&address[0], 4 if n == 4 else 6))


def decrement_ttl(uint8_t[::1] packet not None) -> int:
    """``masque.ippacket.decrement_ttl`` in place: the new TTL, 0 when it was <= 1
    (packet untouched); ``ValueError(rule)`` for a buffer too short or not IP."""
    cdef size_t n = <size_t>packet.shape[0]
    cdef int rc = masque_decrement_ttl(&packet[0] if n else NULL, n)
    if rc < 0:
        raise ValueError(PACKET_RULES[-rc])
    return rc


cdef void _fill_ranges(masque_range_list *out, masque_range *storage, list entries):
    # entries: (version, start, end, protocol) with start/end as ints.
    cdef Py_ssize_t i
    out.items = storage
    out.len = len(entries)
    for i, (version, start, end, protocol) in enumerate(entries):
        storage[i].version = version
        storage[i].protocol = protocol
        storage[i].start.hi = start >> 64
        storage[i].start.lo = start & 0xFFFFFFFFFFFFFFFF
        storage[i].end.hi = end >> 64
        storage[i].end.lo = end & 0xFFFFFFFFFFFFFFFF


def _prefix_entries(prefixes):
    return [(p.version, int(p.network_address), int(p.broadcast_address), 0) for p in prefixes]


def _route_entries(ranges):
    return [(r.start.version, int(r.start), int(r.end), r.ip_protocol) for r in ranges]


cdef class PacketPolicy:
    """A snapshot of one ConnectIpSession's packet policy, checked in C.

    ``PacketPolicy(session)`` mirrors ``session.check_incoming``;
    ``outgoing=True`` mirrors ``check_outgoing``. Rebuild it whenever the
    session's addresses, routes or state change (capsules are rare). Every
    packet checked through :func:`check_incoming_batch` is counted per
    verdict in :attr:`counters` (indexed by ``masque.session.Verdict``).
    """

    cdef masque_policy p
    cdef masque_range *storage

    def __cinit__(self, session, *, bint outgoing=False):
        local = _prefix_entries(a.ip_prefix for a in session.local_addresses)
        peer = _prefix_entries(a.ip_prefix for a in session.peer_addresses)
        local_routes = _route_entries(session.local_routes)
        peer_routes = _route_entries(session.peer_routes)
        scope = session.scope
        targets = _prefix_entries(scope.targets) if scope.targets is not None else []
        is_client = session.role.value == "client"
        if outgoing:
            lists = (local, local_routes, peer_routes, peer, targets)
            towards_client = not is_client
        else:
            lists = (peer, peer_routes, local_routes, local, targets)
            towards_client = is_client
        cdef Py_ssize_t total = sum(len(l) for l in lists)
        self.storage = <masque_range *>PyMem_Malloc(max(total, 1) * sizeof(masque_range))
        if self.storage == NULL:
            raise MemoryError()
        cdef masque_range *cursor = self.storage
        cdef masque_range_list *outs[5]
        outs[0] = &self.p.src_addresses
        outs[1] = &self.p.src_routes
        outs[2] = &self.p.dst_routes
        outs[3] = &self.p.dst_addresses
        outs[4] = &self.p.targets
        cdef int k
        for k in range(5):
            _fill_ranges(outs[k], cursor, lists[k])
            cursor += len(lists[k])
        self.p.has_targets = scope.targets is not None
        self.p.ipproto = scope.ipproto if scope.ipproto is not None else -1
        self.p.towards_client = towards_client
        self.p.aborted = bool(session.is_aborted)
        memset(self.p.counters, 0, sizeof(self.p.counters))

    def __dealloc__(self):
        PyMem_Free(self.storage)

    @property
    def counters(self) -> tuple:
        """Packets counted per verdict, indexed by ``masque.session.Verdict``."""
        return tuple(self.p.counters[i] for i in range(MASQUE_VERDICT_COUNT))

    def reset_counters(self):
        memset(self.p.counters, 0, sizeof(self.p.counters))


def check_incoming(PacketPolicy policy not None, const uint8_t[::1] packet not None) -> int:
    """The verdict (a ``masque.session.Verdict`` value) for one packet; not counted."""
    cdef size_t n = <size_t>packet.shape[0]
    return masque_check_packet(&policy.p, &packet[0] if n else NULL, n)


def check_incoming_batch(PacketBatch batch not None, PacketPolicy policy not None) -> bytearray:
    """Verdicts of packets ``0 .. len(batch)-1``, one byte each; counted in the policy."""
    verdicts = bytearray(batch.b.count)
    cdef uint8_t *out = verdicts
    with nogil:
        masque_check_batch(&policy.p, &batch.b, out)
    return verdicts


def decrement_ttl_batch(PacketBatch batch not None, const uint8_t[::1] verdicts=None) -> bytearray:
    """Decrement the TTL of every packet whose verdict is ACCEPT (all when
    ``verdicts`` is None), in place. Returns the new TTLs, 0 for a packet not
    forwarded: TTL <= 1 (answer with Time Exceeded), dropped, or not IP."""
    if verdicts is not None and <size_t>verdicts.shape[0] < batch.b.count:
        raise ValueError("fewer verdicts than packets")
    ttls = bytearray(batch.b.count)
    cdef uint8_t *out = ttls
    cdef const uint8_t *v = NULL
    if verdicts is not None and verdicts.shape[0]:
        v = &verdicts[0]
    with nogil:
        masque_decrement_ttl_batch(&batch.b, v, out)
    return ttls


def check_routed_batch(PacketBatch batch not None, sids, policies) -> bytearray:
    """Verdicts of packets ``0 .. len(batch)-1``, each checked against the policy
    of its own session: ``policies[sids[i]]``, counted in that policy.

    For the TUN -> client direction, with ``sids`` from
    :meth:`PrefixTable.lookup_batch`. A packet whose sid is negative (no
    prefix covers its destination) or missing from ``policies`` gets
    :data:`UNROUTED` (255) and is counted nowhere.
    """
    cdef Py_ssize_t n = batch.b.count
    cdef Py_ssize_t i
    if len(sids) < n:
        raise ValueError("fewer session ids than packets")
    verdicts = bytearray(n)
    if n == 0:
        return verdicts
    cdef masque_policy **per_packet = <masque_policy **>PyMem_Malloc(n * sizeof(masque_policy *))
    if per_packet == NULL:
        raise MemoryError()
    cdef long long sid, last_sid = -1
    cdef masque_policy *last = NULL
    cdef PacketPolicy policy
    cdef list keep = []  # the policies stay alive while C uses them
    cdef uint8_t *out = verdicts
    try:
        for i in range(n):
            sid = sids[i]
            if sid != last_sid:
                last_sid = sid
                last = NULL
                if sid >= 0:
                    found = policies.get(sid)
                    if found is not None:
                        policy = <PacketPolicy?>found
                        keep.append(policy)
                        last = &policy.p
            per_packet[i] = last
        with nogil:
            masque_check_routed_batch(per_packet, &batch.b, out)
    finally:
        PyMem_Free(per_packet)
    return verdicts


def frame_datagrams(PacketBatch batch not None, indices, const uint8_t[::1] prefix not None) -> list:
    """For each index: write ``prefix`` into the headroom right in front of that
    packet and return ``prefix + packet`` as bytes, copied once from the one
    contiguous region (the framing stays in the headroom). ``len(prefix)``
    must not exceed the batch's headroom; IndexError for an index outside
    ``0 .. len(batch)-1``.
    """
    cdef Py_ssize_t plen = prefix.shape[0]
    cdef Py_ssize_t i
    cdef uint8_t *pkt
    if plen > batch.b.headroom:
        raise ValueError(f"prefix of {plen} bytes exceeds the headroom of {batch.b.headroom}")
    cdef list out = []
    for index in indices:
        i = index
        if i < 0 or i >= batch.b.count:
            raise IndexError(f"packet {i} outside 0..{<Py_ssize_t>batch.b.count - 1}")
        pkt = masque_batch_packet(&batch.b, <uint32_t>i)
        if plen:
            memcpy(pkt - plen, &prefix[0], <size_t>plen)
        out.append(PyBytes_FromStringAndSize(<const char *>pkt - plen, plen + batch.b.lens[i]))
    return out


def batch_packets(PacketBatch batch not None, const uint8_t[::1] verdicts=None) -> list:
    """The packets of ``batch`` whose verdict byte is 0 (all when ``verdicts`` is
    None), in order, as bytes."""
    cdef Py_ssize_t n = batch.b.count
    cdef Py_ssize_t i
    if verdicts is not None and verdicts.shape[0] < n:
        raise ValueError("fewer verdicts than packets")
    cdef list out = []
    for i in range(n):
        if verdicts is None or verdicts[i] == 0:
            out.append(PyBytes_FromStringAndSize(
                <const char *>masque_batch_packet(&batch.b, <uint32_t>i), batch.b.lens[i]))
    return out
