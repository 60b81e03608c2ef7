"""A layer-3 TUN device with a batch-shaped, non-blocking I/O API.

:meth:`TunDevice.open` creates (or attaches to) a TUN interface with
``IFF_TUN | IFF_NO_PI``: every ``read()`` returns one bare IPv4/IPv6 packet and
every ``write()`` injects one, the IP version taken from the first nibble. The
file descriptor is non-blocking; an asyncio caller registers :meth:`fileno` with
``loop.add_reader`` and drains with :meth:`read_batch` until it returns ``[]``.

Offloads: without ``IFF_VNET_HDR`` the reader cannot learn that a packet still
needs its checksum finished or is a GSO super-packet, so the device must not
claim any offload. A *persistent* TUN keeps the offloads a previous owner
enabled, hence :meth:`open` always calls ``TUNSETOFFLOAD(0)``. (The compiled
fast path's :class:`_fastpath.Tun` does ask for them: see ``compiled`` below.)

Compiled I/O: ``open(..., compiled=True)`` opens the device through
``_fastpath.Tun`` with ``IFF_VNET_HDR`` and TSO/USO offloads (probed, with a
quiet fallback to plain): one read may then return a 64 KB super-segment that C
splits to the MTU, and writes may coalesce TCP segments (GRO). The netlink
configuration below is the same either way; :attr:`compiled` exposes the C
object for batch I/O into a ``PacketBatch``, :attr:`mode` says what was
negotiated.

Lifetime: a device created by :meth:`open` exists as long as its file
descriptor, so :meth:`close` (or the process dying) removes it together with its
addresses and routes. A pre-existing *persistent* device (``ip tuntap add``) is
attached to instead and outlives us: :meth:`close` then removes the addresses and
routes this object added and leaves the device.

Configuration goes through rtnetlink (:class:`netio.netlink.Netlink`), never
``ip`` subprocesses, in the network namespace of the calling process.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _fastpath import Tun as CompiledTun

from netio.netlink import IPInterface, IPNetwork, Netlink, Route
from netio.sysctl import read_sysctl, write_sysctl

__all__ = ["IPV6_MIN_MTU", "TunDevice"]

_log = logging.getLogger(__name__)

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETPERSIST = 0x400454CB  # _IOW('T', 203, int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_PERSIST = 0x0800  # reported by TUNGETIFF

IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, union padding (40 bytes)

IPV6_MIN_MTU = 1280  # RFC 8200 §5: below this the kernel removes IPv6 from the device
MIN_MTU = 68  # RFC 791
MAX_MTU = 65535
_READ_SIZE = 65536  # larger than any packet the device can hold (MTU <= 65535)


class TunDevice:
    """An open TUN interface: a non-blocking fd plus its netlink configuration.

    Create with :meth:`open`; use as a context manager or call :meth:`close`.
    Not thread-safe: one owner reads and writes.
    """

    def __init__(
        self,
        fd: int,
        name: str,
        index: int,
        mtu: int,
        *,
        created: bool,
        compiled: CompiledTun | None = None,
    ) -> None:
        """Wrap an already configured fd; use :meth:`open` instead."""
        self._fd = fd
        self._compiled = compiled  # owns ``fd`` when set
        self._name = name
        self._index = index
        self._mtu = mtu
        self._created = created  # False: attached to a pre-existing persistent device
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        self._addresses: list[IPInterface] = []
        self._routes: list[Route] = []
        self.write_drops = 0
        """Packets :meth:`write_batch` could not write (and dropped) since open."""

    @classmethod
    def open(
        cls, name: str = "mqtun%d", *, mtu: int, up: bool = True, compiled: bool = False
    ) -> TunDevice:
        """Open (creating if needed) TUN interface ``name`` and set its MTU.

        ``name`` may be a kernel template such as ``"tun%d"``; :attr:`name` holds the
        result. IPv6 duplicate address detection is switched off on the device (a
        point-to-point tunnel has no neighbours to collide with), offloads are
        switched off (see the module docstring) and the interface is brought up
        unless ``up`` is False. ``compiled``: open through ``_fastpath.Tun`` with
        vnet_hdr offloads (ImportError when the extension is missing). Raises
        OSError (EPERM without CAP_NET_ADMIN, EBUSY if another process holds a
        single-queue device of that name).
        """
        encoded = name.encode()
        if not encoded or len(encoded) >= IFNAMSIZ or "/" in name or name.strip() != name:
            raise ValueError(f"invalid interface name: {name!r}")
        _check_mtu(mtu)
        compiled_tun: CompiledTun | None = None
        if compiled:
            from _fastpath import Tun

            compiled_tun = Tun(name, vnet_hdr=True)
            fd = compiled_tun.fileno()
        else:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if compiled_tun is not None:
                actual = compiled_tun.name
            else:
                result = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, IFF_TUN | IFF_NO_PI))
                actual = _IFREQ.unpack(result)[0].rstrip(b"\0").decode()
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
            flags = _IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, _IFREQ.pack(b"", 0)))[1]
            created = not flags & IFF_PERSIST
            _disable_dad(actual)
            with Netlink() as nl:
                index = nl.link_index(actual)
                nl.set_link(index, mtu=mtu, up=up or None)
        except BaseException:
            if compiled_tun is not None:
                compiled_tun.close()
            else:
                os.close(fd)
            raise
        _log.info(
            "TUN %s (index %d) open, MTU %d, I/O %s%s",
            actual,
            index,
            mtu,
            compiled_tun.mode if compiled_tun is not None else "python",
            "" if created else ", persistent device attached",
        )
        return cls(fd, actual, index, mtu, created=created, compiled=compiled_tun)

    # -- identity ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The interface name the kernel gave the device."""
        return self._name

    @property
    def index(self) -> int:
        """The interface index (for routes and netlink requests)."""
        return self._index

    @property
    def mtu(self) -> int:
        """The MTU set through this object."""
        return self._mtu

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def compiled(self) -> CompiledTun | None:
        """The ``_fastpath.Tun`` doing this device's I/O, or None (Python I/O)."""
        return self._compiled

    @property
    def mode(self) -> str:
        """``"python"``, or the compiled device's negotiated mode (e.g. ``vnet_hdr+tso4...``)."""
        return self._compiled.mode if self._compiled is not None else "python"

    def fileno(self) -> int:
        """The non-blocking TUN file descriptor (for ``add_reader``/``select``)."""
        if self._fd < 0:
            raise ValueError("TUN device is closed")
        return self._fd

    # -- packets ----------------------------------------------------------------

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Read up to ``max_packets`` packets; stop early when none is waiting.

        Returns ``[]`` when nothing is queued. Raises OSError for anything other
        than "would block" (e.g. EBADFD once the device has been removed).
        """
        fd = self.fileno()
        if self._compiled is not None:
            return self._compiled.read_packets(max_packets, self._mtu)
        view = self._view
        packets: list[bytes] = []
        for _ in range(max_packets):
            try:
                n = os.readv(fd, (self._buffer,))
            except BlockingIOError:
                break
            packets.append(bytes(view[:n]))
        return packets

    def write_batch(self, packets: Iterable[bytes | bytearray | memoryview]) -> int:
        """Write each packet; return how many were written.

        A packet the kernel refuses (not IPv4/IPv6, truncated, device down, queue
        full...) is dropped and counted in :attr:`write_drops`; the rest of the
        batch is still written.
        """
        fd = self.fileno()
        if self._compiled is not None:
            batch = list(packets)
            written = self._compiled.write_packets(batch)
            self.write_drops += len(batch) - written
            return written
        written = 0
        for packet in packets:
            try:
                os.write(fd, packet)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise
                self.write_drops += 1
            else:
                written += 1
        return written

    # -- configuration ----------------------------------------------------------

    def set_mtu(self, mtu: int) -> None:
        """Change the MTU (at least 1280 once an IPv6 address is configured)."""
        _check_mtu(mtu)
        if mtu < IPV6_MIN_MTU and any(a.version == 6 for a in self._addresses):
            raise ValueError(f"MTU {mtu} < {IPV6_MIN_MTU} would remove IPv6 from {self._name}")
        with Netlink() as nl:
            nl.set_link(self._index, mtu=mtu)
        self._mtu = mtu

    def accept_local_source(self) -> None:
        """Let packets written here carry one of this host's own addresses as source.

        Whoever answers on the tunnel's behalf (the relay's ICMP Fragmentation
        Needed, the client's administratively-prohibited errors) writes an ICMP
        error from a local address into the TUN; IPv4 drops such a packet as a
        martian unless ``accept_local`` is on for the device. (IPv6 has no such
        check.) The setting goes away with the device.
        """
        write_sysctl(f"net/ipv4/conf/{self.name}/accept_local", 1)

    def add_address(self, address: IPInterface) -> None:
        """Add ``address`` (e.g. ``IPv4Interface("10.100.0.1/24")``) to the device.

        The prefix length decides the connected route the kernel adds (none for
        /32 and /128). IPv6 addresses are added with IFA_F_NODAD and need an MTU of
        at least 1280 (the kernel removes IPv6 from smaller-MTU devices).
        """
        self._check_open()
        if address.version == 6 and self._mtu < IPV6_MIN_MTU:
            raise ValueError(
                f"IPv6 needs an MTU of at least {IPV6_MIN_MTU}; {self._name} has {self._mtu}"
            )
        with Netlink() as nl:
            added = nl.add_address(self._index, address)
        if added:
            self._addresses.append(address)

    def add_route(self, prefix: IPNetwork, *, metric: int | None = None) -> None:
        """Route ``prefix`` through the device (main table); kept until :meth:`close`.

        Raises OSError(EEXIST) if the main table already has a route to ``prefix``
        with that metric: that route is somebody else's.
        """
        self._check_open()
        route = Route(dst=prefix, oif=self._index, metric=metric)
        with Netlink() as nl:
            if not nl.add_route(route):
                raise OSError(errno.EEXIST, f"a route to {prefix} exists already")
        self._routes.append(route)

    @property
    def addresses(self) -> tuple[IPInterface, ...]:
        """The addresses added through this object."""
        return tuple(self._addresses)

    @property
    def routes(self) -> tuple[Route, ...]:
        """The routes added through this object."""
        return tuple(self._routes)

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Close the device; idempotent.

        A device this object created disappears with its fd, addresses and routes
        included. On an attached persistent device the routes and addresses added
        here are removed first (best effort) and the device is left in place.
        """
        if self._fd < 0:
            return
        try:
            if not self._created and (self._routes or self._addresses):
                self._unconfigure()
        finally:
            fd, self._fd = self._fd, -1
            if self._compiled is not None:
                self._compiled.close()
            else:
                os.close(fd)
            self._routes.clear()
            self._addresses.clear()
            _log.info("TUN %s closed", self._name)

    def _unconfigure(self) -> None:
        try:
            with Netlink() as nl:
                for route in reversed(self._routes):
                    nl.delete_route(route)
                for address in reversed(self._addresses):
                    nl.delete_address(self._index, address)
        except OSError as exc:
            _log.warning("cannot unconfigure persistent TUN %s: %s", self._name, exc)

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError("TUN device is closed")

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<TunDevice {self._name} index={self._index} mtu={self._mtu} {state}>"


def _check_mtu(mtu: int) -> None:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU {mtu} outside {MIN_MTU}..{MAX_MTU}")


def _disable_dad(name: str) -> None:
    """No duplicate address detection on the tunnel: addresses usable at once.

    (TUN devices are IFF_NOARP, which makes the kernel skip DAD already; the
    sysctl makes that explicit and also covers addresses added without NODAD.)
    Missing when IPv6 is disabled on the host: then there is nothing to do.
    """
    path = f"net/ipv6/conf/{name}/accept_dad"
    try:
        if read_sysctl(path) != "0":
            write_sysctl(path, 0)
    except FileNotFoundError:
        _log.debug("no IPv6 on %s: accept_dad not set", name)
