"""A small, typed rtnetlink API: links, addresses, routes and ``route get``.

:class:`Netlink` wraps one pyroute2 ``IPRoute`` socket. pyroute2 (0.9) drives its
socket with an asyncio event loop of its own, so the synchronous ``IPRoute``
cannot be used from a thread whose asyncio loop is running (``RuntimeError: This
event loop is already running``). :class:`Netlink` therefore owns a private worker
thread and runs every request there: its methods block for the (sub-millisecond)
kernel round trip and work the same from plain code, from a coroutine of a running
loop and from a signal handler. Coroutines that would rather not block the loop at
all wrap a whole operation in ``asyncio.to_thread``.

Kernel errors are raised as :class:`OSError` carrying the kernel's ``errno``;
callers never see pyroute2's types. "Already there" and "already gone" are not
errors for the mutating methods: they return ``False`` instead, so that setup and
cleanup code can be idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = [
    "IFA_F_NODAD",
    "RTN_LOCAL",
    "RTN_UNICAST",
    "RTPROT_STATIC",
    "RT_SCOPE_LINK",
    "RT_SCOPE_UNIVERSE",
    "RT_TABLE_MAIN",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "LinkInfo",
    "Netlink",
    "Route",
    "RouteLookup",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# <linux/rtnetlink.h>, <linux/if_addr.h>
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # "static": added by an administrator or a daemon (not kernel, not boot)
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RTN_LOCAL = 2
IFA_F_NODAD = 0x02
IFF_UP = 0x1

# Errors meaning "what you want to remove is not there (any more)".
_GONE = frozenset({errno.ESRCH, errno.ENODEV, errno.ENOENT, errno.EADDRNOTAVAIL})

T = TypeVar("T")


@dataclass(frozen=True)
class LinkInfo:
    """The state of one network interface."""

    index: int
    name: str
    mtu: int
    up: bool  # administratively up (IFF_UP)
    flags: int  # IFF_* flags as the kernel reports them


@dataclass(frozen=True)
class Route:
    """A single-nexthop route, as added, deleted and listed by :class:`Netlink`.

    ``oif`` and/or ``gateway`` give the next hop. ``metric`` None lets the kernel
    choose (0 for IPv4, 1024 for IPv6); on delete, None matches any metric.
    ``proto`` marks who installed the route; deletes match it too, so a route that
    somebody else installed with another protocol is never removed by mistake.
    """

    dst: IPNetwork
    oif: int | None = None
    gateway: IPAddress | None = None
    table: int = RT_TABLE_MAIN
    metric: int | None = None
    proto: int = RTPROT_STATIC

    def __post_init__(self) -> None:
        if self.oif is None and self.gateway is None:
            raise ValueError(f"route to {self.dst} needs an output interface or a gateway")
        if self.gateway is not None and self.gateway.version != self.dst.version:
            raise ValueError(f"gateway {self.gateway} is not of the family of {self.dst}")

    @property
    def family(self) -> int:
        return socket.AF_INET if self.dst.version == 4 else socket.AF_INET6

    def _request(self) -> dict[str, Any]:
        request: dict[str, Any] = {
            "family": self.family,
            "dst": str(self.dst.network_address),
            "dst_len": self.dst.prefixlen,
            "table": self.table,
            "proto": self.proto,
            "type": RTN_UNICAST,
            # iproute2's convention: a route without a gateway is on-link.
            "scope": RT_SCOPE_UNIVERSE
            if self.gateway is not None or self.dst.version == 6
            else RT_SCOPE_LINK,
        }
        if self.oif is not None:
            request["oif"] = self.oif
        if self.gateway is not None:
            request["gateway"] = str(self.gateway)
        if self.metric is not None:
            request["priority"] = self.metric
        return request

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway is not None else ""
        dev = f" oif {self.oif}" if self.oif is not None else ""
        metric = f" metric {self.metric}" if self.metric is not None else ""
        return f"{self.dst}{via}{dev} table {self.table}{metric} proto {self.proto}"


@dataclass(frozen=True)
class RouteLookup:
    """What the kernel would do with a packet to ``dst`` (``ip route get``)."""

    dst: IPAddress
    type: int  # RTN_UNICAST, RTN_LOCAL, ...
    table: int
    oif: int | None
    gateway: IPAddress | None
    prefsrc: IPAddress | None


# <linux/neighbour.h> NUD states of an entry without a usable link-layer address.
_NUD_INCOMPLETE = 0x01
_NUD_FAILED = 0x20


def _gone(exc: OSError) -> bool:
    return exc.errno in _GONE


class Netlink:
    """One rtnetlink socket in the caller's network namespace; use as a context manager.

    Requests run one at a time on a private worker thread (see the module
    docstring), so one instance may be shared by several threads. Creating one is
    cheap (a thread and a socket, opened on first use); long-lived owners keep one,
    cleanup paths (signal handlers included) may simply open a fresh one.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netio-netlink")
        self._ipr: Any = None  # created and used on the worker thread only
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket and stop the worker thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._executor.submit(self._close_socket).result()
        finally:
            self._executor.shutdown(wait=True)

    def _close_socket(self) -> None:
        if self._ipr is not None:
            ipr, self._ipr = self._ipr, None
            ipr.close()

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        if self._closed:
            raise RuntimeError("Netlink socket is closed")
        return self._executor.submit(self._run, what, fn).result()

    def _run(self, what: str, fn: Callable[[Any], T]) -> T:
        if self._ipr is None:
            self._ipr = IPRoute()
        try:
            return fn(self._ipr)
        except NetlinkError as exc:
            raise OSError(exc.code, f"{what}: {os.strerror(exc.code)}") from None

    # -- links ----------------------------------------------------------------

    def link_index(self, name: str) -> int:
        """Index of interface ``name``; OSError(ENODEV) if there is none."""
        msg = self._call(f"look up interface {name}", lambda ipr: ipr.link("get", ifname=name)[0])
        return int(msg["index"])

    def link(self, index: int) -> LinkInfo:
        """The current state of interface ``index``."""
        msg = self._call(f"get interface {index}", lambda ipr: ipr.link("get", index=index)[0])
        flags = int(msg["flags"])
        return LinkInfo(
            index=int(msg["index"]),
            name=str(msg.get("ifname")),
            mtu=int(msg.get("mtu")),
            up=bool(flags & IFF_UP),
            flags=flags,
        )

    def set_link(self, index: int, *, up: bool | None = None, mtu: int | None = None) -> None:
        """Set the MTU and/or the administrative state of interface ``index``."""
        request: dict[str, Any] = {"index": index}
        if mtu is not None:
            request["mtu"] = mtu
        if up is not None:
            request["state"] = "up" if up else "down"
        if len(request) > 1:
            self._call(f"configure interface {index}", lambda ipr: ipr.link("set", **request))

    # -- addresses --------------------------------------------------------------

    def add_address(self, index: int, address: IPInterface, *, nodad: bool = True) -> bool:
        """Add ``address`` (with its prefix length) to interface ``index``.

        IPv6 addresses get IFA_F_NODAD unless ``nodad`` is False: usable at once
        instead of after duplicate address detection. Returns False if the
        address was already there.
        """
        request: dict[str, Any] = {
            "index": index,
            "address": str(address.ip),
            "prefixlen": address.network.prefixlen,
        }
        if address.version == 6 and nodad:
            request["flags"] = IFA_F_NODAD
        try:
            self._call(f"add address {address}", lambda ipr: ipr.addr("add", **request))
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        return True

    def delete_address(self, index: int, address: IPInterface) -> bool:
        """Remove ``address`` from interface ``index``; False if it (or the link) is gone."""
        request = {
            "index": index,
            "address": str(address.ip),
            "prefixlen": address.network.prefixlen,
        }
        try:
            self._call(f"delete address {address}", lambda ipr: ipr.addr("del", **request))
        except OSError as exc:
            if _gone(exc):
                return False
            raise
        return True

    def addresses(self, index: int) -> list[IPInterface]:
        """The addresses on interface ``index`` (link-local ones included)."""
        msgs = self._call(f"list addresses of {index}", lambda ipr: list(ipr.addr("dump")))
        return [
            ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
            for msg in msgs
            if msg["index"] == index and msg.get("address") is not None
        ]

    # -- routes -----------------------------------------------------------------

    def add_route(self, route: Route) -> bool:
        """Add ``route`` (never replacing another); False if the kernel has it already.

        "Already" is the kernel's notion (EEXIST): for IPv4 a route with the same
        destination, table, TOS and metric, whatever its next hop.
        """
        request = route._request()
        try:
            self._call(f"add route {route}", lambda ipr: ipr.route("add", **request))
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        return True

    def delete_route(self, route: Route) -> bool:
        """Delete ``route``; False if it is gone (e.g. its interface was removed)."""
        request = route._request()
        try:
            self._call(f"delete route {route}", lambda ipr: ipr.route("del", **request))
        except OSError as exc:
            if _gone(exc):
                return False
            raise
        return True

    def routes(self, version: int, *, table: int = RT_TABLE_MAIN) -> list[Route]:
        """The single-nexthop unicast routes of one family in ``table``."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        msgs = self._call(
            f"list IPv{version} routes", lambda ipr: list(ipr.route("dump", family=family))
        )
        routes = []
        for msg in msgs:
            msg_table = msg.get("table") or msg["table"]
            if msg_table != table or msg["type"] != RTN_UNICAST or msg.get("multipath"):
                continue
            dst = msg.get("dst") or ("0.0.0.0" if version == 4 else "::")
            gateway = msg.get("gateway")
            routes.append(
                Route(
                    dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}"),
                    oif=msg.get("oif"),
                    gateway=ipaddress.ip_address(gateway) if gateway else None,
                    table=msg_table,
                    metric=msg.get("priority"),
                    proto=msg["proto"],
                )
            )
        return routes

    def neighbour(self, index: int, address: IPAddress) -> bytes | None:
        """The link-layer address of ``address`` on interface ``index`` (``ip neigh``).

        None when the kernel has no usable entry (none, INCOMPLETE or FAILED).
        """

        def lookup(ipr: Any) -> bytes | None:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            for msg in ipr.get_neighbours(family=family, ifindex=index, dst=str(address)):
                if msg["state"] & (_NUD_INCOMPLETE | _NUD_FAILED):
                    continue
                lladdr = msg.get("NDA_LLADDR")
                if lladdr:
                    return bytes.fromhex(str(lladdr).replace(":", ""))
            return None

        return self._call(f"look up neighbour {address}", lookup)

    def route_get(self, dst: IPAddress) -> RouteLookup:
        """Ask the kernel how it would route a packet to ``dst`` (``ip route get``).

        Raises OSError (ENETUNREACH, EHOSTUNREACH, ...) when there is no route.
        """
        msg = self._call(f"look up route to {dst}", lambda ipr: ipr.route("get", dst=str(dst))[0])
        gateway = msg.get("gateway")
        prefsrc = msg.get("prefsrc")
        return RouteLookup(
            dst=dst,
            type=int(msg["type"]),
            table=int(msg.get("table") or msg["table"]),
            oif=msg.get("oif"),
            gateway=ipaddress.ip_address(gateway) if gateway else None,
            prefsrc=ipaddress.ip_address(prefsrc) if prefsrc else None,
        )
