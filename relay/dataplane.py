"""The relay's data path: client packets to the TUN, TUN packets to their session.

Batch-shaped on purpose: the asyncio layer hands over a batch of packets per
session and per TUN wake-up, and the compiled fast path will replace this
module behind the same two entry points (:meth:`RelayDataPlane.from_client`,
:meth:`RelayDataPlane.on_tun_readable`). This version checks packets with the
protocol core in Python.

Duties (RFC 9484 §7, §11): source must be the client's assigned address (BCP 38),
destination and protocol within its scope (ICMP always allowed), TTL/Hop Limit
decremented, link-local never forwarded, a packet that does not fit the tunnel
answered with ICMP Packet Too Big / Fragmentation Needed, violations counted by
reason and answered with ICMP where §7.2.1 says so.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import cast

from masque.icmp import IcmpErrorKind, build_icmp_error
from masque.ippacket import decrement_ttl, is_link_scoped
from masque.session import Verdict
from netio.tun import TunDevice
from netio.udp import UdpBatchIO, make_batch_io
from relay.metrics import Metrics
from relay.ratelimit import admit
from relay.sessions import RelaySession, SessionTable

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Metric label of each drop verdict, and the ICMP error it is answered with (None: silent).
_DROPS: dict[Verdict, tuple[str, IcmpErrorKind | None]] = {
    Verdict.DROP_MALFORMED: ("malformed", None),
    Verdict.DROP_LINK_LOCAL: ("link_local", None),
    # Never answer a spoofed source: the error would go to whoever owns that address.
    Verdict.DROP_SRC_NOT_ASSIGNED: ("src_not_assigned", None),
    Verdict.DROP_DST_NOT_IN_SCOPE: ("dst_not_in_scope", IcmpErrorKind.ADMINISTRATIVELY_PROHIBITED),
    Verdict.DROP_PROTO_NOT_IN_SCOPE: (
        "proto_not_in_scope",
        IcmpErrorKind.ADMINISTRATIVELY_PROHIBITED,
    ),
    Verdict.DROP_SRC_NOT_IN_SCOPE: ("src_not_in_scope", None),
    Verdict.DROP_SESSION_CLOSED: ("session_closed", None),
}

DROP_REASONS = (
    *(label for label, _ in _DROPS.values()),
    "ttl_exceeded",
    "too_big",
    "no_session",
    "queue_full",
    "rate_limited",
    "unknown_context",
    "tun_write",
)


class RelayDataPlane:
    """Moves IP packets between the relay's TUN device and its client sessions."""

    def __init__(
        self,
        tun: TunDevice,
        sessions: SessionTable,
        metrics: Metrics,
        *,
        icmp_source_v4: ipaddress.IPv4Address | None,
        icmp_source_v6: ipaddress.IPv6Address | None,
        batch_size: int = 64,
    ) -> None:
        self._tun = tun
        self._sessions = sessions
        self._batch_size = batch_size
        self._icmp_source: dict[int, IPAddress | None] = {4: icmp_source_v4, 6: icmp_source_v6}
        dropped = metrics.counter(
            "masque_relay_packets_dropped", "Packets dropped, by reason.", labels=("reason",)
        )
        self.dropped = {reason: dropped.child(reason=reason) for reason in DROP_REASONS}
        packets = metrics.counter(
            "masque_relay_packets", "Packets forwarded, by direction.", labels=("direction",)
        )
        self._from_client = packets.child(direction="from_client")
        self._to_client = packets.child(direction="to_client")
        icmp = metrics.counter(
            "masque_relay_icmp_sent", "ICMP errors sent by the relay, by kind.", labels=("kind",)
        )
        self._icmp_sent = {kind: icmp.child(kind=kind.name.lower()) for kind in IcmpErrorKind}

    # -- client -> TUN ------------------------------------------------------------

    def from_client(self, session: RelaySession, packets: Sequence[bytes | memoryview]) -> None:
        """Check a batch of packets a client sent and write the good ones to the TUN."""
        to_tun: list[bytes] = []
        replies: list[bytes] = []
        check = session.connect_ip.check_incoming
        for packet in packets:
            session.rx_packets += 1
            session.rx_bytes += len(packet)
            verdict = check(packet)
            if verdict is not Verdict.ACCEPT:
                label, kind = _DROPS[verdict]
                self.dropped[label].value += 1
                if kind is not None:
                    self._icmp(packet, kind, replies)
                continue
            if session.limits_from_client and not admit(session.limits_from_client, len(packet)):
                self.dropped["rate_limited"].value += 1
                continue
            buffer = bytearray(packet)
            if decrement_ttl(buffer) == 0:
                self.dropped["ttl_exceeded"].value += 1
                self._icmp(packet, IcmpErrorKind.TIME_EXCEEDED, replies)
                continue
            to_tun.append(bytes(buffer))
        if to_tun:
            written = self._tun.write_batch(to_tun)
            self._from_client.value += written
            if written < len(to_tun):
                self.dropped["tun_write"].value += len(to_tun) - written
        if replies:
            session.send_packets(session, replies)

    # -- TUN -> clients -------------------------------------------------------------

    def on_tun_readable(self) -> None:
        """Read what the kernel routed into the TUN and send each packet to its session."""
        for _ in range(16):  # bounded: let the event loop breathe between rounds
            packets = self._tun.read_batch(self._batch_size)
            if not packets:
                return
            self._route(packets)

    def _route(self, packets: list[bytes]) -> None:
        by_session: dict[RelaySession, list[bytes]] = {}
        errors: list[bytes] = []
        for packet in packets:
            destination = _destination(packet)
            session = self._sessions.lookup(destination) if destination is not None else None
            if session is None:
                # The kernel's own IPv6 chatter on the TUN (MLD, router
                # solicitations) is link-scoped: not a routing failure.
                scoped = destination is not None and is_link_scoped(destination)
                self.dropped["link_local" if scoped else "no_session"].value += 1
                continue
            if len(packet) > session.max_packet:
                self.dropped["too_big"].value += 1
                self._icmp(packet, IcmpErrorKind.PACKET_TOO_BIG, errors, mtu=session.max_packet)
                continue
            verdict = session.connect_ip.check_outgoing(packet)
            if verdict is not Verdict.ACCEPT:
                label, kind = _DROPS[verdict]
                self.dropped[label].value += 1
                if kind is not None:
                    self._icmp(packet, kind, errors)
                continue
            if session.limits_to_client and not admit(session.limits_to_client, len(packet)):
                self.dropped["rate_limited"].value += 1
                continue
            by_session.setdefault(session, []).append(packet)
        for session, batch in by_session.items():
            sent = session.send_packets(session, batch)
            self._to_client.value += sent
            if sent < len(batch):
                self.dropped["queue_full"].value += len(batch) - sent
        if errors:
            # Errors about TUN packets go back to their senders through the kernel.
            self._tun.write_batch(errors)

    # -- ICMP -----------------------------------------------------------------------

    def _icmp(
        self,
        offending: bytes | memoryview,
        kind: IcmpErrorKind,
        out: list[bytes],
        *,
        mtu: int | None = None,
    ) -> None:
        source = self._icmp_source.get(offending[0] >> 4) if len(offending) else None
        if source is None:
            return
        if kind is IcmpErrorKind.PACKET_TOO_BIG and source.version == 6:
            mtu = max(mtu or 1280, 1280)
        error = build_icmp_error(bytes(offending), kind, source=source, mtu=mtu)
        if error is not None:
            out.append(error)
            self._icmp_sent[kind].value += 1


def _destination(packet: bytes) -> IPAddress | None:
    """The destination address, read straight from the header (validated later)."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return ipaddress.IPv4Address(packet[16:20])
    if version == 6 and len(packet) >= 40:
        return ipaddress.IPv6Address(packet[24:40])
    return None


def udp_batch_io(sock: socket.socket, *, fast: bool) -> UdpBatchIO:
    """Batch I/O for the relay's UDP socket: the compiled one unless ``fast`` is off.

    The compiled ``UdpSocket`` uses recvmmsg/sendmmsg and GSO/GRO where the kernel
    has them; without it (``[dataplane] fast_path = false`` or a build without
    the extension) a pure-Python loop does the same job, slower.
    """
    return make_batch_io(sock, compiled_udp_socket() if fast else None)


def compiled_udp_socket() -> Callable[[int], UdpBatchIO] | None:
    """``_fastpath.UdpSocket``, or None (logged) when the extension lacks it."""
    try:
        from _fastpath import UdpSocket
    except ImportError as error:
        log.warning("fast path unavailable (%s): using Python UDP I/O", error)
        return None
    # Only this object reads the socket, so GRO's merged buffers are safe to ask for.
    return cast(Callable[[int], UdpBatchIO], functools.partial(UdpSocket, gro=True))
