"""Batched UDP under aioquic: one wake-up reads a batch, one flush sends a batch.

aioquic's asyncio layer reads one datagram per callback and runs a full
``transmit()`` (one ``sendto()`` per packet) after every datagram it receives.
This endpoint replaces the asyncio transport under aioquic's protocols:

    socket readable -> recv_batch() -> receiver(data, addr) for each datagram
                    -> on_batch_end() (the owner transmits each touched connection once)
                    -> flush(): every datagram queued by those transmits in one send_batch()

``sendto()`` only queues; a flush is scheduled on the loop, so everything a loop
iteration produces (timers, TUN reads, handshakes) leaves in one batched send.
The batch I/O object is the compiled ``_fastpath.UdpSocket`` (recvmmsg,
sendmmsg, GSO/GRO) or :class:`PyUdpSocket`, its pure-Python twin.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: An address as both batch I/O implementations report it: (host, port).
Address = tuple[str, int]

#: Datagrams waiting for the socket to drain; beyond this the newest are dropped.
MAX_QUEUED = 8192


class UdpBatchIO(Protocol):
    """What the endpoint needs from a batch I/O object (C or Python)."""

    def recv_batch(self, max_datagrams: int = 64) -> list[tuple[bytes, Address, int]]: ...

    def send_batch(self, datagrams: list[tuple[bytes, Address]]) -> int: ...


class PyUdpSocket:
    """Batch I/O in pure Python: a loop of recvfrom_into / sendto (the fallback)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # One reusable buffer: a fresh 64 KiB bytes object per datagram would cost
        # an mmap/munmap each (NOTES.md: 22.7 us vs 3.3 us).
        self._buffer = bytearray(65536)
        self.features = "plain"

    def recv_batch(self, max_datagrams: int = 64) -> list[tuple[bytes, Address, int]]:
        received: list[tuple[bytes, Address, int]] = []
        view = memoryview(self._buffer)
        for _ in range(max_datagrams):
            try:
                size, addr = self._sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                # ICMP errors surface as ECONNREFUSED and friends: not fatal for a server.
                log.debug("recvfrom: %s", error)
                break
            received.append((bytes(view[:size]), (addr[0], addr[1]), 0))
        return received

    def send_batch(self, datagrams: list[tuple[bytes, Address]]) -> int:
        sent = 0
        for data, addr in datagrams:
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno == errno.EMSGSIZE:
                    log.warning("datagram of %d bytes too big for the path", len(data))
                else:
                    log.debug("sendto %s: %s", addr, error)
            sent += 1
        return sent


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port``; ``::`` is dual-stack."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def make_batch_io(sock: socket.socket, compiled: Callable[[int], UdpBatchIO] | None) -> UdpBatchIO:
    """The compiled batch I/O over ``sock`` if given and it works, else :class:`PyUdpSocket`."""
    if compiled is not None:
        try:
            return compiled(sock.fileno())
        except OSError as error:
            log.warning("compiled UDP I/O failed (%s): using Python UDP I/O", error)
    return PyUdpSocket(sock)


def as_socket_address(sock: socket.socket, host: str, port: int) -> Address:
    """``host`` as the socket reports peers: IPv4 becomes ``::ffff:a.b.c.d`` on IPv6."""
    if sock.family == socket.AF_INET6 and ":" not in host:
        return (f"::ffff:{host}", port)
    return (host, port)


