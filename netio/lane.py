"""The QUIC datagram lane: steady-state DATAGRAM packets go through C, aioquic stays in charge.

aioquic costs about 100 µs of CPU per QUIC packet. Once a connection's
handshake is confirmed, a :class:`DatagramLane` holds its 1-RTT keys in C
(``_fastpath.QuicKeys``) and handles the packets that carry nothing but
PADDING, PING, ACK and DATAGRAM frames:

- receive: a short-header packet for one of the connection's CIDs, from the
  current peer address, is unprotected in C; if its frames are lane frames the
  DATAGRAM payloads go to the data plane and the packet never reaches aioquic.
  Anything else — long headers, another address (migration), a key-phase
  change, a failed authentication, any other frame — goes to aioquic
  unchanged, and is processed there in order.
- send: IP packets read from the TUN are framed as DATAGRAM frames in their
  slot's headroom and protected in C with packet numbers reserved from
  aioquic's counter, then sent with the endpoint's batched (GSO) send.
- sync, once per receive batch (:meth:`DatagramLane.end_batch`): aioquic
  learns the packet numbers C consumed (its ACKs stay right and keep flowing)
  and the ACK frames C saw (its loss recovery and RTT see their packets
  acknowledged). Key updates, new CIDs and path changes happen in aioquic; the
  lane re-reads them after every batch aioquic touched (:meth:`refresh`).
- the lane never floods: it keeps at most :data:`MAX_IN_FLIGHT` packets
  unacknowledged and counts what it refuses beyond that.

Every aioquic internal involved is named in :mod:`netio.aioquic_internals`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aioquic.quic.connection import QuicConnection

from netio import aioquic_internals as internals
from netio.compiled import fastpath

if TYPE_CHECKING:
    from _fastpath import PacketBatch, QuicKeys

log = logging.getLogger(__name__)

Address = tuple[Any, ...]

#: Unacknowledged packets the lane allows itself before it refuses to send more.
MAX_IN_FLIGHT = 8192
#: Pacing (RFC 9484 §10 lets datagram-only packets skip congestion control, not
#: flood): the lane sends at most PACING_GAIN times the packet rate the peer's
#: ACKs showed delivered over the last sample (at least PACING_FLOOR_PPS), in
#: bursts of at most PACING_BURST packets. A sender that outruns the path is held
#: to a small multiple of what actually arrives; the excess is dropped, counted.
PACING_GAIN = 2.0
PACING_FLOOR_PPS = 10_000.0
PACING_BURST = 512.0
PACING_SAMPLE_S = 0.005
#: Bytes in front of each slot for the short header, DATAGRAM frame and HTTP framing.
LANE_HEADROOM = 64
#: Slots of the receive batch, and how many are kept free for one packet's datagrams.
RX_SLOTS = 256
RX_HEADROOM_SLOTS = 64
#: Reasons the lane counts.
LANE_STATS = (
    "received",  # packets consumed in C
    "datagrams_received",
    "handed_to_aioquic",  # short-header packets for a lane CID that aioquic had to handle
    "duplicates",
    "sent",
    "window_full",  # packets refused: MAX_IN_FLIGHT unacknowledged
    "paced",  # packets refused: above the pacing rate
    "acks_sent",  # ACK frames the lane piggybacked on its own packets
    "reinstalls",  # key update, CID or path change picked up from aioquic
)


class _Arena:
    """The packet batches every lane of the process shares (one event-loop thread).

    A connection must not cost ~800 KB of slots: the send batch is used within one
    call, and the receive batch belongs to one lane at a time (its owner flushes
    before another lane takes it).
    """

    def __init__(self, module: Any) -> None:
        self.tx: PacketBatch = module.PacketBatch(128, 2048, LANE_HEADROOM)
        # IP packets of the owner's bound session, written by C straight into slots.
        self.rx: PacketBatch = module.PacketBatch(RX_SLOTS, 2048, 0)
        self.rx_owner: DatagramLane | None = None


_ARENA: _Arena | None = None


def _arena(module: Any) -> _Arena:
    global _ARENA
    if _ARENA is None:
        _ARENA = _Arena(module)
    return _ARENA


class CidObserver(Protocol):
    """Told when a connection ID starts or stops leading to a lane."""

    def cid_added(self, cid: bytes, lane: DatagramLane) -> None: ...

    def cid_removed(self, cid: bytes) -> None: ...


class DatagramLane:
    """The lane of one QUIC connection; create with :meth:`install` once confirmed."""

    def __init__(
        self,
        quic: QuicConnection,
        secrets: internals.OneRttSecrets,
        *,
        send: Callable[[list[bytes], Address], None],
        deliver: Callable[[bytes], None],
        owner: Any = None,
    ) -> None:
        module = fastpath()
        assert module is not None, "the datagram lane needs the compiled fast path"
        self._fp: Any = module
        self.quic = quic
        #: Whoever installed the lane (the relay's connection protocol), for callbacks.
        self.owner = owner
        self._send = send
        self._deliver = deliver
        self._secrets = secrets
        # Header protection keys never change (RFC 9001 §6): derived once.
        self._hp = internals.derive_hp_keys(secrets)
        self._recv_keys: QuicKeys | None = None
        self._send_keys: QuicKeys | None = None
        self._recv_state: object = None
        self._send_state: object = None
        self.host_cids: frozenset[bytes] = frozenset()
        self.cid_length = internals.host_cid_length(quic)
        self._peer_cid = b""
        self._peer_addr: Address | None = None
        self._max_frame = internals.local_max_datagram_frame_size(quic)
        # Packet arenas shared by every lane of the process (see _Arena).
        self._arena = _arena(module)
        self._rx_prefix: bytes | None = None  # no session bound: every datagram to deliver
        self._rx_sink: Callable[[PacketBatch], None] | None = None
        # This batch's consumed packet numbers (and whether any asked for an ACK), ACKs seen.
        self._received: list[int] = []
        self._ack_eliciting = False
        self._acks: list[tuple[int, tuple[tuple[int, int], ...]]] = []
        self._largest_pn = -1
        self.stats = dict.fromkeys(LANE_STATS, 0)
        # Pacing state: a token bucket (packets) refilled at the learned rate.
        now = time.monotonic()
        self.pacing_pps = PACING_FLOOR_PPS
        self._tokens = PACING_BURST
        self._tokens_at = now
        self._sample_at = now
        self._sample_acked = internals.largest_acked(quic)
        self.refresh()

    @classmethod
    def install(
        cls,
        quic: QuicConnection,
        *,
        send: Callable[[list[bytes], Address], None],
        deliver: Callable[[bytes], None],
        owner: Any = None,
    ) -> DatagramLane | None:
        """A lane for ``quic`` if its 1-RTT keys are known and the handshake confirmed."""
        secrets = internals.one_rtt_secrets(quic)
        if secrets is None or not internals.lane_ready(quic):
            return None
        if internals.local_max_datagram_frame_size(quic) is None:
            return None  # we never offered DATAGRAM frames: the peer may not send them
        lane = cls(quic, secrets, send=send, deliver=deliver, owner=owner)
        log.info(
            "datagram lane installed (cipher suite 0x%04x, CID length %d)",
            secrets.cipher_suite,
            lane.cid_length,
        )
        return lane

    # -- state from aioquic ----------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read keys, CIDs and path from aioquic; False once the lane must go."""
        quic = self.quic
        if not internals.lane_ready(quic):
            return False
        fp = self._fp
        recv_state = internals.crypto_state(quic, send=False)
        if recv_state != self._recv_state:
            suite, secret, phase = recv_state
            key, iv = internals.derive_key_iv(self._secrets, secret)
            self._recv_keys = fp.QuicKeys(suite, key, iv, self._hp[0], key_phase=phase)
            if self._recv_state is not None:
                self.stats["reinstalls"] += 1
            self._recv_state = recv_state
        send_state = internals.crypto_state(quic, send=True)
        if send_state != self._send_state:
            suite, secret, phase = send_state
            key, iv = internals.derive_key_iv(self._secrets, secret)
            self._send_keys = fp.QuicKeys(suite, key, iv, self._hp[1], key_phase=phase)
            if self._send_state is not None:
                self.stats["reinstalls"] += 1
            self._send_state = send_state
        self._largest_pn = max(self._largest_pn, internals.largest_received(quic))
        self._window = internals.duplicate_window(quic)
        host_cids = internals.host_cids(quic)
        peer = internals.peer_cid(quic)
        addr = internals.active_peer_address(quic)
        if self._peer_cid and (
            host_cids != self.host_cids or peer != self._peer_cid or addr != self._peer_addr
        ):
            self.stats["reinstalls"] += 1
        self.host_cids, self._peer_cid, self._peer_addr = host_cids, peer, addr
        return True

    # -- receive ---------------------------------------------------------------------

    def bind(self, prefix: bytes, sink: Callable[[PacketBatch], None]) -> None:
        """Send the IP packets of the HTTP Datagrams starting with ``prefix`` to ``sink``.

        ``prefix`` is one session's framing (quarter stream ID, context ID 0): C
        writes those packets straight into a batch that ``sink`` gets at the end
        of each receive batch. Other datagrams still go to ``deliver`` one by one.
        """
        self.flush()
        self._rx_prefix, self._rx_sink = prefix, sink

    def unbind(self) -> None:
        self.flush()
        self._rx_prefix, self._rx_sink = None, None
        if self._arena.rx_owner is self:
            self._arena.rx_owner = None

    def flush(self) -> None:
        """Hand the bound session's packets received so far to its sink."""
        arena = self._arena
        if arena.rx_owner is not self:
            return
        rx = arena.rx
        if rx.count:
            if self._rx_sink is not None:
                self._rx_sink(rx)
            rx.clear()

    def receive(self, data: bytes, addr: Address) -> bool:
        """Consume ``data`` if it is a lane packet; False: aioquic must have it (unchanged)."""
        keys = self._recv_keys
        if keys is None:
            return False
        if addr != self._peer_addr:
            # A new address (rebinding, migration): aioquic validates the path first.
            self.stats["handed_to_aioquic"] += 1
            return False
        arena = self._arena
        if arena.rx_owner is not self:
            if arena.rx_owner is not None:
                arena.rx_owner.flush()  # another connection's packets go first
            arena.rx_owner = self
        rx = arena.rx
        if rx.count > RX_SLOTS - RX_HEADROOM_SLOTS:
            self.flush()
        before = rx.count
        result = self._fp.quic_lane_receive(
            keys, data, self.cid_length, self._largest_pn, self._max_frame, rx, self._rx_prefix
        )
        if result is None:
            self.stats["handed_to_aioquic"] += 1
            return False
        pn, eliciting, ack, others = result
        window = self._window
        if pn in window:
            rx.count = before  # a replay: nothing of it is delivered
            self.stats["duplicates"] += 1
            return True
        # In aioquic's duplicate window at once, not at end_batch: a copy handed to
        # aioquic later in this batch (another address, coalesced behind junk) is a
        # duplicate there too.
        window.add(pn)
        self._received.append(pn)
        if pn > self._largest_pn:
            self._largest_pn = pn
        if eliciting:
            self._ack_eliciting = True
        if ack is not None:
            self._acks.append((ack[1], ack[2]))  # (encoded delay, ranges)
        stats = self.stats
        stats["received"] += 1
        stats["datagrams_received"] += rx.count - before + len(others)
        if others:
            deliver = self._deliver
            for payload in others:
                deliver(payload)
        return True

    def end_batch(self, now: float) -> bool:
        """Deliver this batch's packets and tell aioquic what C received; True if any."""
        self.flush()
        if not self._received and not self._acks:
            return False
        internals.record_received(self.quic, self._received, self._ack_eliciting, now)
        for delay, ranges in self._acks:
            internals.ack_received(self.quic, ranges, delay, now)
        if self._acks:
            self._learn_rate()
        self._received.clear()
        self._acks.clear()
        self._ack_eliciting = False
        self._largest_pn = max(self._largest_pn, internals.largest_received(self.quic))
        return True

    # -- send ------------------------------------------------------------------------

    def _learn_rate(self) -> None:
        """Pacing rate from the packets the peer acknowledged over the last sample."""
        now = time.monotonic()
        elapsed = now - self._sample_at
        if elapsed < PACING_SAMPLE_S:
            return
        acked = internals.largest_acked(self.quic)
        delivered = max(acked - self._sample_acked, 0) / elapsed
        self.pacing_pps = max(PACING_FLOOR_PPS, PACING_GAIN * delivered)
        self._sample_at, self._sample_acked = now, acked

    def _pace(self, wanted: int) -> int:
        """How many of ``wanted`` packets may go now (tokens taken)."""
        now = time.monotonic()
        tokens = min(PACING_BURST, self._tokens + (now - self._tokens_at) * self.pacing_pps)
        self._tokens_at = now
        allowed = min(wanted, int(tokens))
        self._tokens = tokens - allowed
        if allowed < wanted:
            self.stats["paced"] += wanted - allowed
        return allowed

    def send(self, batch: PacketBatch, indices: list[int], payload_prefix: bytes) -> int:
        """Protect packets ``indices`` of ``batch`` as DATAGRAM frames and queue them.

        ``payload_prefix`` is the HTTP Datagram framing (quarter stream ID and
        context ID). Returns how many were sent (the rest were refused: window),
        or -1 when the lane cannot send now and the caller should use aioquic.
        """
        keys, addr = self._send_keys, self._peer_addr
        if keys is None or addr is None:
            return -1  # path not validated yet (migration): aioquic sends meanwhile
        if not indices:
            return 0
        quic = self.quic
        in_flight = internals.next_packet_number(quic) - internals.largest_acked(quic)
        room = MAX_IN_FLIGHT - in_flight
        if room < len(indices):
            self.stats["window_full"] += len(indices) - max(room, 0)
            if room <= 0:
                return 0
            indices = indices[:room]
        allowed = self._pace(len(indices))
        if allowed < len(indices):
            if not allowed:
                return 0
            indices = indices[:allowed]
        tx = self._arena.tx
        tx.clear()
        for i in indices[: tx.slots]:
            tx.append(batch.view(i))
        count = len(tx)
        ack = internals.ack_due(quic, time.monotonic())
        pn = internals.reserve_packet_numbers(quic, count)
        done: int
        if ack is not None:
            ranges, delay = ack
            done = self._fp.quic_protect_batch(
                keys,
                tx,
                self._peer_cid,
                pn,
                internals.largest_acked(quic),
                datagram=True,
                payload_prefix=payload_prefix,
                ack_ranges=ranges,
                ack_delay=delay,
            )
            if done:
                internals.ack_sent(quic)
                self.stats["acks_sent"] += 1
        else:
            done = self._fp.quic_protect_batch(
                keys,
                tx,
                self._peer_cid,
                pn,
                internals.largest_acked(quic),
                datagram=True,
                payload_prefix=payload_prefix,
            )
        if done:
            self._send(self._fp.batch_packets(tx)[:done], addr)
        self.stats["sent"] += done
        return done


