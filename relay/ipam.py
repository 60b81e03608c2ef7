"""Address management for the relay: per-session IPv4/IPv6 prefixes from two pools.

The relay owns one IPv4 and one IPv6 network (either may be disabled). Each pool
is cut into equal *blocks* of the per-client prefix length (default /32 and
/128); a session holds at most one block of each family. The relay's TUN device
takes the pool's first host address (:attr:`AddressPool.gateway_v4` /
:attr:`AddressPool.gateway_v6`), so the blocks holding that address, the
network address and (IPv4) the broadcast address are never handed out.

Allocation is O(1) amortised and never scans the pool, so a /64 of /128s costs
the same as a /24 of /32s:

- blocks never handed out are taken in order from a cursor ("fresh" blocks);
- released blocks wait in a FIFO and are reused only when no fresh block is
  left, least recently released first, so an address is not given to the next
  client the moment its previous holder leaves (RFC 9484 §11 asks proxies to
  avoid persistent per-client assignment; delayed reuse also keeps late packets
  for the old holder from reaching a new one);
- an exact request (ADDRESS_REQUEST, RFC 9484 §4.7.2) takes the named block out
  of whichever of the two sets holds it.

Sans-I/O and thread-agnostic (no locks: the owner serialises calls).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

__all__ = [
    "AddressPool",
    "Assignment",
    "PoolExhausted",
    "is_unspecified_request",
    "refusal_prefix",
    "usable_blocks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

K = TypeVar("K", bound=Hashable)
N = TypeVar("N", ipaddress.IPv4Network, ipaddress.IPv6Network)

_REFUSAL_V4 = ipaddress.IPv4Network("0.0.0.0/32")
_REFUSAL_V6 = ipaddress.IPv6Network("::/128")


class PoolExhausted(Exception):
    """No free block is left in a pool: the relay must refuse the new session.

    ``version`` is 4 or 6: the family that ran out.
    """

    version: int

    def __init__(self, version: int, network: IPNetwork) -> None:
        super().__init__(f"IPv{version} pool {network} has no free address left")
        self.version = version


@dataclass(frozen=True, slots=True)
class Assignment:
    """The prefixes a session holds (``None`` for a family it has none of)."""

    v4: ipaddress.IPv4Network | None
    "The session's IPv4 prefix, or ``None``."
    v6: ipaddress.IPv6Network | None
    "The session's IPv6 prefix, or ``None``."

    def __iter__(self) -> Iterator[IPNetwork]:
        """Yield the prefixes that are set, IPv4 first (ADDRESS_ASSIGN order)."""
        if self.v4 is not None:
            yield self.v4
        if self.v6 is not None:
            yield self.v6


def refusal_prefix(version: int) -> IPNetwork:
    """The Assigned Address that refuses a request (RFC 9484 §4.7.2).

    "If the requested address was not assigned, the IP address SHALL be all-zero
    and the IP Prefix Length SHALL be the maximum length": 0.0.0.0/32 or ::/128.
    """
    if version == 4:
        return _REFUSAL_V4
    if version == 6:
        return _REFUSAL_V6
    raise ValueError(f"IP version must be 4 or 6, not {version}")


def is_unspecified_request(requested: IPNetwork) -> bool:
    """Whether an ADDRESS_REQUEST entry asks for "any address" (RFC 9484 §4.7.2).

    An all-zero IP Address means no preference for a specific address; its
    prefix length still states the preferred length.
    """
    return int(requested.network_address) == 0


def _reserved_offsets(network: IPNetwork) -> tuple[int, ...]:
    """Offsets (from the network address) of the addresses never given to clients."""
    if network.version == 4:
        # network address, gateway (the relay's TUN), broadcast
        return (0, 1, network.num_addresses - 1)
    # Subnet-Router anycast (RFC 4291 §2.6.1) and the relay's TUN address (::1).
    return (0, 1)


def _check_geometry(network: IPNetwork, client_prefix: int) -> None:
    if not network.prefixlen <= client_prefix <= network.max_prefixlen:
        raise ValueError(
            f"client prefix /{client_prefix} must lie between the pool's "
            f"/{network.prefixlen} and /{network.max_prefixlen}"
        )
    if network.num_addresses < 4 and network.version == 4:
        raise ValueError(f"IPv4 pool {network} is too small: use /30 or shorter")
    if network.num_addresses < 2:
        raise ValueError(f"pool {network} is too small")


def usable_blocks(network: IPNetwork, client_prefix: int) -> int:
    """How many per-client blocks of ``/client_prefix`` the pool can hand out."""
    _check_geometry(network, client_prefix)
    block_bits = network.max_prefixlen - client_prefix
    total = 1 << (client_prefix - network.prefixlen)
    reserved = {offset >> block_bits for offset in _reserved_offsets(network)}
    return total - len(reserved)


class _FamilyPool(Generic[N, K]):
    """Blocks of one address family. Indexes are block numbers within the pool."""

    __slots__ = (
        "_base",
        "_block_bits",
        "_cursor",
        "_in_use",
        "_released",
        "_reserved",
        "client_prefix",
        "gateway",
        "network",
        "total",
        "usable",
        "version",
    )

    def __init__(self, network: N, client_prefix: int) -> None:
        self.usable = usable_blocks(network, client_prefix)
        self.network: N = network
        self.version: int = network.version
        self.client_prefix = client_prefix
        self._base = int(network.network_address)
        self._block_bits = network.max_prefixlen - client_prefix
        self.total = 1 << (client_prefix - network.prefixlen)
        self._reserved = frozenset(o >> self._block_bits for o in _reserved_offsets(network))
        self.gateway: IPAddress = network.network_address + 1
        # Blocks >= _cursor were never handed out, except those in _in_use or
        # _released (taken by an exact request, then maybe released).
        self._cursor = 0
        self._in_use: dict[int, K] = {}
        self._released: OrderedDict[int, None] = OrderedDict()

    # -- conversions ---------------------------------------------------------

    def prefix(self, index: int) -> N:
        start = self._base + (index << self._block_bits)
        net: N = type(self.network)((start, self.client_prefix))
        return net

    def index_of(self, address: IPAddress) -> int | None:
        """The block holding ``address``, or ``None`` when it is outside the pool."""
        if address.version != self.version or address not in self.network:
            return None
        return (int(address) - self._base) >> self._block_bits

    # -- state ---------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def owner(self, index: int) -> K | None:
        return self._in_use.get(index)

    def take_any(self, session: K) -> int:
        """Hand out a fresh block, else the least recently released one."""
        while self._cursor < self.total:
            index = self._cursor
            self._cursor += 1
            if index in self._reserved or index in self._in_use or index in self._released:
                continue  # each index is skipped at most once: amortised O(1)
            self._in_use[index] = session
            return index
        if self._released:
            index, _ = self._released.popitem(last=False)
            self._in_use[index] = session
            return index
        raise PoolExhausted(self.version, self.network)

    def take(self, session: K, index: int) -> bool:
        """Hand out block ``index`` if it is free (or already ``session``'s)."""
        if index in self._reserved or not 0 <= index < self.total:
            return False
        holder = self._in_use.get(index)
        if holder is not None:
            return holder == session
        if index in self._released:
            del self._released[index]
        elif index < self._cursor:  # pragma: no cover - invariant guard
            raise AssertionError(f"block {index} below the cursor is neither used nor free")
        self._in_use[index] = session
        return True

    def give_back(self, index: int) -> None:
        del self._in_use[index]
        self._released[index] = None

    def free(self) -> int:
        return self.usable - len(self._in_use)


@dataclass(slots=True)
class _Held:
    v4: int | None = None
    v6: int | None = None


class AddressPool(Generic[K]):
    """Per-session prefixes from one IPv4 and one IPv6 network.

    ``K`` is the caller's session key (any hashable: a stream ID, a session
    object). Either network may be ``None`` to disable that family.

    Example::

        pool = AddressPool(ip_network("10.100.0.0/24"), ip_network("fd00:6d61:7371::/64"))
        a = pool.allocate(session)          # Assignment(10.100.0.2/32, fd00:6d61:7371::2/128)
        pool.request(session, ip_network("0.0.0.0/32"))   # -> 10.100.0.2/32 (already held)
        pool.release(session)
    """

    def __init__(
        self,
        v4_network: ipaddress.IPv4Network | None,
        v6_network: ipaddress.IPv6Network | None,
        *,
        v4_client_prefix: int = 32,
        v6_client_prefix: int = 128,
    ) -> None:
        if v4_network is None and v6_network is None:
            raise ValueError("at least one of the IPv4 and IPv6 pools must be set")
        if v4_network is not None and v4_network.version != 4:
            raise ValueError(f"{v4_network} is not an IPv4 network")
        if v6_network is not None and v6_network.version != 6:
            raise ValueError(f"{v6_network} is not an IPv6 network")
        self._v4: _FamilyPool[ipaddress.IPv4Network, K] | None = None
        self._v6: _FamilyPool[ipaddress.IPv6Network, K] | None = None
        if v4_network is not None:
            self._v4 = _FamilyPool(v4_network, v4_client_prefix)
        if v6_network is not None:
            self._v6 = _FamilyPool(v6_network, v6_client_prefix)
        self._sessions: dict[K, _Held] = {}

    # -- read-only facts -----------------------------------------------------

    @property
    def v4_network(self) -> ipaddress.IPv4Network | None:
        """The IPv4 pool, or ``None`` when IPv4 is disabled."""
        return None if self._v4 is None else self._v4.network

    @property
    def v6_network(self) -> ipaddress.IPv6Network | None:
        """The IPv6 pool, or ``None`` when IPv6 is disabled."""
        return None if self._v6 is None else self._v6.network

    @property
    def gateway_v4(self) -> ipaddress.IPv4Interface | None:
        """The relay TUN's IPv4 address with the pool's prefix (e.g. 10.100.0.1/24)."""
        if self._v4 is None:
            return None
        return ipaddress.IPv4Interface((self._v4.gateway, self._v4.network.prefixlen))

    @property
    def gateway_v6(self) -> ipaddress.IPv6Interface | None:
        """The relay TUN's IPv6 address with the pool's prefix (e.g. fd00:6d61:7371::1/64)."""
        if self._v6 is None:
            return None
        return ipaddress.IPv6Interface((self._v6.gateway, self._v6.network.prefixlen))

    def capacity(self, version: int) -> int:
        """How many sessions the family can serve at once (0 when disabled)."""
        family = self._family(version)
        return 0 if family is None else family.usable

    def available(self, version: int) -> int:
        """How many blocks of the family are free now (0 when disabled)."""
        family = self._family(version)
        return 0 if family is None else family.free()

    def in_use(self, version: int) -> int:
        """How many blocks of the family are held by sessions."""
        family = self._family(version)
        return 0 if family is None else family.in_use

    def __len__(self) -> int:
        """Number of sessions holding at least one block."""
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def assignment(self, session_id: K) -> Assignment:
        """What ``session_id`` holds now (``Assignment(None, None)`` if nothing)."""
        held = self._sessions.get(session_id)
        if held is None:
            return Assignment(None, None)
        return self._assignment(held)

    def owner(self, address: IPAddress | str) -> K | None:
        """The session whose prefix contains ``address``, or ``None``."""
        addr = ipaddress.ip_address(address)
        family = self._family(addr.version)
        if family is None:
            return None
        index = family.index_of(addr)
        if index is None:
            return None
        return family.owner(index)

    # -- allocation ------------------------------------------------------------

    def allocate(self, session_id: K) -> Assignment:
        """Give ``session_id`` one prefix of every enabled family it does not hold yet.

        Idempotent: a session that already holds its prefixes gets them back.
        Raises :class:`PoolExhausted` (and changes nothing) when a family has no
        free block: the relay refuses the session.
        """
        held = self._sessions.get(session_id)
        fresh = held is None
        if held is None:
            held = _Held()
        taken_v4: int | None = None
        if self._v4 is not None and held.v4 is None:
            taken_v4 = self._v4.take_any(session_id)
        if self._v6 is not None and held.v6 is None:
            try:
                held.v6 = self._v6.take_any(session_id)
            except PoolExhausted:
                if taken_v4 is not None and self._v4 is not None:
                    self._v4.give_back(taken_v4)
                raise
        if taken_v4 is not None:
            held.v4 = taken_v4
        if fresh:
            self._sessions[session_id] = held
        return self._assignment(held)

    @overload
    def request(
        self, session_id: K, requested: ipaddress.IPv4Network
    ) -> ipaddress.IPv4Network | None: ...
    @overload
    def request(
        self, session_id: K, requested: ipaddress.IPv6Network
    ) -> ipaddress.IPv6Network | None: ...
    def request(self, session_id: K, requested: IPNetwork) -> IPNetwork | None:
        """Answer one Requested Address of an ADDRESS_REQUEST (RFC 9484 §4.7.2).

        - All-zero address ("any address"): the session's prefix of that family,
          allocated now if it has none. The requested length is a preference;
          the pool always assigns its configured per-client length.
        - A specific prefix: granted when it is exactly one of the pool's
          per-client blocks and free (or already this session's). It then
          *replaces* the session's previous prefix of that family, which is
          released; the caller sends the new complete ADDRESS_ASSIGN set.
        - Anything else (outside the pool, reserved, another length, held by
          another session, family disabled, pool exhausted): ``None``. The
          caller answers with :func:`refusal_prefix` (0.0.0.0/32 or ::/128).
        """
        family = self._family(requested.version)
        if family is None:
            return None
        held = self._sessions.get(session_id)
        current = None if held is None else self._held_index(held, requested.version)

        if is_unspecified_request(requested):
            if current is not None:
                return family.prefix(current)
            try:
                index = family.take_any(session_id)
            except PoolExhausted:
                return None
        else:
            if requested.prefixlen != family.client_prefix:
                return None
            index_opt = family.index_of(requested.network_address)
            if index_opt is None or not family.take(session_id, index_opt):
                return None
            index = index_opt
            if current is not None and current != index:
                family.give_back(current)

        if held is None:
            held = self._sessions[session_id] = _Held()
        if requested.version == 4:
            held.v4 = index
        else:
            held.v6 = index
        return family.prefix(index)

    def release(self, session_id: K) -> Assignment | None:
        """Return every prefix of ``session_id`` to the pool; ``None`` if it held none.

        Released blocks are reused only after every fresh block, least recently
        released first.
        """
        held = self._sessions.pop(session_id, None)
        if held is None:
            return None
        assignment = self._assignment(held)
        if held.v4 is not None and self._v4 is not None:
            self._v4.give_back(held.v4)
        if held.v6 is not None and self._v6 is not None:
            self._v6.give_back(held.v6)
        return assignment

    # -- helpers ---------------------------------------------------------------

    def _family(
        self, version: int
    ) -> _FamilyPool[ipaddress.IPv4Network, K] | _FamilyPool[ipaddress.IPv6Network, K] | None:
        if version == 4:
            return self._v4
        if version == 6:
            return self._v6
        raise ValueError(f"IP version must be 4 or 6, not {version}")

    @staticmethod
    def _held_index(held: _Held, version: int) -> int | None:
        return held.v4 if version == 4 else held.v6

    def _assignment(self, held: _Held) -> Assignment:
        v4 = None if held.v4 is None or self._v4 is None else self._v4.prefix(held.v4)
        v6 = None if held.v6 is None or self._v6 is None else self._v6.prefix(held.v6)
        return Assignment(v4, v6)
