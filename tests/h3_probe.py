"""A scripted HTTP/3 CONNECT-IP client for protocol-level tests of the real relay.

Unlike ``masque-client``, the probe sends exactly what a test asks for -- any
header list, raw capsule bytes, HTTP Datagrams with any context ID, for any
stream -- and reports exactly what came back: the response status and fields,
the DATA bytes and the capsules in them (parsed with
:class:`masque.capsule.CapsuleParser`), HTTP Datagrams, FIN, stream resets and
the connection's close.

It runs in a network namespace (the test bed's client namespace) as a small
server, started with :func:`tests.nsexec.run_in_netns` in a background thread,
and the test drives it step by step over a Unix socket (path sockets work
across network namespaces)::

    with Probe.start(bed.client_ns, workdir) as probe:
        conn = probe.connect("10.201.1.1", 4433, pin=sha256)
        stream = conn.open(connect_ip_headers(...))
        report = stream.wait(status=True, capsules=2)
        stream.send(raw_capsule_bytes)
        stream.datagram(b"\\x00" + ip_packet)

Every wait takes a timeout and returns a :class:`StreamReport` snapshot; by
default an unmet wait raises :class:`ProbeError` with the snapshot in its
message, ``must=False`` returns the snapshot anyway (for "nothing arrives").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

__all__ = [
    "ConnectionReport",
    "Probe",
    "ProbeConnection",
    "ProbeError",
    "ProbeStream",
    "StreamReport",
    "serve",
]

Headers = list[tuple[bytes, bytes]]


class ProbeError(AssertionError):
    """A probe step failed or a wait was not met; the message carries the evidence."""


# -- reports (picklable snapshots) -----------------------------------------------------


@dataclass
class StreamReport:
    """What the probe saw on one request stream, at the moment it was taken."""

    stream_id: int
    status: int | None = None
    "The response's :status (None until the response arrived)."
    headers: Headers = field(default_factory=list)
    "The response's header fields, pseudo-headers included."
    data: bytes = b""
    "Every DATA byte received on the stream."
    capsules: list[Any] = field(default_factory=list)
    "Capsules parsed from ``data`` (typed ``masque.capsule`` objects, SkippedCapsule too)."
    capsule_error: str | None = None
    "Why the capsule parser failed, if it did."
    datagrams: list[bytes] = field(default_factory=list)
    "HTTP Datagram payloads for this stream (context ID still in front)."
    fin: bool = False
    "The relay finished the stream (QUIC FIN)."
    reset_code: int | None = None
    "Error code of a RESET_STREAM from the relay."
    stop_sending_code: int | None = None
    "Error code of a STOP_SENDING from the relay."
    opened_at: float = 0.0
    "time.monotonic() in the probe when the request was sent."
    response_at: float | None = None
    ended_at: float | None = None
    "time.monotonic() in the probe when FIN or RESET_STREAM arrived."
    met: bool = True
    "Whether the wait that produced this snapshot was satisfied."

    @property
    def ended(self) -> bool:
        return self.fin or self.reset_code is not None

    @property
    def capsule_types(self) -> list[int]:
        """The type of each received capsule, in order (unknown types included)."""
        return [_capsule_type(c) for c in self.capsules]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class ConnectionReport:
    """The QUIC connection's state."""

    connected: bool = False
    closed: bool = False
    error_code: int | None = None
    reason: str = ""
    closed_at: float | None = None
    datagrams_unknown_stream: list[tuple[int, bytes]] = field(default_factory=list)
    met: bool = True


def _capsule_type(capsule: Any) -> int:
    from masque.capsule import (
        AddressAssign,
        AddressRequest,
        CapsuleType,
        DatagramCapsule,
        RouteAdvertisement,
    )

    types = {
        DatagramCapsule: CapsuleType.DATAGRAM,
        AddressAssign: CapsuleType.ADDRESS_ASSIGN,
        AddressRequest: CapsuleType.ADDRESS_REQUEST,
        RouteAdvertisement: CapsuleType.ROUTE_ADVERTISEMENT,
    }
    known = types.get(type(capsule))
    return int(known) if known is not None else int(capsule.capsule_type)


# -- the probe itself (runs in the client namespace) -----------------------------------


