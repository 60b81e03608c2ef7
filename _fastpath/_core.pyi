from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from typing_extensions import Buffer

def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """Return the Internet checksum (RFC 1071) of ``data`` plus a big-endian partial sum."""

def checksum_partial(data: Buffer, initial: int = 0) -> int:
    """Return the folded one's-complement sum of ``data`` plus ``initial``, not complemented."""

# -- tun.pxi -------------------------------------------------------------------

class Tun:
    """A TUN device (IFF_TUN | IFF_NO_PI) read and written in batches; vnet_hdr/TSO/USO and
    multi-queue probed at open with quiet fallback."""

    def __init__(
        self, name: str = "mqtun%d", *, vnet_hdr: bool = True, queues: int = 1
    ) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def queues(self) -> int: ...
    @property
    def vnet_hdr(self) -> bool: ...
    @property
    def offloads(self) -> int: ...
    @property
    def mode(self) -> str:
        """``"plain"`` or e.g. ``"vnet_hdr+csum+tso4+tso6+uso"``, plus ``"+mqN"`` (multi-queue)."""
    def fileno(self, queue: int = 0) -> int: ...
    @property
    def fds(self) -> tuple[int, ...]: ...
    @property
    def stats(self) -> dict[str, int]:
        """reads, writes, gso_frames, segments_split, errors, largest_read (largest frame
        read, bytes without vnet_hdr), oversize (dropped by read_batch: larger than a slot),
        gro_frames, segments_coalesced, write_errors (refused writes; also in errors)."""
    def read_batch(self, batch: PacketBatch, queue: int = 0, mtu: int = 1500) -> int:
        """Append packets from ``queue`` to ``batch`` from slot ``batch.count`` on (after the
        headroom) until full or EAGAIN; GSO frames split into TCP packets <= min(mtu,
        slot_size) with complete checksums, a remainder that does not fit delivered first
        next call. Returns packets appended (0: nothing ready); OSError on a read error."""
    def write_batch(
        self, batch: PacketBatch, verdicts: Buffer | None = None, queue: int = 0
    ) -> int:
        """Write packets whose verdict byte is 0 (all if None); with vnet_hdr TCP segments
        of one flow are coalesced (GRO) into super-frames. Returns packets written
        (coalesced ones count individually); stops at EAGAIN/ENOBUFS."""
    def read_packets(
        self, max_packets: int = 64, mtu: int = 1500, queue: int = 0
    ) -> list[bytes]: ...
    def write_packets(self, packets: Iterable[Buffer], queue: int = 0) -> int: ...
    def __enter__(self) -> Tun: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

def vnet_split(frame: Buffer, mtu: int = 0) -> list[bytes]:
    """Split/complete one vnet_hdr frame (10-byte header + packet) as Tun.read_packets would."""

def gro_frames(
    batch: PacketBatch, verdicts: Buffer | None = None
) -> list[tuple[tuple[int, ...], bytes]]:
    """The frames Tun.write_batch writes for ``batch`` on a vnet_hdr device, in order:
    (batch indices carried, vnet_hdr + packet bytes). For tests and diagnostics."""

# -- batch.pxi -----------------------------------------------------------------

class PacketBatch:
    """A reusable arena (one C allocation) of ``slots`` packet slots of ``slot_size``
    bytes, each preceded by ``headroom`` bytes for framing written in place."""

    def __init__(self, slots: int = 64, slot_size: int = 2048, headroom: int = 64) -> None: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    @property
    def slots(self) -> int: ...
    @property
    def slot_size(self) -> int: ...
    @property
    def headroom(self) -> int: ...
    @property
    def count(self) -> int:
        """Slots in use (0 .. count-1); settable within 0..slots."""
    @count.setter
    def count(self, value: int) -> None: ...
    def __len__(self) -> int: ...
    def view(self, i: int) -> memoryview:
        """Zero-copy writable view of packet ``i`` (without headroom); i < count."""
    def headroom_view(self, i: int, n: int) -> memoryview:
        """The ``n`` <= headroom bytes right in front of packet ``i``."""
    def slot_view(self, i: int) -> memoryview:
        """The whole ``slot_size`` packet area of slot ``i`` (fill, then set_length)."""
    def length(self, i: int) -> int: ...
    def set_length(self, i: int, n: int) -> None:
        """Set slot ``i``'s length; grows count to i + 1 if needed."""
    def set(self, i: int, data: Buffer) -> None:
        """Copy ``data`` into slot ``i``; grows count to i + 1 if needed."""
    def append(self, data: Buffer) -> int:
        """Copy ``data`` into slot ``count``; return its index."""
    def clear(self) -> None:
        """count = 0 and every length 0; the arena is kept."""

