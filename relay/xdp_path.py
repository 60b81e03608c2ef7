"""The relay's AF_XDP path: lane packets straight from the interface's rings.

:class:`relay.xdp.XdpFrontEnd` attaches ``bpf/relay_xdp`` (native where the
driver has it, generic otherwise) and :class:`XdpPath` keeps the program's CID
map equal to the lane table's CIDs (it is the table's CID observer). One
``_fastpath.XskSocket`` per RX queue sits in the program's socket map; the
program redirects to it only short-header packets for lane CIDs, so handshakes,
unknown CIDs and all other traffic still reach the kernel and aioquic's UDP
socket on the same port.

XdpPath reads the sockets in batches and offers each datagram to the lanes;
what a lane does not take (a key-phase change, another frame...) is handed to
aioquic exactly as if it had come through the UDP socket. The lanes' packets to
a peer seen this way leave through the same socket's TX ring, with Ethernet,
IP and UDP headers built in C, from the address the peer wrote to. The
destination MAC is the next hop's: the kernel's route to the peer (netlink)
names the gateway, or the peer itself when on-link, and the neighbour table
its MAC; both are looked up again every few seconds, so a changed neighbour
is followed. A peer whose route leaves by another interface, or not seen on
the XDP path yet, is sent to through the UDP socket.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netio.compiled import fastpath
from netio.lane import DatagramLane, LaneTable
from netio.netlink import Netlink
from relay.config import XdpConfig, XdpMode
from relay.xdp import XdpFrontEnd, XdpUnavailable

if TYPE_CHECKING:
    import asyncio

    from _fastpath import PacketBatch, XskSocket

log = logging.getLogger(__name__)

Address = tuple[Any, ...]

#: Datagrams taken from one socket per wake-up.
RX_BATCH = 64
#: Seconds after which a peer's next hop (route, neighbour MAC) is looked up again.
NEXT_HOP_REFRESH_S = 5.0


class XdpPath:
    """The AF_XDP sockets of one interface, feeding the lanes; see the module docstring."""

    def __init__(
        self,
        front: XdpFrontEnd,
        lanes: LaneTable,
        *,
        to_aioquic: Callable[[bytes, Address], None],
        end_batch: Callable[[], None],
        fallback_send: Callable[[list[bytes], Address], None],
        mapped: bool,
    ) -> None:
        module = fastpath()
        assert module is not None, "AF_XDP needs the compiled fast path"
        self._fp: Any = module
        self.front = front
        self._lanes = lanes
        self._to_aioquic = to_aioquic
        self._end_batch = end_batch
        self._fallback_send = fallback_send
        self._mapped = mapped  # the UDP socket is dual-stack: aioquic sees ::ffff:a.b.c.d
        self._sockets: list[XskSocket] = []
        self._batch: PacketBatch = module.PacketBatch(RX_BATCH, 2048, 0)
        self._mac = _interface_mac(front.ifname)
        # Peer address (as aioquic spells it) -> (socket, our address, its address,
        # next-hop MAC or None: send through the UDP socket, when resolved).
        self._routes: dict[Address, tuple[XskSocket, Address, Address, bytes | None, float]] = {}
        self._netlink = Netlink()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = {"rx": 0, "to_aioquic": 0, "tx": 0, "tx_fallback": 0, "tx_full": 0}

    @classmethod
    def open(
        cls,
        config: XdpConfig,
        lanes: LaneTable,
        *,
        port: int,
        cid_len: int,
        to_aioquic: Callable[[bytes, Address], None],
        end_batch: Callable[[], None],
        fallback_send: Callable[[list[bytes], Address], None],
        mapped: bool,
    ) -> XdpPath | None:
        """Attach and open the sockets; None (logged) when XDP cannot be used here."""
        if config.mode is XdpMode.OFF:
            return None
        assert config.interface is not None
        try:
            front = XdpFrontEnd.open(
                config.interface,
                mode=config.mode.value,
                port=port,
                cid_len=cid_len,
                hs_rate_pps=config.handshake_rate_pps,
                hs_burst=config.handshake_burst,
            )
        except XdpUnavailable as error:
            log.warning("XDP unavailable on %s: %s; using the UDP socket path", error.ifname, error)
            return None
        path = cls(
            front,
            lanes,
            to_aioquic=to_aioquic,
            end_batch=end_batch,
            fallback_send=fallback_send,
            mapped=mapped,
        )
        try:
            path._open_sockets()
        except OSError as error:
            log.warning(
                "AF_XDP sockets on %s failed (%s); using the UDP socket path",
                config.interface,
                error,
            )
            path.close()
            return None
        lanes.cid_observer = path
        log.info(
            "XDP: relay_xdp on %s in %s mode, %d AF_XDP socket(s) (%s)",
            front.ifname,
            front.mode,
            len(path._sockets),
            path._sockets[0].mode if path._sockets else "-",
        )
        return path

    def _open_sockets(self) -> None:
        queues = _rx_queues(self.front.ifname)
        for queue in range(queues):
            sock = self._fp.XskSocket(self.front.ifindex, queue)
            self._sockets.append(sock)
            self.front.register_socket(queue, sock.fileno())

    @property
    def mode(self) -> str:
        return self.front.mode

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), functools.partial(self._readable, sock))

    def close(self) -> None:
        """Detach the program and close the sockets; idempotent."""
        for queue, sock in enumerate(self._sockets):
            if self._loop is not None and not sock.closed:
                self._loop.remove_reader(sock.fileno())
            with contextlib.suppress(OSError, ValueError):  # already gone with the program
                self.front.unregister_socket(queue)
            sock.close()
        self._sockets.clear()
        self._routes.clear()
        self._netlink.close()
        if self._lanes.cid_observer is self:
            self._lanes.cid_observer = None
        self.front.close()

    # -- the lane table's CIDs, in the kernel's map ------------------------------------

    def cid_added(self, cid: bytes, lane: DatagramLane) -> None:
        self.front.add_cid(cid, id(lane) & 0xFFFFFFFF)

    def cid_removed(self, cid: bytes) -> None:
        self.front.remove_cid(cid)

    # -- receive -----------------------------------------------------------------------

    def _readable(self, sock: XskSocket) -> None:
        batch = self._batch
        for _ in range(8):  # bounded: the TUN and the UDP socket get their turn
            batch.clear()
            metas = sock.recv_batch(batch, RX_BATCH)
            if not metas:
                break
            self.stats["rx"] += len(metas)
            intercept = self._lanes.intercept
            routes = self._routes
            stale = time.monotonic() - NEXT_HOP_REFRESH_S
            for i, (src, dst, mac) in enumerate(metas):
                addr = self._spelled(src)
                route = routes.get(addr)
                if route is None or route[0] is not sock or route[1] != dst or route[4] < stale:
                    hop_mac = self._next_hop_mac(src[0], mac)
                    routes[addr] = (sock, dst, src, hop_mac, time.monotonic())
                data = bytes(batch.view(i))
                if not intercept(data, addr):
                    self.stats["to_aioquic"] += 1
                    self._to_aioquic(data, addr)
            if len(metas) < RX_BATCH:
                break
        self._end_batch()

    def _next_hop_mac(self, peer: str, frame_mac: bytes) -> bytes | None:
        """The MAC to send ``peer``'s packets to on this link; None: not via XDP."""
        address = ipaddress.ip_address(peer)
        try:
            route = self._netlink.route_get(address)
        except OSError as error:
            log.debug("no route to %s (%s): UDP socket path", peer, error)
            return None
        if route.oif != self.front.ifindex:
            return None  # replies leave by another interface: the kernel sends them
        hop = route.gateway or address
        try:
            mac = self._netlink.neighbour(self.front.ifindex, hop)
        except OSError:
            mac = None
        # No entry yet (the kernel has not needed one): the frame's sender is on this
        # link and is the next hop our peer's packets came through.
        return mac or frame_mac

    def _spelled(self, addr: Address) -> Address:
        if self._mapped and ":" not in addr[0]:
            return (f"::ffff:{addr[0]}", addr[1])
        return addr

    # -- send --------------------------------------------------------------------------

    def send_many(self, packets: list[bytes], addr: Address) -> None:
        """The lanes' sender: through the TX ring when the peer came in over XDP."""
        route = self._routes.get(addr)
        if route is None:
            self.stats["tx_fallback"] += len(packets)
            self._fallback_send(packets, addr)
            return
        sock, local, peer, mac, _ = route
        if mac is None:
            self.stats["tx_fallback"] += len(packets)
            self._fallback_send(packets, addr)
            return
        sent = sock.send_list(packets, local, peer, self._mac, mac)
        self.stats["tx"] += sent
        if sent < len(packets):
            self.stats["tx_full"] += len(packets) - sent

    def counters(self) -> dict[str, int]:
        """The XDP program's per-reason packet counters."""
        return self.front.counters()


def _rx_queues(ifname: str) -> int:
    queues = Path(f"/sys/class/net/{ifname}/queues")
    count = len(list(queues.glob("rx-*"))) if queues.exists() else 0
    return max(count, 1)


def _interface_mac(ifname: str) -> bytes:
    text = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))
