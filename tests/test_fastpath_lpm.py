"""Parity: _fastpath.PrefixTable (C binary trie) against a plain ipaddress reference."""

from __future__ import annotations

from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _fastpath

IPNetwork = IPv4Network | IPv6Network


def reference_lookup(table: dict[IPNetwork, int], address: IPv4Address | IPv6Address) -> int:
    best: IPNetwork | None = None
    for network in table:
        covers = network.version == address.version and address in network
        if covers and (best is None or network.prefixlen > best.prefixlen):
            best = network
    return -1 if best is None else table[best]


def test_longest_prefix_wins() -> None:
    t = _fastpath.PrefixTable()
    t.add("10.0.0.0/8", 1)
    t.add(ip_network("10.1.0.0/16"), 2)
    t.add("10.1.2.3/32", 3)
    t.add("0.0.0.0/0", 0)
    t.add("2001:db8::/32", 6)
    t.add("2001:db8:1::/64", 7)
    assert len(t) == 6
    assert t.lookup("10.1.2.3") == 3
    assert t.lookup("10.1.2.4") == 2
    assert t.lookup("10.2.0.0") == 1
    assert t.lookup("11.0.0.0") == 0
    assert t.lookup(IPv6Address("2001:db8:1::5")) == 7
    assert t.lookup(IPv6Address("2001:db8:2::5").packed) == 6
    assert t.lookup("2001:db9::") == -1
    assert t.lookup(bytes([10, 1, 2, 3])) == 3
    # Removal falls back to the next shorter prefix.
    assert t.remove("10.1.2.3/32") == 3
    assert t.lookup("10.1.2.3") == 2
    assert t.remove("0.0.0.0/0") == 0
    assert t.lookup("11.0.0.0") == -1
    with pytest.raises(KeyError):
        t.remove("10.1.2.3/32")
    with pytest.raises(KeyError):
        t.remove("10.1.0.0/24")  # a path that exists but holds no prefix
    assert len(t) == 4


def test_replace_and_errors() -> None:
    t = _fastpath.PrefixTable()
    t.add("192.0.2.0/24", 1)
    t.add("192.0.2.0/24", 5)
    assert len(t) == 1
    assert t.lookup("192.0.2.77") == 5
    with pytest.raises(ValueError):
        t.add("192.0.2.1/24", 1)  # host bits set
    with pytest.raises(ValueError):
        t.add("192.0.2.0/24", -1)
    with pytest.raises(ValueError):
        t.lookup(b"\x01\x02\x03")


def test_lookup_batch_reads_destinations() -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    t = _fastpath.PrefixTable()
    t.add("192.0.2.0/24", 1)
    t.add("2001:db8::/32", 2)
    batch = _fastpath.PacketBatch(slots=8)
    batch.append(bytes(IP(src="8.8.8.8", dst="192.0.2.9") / UDP()))
    batch.append(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP()))
    batch.append(bytes(IP(src="192.0.2.9", dst="8.8.8.8") / UDP()))
    batch.append(b"\x45" * 19)  # too short for a destination
    batch.append(b"\x60" * 39)
    batch.append(b"")
    batch.append(b"\x50" * 60)
    assert t.lookup_batch(batch) == [1, 2, -1, -1, -1, -1, -1]
    batch.clear()
    assert t.lookup_batch(batch) == []


def v4_networks() -> st.SearchStrategy[IPv4Network]:
    return st.builds(
        lambda addr, plen: IPv4Network((addr, plen), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def v6_networks() -> st.SearchStrategy[IPv6Network]:
    # Few high bits vary so prefixes nest and collide often.
    return st.builds(
        lambda top, low, plen: IPv6Network(((top << 120) | low, plen), strict=False),
        st.integers(0, 3),
        st.integers(0, 2**16 - 1),
        st.integers(0, 128),
    )


networks = st.one_of(v4_networks(), v6_networks())
addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(IPv4Address),
    st.builds(
        lambda top, low: IPv6Address((top << 120) | low),
        st.integers(0, 3),
        st.integers(0, 2**16 - 1),
    ),
)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.booleans(), networks, st.integers(0, 1000)), max_size=40),
    st.lists(addresses, max_size=40),
)
def test_parity_with_reference(
    ops: list[tuple[bool, IPNetwork, int]], probes: list[IPv4Address | IPv6Address]
) -> None:
    table = _fastpath.PrefixTable()
    reference: dict[IPNetwork, int] = {}
    for is_add, network, sid in ops:
        if is_add or network not in reference:
            table.add(network, sid)
            reference[network] = sid
        else:
            assert table.remove(network) == reference.pop(network)
        assert len(table) == len(reference)
    # Probe given addresses and every stored network's first/last address.
    for network in list(reference):
        probes += [network.network_address, network.broadcast_address]
    for address in probes:
        assert table.lookup(address) == reference_lookup(reference, address)
    # Remove all: the trie prunes back to empty and answers -1 everywhere.
    for network in list(reference):
        table.remove(network)
    assert len(table) == 0
    for address in probes:
        assert table.lookup(address) == -1


def test_churn_reuses_nodes() -> None:
    table = _fastpath.PrefixTable()
    for round_ in range(50):
        for i in range(256):
            table.add(f"2001:db8:{round_:x}:{i:x}::/64", i)
        for i in range(256):
            assert table.lookup(ip_address(f"2001:db8:{round_:x}:{i:x}::1")) == i
            table.remove(f"2001:db8:{round_:x}:{i:x}::/64")
    assert len(table) == 0