# -- packet.pxi ----------------------------------------------------------------

#: PacketError rule per C parse result ("" = valid).
PACKET_RULES: tuple[str, ...]

def parse_ip_header(packet: Buffer) -> tuple[int, int, int, int, int, int, bool]:
    """``masque.ippacket.parse_ip_packet`` in C: (version, protocol, ttl, header_length,
    total_length, fragment_offset, more_fragments); ``ValueError(rule)`` if invalid."""

def is_link_scoped(address: Buffer) -> bool:
    """``masque.ippacket.is_link_scoped`` for a packed 4- or 16-byte address."""

def decrement_ttl(packet: Buffer) -> int:
    """``masque.ippacket.decrement_ttl`` in place (RFC 1624); ``ValueError(rule)``."""

class PacketPolicy:
    """Snapshot of a ConnectIpSession's check_incoming (or check_outgoing) policy."""

    def __init__(self, session: object, *, outgoing: bool = False) -> None: ...
    @property
    def counters(self) -> tuple[int, ...]:
        """Packets checked by check_incoming_batch, indexed by masque.session.Verdict."""
    def reset_counters(self) -> None: ...

def check_incoming(policy: PacketPolicy, packet: Buffer) -> int:
    """The masque.session.Verdict value for one packet (not counted)."""

def check_incoming_batch(batch: PacketBatch, policy: PacketPolicy) -> bytearray:
    """One verdict byte per packet of ``batch``; counted in ``policy.counters``."""

def decrement_ttl_batch(batch: PacketBatch, verdicts: Buffer | None = None) -> bytearray:
    """Decrement TTLs in place where the verdict is ACCEPT (all if None); new TTLs, 0 =
    not forwarded (TTL <= 1: send Time Exceeded; dropped; not IP)."""

#: Verdict byte of check_routed_batch for a packet no session routes (255).
UNROUTED: int

def check_routed_batch(
    batch: PacketBatch, sids: Sequence[int], policies: Mapping[int, PacketPolicy]
) -> bytearray:
    """Verdict per packet against ``policies[sids[i]]`` (counted there); UNROUTED (255)
    where the sid is negative or missing from ``policies``."""

def frame_datagrams(batch: PacketBatch, indices: Iterable[int], prefix: Buffer) -> list[bytes]:
    """Write ``prefix`` (<= headroom) in front of each indexed packet and return
    ``prefix + packet`` per index, copied once from the contiguous region."""

def batch_packets(batch: PacketBatch, verdicts: Buffer | None = None) -> list[bytes]:
    """The packets whose verdict byte is 0 (all if None), in order."""

# -- lpm.pxi -------------------------------------------------------------------

class PrefixTable:
    """Longest-prefix match (binary trie, O(32)/O(128) per lookup) to session ids."""

    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def add(self, network: object, sid: int) -> None: ...
    def remove(self, network: object) -> int:
        """Remove exactly ``network``; its id. KeyError if absent."""
    def lookup(self, address: object) -> int:
        """Id of the longest prefix covering ``address`` (bytes, ip_address or str); -1."""
    def lookup_batch(self, batch: PacketBatch) -> list[int]: ...

# -- udp.pxi -------------------------------------------------------------------

