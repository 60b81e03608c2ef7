"""The relay's data path: client packets to the TUN, TUN packets to their session.

Two implementations behind the same entry points (:meth:`RelayDataPlane.from_client`,
:meth:`RelayDataPlane.flush`, :meth:`RelayDataPlane.on_tun_readable`):

- compiled (the default, when the TUN was opened through ``_fastpath.Tun``):
  packets live in ``PacketBatch`` arenas; one C call per batch reads the TUN
  (splitting offloaded super-segments), looks up sessions by destination
  (longest prefix match), runs the RFC 9484 checks, decrements TTLs, writes
  the HTTP Datagram framing into each packet's headroom, and writes to the TUN
  (coalescing TCP segments). Python only groups packets per session, answers
  the rare ICMP errors and hands the framed datagrams to aioquic.
- Python (``[dataplane] fast_path = false``): the protocol core's checks, one
  packet at a time; kept for comparison and debugging.

Packets from clients arrive one per aioquic event; they are queued per batch
and processed together in :meth:`RelayDataPlane.flush`, which the endpoint
calls at the end of every UDP receive batch.

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
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from masque.icmp import IcmpErrorKind, build_icmp_error
from masque.ippacket import decrement_ttl, is_link_scoped
from masque.session import Verdict
from netio.compiled import BATCH_SLOTS, HEADROOM, PolicySnapshots, fastpath, slot_size
from netio.tun import TunDevice
from netio.udp import UdpBatchIO, make_batch_io
from relay.metrics import Metrics
from relay.ratelimit import admit
from relay.sessions import Carrier, RelaySession, SessionTable

if TYPE_CHECKING:
    from _fastpath import PacketBatch
    from _fastpath import Tun as CompiledTun

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

#: Verdicts by their C value (masque.session.Verdict values are the C enum's).
_VERDICTS = {verdict.value: verdict for verdict in Verdict}
#: check_routed_batch's verdict for a packet whose session has no policy.
_NO_POLICY = 255

DROP_REASONS = (
    *(label for label, _ in _DROPS.values()),
    "ttl_exceeded",
    "too_big",
    "no_session",
    "queue_full",
    "lane_paced",  # refused by the datagram lane's pacing or in-flight bound
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
        batch_size: int = BATCH_SLOTS,
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
        # Packets from clients wait here until the end of the receive batch.
        self._pending: list[tuple[RelaySession, bytes | memoryview]] = []
        module = fastpath() if tun.compiled is not None else None
        #: Which implementation moves packets: "compiled" or "python".
        self.implementation = "compiled" if module is not None else "python"
        if module is not None:
            size = slot_size(tun.mtu)
            self._fp = module
            self._from_tun_batch: PacketBatch = module.PacketBatch(batch_size, size, HEADROOM)
            self._to_tun_batch: PacketBatch = module.PacketBatch(batch_size, size, 0)
            self._incoming = PolicySnapshots(outgoing=False)
            self._outgoing = PolicySnapshots(outgoing=True)
        metrics.gauge(
            "masque_relay_dataplane_info",
            "The data path in use (value 1): implementation and TUN I/O mode.",
            labels=("implementation", "tun_mode"),
        ).child(implementation=self.implementation, tun_mode=tun.mode).value = 1
        log.info("data plane: %s, TUN I/O %s", self.implementation, tun.mode)
        compiled_tun = tun.compiled
        if compiled_tun is not None:
            # Reads, offload splits, GRO writes...: proof of what the TUN actually did.
            tun_io = metrics.gauge(
                "masque_relay_tun_io",
                "The compiled TUN's I/O counters (largest_read in bytes).",
                labels=("stat",),
            )
            for key in compiled_tun.stats:
                tun_io.child(stat=key).set_function(functools.partial(_tun_stat, compiled_tun, key))

    # -- client -> TUN ------------------------------------------------------------

    def from_client(self, session: RelaySession, packets: Sequence[bytes | memoryview]) -> None:
        """Take packets a client sent; they are checked and written at :meth:`flush`."""
        pending = self._pending
        for packet in packets:
            pending.append((session, packet))
        if len(pending) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        """Check the packets queued by :meth:`from_client` and write the good ones."""
        while self._pending:
            chunk = self._pending[: self._batch_size]
            del self._pending[: self._batch_size]
            if self.implementation == "compiled":
                self._from_clients_compiled(chunk)
            else:
                self._from_clients_python(chunk)

    def from_client_batch(self, session: RelaySession, batch: PacketBatch) -> None:
        """A whole batch of one session's packets (the datagram lane wrote them in C)."""
        count = len(batch)
        if not count:
            return
        if session not in self._sessions:
            return
        if self.implementation != "compiled" or session.limits_from_client:
            # Rare: per-packet work (rate limits) goes through the general path.
            self.from_client(session, [bytes(batch.view(i)) for i in range(count)])
            self.flush()
            return
        self.flush()  # keep the order of anything queued before
        fp = self._fp
        session.last_activity = time.monotonic()
        session.rx_packets += count
        session.rx_bytes += sum(map(batch.length, range(count)))
        policy = self._incoming.get(session.id, session.connect_ip)
        verdicts = fp.check_incoming_batch(batch, policy)
        ttls = fp.decrement_ttl_batch(batch, verdicts)
        forwarded = verdicts.count(0)
        if forwarded < count or 0 in ttls:
            replies: list[bytes] = []
            for i in range(count):
                verdict = verdicts[i]
                if verdict:
                    self._drop(_VERDICTS[verdict], batch.view(i), replies)
                elif ttls[i] == 0:
                    self.dropped["ttl_exceeded"].value += 1
                    self._icmp(batch.view(i), IcmpErrorKind.TIME_EXCEEDED, replies)
                    verdicts[i] = _NO_POLICY
                    forwarded -= 1
            if replies:
                session.send_packets(session, replies)
        if forwarded:
            written = self._tun.compiled.write_batch(batch, verdicts)  # type: ignore[union-attr]
            self._from_client.value += written
            if written < forwarded:
                self.dropped["tun_write"].value += forwarded - written

    def forget(self, session: RelaySession) -> None:
        """A session ended: drop its queued packets and compiled policy."""
        self._pending = [(s, p) for s, p in self._pending if s is not session]
        if self.implementation == "compiled":
            self._incoming.forget(session.id)
            self._outgoing.forget(session.id)

    def _from_clients_python(self, chunk: list[tuple[RelaySession, bytes | memoryview]]) -> None:
        to_tun: list[bytes] = []
        replies: dict[RelaySession, list[bytes]] = {}
        for session, packet in chunk:
            session.rx_packets += 1
            session.rx_bytes += len(packet)
            verdict = session.connect_ip.check_incoming(packet)
            if verdict is not Verdict.ACCEPT:
                self._drop(verdict, packet, replies.setdefault(session, []))
                continue
            if session.limits_from_client and not admit(session.limits_from_client, len(packet)):
                self.dropped["rate_limited"].value += 1
                continue
            buffer = bytearray(packet)
            if decrement_ttl(buffer) == 0:
                self.dropped["ttl_exceeded"].value += 1
                self._icmp(packet, IcmpErrorKind.TIME_EXCEEDED, replies.setdefault(session, []))
                continue
            to_tun.append(bytes(buffer))
        if to_tun:
            written = self._tun.write_batch(to_tun)
            self._from_client.value += written
            if written < len(to_tun):
                self.dropped["tun_write"].value += len(to_tun) - written
        self._answer(replies)

    def _from_clients_compiled(self, chunk: list[tuple[RelaySession, bytes | memoryview]]) -> None:
        fp = self._fp
        batch = self._to_tun_batch
        batch.clear()
        sids: list[int] = []
        policies = {}
        limit = batch.slot_size
        for session, packet in chunk:
            session.rx_packets += 1
            session.rx_bytes += len(packet)
            if len(packet) > limit:
                # Larger than the tunnel could ever carry: not a packet we forward.
                packet = b""
            batch.append(packet)
            sid = session.id
            sids.append(sid)
            if sid not in policies:
                policies[sid] = self._incoming.get(sid, session.connect_ip)
        verdicts = fp.check_routed_batch(batch, sids, policies)
        ttls = fp.decrement_ttl_batch(batch, verdicts)
        replies: dict[RelaySession, list[bytes]] = {}
        for i, (session, packet) in enumerate(chunk):
            verdict = verdicts[i]
            if verdict:
                if verdict != _NO_POLICY:
                    self._drop(_VERDICTS[verdict], packet, replies.setdefault(session, []))
                continue
            if session.limits_from_client and not admit(session.limits_from_client, len(packet)):
                self.dropped["rate_limited"].value += 1
                verdicts[i] = _NO_POLICY
            elif ttls[i] == 0:
                self.dropped["ttl_exceeded"].value += 1
                self._icmp(packet, IcmpErrorKind.TIME_EXCEEDED, replies.setdefault(session, []))
                verdicts[i] = _NO_POLICY
        forwarded = len(chunk) - sum(1 for v in verdicts if v)
        if forwarded:
            written = self._tun.compiled.write_batch(batch, verdicts)  # type: ignore[union-attr]
            self._from_client.value += written
            if written < forwarded:
                self.dropped["tun_write"].value += forwarded - written
        self._answer(replies)

    def _drop(self, verdict: Verdict, packet: bytes | memoryview, replies: list[bytes]) -> None:
        label, kind = _DROPS[verdict]
        self.dropped[label].value += 1
        if kind is not None:
            self._icmp(packet, kind, replies)

    def _answer(self, replies: dict[RelaySession, list[bytes]]) -> None:
        """ICMP errors about a client's packets go back to that client."""
        for session, errors in replies.items():
            if errors:
                session.send_packets(session, errors)

    # -- TUN -> clients -------------------------------------------------------------

    def on_tun_readable(self) -> None:
        """Read what the kernel routed into the TUN and send each packet to its session."""
        for _ in range(16):  # bounded: let the event loop breathe between rounds
            if self.implementation == "compiled":
                if not self._route_compiled():
                    return
                continue
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
                self._drop(verdict, packet, errors)
                continue
            if session.limits_to_client and not admit(session.limits_to_client, len(packet)):
                self.dropped["rate_limited"].value += 1
                continue
            by_session.setdefault(session, []).append(packet)
        for session, batch in by_session.items():
            self._send_to(session, batch, len(batch))
        if errors:
            # Errors about TUN packets go back to their senders through the kernel.
            self._tun.write_batch(errors)

    def _route_compiled(self) -> int:
        """One batch from the TUN to the sessions, in C where it counts; packets read."""
        fp = self._fp
        batch = self._from_tun_batch
        batch.clear()
        count: int = self._tun.compiled.read_batch(batch, 0, self._tun.mtu)  # type: ignore[union-attr]
        if not count:
            return 0
        sids = self._sessions.lookup_batch(batch)
        sessions: dict[int, RelaySession] = {}
        policies = {}
        for sid in set(sids):
            found = self._sessions.get(sid) if sid >= 0 else None
            if found is not None:
                sessions[sid] = found
                policies[sid] = self._outgoing.get(sid, found.connect_ip)
        verdicts = fp.check_routed_batch(batch, sids, policies)
        by_session: dict[int, list[int]] = {}
        errors: list[bytes] = []
        for i in range(count):
            sid = sids[i]
            session = sessions.get(sid)
            if session is None:
                packet = batch.view(i)
                destination = _destination(packet)
                scoped = destination is not None and is_link_scoped(destination)
                self.dropped["link_local" if scoped else "no_session"].value += 1
                continue
            length = batch.length(i)
            if length > session.max_packet:
                self.dropped["too_big"].value += 1
                self._icmp(
                    batch.view(i), IcmpErrorKind.PACKET_TOO_BIG, errors, mtu=session.max_packet
                )
                continue
            verdict = verdicts[i]
            if verdict:
                self._drop(_VERDICTS[verdict], batch.view(i), errors)
                continue
            if session.limits_to_client and not admit(session.limits_to_client, length):
                self.dropped["rate_limited"].value += 1
                continue
            by_session.setdefault(sid, []).append(i)
        for sid, indices in by_session.items():
            session = sessions[sid]
            if session.send_from_batch is not None:
                sent = session.send_from_batch(session, batch, indices)
                if sent >= 0:  # the datagram lane took them (or paced some away)
                    self._count_sent(len(indices), sent, reason="lane_paced")
                    continue
            if session.carrier is Carrier.DATAGRAM and session.send_datagrams is not None:
                payloads = fp.frame_datagrams(batch, indices, session.datagram_prefix)
                sent = session.send_datagrams(session, payloads)
                self._count_sent(len(indices), sent)
            else:
                self._send_to(session, [bytes(batch.view(i)) for i in indices], len(indices))
        if errors:
            self._tun.write_batch(errors)
        return count

    def _send_to(self, session: RelaySession, packets: list[bytes], count: int) -> None:
        self._count_sent(count, session.send_packets(session, packets))

    def _count_sent(self, count: int, sent: int, *, reason: str = "queue_full") -> None:
        self._to_client.value += sent
        if sent < count:
            self.dropped[reason].value += count - sent

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


def _tun_stat(tun: CompiledTun, key: str) -> float:
    """One counter of the compiled TUN, read at scrape time (0 once it is closed)."""
    return 0.0 if tun.closed else float(tun.stats[key])


def _destination(packet: bytes | memoryview) -> IPAddress | None:
    """The destination address, read straight from the header (validated later)."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return ipaddress.IPv4Address(bytes(packet[16:20]))
    if version == 6 and len(packet) >= 40:
        return ipaddress.IPv6Address(bytes(packet[24:40]))
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
