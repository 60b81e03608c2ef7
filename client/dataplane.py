"""The client's data path: TUN packets to the relay, relay packets to the TUN.

Batch-shaped like the relay's, with the same two implementations: compiled
(the default when the TUN was opened through ``_fastpath.Tun``: one C call per
batch reads and splits TUN super-segments, checks the packets against the
session's policy, writes the HTTP Datagram framing into headroom, and writes
to the TUN coalescing TCP segments) and Python (``--no-fast-path``). Packets
from the relay arrive one per aioquic event and are queued until
:meth:`ClientDataPlane.flush` at the end of the UDP receive batch.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from masque.icmp import IcmpErrorKind, build_icmp_error
from masque.session import ConnectIpSession, Verdict
from netio.compiled import BATCH_SLOTS, HEADROOM, PolicySnapshots, fastpath, slot_size
from netio.tun import TunDevice
from netio.udp import UdpBatchIO, make_batch_io

if TYPE_CHECKING:
    from _fastpath import PacketBatch

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Verdicts answered with ICMP administratively prohibited (RFC 9484 §7.2.1).
_PROHIBITED = frozenset({Verdict.DROP_DST_NOT_IN_SCOPE, Verdict.DROP_PROTO_NOT_IN_SCOPE})
_VERDICTS = {verdict.value: verdict for verdict in Verdict}
#: The one session's key in the policy snapshots.
_SESSION = 0


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
        batch_size: int = BATCH_SLOTS,
        send_datagrams: Callable[[list[bytes]], int] | None = None,
        datagram_prefix: bytes = b"",
        send_from_batch: Callable[[PacketBatch, list[int]], int] | None = None,
    ) -> None:
        """``send`` takes IP packets; ``send_datagrams`` (datagram carrier, optional)
        takes HTTP Datagram payloads already framed with ``datagram_prefix``."""
        self._tun = tun
        self._session = session
        self._send = send
        self._send_datagrams = send_datagrams
        # The datagram lane: packets straight from the batch (-1: no lane yet).
        self._send_from_batch = send_from_batch
        self._prefix = datagram_prefix
        self._max_packet = max_packet
        self._batch_size = batch_size
        # Errors we answer local applications with come from our tunnel address.
        self._icmp_source: dict[int, IPAddress] = {a.version: a for a in icmp_sources}
        #: Packets dropped, by reason (verdict name, ``too_big``, ``queue_full``).
        self.dropped: Counter[str] = Counter()
        self.sent_packets = 0
        self.received_packets = 0
        self._pending: list[bytes | memoryview] = []
        module = fastpath() if tun.compiled is not None else None
        #: Which implementation moves packets: "compiled" or "python".
        self.implementation = "compiled" if module is not None else "python"
        self._fp: Any = module
        if module is not None:
            size = slot_size(tun.mtu)
            self._from_tun_batch: PacketBatch = module.PacketBatch(batch_size, size, HEADROOM)
            self._to_tun_batch: PacketBatch = module.PacketBatch(batch_size, size, 0)
            self._incoming = PolicySnapshots(outgoing=False)
            self._outgoing = PolicySnapshots(outgoing=True)
        log.info("data plane: %s, TUN I/O %s", self.implementation, tun.mode)

    # -- TUN -> relay ---------------------------------------------------------------

    def on_tun_readable(self) -> None:
        """Send what local applications routed into the TUN."""
        for _ in range(16):  # bounded: let the event loop breathe between rounds
            if self.implementation == "compiled":
                if not self._to_relay_compiled():
                    return
                continue
            packets = self._tun.read_batch(self._batch_size)
            if not packets:
                return
            batch: list[bytes] = []
            replies: list[bytes] = []
            for packet in packets:
                if len(packet) > self._max_packet:
                    self._too_big(packet, replies)
                    continue
                verdict = self._session.check_outgoing(packet)
                if verdict is not Verdict.ACCEPT:
                    self._refuse(verdict, packet, replies)
                    continue
                batch.append(packet)
            if replies:
                self._tun.write_batch(replies)
            if batch:
                self._count_sent(len(batch), self._send(batch))

    def _to_relay_compiled(self) -> int:
        fp = self._fp
        batch = self._from_tun_batch
        batch.clear()
        count: int = self._tun.compiled.read_batch(batch, 0, self._tun.mtu)  # type: ignore[union-attr]
        if not count:
            return 0
        policy = self._outgoing.get(_SESSION, self._session)
        verdicts = fp.check_incoming_batch(batch, policy)
        replies: list[bytes] = []
        accepted: list[int] = []
        for i in range(count):
            if batch.length(i) > self._max_packet:
                self._too_big(batch.view(i), replies)
            elif verdicts[i]:
                self._refuse(_VERDICTS[verdicts[i]], batch.view(i), replies)
            else:
                accepted.append(i)
        if replies:
            self._tun.write_batch(replies)
        if accepted:
            if self._send_from_batch is not None:
                sent = self._send_from_batch(batch, accepted)
                if sent >= 0:
                    self._count_sent(len(accepted), sent)
                    return count
            if self._send_datagrams is not None:
                sent = self._send_datagrams(fp.frame_datagrams(batch, accepted, self._prefix))
            else:
                sent = self._send([bytes(batch.view(i)) for i in accepted])
            self._count_sent(len(accepted), sent)
        return count

    def _too_big(self, packet: bytes | memoryview, replies: list[bytes]) -> None:
        self.dropped["too_big"] += 1
        self._icmp(packet, IcmpErrorKind.PACKET_TOO_BIG, replies)

    def _refuse(self, verdict: Verdict, packet: bytes | memoryview, replies: list[bytes]) -> None:
        # The kernel's own IPv6 chatter (MLD, router solicitations) lands here
        # as link-local: dropping it is the normal case.
        self.dropped[verdict.name.lower()] += 1
        if verdict in _PROHIBITED:
            # Tell the application at once, as the relay would (§7.2.1).
            self._icmp(packet, IcmpErrorKind.ADMINISTRATIVELY_PROHIBITED, replies)

    def _count_sent(self, count: int, sent: int) -> None:
        self.sent_packets += sent
        if sent < count:
            self.dropped["queue_full"] += count - sent

    def _icmp(self, offending: bytes | memoryview, kind: IcmpErrorKind, out: list[bytes]) -> None:
        source = self._icmp_source.get(offending[0] >> 4) if len(offending) else None
        if source is None:
            return
        mtu = None
        if kind is IcmpErrorKind.PACKET_TOO_BIG:
            mtu = max(self._max_packet, 1280) if source.version == 6 else self._max_packet
        error = build_icmp_error(bytes(offending), kind, source=source, mtu=mtu)
        if error is not None:
            out.append(error)

    # -- relay -> TUN ---------------------------------------------------------------

    def from_relay(self, packets: Sequence[bytes | memoryview]) -> None:
        """Take packets from the relay; checked and written to the TUN at :meth:`flush`."""
        self._pending.extend(packets)
        if len(self._pending) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued packets from the relay that pass the RFC 9484 checks."""
        while self._pending:
            chunk = self._pending[: self._batch_size]
            del self._pending[: self._batch_size]
            if self.implementation == "compiled":
                self._from_relay_compiled(chunk)
                continue
            accepted = []
            for packet in chunk:
                verdict = self._session.check_incoming(packet)
                if verdict is Verdict.ACCEPT:
                    accepted.append(bytes(packet))
                else:
                    self.dropped[verdict.name.lower()] += 1
            if accepted:
                self.received_packets += self._tun.write_batch(accepted)

    def from_relay_batch(self, batch: PacketBatch) -> None:
        """A whole batch from the relay (the datagram lane wrote it in C): check, write."""
        if not len(batch):
            return
        if self.implementation != "compiled":
            self.from_relay([bytes(batch.view(i)) for i in range(len(batch))])
            self.flush()
            return
        self.flush()  # anything queued before goes first
        verdicts = self._fp.check_incoming_batch(batch, self._incoming.get(_SESSION, self._session))
        self._write_checked(batch, verdicts)

    def _from_relay_compiled(self, chunk: list[bytes | memoryview]) -> None:
        batch = self._to_tun_batch
        batch.clear()
        limit = batch.slot_size
        for packet in chunk:
            batch.append(packet if len(packet) <= limit else b"")
        verdicts = self._fp.check_incoming_batch(batch, self._incoming.get(_SESSION, self._session))
        self._write_checked(batch, verdicts)

    def _write_checked(self, batch: PacketBatch, verdicts: bytearray) -> None:
        accepted = verdicts.count(0)
        if accepted < len(verdicts):
            for verdict in verdicts:
                if verdict:
                    self.dropped[_VERDICTS[verdict].name.lower()] += 1
        if accepted:
            self.received_packets += self._tun.compiled.write_batch(batch, verdicts)  # type: ignore[union-attr]


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