class UdpSocket:
    """A UDP socket read and written in batches (recvmmsg/sendmmsg); UDP GSO/GRO probed
    at run time with quiet fallback. ``UdpSocket(fd)`` wraps a socket without owning it."""

    def __init__(
        self, fd: int, *, own: bool = False, gso: bool = True, gro: bool | None = None
    ) -> None: ...
    @classmethod
    def bind(
        cls,
        host: str = "::",
        port: int = 0,
        *,
        dual_stack: bool = True,
        gso: bool = True,
        gro: bool | None = None,
    ) -> UdpSocket: ...
    def close(self) -> None: ...
    def detach(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def fileno(self) -> int: ...
    @property
    def family(self) -> int: ...
    @property
    def dual_stack(self) -> bool: ...
    @property
    def features(self) -> str:
        """``"gso+gro"``, ``"gso"``, ``"gro"`` or ``"plain"``."""
    @property
    def local_address(self) -> tuple[str, int]: ...
    @property
    def stats(self) -> dict[str, int]:
        """syscalls, datagrams_sent, datagrams_received, gso_batches, gro_splits,
        send_errors, recv_errors, truncated."""
    def recv_batch(
        self, max_datagrams: int = 64, timeout: float = 0.0
    ) -> list[tuple[bytes, tuple[str, int], int]]: ...
    def send_batch(
        self, datagrams: Iterable[tuple[Buffer, tuple[str, int] | tuple[str, int, int, int]]]
    ) -> int: ...
    def __enter__(self) -> UdpSocket: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

# -- lane.pxi ------------------------------------------------------------------

#: masque_quic_status code -> name; 0 "ok" and 1 "other-frames" mean authenticated.
QUIC_STATUS: dict[int, str]

# (largest_acknowledged, ack_delay, ranges as descending half-open (start, stop),
#  (ect0, ect1, ce) of an ACK_ECN frame or None)
_QuicAck = tuple[int, int, tuple[tuple[int, int], ...], tuple[int, int, int] | None]

class QuicKeys:
    """One direction's 1-RTT keys (from aioquic's ``derive_key_iv_hp``): cipher suite
    0x1301/0x1302/0x1303, AEAD key, 12-byte IV, header-protection key, key phase."""

    def __init__(
        self, cipher_suite: int, key: Buffer, iv: Buffer, hp: Buffer, key_phase: int = 0
    ) -> None: ...
    @property
    def cipher_suite(self) -> int: ...
    @property
    def key_phase(self) -> int: ...

def quic_decode_pn(largest_pn: int, truncated: int, pn_len: int) -> int:
    """RFC 9000 A.3 packet number recovery (largest_pn -1: none received)."""

def quic_pn_length(pn: int, largest_acked: int) -> int:
    """RFC 9000 A.2 packet number length, 1..4 (largest_acked -1: none)."""

def quic_unprotect(
    keys: QuicKeys, datagram: Buffer, dcid_len: int, largest_pn: int
) -> tuple[int, int, bytes] | None:
    """(packet_number, key_phase, plaintext) of one short-header packet, or None."""

def quic_protect(
    keys: QuicKeys,
    dcid: Buffer,
    pn: int,
    largest_acked: int,
    plaintext: Buffer,
    *,
    pn_len: int = 0,
) -> bytes:
    """One protected short-header packet carrying ``plaintext`` frames."""

def parse_lane_frames(
    plaintext: Buffer, max_datagram_frame_size: int | None = None
) -> tuple[bool, bool, list[bytes], _QuicAck | None]:
    """(lane_only, ack_eliciting, datagram payloads, ack); ValueError(status name)."""

def build_lane_frames(
    payloads: Iterable[Buffer],
    room: int,
    *,
    ack_ranges: Iterable[tuple[int, int] | range] | None = None,
    ack_delay: int = 0,
    ecn: tuple[int, int, int] | None = None,
) -> tuple[bytes, int]:
    """(frames, payloads packed): optional ACK, then DATAGRAM frames within ``room``."""

def quic_unprotect_batch(
    keys: QuicKeys, batch: PacketBatch, dcid_len: int, largest_pn: int
) -> list[tuple[int, int, int, int]]:
    """In place: (status, packet_number, plaintext offset, length) per packet."""

def quic_receive_lane_batch(
    keys: QuicKeys,
    batch: PacketBatch,
    dcid_len: int,
    largest_pn: int,
    max_datagram_frame_size: int | None = None,
) -> list[tuple[int, int, bool, list[tuple[int, int]], _QuicAck | None]]:
    """In place + frame walk: (status, pn, ack_eliciting, datagram (offset, length), ack);
    packets that are not lane-only are restored to their wire bytes."""

def quic_protect_batch(
    keys: QuicKeys,
    batch: PacketBatch,
    dcid: Buffer,
    pn: int,
    largest_acked: int,
    *,
    datagram: bool = False,
    payload_prefix: bytes = b"",
    ack_ranges: Iterable[tuple[int, int] | range] | None = None,
    ack_delay: int = 0,
    ecn: tuple[int, int, int] | None = None,
) -> int:
    """Protect slots in place (packet numbers pn, pn+1, ...); packets protected."""

#: Largest UDP payload quic_lane_receive takes (larger ones go to aioquic).
LANE_MAX_DATAGRAM: int

def quic_lane_receive(
    keys: QuicKeys,
    datagram: Buffer,
    dcid_len: int,
    largest_pn: int,
    max_datagram_frame_size: int | None,
    out: PacketBatch,
    prefix: Buffer | None,
) -> (
    tuple[
        int,
        bool,
        tuple[int, int, tuple[tuple[int, int], ...], tuple[int, int, int] | None] | None,
        list[bytes],
    ]
    | None
):
    """Unprotect one UDP payload (a copy) and append the DATAGRAM payloads that start
    with ``prefix`` to ``out`` without it; None: aioquic must have the packet.
    ``(packet_number, ack_eliciting, ack, other_payloads)`` otherwise."""

# -- xsk.pxi -------------------------------------------------------------------

class XskSocket:
    """An AF_XDP socket bound to one queue of an interface, with its own UMEM (half the
    frames for RX on the fill ring, half for TX). ``zero_copy=None`` tries zero-copy
    and falls back to copy mode. Created in the calling thread's network namespace;
    put :meth:`fileno` into the XDP program's XSKMAP at index ``queue``. For event
    loops: ``loop.add_reader(xsk.fileno(), ...)`` (readable while the RX ring holds
    descriptors), then :meth:`recv_batch`."""

    def __init__(
        self,
        ifindex: int,
        queue: int = 0,
        *,
        frames: int = 4096,
        frame_size: int = 2048,
        zero_copy: bool | None = None,
        tx_budget: int = 256,
    ) -> None: ...
    def close(self) -> None:
        """Unmap the rings and the UMEM, close the fd; idempotent."""
    @property
    def closed(self) -> bool: ...
    def fileno(self) -> int: ...
    @property
    def ifindex(self) -> int: ...
    @property
    def queue(self) -> int: ...
    @property
    def mode(self) -> str:
        """``"zero-copy"`` or ``"copy"``."""
    @property
    def frames(self) -> int: ...
    @property
    def frame_size(self) -> int: ...
    @property
    def tx_budget(self) -> int:
        """XDP_MAX_TX_SKB_BUDGET in effect; 0 = the kernel's default (32)."""
    @property
    def rx_pending(self) -> int:
        """Descriptors waiting on the RX ring."""
    @property
    def tx_free(self) -> int:
        """TX frames free now."""
    @property
    def stats(self) -> dict[str, int]:
        """rx_packets, rx_bytes, rx_dropped_not_udp, rx_dropped_too_big, fill_refills,
        tx_packets, tx_bytes, tx_full, tx_dropped_too_big, tx_completions,
        tx_kick_errors, wakeups; kernel_* (XDP_STATISTICS) while open."""
    def recv_batch(
        self, batch: PacketBatch, max_packets: int = 64
    ) -> list[tuple[tuple[str, int], tuple[str, int], bytes]]:
        """Append up to ``max_packets`` UDP payloads to ``batch`` without waiting; one
        ``((src_ip, src_port), (dst_ip, dst_port), src_mac)`` per packet."""
    def send_batch(
        self,
        batch: PacketBatch,
        count: int,
        src: tuple[str, int],
        dst: tuple[str, int],
        src_mac: Buffer,
        dst_mac: Buffer,
    ) -> int:
        """Send packets ``0 .. count-1`` of ``batch`` as UDP payloads; returns how many
        from the front were handled (queued or dropped as too big), the rest tx_full."""
    def send_list(
        self,
        payloads: Iterable[Buffer],
        src: tuple[str, int],
        dst: tuple[str, int],
        src_mac: Buffer,
        dst_mac: Buffer,
    ) -> int:
        """:meth:`send_batch` for a sequence of payloads."""
    def flush(self) -> int:
        """Kick the kernel for descriptors still on the TX ring; returns how many remain."""
    def __enter__(self) -> XskSocket: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
