"""Routes through the client's tunnel device, added and removed exactly.

:class:`RouteManager` installs routes via the TUN in one of three ways:

(a) the routes the relay advertised (ROUTE_ADVERTISEMENT), kept current with
    :meth:`RouteManager.replace_routes` since every advertisement carries the
    complete set (RFC 9484 §4.7.3);
(b) prefixes the operator asked for, with :meth:`RouteManager.add_routes`;
(c) a full tunnel, :meth:`RouteManager.full_tunnel`: ``0.0.0.0/1`` and
    ``128.0.0.0/1`` (and ``::/1``, ``8000::/1``). Two halves are more specific
    than the default route, so they win without deleting it, and the original
    default route is untouched when they go.

The tunnel must never route itself: before the first route that covers one of
the relay's addresses is added, that address gets a host route (/32, /128)
through the path the kernel uses for it right now (``ip route get``: gateway and
interface). A host route somebody else installed already is used and left alone.

Everything added is remembered and :meth:`RouteManager.restore` removes exactly
that, newest first: idempotent, tolerant of routes already gone (the TUN vanished
and took its routes with it) and safe to call from a signal handler or an
``atexit`` hook -- each call opens its own netlink socket (see
:class:`netio.netlink.Netlink` on asyncio). Use the manager as a context manager
to restore on every exit path.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
from collections.abc import Iterable
from types import TracebackType

from netio.netlink import RT_TABLE_MAIN, RTN_LOCAL, IPAddress, IPNetwork, Netlink, Route

__all__ = ["FULL_TUNNEL_IPV4", "FULL_TUNNEL_IPV6", "RouteError", "RouteManager"]

_log = logging.getLogger(__name__)

FULL_TUNNEL_IPV4 = (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1"))
FULL_TUNNEL_IPV6 = (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1"))


class RouteError(OSError):
    """A route cannot be installed without breaking something (conflict, loop)."""


class RouteManager:
    """Routes through one tunnel device, plus host routes that keep the relay reachable.

    ``device``: the TUN's name or index. ``relay_addresses``: the addresses the
    client talks to the relay on (the QUIC peer; several if it may switch).
    ``table``/``metric``: where the tunnel routes go (main table, kernel's default
    metric). Not thread-safe; :meth:`restore` may interrupt the other methods.
    """

    def __init__(
        self,
        device: str | int,
        *,
        relay_addresses: Iterable[IPAddress] = (),
        table: int = RT_TABLE_MAIN,
        metric: int | None = None,
    ) -> None:
        self._device = device
        self._index: int | None = device if isinstance(device, int) else None
        self.relay_addresses: tuple[IPAddress, ...] = tuple(relay_addresses)
        self.table = table
        self.metric = metric
        self._routes: list[Route] = []  # tunnel routes we added, oldest first
        self._pins: list[Route] = []  # host routes to the relay we added
        self._pinned: set[IPAddress] = set()  # relay addresses known to be safe

    # -- installing -----------------------------------------------------------------

    def add_routes(self, prefixes: Iterable[IPNetwork]) -> None:
        """Route each prefix through the tunnel (modes a and b).

        Prefixes already routed by this manager are skipped. Raises
        :class:`RouteError` (EEXIST) when the table already holds somebody else's
        route to a prefix with the same metric; routes added before the error stay
        recorded, so :meth:`restore` removes them.
        """
        wanted = [p for p in _unique(prefixes) if p not in {r.dst for r in self._routes}]
        if not wanted:
            return
        with Netlink() as nl:
            index = self._device_index(nl)
            for prefix in wanted:
                for address in self.relay_addresses:
                    if address.version == prefix.version and address in prefix:
                        self._pin(nl, address, index)
                route = Route(dst=prefix, oif=index, table=self.table, metric=self.metric)
                if not nl.add_route(route):
                    raise RouteError(
                        errno.EEXIST,
                        f"a route to {prefix} exists already in table {self.table} "
                        "(another VPN?); not replacing it",
                    )
                self._routes.append(route)
                _log.info("route %s via tunnel %s", prefix, self._device)

    def full_tunnel(self, *, ipv4: bool = True, ipv6: bool = True) -> None:
        """Send all traffic of the chosen families through the tunnel (mode c)."""
        self.add_routes((FULL_TUNNEL_IPV4 if ipv4 else ()) + (FULL_TUNNEL_IPV6 if ipv6 else ()))

    def replace_routes(self, prefixes: Iterable[IPNetwork]) -> None:
        """Make the tunnel routes exactly ``prefixes`` (a new ROUTE_ADVERTISEMENT).

        New routes are added before stale ones are removed, so traffic that stays
        routed never falls back to the default route in between.
        """
        wanted = _unique(prefixes)
        self.add_routes(wanted)
        keep = set(wanted)
        stale = [r for r in self._routes if r.dst not in keep]
        if stale:
            with Netlink() as nl:
                for route in reversed(stale):
                    nl.delete_route(route)
                    self._forget(self._routes, route)
                    _log.info("route %s via tunnel %s withdrawn", route.dst, self._device)

    def pin_relay(self) -> None:
        """Add the relay host routes now, even if no tunnel route covers them yet."""
        with Netlink() as nl:
            index = self._device_index(nl)
            for address in self.relay_addresses:
                self._pin(nl, address, index)

    def _pin(self, nl: Netlink, address: IPAddress, tun_index: int) -> None:
        if address in self._pinned:
            return
        lookup = nl.route_get(address)
        if lookup.type == RTN_LOCAL:  # the relay is this host: nothing can loop
            self._pinned.add(address)
            return
        if lookup.oif == tun_index:
            raise RouteError(
                errno.ELOOP,
                f"the route to relay {address} already goes through the tunnel "
                f"{self._device}: cannot find the path outside it",
            )
        host = ipaddress.ip_network(address)
        route = Route(dst=host, oif=lookup.oif, gateway=lookup.gateway, table=self.table)
        if nl.add_route(route):
            self._pins.append(route)
            _log.info("relay %s pinned: %s", address, route)
        else:
            _log.info("relay %s: existing host route kept", address)
        self._pinned.add(address)

    def _device_index(self, nl: Netlink) -> int:
        if self._index is None:
            assert isinstance(self._device, str)
            self._index = nl.link_index(self._device)
        return self._index

    # -- state ------------------------------------------------------------------------

    @property
    def routes(self) -> tuple[Route, ...]:
        """The tunnel routes this manager added and has not removed."""
        return tuple(self._routes)

    @property
    def relay_routes(self) -> tuple[Route, ...]:
        """The host routes to the relay this manager added and has not removed."""
        return tuple(self._pins)

    # -- removing ---------------------------------------------------------------------

    def restore(self) -> None:
        """Remove every route this manager added, tunnel routes first; idempotent.

        Routes already gone are fine. Every route is attempted; if some could not
        be removed they stay recorded (a later call retries) and the first error
        is raised at the end.
        """
        if not self._routes and not self._pins:
            return
        failure: OSError | None = None
        with Netlink() as nl:
            for routes in (self._routes, self._pins):
                for route in reversed(list(routes)):
                    try:
                        removed = nl.delete_route(route)
                    except OSError as exc:
                        _log.warning("cannot remove route %s: %s", route, exc)
                        failure = failure or exc
                        continue
                    self._forget(routes, route)
                    _log.info("route %s %s", route, "removed" if removed else "already gone")
        self._pinned.clear()
        if isinstance(self._device, str):
            self._index = None  # a TUN opened again under the same name has a new index
        if failure is not None:
            raise failure

    @staticmethod
    def _forget(routes: list[Route], route: Route) -> None:
        # A signal handler's restore() may have removed it already.
        with contextlib.suppress(ValueError):
            routes.remove(route)

    def __enter__(self) -> RouteManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def _unique(prefixes: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Prefixes in order, duplicates dropped, host bits rejected by ip_network."""
    seen: dict[IPNetwork, None] = {}
    for prefix in prefixes:
        seen.setdefault(ipaddress.ip_network(prefix), None)
    return list(seen)
