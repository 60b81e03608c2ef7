"""relay.ipam: per-session prefixes, ADDRESS_REQUEST answers, reuse order, invariants."""

from __future__ import annotations

import ipaddress
import time
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from relay.ipam import (
    AddressPool,
    Assignment,
    PoolExhausted,
    is_unspecified_request,
    refusal_prefix,
    usable_blocks,
)

V4 = IPv4Network("10.100.0.0/24")
V6 = IPv6Network("fd00:6d61:7371::/64")


def make_pool(
    v4: str | None = "10.100.0.0/24", v6: str | None = "fd00:6d61:7371::/64", **kw: int
) -> AddressPool[str]:
    return AddressPool[str](IPv4Network(v4) if v4 else None, IPv6Network(v6) if v6 else None, **kw)


# -- basics --------------------------------------------------------------------


def test_first_allocation_skips_network_and_gateway() -> None:
    pool = make_pool()
    a = pool.allocate("s1")
    assert a == Assignment(IPv4Network("10.100.0.2/32"), IPv6Network("fd00:6d61:7371::2/128"))
    assert list(a) == [a.v4, a.v6]
    assert str(pool.gateway_v4) == "10.100.0.1/24"
    assert str(pool.gateway_v6) == "fd00:6d61:7371::1/64"


def test_allocate_is_idempotent() -> None:
    pool = make_pool()
    assert pool.allocate("s1") == pool.allocate("s1")
    assert pool.in_use(4) == 1 and pool.in_use(6) == 1 and len(pool) == 1


def test_v4_capacity_excludes_network_gateway_broadcast() -> None:
    pool = make_pool(v6=None)
    assert pool.capacity(4) == 253
    got = {pool.allocate(f"s{i}").v4 for i in range(253)}
    addrs = {n.network_address for n in got if n is not None}
    assert len(addrs) == 253
    for reserved in ("10.100.0.0", "10.100.0.1", "10.100.0.255"):
        assert ip_address(reserved) not in addrs
    with pytest.raises(PoolExhausted) as info:
        pool.allocate("one-too-many")
    assert info.value.version == 4
    assert "one-too-many" not in pool
    assert pool.available(4) == 0


def test_exhaustion_of_one_family_rolls_back_the_other() -> None:
    pool = make_pool(v4="10.0.0.0/24", v6="fd00::/126")  # v6: ::2, ::3 usable
    pool.allocate("a")
    pool.allocate("b")
    v4_before = pool.in_use(4)
    with pytest.raises(PoolExhausted) as info:
        pool.allocate("c")
    assert info.value.version == 6
    assert pool.in_use(4) == v4_before
    assert "c" not in pool


def test_block_prefixes() -> None:
    pool = make_pool(v4="10.0.0.0/24", v6="fd00::/48", v4_client_prefix=30, v6_client_prefix=64)
    a = pool.allocate("s")
    # block 0 holds the network address and the gateway: first client block is .4/30
    assert a.v4 == ip_network("10.0.0.4/30")
    assert a.v6 == ip_network("fd00:0:0:1::/64")
    assert pool.capacity(4) == 64 - 2  # first and last /30 reserved
    assert pool.owner("10.0.0.6") == "s"
    assert pool.owner("10.0.0.2") is None


def test_disabled_family() -> None:
    pool = make_pool(v6=None)
    assert pool.allocate("s") == Assignment(IPv4Network("10.100.0.2/32"), None)
    assert pool.gateway_v6 is None and pool.v6_network is None
    assert pool.request("s", ip_network("::/128")) is None
    assert pool.capacity(6) == 0
    with pytest.raises(ValueError):
        AddressPool[str](None, None)


def test_release_returns_assignment_and_frees() -> None:
    pool = make_pool()
    a = pool.allocate("s")
    assert pool.release("s") == a
    assert pool.release("s") is None
    assert pool.in_use(4) == 0 and len(pool) == 0
    assert pool.owner(a.v4.network_address if a.v4 else "0.0.0.0") is None


def test_released_addresses_are_reused_least_recently_released_first() -> None:
    pool = make_pool(v4="10.0.0.0/29", v6=None)  # usable .2 .3 .4 .5 .6
    for s in "abcde":
        pool.allocate(s)
    pool.release("c")  # .4
    pool.release("a")  # .2
    pool.release("d")  # .5
    assert pool.allocate("x").v4 == ip_network("10.0.0.4/32")
    assert pool.allocate("y").v4 == ip_network("10.0.0.2/32")
    pool.release("x")
    assert pool.allocate("z").v4 == ip_network("10.0.0.5/32")
    assert pool.allocate("w").v4 == ip_network("10.0.0.4/32")