class BatchedUdpEndpoint(asyncio.DatagramTransport):
    """The transport aioquic's protocols write to; reads and sends in batches."""

    def __init__(
        self,
        sock: socket.socket,
        io: UdpBatchIO,
        receiver: Callable[[bytes, Address], None],
        on_batch_end: Callable[[], None] = lambda: None,
        *,
        batch_size: int = 64,
        intercept: Callable[[bytes, Address], bool] | None = None,
    ) -> None:
        """``intercept`` (the datagram lane) sees each datagram first; True: consumed."""
        super().__init__()
        self._intercept = intercept
        self._sock = sock
        self._io = io
        self._receiver = receiver
        self._on_batch_end = on_batch_end
        self._batch_size = batch_size
        self._loop = asyncio.get_running_loop()
        self._out: deque[tuple[bytes, Address]] = deque()
        self._flush_scheduled = False
        self._writer_armed = False
        self._closing = False
        self._mapped = sock.family == socket.AF_INET6
        self._spellings: dict[Address, Address] = {}  # peer address -> how aioquic sees it
        #: Datagrams dropped because the send queue was full.
        self.dropped = 0
        self.received = 0
        self.sent = 0
        #: Datagrams whose handling raised (logged); the rest of their batch went on.
        self.receive_errors = 0

    def start(self) -> None:
        self._loop.add_reader(self._sock.fileno(), self._readable)

    # -- receive ----------------------------------------------------------------------

    def _readable(self) -> None:
        if self._closing:
            return
        for _ in range(8):  # bounded: other callbacks (TUN, timers) get their turn
            batch = self._io.recv_batch(self._batch_size)
            if not batch:
                break
            self.received += len(batch)
            mapped = self._mapped
            intercept = self._intercept
            spellings = self._spellings
            for data, addr, _ecn in batch:
                if mapped:
                    # One spelling per peer: aioquic compares addresses to notice
                    # path changes, and a dual-stack socket names IPv4 peers mapped.
                    spelled = spellings.get(addr)
                    if spelled is None:
                        spelled = addr if ":" in addr[0] else (f"::ffff:{addr[0]}", addr[1])
                        if len(spellings) < 4096:
                            spellings[addr] = spelled
                    addr = spelled
                try:
                    if intercept is not None and intercept(data, addr):
                        continue
                    self._receiver(data, addr)
                except Exception:
                    # One bad datagram must not cost the rest of the batch.
                    self.receive_errors += 1
                    log.exception("error handling a datagram from %s", addr)
            if len(batch) < self._batch_size:
                break
        try:
            self._on_batch_end()
        finally:
            self.flush()

    # -- send -------------------------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        if len(self._out) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._out.append((bytes(data), (addr[0], addr[1])))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def send_many(self, packets: list[bytes], addr: Address) -> None:
        """Queue several datagrams to one peer (the datagram lane's batches)."""
        if self._closing or not packets:
            return
        room = MAX_QUEUED - len(self._out)
        if room < len(packets):
            self.dropped += len(packets) - max(room, 0)
            packets = packets[: max(room, 0)]
        destination = (addr[0], addr[1])
        self._out.extend([(packet, destination) for packet in packets])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send everything queued, in as few syscalls as the batch I/O allows."""
        self._flush_scheduled = False
        while self._out and not self._closing:
            batch = list(self._out)
            try:
                sent = self._io.send_batch(batch)
            except (OSError, ValueError) as error:
                # An address the socket cannot send to: drop that datagram, go on.
                log.warning("dropping a datagram to %s: %s", batch[0][1], error)
                self._out.popleft()
                self.dropped += 1
                continue
            self.sent += sent
            for _ in range(sent):
                self._out.popleft()
            if sent < len(batch):
                # The socket buffer is full: continue when it drains.
                if not self._writer_armed and not self._closing:
                    self._writer_armed = True
                    self._loop.add_writer(self._sock.fileno(), self._writable)
                return

    def _writable(self) -> None:
        self._writer_armed = False
        self._loop.remove_writer(self._sock.fileno())
        self.flush()

    def rebind(self, sock: socket.socket, io: UdpBatchIO) -> None:
        """Carry on over a new socket (a new local address or port), closing the old one."""
        self.flush()
        self._loop.remove_reader(self._sock.fileno())
        if self._writer_armed:
            self._loop.remove_writer(self._sock.fileno())
            self._writer_armed = False
        close_io = getattr(self._io, "close", None)
        if close_io is not None:
            close_io()
        self._sock.close()
        self._sock, self._io = sock, io
        self._mapped = sock.family == socket.AF_INET6
        self._loop.add_reader(sock.fileno(), self._readable)

    # -- asyncio.DatagramTransport -------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self.flush()
        self._closing = True
        self._out.clear()
        self._loop.remove_reader(self._sock.fileno())
        if self._writer_armed:
            self._loop.remove_writer(self._sock.fileno())
        close_io = getattr(self._io, "close", None)
        if close_io is not None:
            close_io()  # the compiled socket wraps the fd without owning it
        self._sock.close()

    def abort(self) -> None:
        self.close()
