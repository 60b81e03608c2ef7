"""The client's data path: TUN packets to the relay, relay packets to the TUN.

Batch-shaped like the relay's: one TUN wake-up becomes one batch handed to the
carrier; the compiled fast path will replace this module behind the same entry
points (:meth:`ClientDataPlane.on_tun_readable`, :meth:`ClientDataPlane.from_relay`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast

from masque.icmp import IcmpErrorKind, build_icmp_error
from masque.session import ConnectIpSession, Verdict
from netio.tun import TunDevice
from netio.udp import UdpBatchIO, make_batch_io

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Verdicts answered with ICMP administratively prohibited (RFC 9484 §7.2.1).
_PROHIBITED = frozenset({Verdict.DROP_DST_NOT_IN_SCOPE, Verdict.DROP_PROTO_NOT_IN_SCOPE})


class ClientDataPlane:
    """Moves IP packets between the client's TUN device and one CONNECT-IP session."""

    def __init__(
        self,
        tun: TunDevice,
        session: ConnectIpSession,
        send: Callable[[list[bytes]], int],
        *,
        max_packet: int,
        icmp_sources: Sequence[IPAddress] = (),
        batch_size: int = 64,
    ) -> None:
        self._tun = tun
        self._session = session
        self._send = send
        self._max_packet = max_packet
        self._batch_size = batch_size
        # Errors we answer local applications with come from our tunnel address.
        self._icmp_source: dict[int, IPAddress] = {a.version: a for a in icmp_sources}
        #: Packets dropped, by reason (verdict name, ``too_big``, ``queue_full``).
        self.dropped: Counter[str] = Counter()
        self.sent_packets = 0
        self.received_packets = 0

    def on_tun_readable(self) -> None:
        """Send what local applications routed into the TUN."""
        for _ in range(16):  # bounded: let the event loop breathe between rounds
            packets = self._tun.read_batch(self._batch_size)
            if not packets:
                return
            batch: list[bytes] = []
            replies: list[bytes] = []
            for packet in packets:
                if len(packet) > self._max_packet:
                    self.dropped["too_big"] += 1
                    self._icmp(packet, IcmpErrorKind.PACKET_TOO_BIG, replies)
                    continue
                verdict = self._session.check_outgoing(packet)
                if verdict is not Verdict.ACCEPT:
                    # The kernel's own IPv6 chatter (MLD, router solicitations)
                    # lands here as link-local: dropping it is the normal case.
                    self.dropped[verdict.name.lower()] += 1
                    if verdict in _PROHIBITED:
                        # Tell the application at once, as the relay would (§7.2.1).
                        self._icmp(packet, IcmpErrorKind.ADMINISTRATIVELY_PROHIBITED, replies)
                    continue
                batch.append(packet)
            if replies:
                self._tun.write_batch(replies)
            if batch:
                sent = self._send(batch)
                self.sent_packets += sent
                if sent < len(batch):
                    self.dropped["queue_full"] += len(batch) - sent

    def _icmp(self, offending: bytes, kind: IcmpErrorKind, out: list[bytes]) -> None:
        source = self._icmp_source.get(offending[0] >> 4) if offending else None
        if source is None:
            return
        mtu = None
        if kind is IcmpErrorKind.PACKET_TOO_BIG:
            mtu = max(self._max_packet, 1280) if source.version == 6 else self._max_packet
        error = build_icmp_error(offending, kind, source=source, mtu=mtu)
        if error is not None:
            out.append(error)

    def from_relay(self, packets: Sequence[bytes | memoryview]) -> None:
        """Write packets from the relay to the TUN after the RFC 9484 checks."""
        accepted = []
        for packet in packets:
            verdict = self._session.check_incoming(packet)
            if verdict is Verdict.ACCEPT:
                accepted.append(bytes(packet))
            else:
                self.dropped[verdict.name.lower()] += 1
        if accepted:
            self.received_packets += self._tun.write_batch(accepted)


def udp_batch_io(sock: socket.socket, *, fast: bool) -> UdpBatchIO:
    """Batch I/O for the client's UDP socket: compiled (mmsg, GSO/GRO) unless ``fast`` is off."""
    compiled: Callable[[int], UdpBatchIO] | None = None
    if fast:
        try:
            from _fastpath import UdpSocket
        except ImportError as error:
            log.warning("fast path unavailable (%s): using Python UDP I/O", error)
        else:
            # Only this object reads the socket, so GRO's merged buffers are safe to ask for.
            compiled = cast(Callable[[int], UdpBatchIO], functools.partial(UdpSocket, gro=True))
    return make_batch_io(sock, compiled)