def test_fresh_addresses_are_preferred_over_just_released_ones() -> None:
    pool = make_pool()
    first = pool.allocate("a")
    pool.release("a")
    second = pool.allocate("b")
    assert second.v4 != first.v4 and second.v6 != first.v6


def test_big_v6_pool_is_o1() -> None:
    pool = AddressPool[int](None, IPv6Network("2001:db8::/32"))  # 2**96 addresses
    assert pool.capacity(6) == 2**96 - 2
    start = time.perf_counter()
    for i in range(5000):
        pool.allocate(i)
    assert time.perf_counter() - start < 2.0
    assert pool.available(6) == 2**96 - 2 - 5000


# -- ADDRESS_REQUEST (RFC 9484 §4.7.2) ------------------------------------------


def test_refusal_prefix_is_all_zero_max_length() -> None:
    assert refusal_prefix(4) == ip_network("0.0.0.0/32")
    assert refusal_prefix(6) == ip_network("::/128")
    with pytest.raises(ValueError):
        refusal_prefix(5)


def test_unspecified_request_detection() -> None:
    assert is_unspecified_request(ip_network("0.0.0.0/32"))
    assert is_unspecified_request(ip_network("::/64"))
    assert not is_unspecified_request(ip_network("10.100.0.7/32"))


def test_any_address_request_allocates_or_returns_current() -> None:
    pool = make_pool()
    got = pool.request("s", IPv4Network("0.0.0.0/32"))
    assert got == ip_network("10.100.0.2/32")
    assert pool.request("s", ip_network("0.0.0.0/32")) == got
    assert pool.assignment("s") == Assignment(got, None)
    # the length is a preference: the configured per-client length is assigned
    assert pool.request("s", ip_network("::/64")) == ip_network("fd00:6d61:7371::2/128")


def test_exact_request_free_address() -> None:
    pool = make_pool()
    assert pool.request("s", ip_network("10.100.0.77/32")) == ip_network("10.100.0.77/32")
    assert pool.owner("10.100.0.77") == "s"
    # asking again for what it holds is fine
    assert pool.request("s", ip_network("10.100.0.77/32")) == ip_network("10.100.0.77/32")


def test_exact_request_replaces_previous_prefix_of_that_family() -> None:
    pool = make_pool()
    a = pool.allocate("s")
    new = pool.request("s", IPv4Network("10.100.0.50/32"))
    assert new == ip_network("10.100.0.50/32")
    assert pool.assignment("s") == Assignment(new, a.v6)
    assert a.v4 is not None and pool.owner(a.v4.network_address) is None
    assert pool.in_use(4) == 1


@pytest.mark.parametrize(
    "requested",
    [
        "10.100.0.0/32",  # network address
        "10.100.0.1/32",  # the relay's own TUN address
        "10.100.0.255/32",  # broadcast
        "10.101.0.5/32",  # outside the pool
        "10.100.0.4/31",  # not the per-client length
        "10.100.0.0/24",  # the whole pool
        "fd00:6d61:7371::/128",  # subnet-router anycast
        "fd00:6d61:7371::1/128",  # the relay's own TUN address
        "fd00:6d61:7372::5/128",  # outside
    ],
)
def test_exact_request_refused(requested: str) -> None:
    pool = make_pool()
    assert pool.request("s", ip_network(requested)) is None
    assert "s" not in pool


def test_exact_request_of_address_held_by_another_is_refused() -> None:
    pool = make_pool()
    a = pool.allocate("a")
    assert a.v4 is not None
    assert pool.request("b", a.v4) is None
    assert pool.owner(a.v4.network_address) == "a"


def test_requested_address_ahead_of_cursor_is_skipped_by_allocation() -> None:
    pool = make_pool(v4="10.0.0.0/29", v6=None)  # usable .2-.6
    assert pool.request("r", ip_network("10.0.0.3/32")) is not None
    got = [pool.allocate(s).v4 for s in "abcd"]
    assert ip_network("10.0.0.3/32") not in got
    assert len(set(got)) == 4
    with pytest.raises(PoolExhausted):
        pool.allocate("e")


def test_request_released_block_ahead_of_cursor() -> None:
    pool = make_pool(v4="10.0.0.0/29", v6=None)
    pool.request("r", ip_network("10.0.0.5/32"))
    pool.release("r")  # .5 is now "released" but still ahead of the cursor
    got = [pool.allocate(s).v4 for s in "abcde"]
    assert sorted(str(n) for n in got) == [f"10.0.0.{i}/32" for i in range(2, 7)]