def _probe_protocol_class() -> type[Any]:
    """The aioquic protocol class; built lazily so the test side never imports aioquic."""
    from aioquic.h3.events import DatagramReceived, DataReceived, HeadersReceived
    from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamReset

    from client.tls import TlsCheckedProtocol
    from masque.capsule import CapsuleParser
    from masque.errors import CapsuleError
    from netio.h3 import ConnectIpH3Connection

    class ProbeProtocol(TlsCheckedProtocol):
        def __init__(self, quic: Any, *args: Any, datagrams: bool, **kwargs: Any) -> None:
            super().__init__(quic, *args, **kwargs)
            self.h3 = ConnectIpH3Connection(quic, enable_datagrams=datagrams)
            self.streams: dict[int, StreamReport] = {}
            self.parsers: dict[int, CapsuleParser | None] = {}
            self.conn = ConnectionReport()

        def quic_event_received(self, event: Any) -> None:
            now = time.monotonic()
            if isinstance(event, ConnectionTerminated):
                self.conn.closed = True
                self.conn.error_code = event.error_code
                self.conn.reason = event.reason_phrase
                self.conn.closed_at = now
            elif isinstance(event, StreamReset) and event.stream_id in self.streams:
                report = self.streams[event.stream_id]
                report.reset_code = event.error_code
                report.ended_at = report.ended_at or now
            elif isinstance(event, StopSendingReceived) and event.stream_id in self.streams:
                self.streams[event.stream_id].stop_sending_code = event.error_code
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event, now)

        def _h3_event(self, event: Any, now: float) -> None:
            if isinstance(event, DatagramReceived):
                report = self.streams.get(event.stream_id)
                if report is None:
                    self.conn.datagrams_unknown_stream.append((event.stream_id, event.data))
                else:
                    report.datagrams.append(bytes(event.data))
                return
            report = self.streams.get(event.stream_id)
            if report is None:
                return
            if isinstance(event, HeadersReceived):
                if report.status is None:
                    status = dict(event.headers).get(b":status", b"0")
                    report.status = int(status) if status.isdigit() else 0
                    report.headers = list(event.headers)
                    report.response_at = now
            elif isinstance(event, DataReceived):
                report.data += event.data
                parser = self.parsers.get(event.stream_id)
                if parser is not None and report.capsule_error is None:
                    try:
                        report.capsules.extend(parser.feed(event.data))
                    except CapsuleError as error:
                        report.capsule_error = f"{error} [rule {error.rule}]"
            if getattr(event, "stream_ended", False):
                report.fin = True
                report.ended_at = report.ended_at or now

    return ProbeProtocol