class LaneTable:
    """Every installed lane of a process, by the connection IDs its packets carry.

    ``cid_observer`` (the relay's XDP front end) hears every CID that starts or
    stops belonging to a lane, so the kernel's map can follow.
    """

    def __init__(self, cid_observer: CidObserver | None = None) -> None:
        self._by_cid: dict[bytes, DatagramLane] = {}
        self._lanes: dict[int, DatagramLane] = {}
        self._cids_of: dict[int, frozenset[bytes]] = {}
        self.cid_length = 0
        self.touched: set[DatagramLane] = set()
        #: Counters of lanes removed since start (live ones are in each lane's stats).
        self.retired = dict.fromkeys(LANE_STATS, 0)
        self.cid_observer = cid_observer

    def __len__(self) -> int:
        return len(self._lanes)

    def __iter__(self) -> Any:
        return iter(list(self._lanes.values()))

    def add(self, lane: DatagramLane) -> None:
        self._lanes[id(lane)] = lane
        self.cid_length = lane.cid_length
        self.index(lane)

    def index(self, lane: DatagramLane) -> None:
        """Follow ``lane``'s CIDs (after :meth:`DatagramLane.refresh`): O(its CIDs)."""
        old = self._cids_of.get(id(lane), frozenset())
        new = lane.host_cids if id(lane) in self._lanes else frozenset()
        if old == new:
            return
        observer = self.cid_observer
        for cid in old - new:
            if self._by_cid.get(cid) is lane:
                del self._by_cid[cid]
                if observer is not None:
                    observer.cid_removed(cid)
        for cid in new - old:
            self._by_cid[cid] = lane
            if observer is not None:
                observer.cid_added(cid, lane)
        if new:
            self._cids_of[id(lane)] = new
        else:
            self._cids_of.pop(id(lane), None)

    def remove(self, lane: DatagramLane) -> None:
        if self._lanes.pop(id(lane), None) is not None:
            for stat, value in lane.stats.items():
                self.retired[stat] += value
        self.index(lane)  # no longer in _lanes: every CID of it goes
        self.touched.discard(lane)

    def intercept(self, data: bytes, addr: Address) -> bool:
        """The endpoint's filter: True when a lane consumed the datagram."""
        n = self.cid_length
        if not n or len(data) < n + 18 or data[0] & 0xC0 != 0x40:
            return False  # empty table, long header, or too short for a lane packet
        lane = self._by_cid.get(data[1 : 1 + n])
        if lane is None:
            return False
        self.touched.add(lane)
        return lane.receive(data, addr)

    def end_batch(self, now: float) -> list[DatagramLane]:
        """Sync every lane that received this batch; those that did (their ACKs are due)."""
        synced = [lane for lane in self.touched if lane.end_batch(now)]
        self.touched.clear()
        return synced
