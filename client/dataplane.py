"""The client's data path: TUN packets to the relay, relay packets to the TUN.

Batch-shaped like the relay's: one TUN wake-up becomes one batch handed to the
carrier; the compiled fast path will replace this module behind the same entry
points (:meth:`ClientDataPlane.on_tun_readable`, :meth:`ClientDataPlane.from_relay`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from masque.session import ConnectIpSession, Verdict
from netio.tun import TunDevice

log = logging.getLogger(__name__)


class ClientDataPlane:
    """Moves IP packets between the client's TUN device and one CONNECT-IP session."""

    def __init__(
        self,
        tun: TunDevice,
        session: ConnectIpSession,
        send: Callable[[list[bytes]], int],
        *,
        max_packet: int,
        batch_size: int = 64,
    ) -> None:
        self._tun = tun
        self._session = session
        self._send = send
        self._max_packet = max_packet
        self._batch_size = batch_size
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
            for packet in packets:
                if len(packet) > self._max_packet:
                    self.dropped["too_big"] += 1
                    continue
                verdict = self._session.check_outgoing(packet)
                if verdict is not Verdict.ACCEPT:
                    # The kernel's own IPv6 chatter (MLD, router solicitations)
                    # lands here as link-local: dropping it is the normal case.
                    self.dropped[verdict.name.lower()] += 1
                    continue
                batch.append(packet)
            if batch:
                sent = self._send(batch)
                self.sent_packets += sent
                if sent < len(batch):
                    self.dropped["queue_full"] += len(batch) - sent

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