class _ProbeServer:
    """Command handlers; every public coroutine is callable from the test side."""

    def __init__(self) -> None:
        self.connections: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()

    async def aclose(self) -> None:
        for protocol in self.connections.values():
            protocol.close()
        await self._stack.aclose()

    def _protocol(self, conn: str) -> Any:
        try:
            return self.connections[conn]
        except KeyError:
            raise ProbeError(f"no connection named {conn!r}") from None

    async def connect(
        self,
        conn: str,
        host: str,
        port: int,
        pin: str,
        datagrams: bool = True,
        timeout: float = 10.0,
    ) -> ConnectionReport:
        from aioquic.asyncio.client import connect
        from aioquic.h3.connection import H3_ALPN
        from aioquic.quic.configuration import QuicConfiguration

        from client.tls import TlsPolicy

        policy = TlsPolicy(pin_sha256=pin)
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            max_datagram_size=1452,
            idle_timeout=30.0,
            server_name="relay",
        )
        if datagrams:
            configuration.max_datagram_frame_size = 65536
        policy.apply(configuration)
        protocol_class: Any = _probe_protocol_class()
        create = functools.partial(protocol_class, tls_policy=policy, datagrams=datagrams)
        protocol: Any = await asyncio.wait_for(
            self._stack.enter_async_context(
                connect(host, port, configuration=configuration, create_protocol=create)
            ),
            timeout,
        )
        protocol.conn.connected = True
        self.connections[conn] = protocol
        report: ConnectionReport = replace(protocol.conn)
        return report

    async def open(
        self, conn: str, headers: Headers, end_stream: bool = False, capsules: bool = True
    ) -> int:
        from masque.capsule import CapsuleParser

        protocol = self._protocol(conn)
        stream_id = protocol._quic.get_next_available_stream_id()
        protocol.streams[stream_id] = StreamReport(stream_id, opened_at=time.monotonic())
        protocol.parsers[stream_id] = CapsuleParser() if capsules else None
        protocol.h3.send_headers(stream_id, headers, end_stream=end_stream)
        protocol.transmit()
        return int(stream_id)

    async def send(self, conn: str, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        protocol = self._protocol(conn)
        protocol.h3.send_data(stream_id, data, end_stream=end_stream)
        protocol.transmit()

    async def reset(self, conn: str, stream_id: int, error_code: int = 0x10C) -> None:
        """Abort both directions of a stream (RESET_STREAM + STOP_SENDING)."""
        protocol = self._protocol(conn)
        protocol._quic.reset_stream(stream_id, error_code)
        protocol._quic.stop_stream(stream_id, error_code)
        protocol.transmit()

    async def headers(
        self, conn: str, stream_id: int, headers: Headers, end_stream: bool = False
    ) -> None:
        """Another HEADERS frame on an open stream (trailers, or a repeated request)."""
        protocol = self._protocol(conn)
        protocol.h3.send_headers(stream_id, headers, end_stream=end_stream)
        protocol.transmit()

    async def datagram(self, conn: str, stream_id: int, payload: bytes) -> None:
        """Send an HTTP Datagram: quarter stream ID, then ``payload`` (context ID included)."""
        protocol = self._protocol(conn)
        protocol.h3.send_datagram(stream_id, payload)
        protocol.transmit()

    async def wait(
        self,
        conn: str,
        stream_id: int,
        status: bool = False,
        capsules: int = 0,
        data_bytes: int = 0,
        datagrams: int = 0,
        ended: bool = False,
        timeout: float = 5.0,
        must: bool = True,
    ) -> StreamReport:
        protocol = self._protocol(conn)
        report: StreamReport = protocol.streams[stream_id]

        def met() -> bool:
            return (
                (not status or report.status is not None)
                and len(report.capsules) >= capsules
                and len(report.data) >= data_bytes
                and len(report.datagrams) >= datagrams
                and (not ended or report.ended)
            )

        ok = await _poll(met, timeout, lambda: protocol.conn.closed and not met())
        snapshot = replace(
            report,
            headers=list(report.headers),
            capsules=list(report.capsules),
            datagrams=list(report.datagrams),
            met=ok,
        )
        if must and not ok:
            wanted = dict(
                status=status, capsules=capsules, data_bytes=data_bytes, datagrams=datagrams
            )
            raise ProbeError(
                f"stream {stream_id}: wait {wanted} ended={ended} not met within {timeout} s; "
                f"saw {snapshot!r}; connection {protocol.conn!r}"
            )
        return snapshot

    async def wait_closed(
        self, conn: str, timeout: float = 5.0, must: bool = True
    ) -> ConnectionReport:
        protocol = self._protocol(conn)
        ok = await _poll(lambda: protocol.conn.closed, timeout)
        if must and not ok:
            raise ProbeError(f"connection {conn} still open after {timeout} s")
        report: ConnectionReport = replace(protocol.conn, met=ok)
        return report

    async def connection(self, conn: str) -> ConnectionReport:
        report: ConnectionReport = replace(self._protocol(conn).conn)
        return report

    async def close(self, conn: str) -> None:
        protocol = self.connections.pop(conn)
        protocol.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(protocol.wait_closed(), 2.0)


async def _poll(
    predicate: Callable[[], bool],
    timeout: float,
    give_up: Callable[[], bool] | None = None,
) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline or (give_up is not None and give_up()):
            return predicate()
        await asyncio.sleep(0.01)
    return True


def serve(address: str, authkey: bytes) -> int:
    """Serve probe commands on the Unix socket ``address`` until told to stop.

    Runs inside the namespace (through ``run_in_netns``); returns how many
    commands it served.
    """
    return asyncio.run(_serve(address, authkey))


async def _serve(address: str, authkey: bytes) -> int:
    loop = asyncio.get_running_loop()
    server = _ProbeServer()
    listener = Listener(address, family="AF_UNIX", authkey=authkey)
    done = asyncio.Event()
    served = 0

    def pump() -> None:
        nonlocal served
        try:
            channel = listener.accept()
        finally:
            listener.close()
        with channel:
            while True:
                try:
                    method, kwargs = channel.recv()
                except EOFError:
                    break
                if method == "shutdown":
                    channel.send(("ok", None))
                    break
                served += 1
                future = asyncio.run_coroutine_threadsafe(
                    getattr(server, method)(**kwargs),
                    loop,
                )
                try:
                    channel.send(("ok", future.result()))
                except BaseException as exc:
                    text = "".join(traceback.format_exception(exc))
                    channel.send(("error", f"{type(exc).__name__}: {exc}\n{text}"))
        loop.call_soon_threadsafe(done.set)

    thread = threading.Thread(target=pump, name="probe-pump", daemon=True)
    thread.start()
    try:
        await done.wait()
    finally:
        await server.aclose()
    return served


# -- the test side ----------------------------------------------------------------------


class Probe:
    """Handle on a probe serving in a namespace; use :meth:`start` as a context manager."""

    def __init__(self, channel: Connection, done: Future[int]) -> None:
        self._channel = channel
        self._done = done
        self._names = 0

    @classmethod
    @contextlib.contextmanager
    def start(cls, netns: str, workdir: Path, timeout: float = 15.0) -> Iterator[Probe]:
        from tests.nsexec import run_in_netns

        address = str(workdir / f"probe-{secrets.token_hex(4)}.sock")
        authkey = secrets.token_bytes(16)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe")
        done = pool.submit(run_in_netns, netns, serve, address, authkey)
        channel: Connection | None = None
        try:
            deadline = time.monotonic() + timeout
            while channel is None:
                if done.done():
                    done.result()  # raises what went wrong in the namespace
                    raise ProbeError("the probe exited before accepting a connection")
                if os.path.exists(address):
                    with contextlib.suppress(ConnectionRefusedError, FileNotFoundError):
                        channel = Client(address, family="AF_UNIX", authkey=authkey)
                        break
                if time.monotonic() > deadline:
                    raise ProbeError(f"the probe did not listen on {address} in {timeout} s")
                time.sleep(0.02)
            probe = cls(channel, done)
            yield probe
            probe._call("shutdown")
            done.result(timeout=timeout)
        finally:
            if channel is not None:
                channel.close()
            pool.shutdown(wait=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)

    def _call(self, method: str, **kwargs: Any) -> Any:
        self._channel.send((method, kwargs))
        status, value = self._channel.recv()
        if status == "error":
            raise ProbeError(f"probe {method}({kwargs}) failed in the namespace:\n{value}")
        return value

    def connect(
        self,
        host: str,
        port: int,
        *,
        pin: str,
        datagrams: bool = True,
        name: str | None = None,
    ) -> ProbeConnection:
        """Open a QUIC + HTTP/3 connection to the relay (certificate pinned to ``pin``)."""
        if name is None:
            self._names += 1
            name = f"c{self._names}"
        self._call("connect", conn=name, host=host, port=port, pin=pin, datagrams=datagrams)
        return ProbeConnection(self, name)


@dataclass
class ProbeConnection:
    probe: Probe
    name: str

    def open(
        self, headers: Headers, *, end_stream: bool = False, capsules: bool = True
    ) -> ProbeStream:
        """Send a request's HEADERS on a new stream (nothing is checked or added)."""
        stream_id = self.probe._call(
            "open", conn=self.name, headers=headers, end_stream=end_stream, capsules=capsules
        )
        return ProbeStream(self, stream_id)

    def stream(self, stream_id: int) -> ProbeStream:
        """A handle for a stream ID the probe never opened (for stray datagrams)."""
        return ProbeStream(self, stream_id)

    def wait_closed(self, timeout: float = 5.0, *, must: bool = True) -> ConnectionReport:
        report: ConnectionReport = self.probe._call(
            "wait_closed", conn=self.name, timeout=timeout, must=must
        )
        return report

    def report(self) -> ConnectionReport:
        report: ConnectionReport = self.probe._call("connection", conn=self.name)
        return report

    def close(self) -> None:
        self.probe._call("close", conn=self.name)


@dataclass
class ProbeStream:
    conn: ProbeConnection
    stream_id: int

    def send(self, data: bytes, *, end_stream: bool = False) -> None:
        self.conn.probe._call(
            "send", conn=self.conn.name, stream_id=self.stream_id, data=data, end_stream=end_stream
        )

    def reset(self, error_code: int = 0x10C) -> None:
        """RESET_STREAM and STOP_SENDING for this stream (H3_REQUEST_CANCELLED)."""
        self.conn.probe._call(
            "reset", conn=self.conn.name, stream_id=self.stream_id, error_code=error_code
        )

    def headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        """A further HEADERS frame on this stream."""
        self.conn.probe._call(
            "headers",
            conn=self.conn.name,
            stream_id=self.stream_id,
            headers=headers,
            end_stream=end_stream,
        )

    def datagram(self, payload: bytes) -> None:
        """An HTTP Datagram for this stream; ``payload`` starts with the context ID."""
        self.conn.probe._call(
            "datagram", conn=self.conn.name, stream_id=self.stream_id, payload=payload
        )

    def wait(
        self,
        *,
        status: bool = False,
        capsules: int = 0,
        data_bytes: int = 0,
        datagrams: int = 0,
        ended: bool = False,
        timeout: float = 5.0,
        must: bool = True,
    ) -> StreamReport:
        report: StreamReport = self.conn.probe._call(
            "wait",
            conn=self.conn.name,
            stream_id=self.stream_id,
            status=status,
            capsules=capsules,
            data_bytes=data_bytes,
            datagrams=datagrams,
            ended=ended,
            timeout=timeout,
            must=must,
        )
        return report

    def report(self) -> StreamReport:
        return self.wait(timeout=0.0, must=False)