def test_any_request_on_exhausted_pool_returns_none() -> None:
    pool = make_pool(v4="10.0.0.0/30", v6=None)  # one usable: .2
    pool.allocate("a")
    assert pool.request("b", ip_network("0.0.0.0/32")) is None


def test_usable_blocks_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError):
        usable_blocks(ip_network("10.0.0.0/24"), 16)
    with pytest.raises(ValueError):
        usable_blocks(ip_network("10.0.0.0/31"), 32)
    assert usable_blocks(ip_network("10.0.0.0/30"), 32) == 1
    assert usable_blocks(ip_network("fd00::/64"), 128) == 2**64 - 2


# -- properties -----------------------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """Random allocate/request/release sequences on small pools."""

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.pool = AddressPool[int](
            IPv4Network("10.9.0.0/28"), IPv6Network("fd00::/125"), v6_client_prefix=127
        )
        self.next_id = 0
        self.model: dict[int, Assignment] = {}

    @rule(target=sessions)
    def allocate(self) -> int:
        sid = self.next_id
        self.next_id += 1
        try:
            a = self.pool.allocate(sid)
        except PoolExhausted:
            assert sid not in self.pool
            assert self.pool.available(4) == 0 or self.pool.available(6) == 0
            return sid
        assert a.v4 is not None and a.v6 is not None
        self.model[sid] = a
        return sid

    @rule(sid=sessions, offset=st.integers(0, 15), v6=st.booleans())
    def request_exact(self, sid: int, offset: int, v6: bool) -> None:
        if v6:
            net: IPv4Network | IPv6Network = ip_network(f"fd00::{offset & 6:x}/127")
        else:
            net = ip_network(f"10.9.0.{offset}/32")
        holder = self.pool.owner(net.network_address)
        got = self.pool.request(sid, net)
        if got is not None:
            assert got == net
            assert holder in (None, sid)
            self.model[sid] = self.pool.assignment(sid)
        else:
            assert self.pool.owner(net.network_address) == holder

    @rule(sid=sessions, v6=st.booleans())
    def request_any(self, sid: int, v6: bool) -> None:
        before = self.pool.assignment(sid)
        got = self.pool.request(sid, ip_network("::/128" if v6 else "0.0.0.0/32"))
        current = before.v6 if v6 else before.v4
        if current is not None:
            assert got == current
        if got is not None:
            self.model[sid] = self.pool.assignment(sid)

    @rule(sid=consumes(sessions))
    def release(self, sid: int) -> None:
        expected = self.model.pop(sid, None)
        got = self.pool.release(sid)
        assert got == expected
        if got is not None:
            for prefix in got:
                assert self.pool.owner(prefix.network_address) is None

    @invariant()
    def no_address_held_twice(self) -> None:
        seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
        for sid, a in self.model.items():
            assert self.pool.assignment(sid) == a
            for prefix in a:
                assert prefix not in seen, f"{prefix} held by {seen.get(prefix)} and {sid}"
                seen[prefix] = sid
                assert self.pool.owner(prefix.network_address) == sid
                assert prefix != ip_network("10.9.0.0/32")
                assert prefix.network_address not in (
                    ip_address("10.9.0.1"),
                    ip_address("10.9.0.15"),
                    ip_address("fd00::1"),
                )

    @invariant()
    def counts_are_consistent(self) -> None:
        v4 = sum(1 for a in self.model.values() if a.v4 is not None)
        v6 = sum(1 for a in self.model.values() if a.v6 is not None)
        assert self.pool.in_use(4) == v4 and self.pool.in_use(6) == v6
        assert self.pool.available(4) == self.pool.capacity(4) - v4
        assert self.pool.available(6) == self.pool.capacity(6) - v6
        assert len(self.pool) == len(self.model)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


@given(st.lists(st.integers(0, 40), min_size=1, max_size=200))
@settings(deadline=None)
def test_release_makes_every_address_available_again(order: list[int]) -> None:
    pool = AddressPool[int](IPv4Network("10.9.0.0/26"), None)
    live: set[int] = set()
    for sid in order:
        if sid in live:
            pool.release(sid)
            live.discard(sid)
        else:
            pool.allocate(sid)
            live.add(sid)
    for sid in list(live):
        pool.release(sid)
    assert pool.available(4) == pool.capacity(4) == 61
    got = {pool.allocate(i).v4 for i in range(61)}
    assert len(got) == 61
