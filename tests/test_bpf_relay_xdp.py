"""bpf/relay_xdp.bpf.c under BPF_PROG_TEST_RUN: the relay's XDP verdicts and counters.

The object is (re)built with ``make -C bpf`` first (a no-op when it is up to
date), so the test always runs the current source; loading it runs the
verifier. Every constant, name and struct layout comes from compiling
bpf/include/masque_bpf.h as userspace C (gcc -Wall -Wextra -Werror
-pedantic); Python only knows the names of the fields and reasons, and checks
that those lists are complete.

What BPF_PROG_TEST_RUN does with the XSKMAP (kernel 6.18, no live frames):
bpf_redirect_map() looks the RX queue index (0 in a test run) up at run time.
With no socket there the helper returns its fallback, XDP_PASS, and the
program counts MASQUE_XDP_PASS_NO_XSK; with an AF_XDP socket there (it does
not even have to be bound) the program returns XDP_REDIRECT and counts
MASQUE_XDP_REDIRECT. Nothing is actually redirected in a test run.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Padding

from relay.libbpf import BpfMap, BpfMapType, BpfObject, BpfProgram, XdpAction
from tests.bpf_build import build_bpf

ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = ROOT / "bpf"
OBJ_PATH = BPF_DIR / "build" / "relay_xdp.bpf.o"
HEADER_DIR = BPF_DIR / "include"

# Loading BPF programs needs root (CAP_BPF + CAP_NET_ADMIN): the suite runs as
# root (CI does), and without it these tests fail with EPERM rather than vanish.

# ---------------------------------------------------------------------------
# The shared header, compiled as userspace C
# ---------------------------------------------------------------------------

# Names only; their values come from the probe. test_reason_list_is_complete
# and test_struct_fields_tile_the_struct prove these lists miss nothing.
REASONS = (
    "REDIRECT",
    "PASS_OTHER",
    "LONG_HEADER",
    "UNKNOWN_CID",
    "DROP_TOO_SHORT",
    "DROP_FIXED_BIT",
    "DROP_HANDSHAKE_RATE",
    "PASS_NO_XSK",
    "PASS_DISABLED",
    "PASS_TOO_BIG",
)
STRUCTS = {
    "masque_xdp_config": (
        "flags",
        "addr4",
        "addr6",
        "port",
        "cid_len",
        "reserved0",
        "hs_rate_pps",
        "hs_burst",
        "reserved1",
    ),
    "masque_xdp_cid_key": ("cid",),
    "masque_xdp_cid_value": ("session_id", "flags"),
    "masque_xdp_src_key": ("addr",),
    "masque_xdp_hs_bucket": ("last_ns", "nanotokens"),
    "masque_xdp_counter": ("packets", "bytes"),
}
NAMES = (
    "MASQUE_PROG_RELAY_XDP_NAME",
    "MASQUE_MAP_XDP_CONFIG_NAME",
    "MASQUE_MAP_XDP_CIDS_NAME",
    "MASQUE_MAP_XDP_XSKS_NAME",
    "MASQUE_MAP_XDP_COUNTERS_NAME",
    "MASQUE_MAP_XDP_HS_RATE_NAME",
)
CONSTANTS = (
    "MASQUE_XDP_REASON_COUNT",
    "MASQUE_XDP_CID_MAX",
    "MASQUE_XDP_MAX_CIDS",
    "MASQUE_XDP_MAX_QUEUES",
    "MASQUE_XDP_HS_SOURCES",
    "MASQUE_XDP_LONG_MIN_LEN",
    "MASQUE_XDP_SHORT_MIN_LEN",
    "MASQUE_XDP_SHORT_MIN_AFTER_CID",
    "MASQUE_XDP_MAX_LANE_PAYLOAD",
    "MASQUE_XDP_F_ENABLED",
    "MASQUE_XDP_NANOTOKENS_PER_TOKEN",
    "AF_XDP",  # <sys/socket.h>: for the AF_XDP sockets put into the XSKMAP
)


def _probe_source() -> str:
    lines = [f"\tSTR({name});" for name in NAMES]
    lines += [f"\tINT({name});" for name in CONSTANTS]
    lines += [f'\tNAMED("reason:{r}", MASQUE_XDP_{r});' for r in REASONS]
    for struct_name, fields in STRUCTS.items():
        lines.append(f'\tNAMED("size:{struct_name}", sizeof(struct {struct_name}));')
        lines += [f"\tFIELD({struct_name}, {field});" for field in fields]
    body = "\n".join(lines)
    return rf"""
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include "masque_bpf.h"

#define NAMED(key, expr) printf("%s %lld\n", key, (long long)(expr))
#define INT(name) NAMED(#name, name)
#define STR(name) printf("%s %s\n", #name, name)
#define FIELD(type, field) \
	printf("field:%s.%s %ld %ld\n", #type, #field, (long)offsetof(struct type, field), \
		(long)sizeof(((struct type *)0)->field))

int main(void)
{{
{body}
	return 0;
}}
"""


def _cc() -> str:
    for name in ("cc", "gcc"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no C compiler (cc/gcc) found: apt-get install gcc")


def _compile_probe(tmp: Path, std: str) -> Path:
    src = tmp / "probe.c"
    exe = tmp / f"probe-{std}"
    src.write_text(_probe_source())
    cmd = [_cc(), f"-std={std}", "-Wall", "-Wextra", "-Werror", "-pedantic"]
    cmd += [f"-I{HEADER_DIR}", str(src), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"masque_bpf.h does not build as {std}:\n{proc.stderr}"
    return exe


@dataclass(frozen=True)
class Layout:
    """A struct of the shared header: its size and each field's (offset, size)."""

    name: str
    size: int
    fields: dict[str, tuple[int, int]]

    def pack(self, **values: int | bytes) -> bytes:
        """Host-layout bytes; ints are native-endian, bytes (network order) go in as they are."""
        buf = bytearray(self.size)
        for field, value in values.items():
            offset, size = self.fields[field]
            if isinstance(value, bytes):
                assert len(value) == size, f"{self.name}.{field} is {size} bytes"
                buf[offset : offset + size] = value
            else:
                buf[offset : offset + size] = value.to_bytes(size, sys.byteorder)
        return bytes(buf)

    def unpack_int(self, data: bytes, field: str) -> int:
        offset, size = self.fields[field]
        return int.from_bytes(data[offset : offset + size], sys.byteorder)


@dataclass(frozen=True)
class Header:
    """What the probe printed: names, constants, reason slots, struct layouts."""

    values: dict[str, str]
    reasons: dict[str, int]
    layouts: dict[str, Layout]

    def int(self, name: str) -> int:
        return int(self.values[name])

    def str(self, name: str) -> str:
        return self.values[name]


def _parse_probe(out: str) -> Header:
    values: dict[str, str] = {}
    reasons: dict[str, int] = {}
    sizes: dict[str, int] = {}
    fields: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in STRUCTS}
    for line in out.splitlines():
        key, rest = line.split(" ", 1)
        if key.startswith("reason:"):
            reasons[key.removeprefix("reason:")] = int(rest)
        elif key.startswith("size:"):
            sizes[key.removeprefix("size:")] = int(rest)
        elif key.startswith("field:"):
            struct_name, field = key.removeprefix("field:").split(".")
            offset, size = rest.split()
            fields[struct_name][field] = (int(offset), int(size))
        else:
            values[key] = rest
    layouts = {name: Layout(name, sizes[name], fields[name]) for name in STRUCTS}
    return Header(values, reasons, layouts)


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> Header:
    exe = _compile_probe(tmp_path_factory.mktemp("probe"), "c11")
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    return _parse_probe(out)


@pytest.mark.parametrize("std", ["c99", "c11", "gnu17"])
def test_shared_header_builds_as_userspace_c(std: str, tmp_path: Path) -> None:
    _compile_probe(tmp_path, std)


def test_reason_list_is_complete(header: Header) -> None:
    count = header.int("MASQUE_XDP_REASON_COUNT")
    assert sorted(header.reasons.values()) == list(range(count))


@pytest.mark.parametrize("struct_name", list(STRUCTS))
def test_struct_fields_tile_the_struct(struct_name: str, header: Header) -> None:
    """No padding, no field missing from STRUCTS: the fields cover the struct exactly."""
    layout = header.layouts[struct_name]
    end = 0
    for offset, size in sorted(layout.fields.values()):
        assert offset == end, f"{struct_name}: gap or overlap at byte {end}"
        end = offset + size
    assert end == layout.size


def test_object_names_fit_the_kernel(header: Header) -> None:
    for name in NAMES:
        assert 0 < len(header.str(name)) <= 15, name  # BPF_OBJ_NAME_LEN - 1


# ---------------------------------------------------------------------------
# The object
# ---------------------------------------------------------------------------


def _build_bpf() -> None:
    build_bpf(OBJ_PATH)


@pytest.fixture(scope="module")
def bpf_obj() -> Iterator[BpfObject]:
    _build_bpf()
    with BpfObject.open(OBJ_PATH) as obj:  # runs the verifier
        yield obj


# Test data (not header constants): the relay's address, port and CIDs.
PORT = 4433
MAC_CLIENT, MAC_RELAY = "02:00:00:00:00:01", "02:00:00:00:00:02"
V4_CLIENT, V4_RELAY, V4_OTHER = "192.0.2.1", "198.51.100.7", "198.51.100.8"
V6_CLIENT, V6_RELAY, V6_OTHER = "2001:db8::1", "2001:db8:1::7", "2001:db8:1::8"
CID_LEN = 8
KNOWN_CID = bytes.fromhex("a1b2c3d4e5f60718")
UNKNOWN_CID = bytes.fromhex("a1b2c3d4e5f60719")
SESSION_ID = 7


@dataclass(frozen=True)
class Outcome:
    verdict: XdpAction
    data_out: bytes
    counted: dict[str, tuple[int, int]]  # reason -> (packets, bytes) added by the run


class Relay:
    """The loaded program and its maps, driven the way the relay drives them."""

    def __init__(self, obj: BpfObject, header: Header) -> None:
        self.header = header
        self.prog: BpfProgram = obj.program(header.str("MASQUE_PROG_RELAY_XDP_NAME"))
        self.config: BpfMap = obj.map(header.str("MASQUE_MAP_XDP_CONFIG_NAME"))
        self.cids: BpfMap = obj.map(header.str("MASQUE_MAP_XDP_CIDS_NAME"))
        self.xsks: BpfMap = obj.map(header.str("MASQUE_MAP_XDP_XSKS_NAME"))
        self.counters: BpfMap = obj.map(header.str("MASQUE_MAP_XDP_COUNTERS_NAME"))
        self.hs_rate: BpfMap = obj.map(header.str("MASQUE_MAP_XDP_HS_RATE_NAME"))
        self.cid_max = header.int("MASQUE_XDP_CID_MAX")

    def configure(self, **fields: int | bytes) -> None:
        defaults: dict[str, int | bytes] = {
            "flags": self.header.int("MASQUE_XDP_F_ENABLED"),
            "addr4": socket.inet_pton(socket.AF_INET, V4_RELAY),
            "addr6": socket.inet_pton(socket.AF_INET6, V6_RELAY),
            "port": PORT.to_bytes(2, "big"),
            "cid_len": CID_LEN,
            "hs_rate_pps": 1,
            "hs_burst": 1000,
        }
        value = self.header.layouts["masque_xdp_config"].pack(**(defaults | fields))
        self.config.update(struct.pack("=I", 0), value)

    def cid_key(self, cid: bytes) -> bytes:
        return cid.ljust(self.cid_max, b"\x00")

    def add_cid(self, cid: bytes, session_id: int = SESSION_ID) -> None:
        value = self.header.layouts["masque_xdp_cid_value"].pack(session_id=session_id)
        self.cids.update(self.cid_key(cid), value)

    def remove_cid(self, cid: bytes) -> None:
        self.cids.delete(self.cid_key(cid))

    def reset(self) -> None:
        """Default config, only KNOWN_CID in the lane, no rate-limit state."""
        for map_ in (self.cids, self.hs_rate):
            for key in list(map_.keys()):
                map_.delete(key)
        self.configure()
        self.add_cid(KNOWN_CID)

    def totals(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) per reason, summed over all CPUs."""
        layout = self.header.layouts["masque_xdp_counter"]
        totals = {}
        for name, slot in self.header.reasons.items():
            per_cpu = self.counters.lookup_percpu(struct.pack("=I", slot))
            packets = sum(layout.unpack_int(v, "packets") for v in per_cpu)
            nbytes = sum(layout.unpack_int(v, "bytes") for v in per_cpu)
            totals[name] = (packets, nbytes)
        return totals

    def run(self, frame: bytes, repeat: int = 1) -> Outcome:
        before = self.totals()
        result = self.prog.test_run(frame, repeat=repeat)
        after = self.totals()
        counted = {
            name: (after[name][0] - before[name][0], after[name][1] - before[name][1])
            for name in after
            if after[name] != before[name]
        }
        return Outcome(XdpAction(result.retval), result.data_out, counted)

    def bucket(self, key: bytes) -> tuple[int, int] | None:
        """(last_ns, nanotokens) of a source's bucket, or None."""
        layout = self.header.layouts["masque_xdp_hs_bucket"]
        try:
            raw = self.hs_rate.lookup(key)
        except KeyError:
            return None
        return layout.unpack_int(raw, "last_ns"), layout.unpack_int(raw, "nanotokens")

    def set_bucket(self, key: bytes, last_ns: int, nanotokens: int) -> None:
        layout = self.header.layouts["masque_xdp_hs_bucket"]
        self.hs_rate.update(key, layout.pack(last_ns=last_ns, nanotokens=nanotokens))


@pytest.fixture(scope="module")
def relay_module(bpf_obj: BpfObject, header: Header) -> Relay:
    return Relay(bpf_obj, header)


@pytest.fixture
def relay(relay_module: Relay) -> Relay:
    relay_module.reset()
    return relay_module


@pytest.fixture
def xsk_factory(header: Header) -> Iterator[Callable[[], socket.socket]]:
    """AF_XDP sockets, closed after the test (closing removes them from the XSKMAP)."""
    sockets: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.socket(header.int("AF_XDP"), socket.SOCK_RAW, 0)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close()


def put_xsk(relay: Relay, queue: int, sock: socket.socket) -> None:
    relay.xsks.update(struct.pack("=I", queue), struct.pack("=I", sock.fileno()))


def test_map_layouts_match_shared_header(relay: Relay, header: Header) -> None:
    layouts = header.layouts
    expected = {
        relay.config: (BpfMapType.ARRAY, 4, layouts["masque_xdp_config"].size, 1),
        relay.cids: (
            BpfMapType.HASH,
            layouts["masque_xdp_cid_key"].size,
            layouts["masque_xdp_cid_value"].size,
            header.int("MASQUE_XDP_MAX_CIDS"),
        ),
        relay.xsks: (BpfMapType.XSKMAP, 4, 4, header.int("MASQUE_XDP_MAX_QUEUES")),
        relay.counters: (
            BpfMapType.PERCPU_ARRAY,
            4,
            layouts["masque_xdp_counter"].size,
            header.int("MASQUE_XDP_REASON_COUNT"),
        ),
        relay.hs_rate: (
            BpfMapType.LRU_HASH,
            layouts["masque_xdp_src_key"].size,
            layouts["masque_xdp_hs_bucket"].size,
            header.int("MASQUE_XDP_HS_SOURCES"),
        ),
    }
    for map_, (type_, key_size, value_size, max_entries) in expected.items():
        assert (map_.type, map_.key_size, map_.value_size, map_.max_entries) == (
            type_,
            key_size,
            value_size,
            max_entries,
        ), map_.name


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


def eth(**fields: Any) -> Packet:
    return Ether(src=MAC_CLIENT, dst=MAC_RELAY, **fields)


def ip4(src: str = V4_CLIENT, dst: str = V4_RELAY, **fields: Any) -> Packet:
    return IP(src=src, dst=dst, **fields)


def ip6(src: str = V6_CLIENT, dst: str = V6_RELAY, **fields: Any) -> Packet:
    return IPv6(src=src, dst=dst, **fields)


def udp(dport: int = PORT, **fields: Any) -> Packet:
    return UDP(sport=50000, dport=dport, **fields)


def short(cid: bytes = KNOWN_CID, size: int = 60, first: int = 0x41) -> bytes:
    """A QUIC short-header packet of ``size`` bytes (form 0, fixed bit, PN length 2)."""
    return (bytes([first]) + cid + bytes(range(1, 256)) * 8)[:size]


def long_hdr(
    first: int = 0xC3, version: int = 1, dcid: bytes = UNKNOWN_CID, size: int = 1200
) -> bytes:
    """A QUIC long-header packet of ``size`` bytes (default: a v1 Initial)."""
    scid = bytes.fromhex("5c1d5c1d5c1d5c1d")
    head = bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
    head += bytes([len(scid)]) + scid
    return (head + bytes(max(0, size - len(head))))[:size]


def to_relay4(payload: bytes, src: str = V4_CLIENT) -> bytes:
    return bytes(eth() / ip4(src=src) / udp() / payload)


def to_relay6(payload: bytes, src: str = V6_CLIENT) -> bytes:
    return bytes(eth() / ip6(src=src) / udp() / payload)


def raw_cut(frame: bytes, length: int) -> bytes:
    assert len(frame) > length
    return frame[:length]


@dataclass(frozen=True)
class Case:
    frame: Callable[[Header], bytes]
    verdict: XdpAction
    reason: str  # a REASONS entry


PASS, DROP = XdpAction.PASS, XdpAction.DROP


def _lane_min(h: Header) -> int:
    return 1 + CID_LEN + h.int("MASQUE_XDP_SHORT_MIN_AFTER_CID")


CASES: dict[str, Case] = {
    # --- short header, CID in the lane (no AF_XDP socket: fallback PASS) --
    "short-known-cid-ipv4": Case(lambda h: to_relay4(short()), PASS, "PASS_NO_XSK"),
    "short-known-cid-ipv6": Case(lambda h: to_relay6(short()), PASS, "PASS_NO_XSK"),
    "short-known-cid-vlan-ipv4": Case(
        lambda h: bytes(eth() / Dot1Q(vlan=100) / ip4() / udp() / short()), PASS, "PASS_NO_XSK"
    ),
    "short-known-cid-vlan-ipv6": Case(
        lambda h: bytes(eth() / Dot1Q(vlan=100) / ip6() / udp() / short()), PASS, "PASS_NO_XSK"
    ),
    "short-known-cid-qinq-ipv4": Case(
        lambda h: bytes(eth() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / ip4() / udp() / short()),
        PASS,
        "PASS_NO_XSK",
    ),
    "short-known-cid-qinq-ipv6": Case(
        lambda h: bytes(eth() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / ip6() / udp() / short()),
        PASS,
        "PASS_NO_XSK",
    ),
    "short-known-cid-ipv4-options": Case(
        lambda h: bytes(eth() / ip4(options=[IPOption_NOP()] * 8) / udp() / short()),
        PASS,
        "PASS_NO_XSK",
    ),
    # Ethernet padding after the IP packet is not QUIC payload.
    "short-known-cid-ethernet-padding": Case(
        lambda h: bytes(eth() / ip4() / udp() / short() / Padding(bytes(30))),
        PASS,
        "PASS_NO_XSK",
    ),
    "short-known-cid-lane-minimum": Case(
        lambda h: to_relay4(short(size=_lane_min(h))), PASS, "PASS_NO_XSK"
    ),
    # --- short header, not for the lane ----------------------------------
    # A GSO super-packet a veth hands generic XDP whole: too big for an AF_XDP frame.
    "short-known-cid-super-packet": Case(
        lambda h: to_relay4(short(size=h.int("MASQUE_XDP_MAX_LANE_PAYLOAD") + 1)),
        PASS,
        "PASS_TOO_BIG",
    ),
    "short-known-cid-largest-lane-packet": Case(
        lambda h: to_relay4(short(size=h.int("MASQUE_XDP_MAX_LANE_PAYLOAD"))), PASS, "PASS_NO_XSK"
    ),
    "short-unknown-cid-ipv4": Case(lambda h: to_relay4(short(UNKNOWN_CID)), PASS, "UNKNOWN_CID"),
    "short-unknown-cid-ipv6": Case(lambda h: to_relay6(short(UNKNOWN_CID)), PASS, "UNKNOWN_CID"),
    # Known CID, but too short for header protection: not the lane's.
    "short-known-cid-below-lane-minimum": Case(
        lambda h: to_relay4(short(size=_lane_min(h) - 1)), PASS, "UNKNOWN_CID"
    ),
    # The smallest Stateless Reset (RFC 9000 section 10.3) reaches aioquic.
    "short-stateless-reset-minimum": Case(
        lambda h: to_relay4(short(UNKNOWN_CID, size=h.int("MASQUE_XDP_SHORT_MIN_LEN"))),
        PASS,
        "UNKNOWN_CID",
    ),
    # --- long header: to aioquic, never to the lane ----------------------
    "long-initial-ipv4": Case(lambda h: to_relay4(long_hdr()), PASS, "LONG_HEADER"),
    "long-initial-ipv6": Case(lambda h: to_relay6(long_hdr()), PASS, "LONG_HEADER"),
    "long-initial-qinq-ipv6": Case(
        lambda h: bytes(eth() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / ip6() / udp() / long_hdr()),
        PASS,
        "LONG_HEADER",
    ),
    "long-handshake-known-cid": Case(
        lambda h: to_relay4(long_hdr(first=0xE0, dcid=KNOWN_CID, size=300)), PASS, "LONG_HEADER"
    ),
    "long-minimum": Case(
        lambda h: to_relay4(long_hdr(size=h.int("MASQUE_XDP_LONG_MIN_LEN"))), PASS, "LONG_HEADER"
    ),
    # Version Negotiation leaves the fixed bit unspecified.
    "version-negotiation-fixed-bit-clear": Case(
        lambda h: to_relay4(long_hdr(first=0x80, version=0, size=40)), PASS, "LONG_HEADER"
    ),
    # --- to the relay port, cannot be QUIC: dropped ----------------------
    "empty-payload": Case(lambda h: to_relay4(b""), DROP, "DROP_TOO_SHORT"),
    "empty-payload-ipv6": Case(lambda h: to_relay6(b""), DROP, "DROP_TOO_SHORT"),
    "short-below-minimum": Case(
        lambda h: to_relay4(short(size=h.int("MASQUE_XDP_SHORT_MIN_LEN") - 1)),
        DROP,
        "DROP_TOO_SHORT",
    ),
    "long-below-minimum": Case(
        lambda h: to_relay6(long_hdr(size=h.int("MASQUE_XDP_LONG_MIN_LEN") - 1)),
        DROP,
        "DROP_TOO_SHORT",
    ),
    # The UDP length, not the IP payload, bounds the QUIC payload.
    "udp-length-below-ip-payload": Case(
        lambda h: bytes(eth() / ip4() / udp(len=8 + 10) / short()), DROP, "DROP_TOO_SHORT"
    ),
    "short-fixed-bit-clear": Case(lambda h: to_relay4(short(first=0x01)), DROP, "DROP_FIXED_BIT"),
    "short-fixed-bit-clear-ipv6-vlan": Case(
        lambda h: bytes(eth() / Dot1Q(vlan=5) / ip6() / udp() / short(first=0x01)),
        DROP,
        "DROP_FIXED_BIT",
    ),
    "long-fixed-bit-clear": Case(lambda h: to_relay4(long_hdr(first=0x83)), DROP, "DROP_FIXED_BIT"),
    # --- not QUIC to the relay: passed -----------------------------------
    "other-port": Case(
        lambda h: bytes(eth() / ip4() / udp(dport=PORT + 1) / short()), PASS, "PASS_OTHER"
    ),
    "relay-port-as-source-only": Case(
        lambda h: bytes(eth() / ip4() / UDP(sport=PORT, dport=53) / short()), PASS, "PASS_OTHER"
    ),
    "other-ipv4-destination": Case(
        lambda h: bytes(eth() / ip4(dst=V4_OTHER) / udp() / short()), PASS, "PASS_OTHER"
    ),
    "other-ipv6-destination": Case(
        lambda h: bytes(eth() / ip6(dst=V6_OTHER) / udp() / short()), PASS, "PASS_OTHER"
    ),
    "tcp-to-relay-port": Case(
        lambda h: bytes(eth() / ip4() / TCP(sport=50000, dport=PORT)), PASS, "PASS_OTHER"
    ),
    "tcp-to-relay-port-ipv6": Case(
        lambda h: bytes(eth() / ip6() / TCP(sport=50000, dport=PORT)), PASS, "PASS_OTHER"
    ),
    "icmp-to-relay": Case(lambda h: bytes(eth() / ip4() / ICMP()), PASS, "PASS_OTHER"),
    "icmpv6-to-relay": Case(
        lambda h: bytes(eth() / ip6() / ICMPv6EchoRequest()), PASS, "PASS_OTHER"
    ),
    "arp": Case(
        lambda h: bytes(eth() / ARP(psrc=V4_CLIENT, pdst=V4_RELAY, hwsrc=MAC_CLIENT)),
        PASS,
        "PASS_OTHER",
    ),
    "non-ip-lldp": Case(lambda h: bytes(eth(type=0x88CC) / bytes(46)), PASS, "PASS_OTHER"),
    "three-vlan-tags": Case(
        lambda h: bytes(
            eth() / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / ip4() / udp() / short()
        ),
        PASS,
        "PASS_OTHER",
    ),
    "ipv4-first-fragment": Case(
        lambda h: bytes(eth() / ip4(flags="MF") / udp() / short()), PASS, "PASS_OTHER"
    ),
    "ipv4-later-fragment": Case(
        lambda h: bytes(eth() / ip4(frag=3, proto=17) / short()), PASS, "PASS_OTHER"
    ),
    "ipv6-fragment-header": Case(
        lambda h: bytes(eth() / ip6() / IPv6ExtHdrFragment() / udp() / short()),
        PASS,
        "PASS_OTHER",
    ),
    "ipv6-destination-options": Case(
        lambda h: bytes(eth() / ip6() / IPv6ExtHdrDestOpt() / udp() / short()),
        PASS,
        "PASS_OTHER",
    ),
    "udp-length-beyond-ip-payload": Case(
        lambda h: bytes(eth() / ip4() / udp(len=500) / short()), PASS, "PASS_OTHER"
    ),
    "udp-length-below-header": Case(
        lambda h: bytes(eth() / ip6() / udp(len=7) / short()), PASS, "PASS_OTHER"
    ),
    "ipv6-payload-length-beyond-frame": Case(
        lambda h: bytes(eth() / ip6(plen=500) / udp() / short()), PASS, "PASS_OTHER"
    ),
    # Invalid L3 headers are the kernel's to drop, not ours.
    "ipv4-version-5": Case(
        lambda h: bytes(eth() / ip4(version=5) / udp() / short()), PASS, "PASS_OTHER"
    ),
    "ipv4-total-length-beyond-frame": Case(
        lambda h: bytes(eth() / ip4(len=1000) / udp() / short()), PASS, "PASS_OTHER"
    ),
    "ipv6-version-4": Case(
        lambda h: bytes(eth(type=0x86DD) / ip4() / udp() / short()), PASS, "PASS_OTHER"
    ),
    "vlan-tag-truncated": Case(lambda h: bytes(eth(type=0x8100)) + b"\x00", PASS, "PASS_OTHER"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_verdict_and_counter(name: str, relay: Relay, header: Header) -> None:
    case = CASES[name]
    frame = case.frame(header)

    outcome = relay.run(frame)

    assert outcome.verdict == case.verdict
    assert case.reason in header.reasons
    assert outcome.counted == {case.reason: (1, len(frame))}
    assert outcome.data_out == frame  # never rewritten


def test_repeat_counts_every_run(relay: Relay) -> None:
    frame = to_relay4(short(UNKNOWN_CID))
    outcome = relay.run(frame, repeat=50)
    assert outcome.verdict == PASS
    assert outcome.counted == {"UNKNOWN_CID": (50, 50 * len(frame))}


# ---------------------------------------------------------------------------
# The AF_XDP socket of the RX queue
# ---------------------------------------------------------------------------


def test_known_cid_redirects_to_the_socket_of_the_rx_queue(
    relay: Relay, xsk_factory: Callable[[], socket.socket]
) -> None:
    # A test run's RX queue index is 0.
    put_xsk(relay, 0, xsk_factory())
    for frame in (to_relay4(short()), to_relay6(short())):
        outcome = relay.run(frame)
        assert outcome.verdict == XdpAction.REDIRECT
        assert outcome.counted == {"REDIRECT": (1, len(frame))}
        assert outcome.data_out == frame
    # A socket does not change what is not the lane's.
    assert relay.run(to_relay4(short(UNKNOWN_CID))).verdict == PASS
    assert relay.run(to_relay4(long_hdr(dcid=KNOWN_CID))).verdict == PASS


def test_socket_of_another_rx_queue_is_not_used(
    relay: Relay, xsk_factory: Callable[[], socket.socket]
) -> None:
    put_xsk(relay, 1, xsk_factory())
    frame = to_relay4(short())
    outcome = relay.run(frame)
    assert outcome.verdict == PASS
    assert outcome.counted == {"PASS_NO_XSK": (1, len(frame))}


def test_closed_socket_leaves_the_xskmap(
    relay: Relay, xsk_factory: Callable[[], socket.socket]
) -> None:
    sock = xsk_factory()
    put_xsk(relay, 0, sock)
    frame = to_relay4(short())
    assert relay.run(frame).verdict == XdpAction.REDIRECT
    sock.close()
    outcome = relay.run(frame)
    assert outcome.verdict == PASS
    assert outcome.counted == {"PASS_NO_XSK": (1, len(frame))}


# ---------------------------------------------------------------------------
# Truncation and length thresholds
# ---------------------------------------------------------------------------

PREFIX_FIXTURES: dict[str, tuple[Callable[[], bytes], XdpAction, str]] = {
    "short-ipv4": (lambda: to_relay4(short()), XdpAction.REDIRECT, "REDIRECT"),
    "short-ipv6": (lambda: to_relay6(short()), XdpAction.REDIRECT, "REDIRECT"),
    "short-qinq-ipv4-options": (
        lambda: bytes(
            eth()
            / Dot1AD(vlan=10)
            / Dot1Q(vlan=20)
            / ip4(options=[IPOption_NOP()] * 4)
            / udp()
            / short()
        ),
        XdpAction.REDIRECT,
        "REDIRECT",
    ),
    "short-vlan-ipv6": (
        lambda: bytes(eth() / Dot1Q(vlan=7) / ip6() / udp() / short()),
        XdpAction.REDIRECT,
        "REDIRECT",
    ),
    "long-ipv4": (lambda: to_relay4(long_hdr(size=200)), PASS, "LONG_HEADER"),
    "long-vlan-ipv6": (
        lambda: bytes(eth() / Dot1Q(vlan=7) / ip6() / udp() / long_hdr(size=200)),
        PASS,
        "LONG_HEADER",
    ),
}


@pytest.mark.parametrize("name", list(PREFIX_FIXTURES))
def test_every_prefix_of_a_frame_passes_to_the_kernel(
    name: str, relay: Relay, xsk_factory: Callable[[], socket.socket]
) -> None:
    """A frame cut at any byte (Ethernet, VLAN, IP, UDP, QUIC) is never redirected.

    The IP and UDP length fields then point past the frame's end, so every
    prefix is "not ours": PASS, counted as PASS_OTHER. (Frames shorter than
    an Ethernet header are refused by BPF_PROG_TEST_RUN itself with EINVAL.)
    A socket sits in the XSKMAP so that a wrong redirect would show.
    """
    put_xsk(relay, 0, xsk_factory())
    relay.configure(hs_rate_pps=0)  # no rate limit: the full frame may run many times
    make_frame, full_verdict, full_reason = PREFIX_FIXTURES[name]
    frame = make_frame()
    for length in range(14, len(frame)):
        prefix = raw_cut(frame, length)
        outcome = relay.run(prefix)
        assert (outcome.verdict, outcome.counted) == (
            PASS,
            {"PASS_OTHER": (1, length)},
        ), f"prefix of {length} bytes"
    outcome = relay.run(frame)
    assert (outcome.verdict, outcome.counted) == (full_verdict, {full_reason: (1, len(frame))})


@pytest.mark.parametrize("to_relay", [to_relay4, to_relay6], ids=["ipv4", "ipv6"])
def test_short_header_length_thresholds(
    to_relay: Callable[[bytes], bytes], relay: Relay, header: Header
) -> None:
    """UDP payloads of every length up to the lane's minimum and beyond it."""
    short_min = header.int("MASQUE_XDP_SHORT_MIN_LEN")
    lane_min = _lane_min(header)
    assert short_min < lane_min
    for size in range(lane_min + 3):
        outcome = relay.run(to_relay(short(size=size)))
        if size < short_min:
            expected = (DROP, "DROP_TOO_SHORT")
        elif size < lane_min:
            expected = (PASS, "UNKNOWN_CID")
        else:
            expected = (PASS, "PASS_NO_XSK")
        assert (outcome.verdict, list(outcome.counted)) == (expected[0], [expected[1]]), size


def test_long_header_length_thresholds(relay: Relay, header: Header) -> None:
    relay.configure(hs_rate_pps=0)
    long_min = header.int("MASQUE_XDP_LONG_MIN_LEN")
    for size in range(1, long_min + 5):
        outcome = relay.run(to_relay4(long_hdr(size=size)))
        expected = (DROP, "DROP_TOO_SHORT") if size < long_min else (PASS, "LONG_HEADER")
        assert (outcome.verdict, list(outcome.counted)) == (expected[0], [expected[1]]), size


# ---------------------------------------------------------------------------
# The CID map and the config
# ---------------------------------------------------------------------------


def test_cid_added_and_removed(relay: Relay, xsk_factory: Callable[[], socket.socket]) -> None:
    put_xsk(relay, 0, xsk_factory())
    frame = to_relay6(short(UNKNOWN_CID))
    assert relay.run(frame).counted == {"UNKNOWN_CID": (1, len(frame))}

    relay.add_cid(UNKNOWN_CID, session_id=99)  # a session enters the lane
    outcome = relay.run(frame)
    assert outcome.verdict == XdpAction.REDIRECT
    assert outcome.counted == {"REDIRECT": (1, len(frame))}

    relay.remove_cid(UNKNOWN_CID)  # ... and leaves it
    outcome = relay.run(frame)
    assert outcome.verdict == PASS
    assert outcome.counted == {"UNKNOWN_CID": (1, len(frame))}
    # The other session is untouched.
    assert relay.run(to_relay6(short())).verdict == XdpAction.REDIRECT


@pytest.mark.parametrize("cid_len", [1, 4, 8, 20])
def test_cid_length_comes_from_the_config(cid_len: int, relay: Relay, header: Header) -> None:
    assert cid_len <= header.int("MASQUE_XDP_CID_MAX")
    relay.configure(cid_len=cid_len)
    cid = bytes(range(0xA0, 0xA0 + cid_len))
    relay.add_cid(cid)
    lane_min = 1 + cid_len + header.int("MASQUE_XDP_SHORT_MIN_AFTER_CID")
    # The bytes after the CID are not zero: only cid_len bytes are the key.
    frame = to_relay4(short(cid, size=max(60, lane_min)))
    assert relay.run(frame).counted == {"PASS_NO_XSK": (1, len(frame))}
    # One CID byte differs: unknown.
    other = to_relay4(short(bytes([cid[0] ^ 1]) + cid[1:], size=max(60, lane_min)))
    assert relay.run(other).counted == {"UNKNOWN_CID": (1, len(other))}
    # The lane's minimum length follows the CID length.
    assert lane_min - 1 >= header.int("MASQUE_XDP_SHORT_MIN_LEN")
    below = to_relay4(short(cid, size=lane_min - 1))
    assert relay.run(below).counted == {"UNKNOWN_CID": (1, len(below))}


def test_cid_key_is_zero_padded(relay: Relay) -> None:
    """A key whose padding is not zero never matches."""
    relay.remove_cid(KNOWN_CID)
    relay.cids.update(
        KNOWN_CID + b"\x01" + bytes(relay.cid_max - CID_LEN - 1),
        relay.header.layouts["masque_xdp_cid_value"].pack(session_id=SESSION_ID),
    )
    frame = to_relay4(short())
    assert relay.run(frame).counted == {"UNKNOWN_CID": (1, len(frame))}


@pytest.mark.parametrize(
    "name", ["as-loaded", "flag-clear", "port-zero", "cid-len-zero", "cid-len-above-max"]
)
def test_disabled_config_passes_everything(name: str, relay: Relay, header: Header) -> None:
    if name == "as-loaded":  # all zero, as the object comes
        relay.config.update(struct.pack("=I", 0), bytes(relay.config.value_size))
    elif name == "flag-clear":
        relay.configure(flags=0)
    elif name == "port-zero":
        relay.configure(port=bytes(2))
    elif name == "cid-len-zero":
        relay.configure(cid_len=0)
    else:
        relay.configure(cid_len=header.int("MASQUE_XDP_CID_MAX") + 1)
    for frame in (
        to_relay4(short()),
        to_relay6(long_hdr()),
        to_relay4(b""),
        to_relay4(short(first=0x01)),
        bytes(eth() / ARP()),
    ):
        outcome = relay.run(frame)
        assert outcome.verdict == PASS
        assert outcome.counted == {"PASS_DISABLED": (1, len(frame))}


def test_zero_addresses_match_any_destination(relay: Relay) -> None:
    relay.configure(addr4=bytes(4), addr6=bytes(16))
    for frame in (
        bytes(eth() / ip4(dst=V4_OTHER) / udp() / short()),
        bytes(eth() / ip6(dst=V6_OTHER) / udp() / short()),
        to_relay4(short()),
        to_relay6(short()),
    ):
        assert relay.run(frame).counted == {"PASS_NO_XSK": (1, len(frame))}


def test_address_of_one_family_does_not_restrict_the_other(relay: Relay) -> None:
    relay.configure(addr6=bytes(16))  # IPv4 address set, any IPv6 address
    v4_other = bytes(eth() / ip4(dst=V4_OTHER) / udp() / short())
    v6_other = bytes(eth() / ip6(dst=V6_OTHER) / udp() / short())
    assert relay.run(v4_other).counted == {"PASS_OTHER": (1, len(v4_other))}
    assert relay.run(v6_other).counted == {"PASS_NO_XSK": (1, len(v6_other))}


# ---------------------------------------------------------------------------
# Handshake rate limit
# ---------------------------------------------------------------------------

NANO_ONE_SECOND = 1_000_000_000


def v4_key(addr: str) -> bytes:
    """The documented source key of an IPv4 address: v4-mapped ::ffff:a.b.c.d."""
    return bytes(10) + b"\xff\xff" + socket.inet_pton(socket.AF_INET, addr)


def v6_key(addr: str) -> bytes:
    """The documented source key of an IPv6 address: its /64."""
    return socket.inet_pton(socket.AF_INET6, addr)[:8] + bytes(8)


def test_burst_passes_then_the_source_is_dropped(relay: Relay) -> None:
    # 1 packet per second: the runs below take milliseconds, far from a new token.
    relay.configure(hs_rate_pps=1, hs_burst=5)
    initial = to_relay4(long_hdr())
    outcome = relay.run(initial, repeat=5)
    assert outcome.verdict == PASS
    assert outcome.counted == {"LONG_HEADER": (5, 5 * len(initial))}

    outcome = relay.run(initial)
    assert outcome.verdict == DROP
    assert outcome.counted == {"DROP_HANDSHAKE_RATE": (1, len(initial))}

    # Another source has its own bucket.
    other = to_relay4(long_hdr(), src="192.0.2.2")
    assert relay.run(other).counted == {"LONG_HEADER": (1, len(other))}
    # Short-header packets of the limited source are not limited.
    lane = to_relay4(short())
    assert relay.run(lane).counted == {"PASS_NO_XSK": (1, len(lane))}
    # Other long-header packets of the limited source (Handshake, VN) are.
    for payload in (long_hdr(first=0xE0, size=100), long_hdr(first=0x80, version=0, size=40)):
        assert list(relay.run(to_relay4(payload)).counted) == ["DROP_HANDSHAKE_RATE"]


def test_ipv6_sources_share_a_bucket_per_slash_64(relay: Relay) -> None:
    relay.configure(hs_rate_pps=1, hs_burst=2)
    assert relay.run(to_relay6(long_hdr()), repeat=2).verdict == PASS
    same_64 = to_relay6(long_hdr(), src="2001:db8::ffff:1")
    assert relay.run(same_64).counted == {"DROP_HANDSHAKE_RATE": (1, len(same_64))}
    next_64 = to_relay6(long_hdr(), src="2001:db8:0:1::1")
    assert relay.run(next_64).counted == {"LONG_HEADER": (1, len(next_64))}
    assert sorted(relay.hs_rate.keys()) == sorted([v6_key(V6_CLIENT), v6_key("2001:db8:0:1::1")])


def test_bucket_state_in_the_map(relay: Relay, header: Header) -> None:
    one = header.int("MASQUE_XDP_NANOTOKENS_PER_TOKEN")
    assert one == NANO_ONE_SECOND
    relay.configure(hs_rate_pps=1, hs_burst=4)
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC, which time.monotonic_ns() reads.
    t0 = time.monotonic_ns()
    relay.run(to_relay4(long_hdr()))
    t1 = time.monotonic_ns()
    state = relay.bucket(v4_key(V4_CLIENT))
    assert state is not None
    last_ns, tokens = state
    assert t0 <= last_ns <= t1
    assert tokens == 3 * one  # a new source starts full, minus this packet
    assert relay.bucket(v4_key("192.0.2.2")) is None


def test_bucket_refills_at_the_configured_rate(relay: Relay, header: Header) -> None:
    one = header.int("MASQUE_XDP_NANOTOKENS_PER_TOKEN")
    relay.configure(hs_rate_pps=1, hs_burst=3)
    key = v4_key(V4_CLIENT)
    initial = to_relay4(long_hdr())

    # Empty bucket, last refill 2.5 s ago: 2.5 tokens now, so two pass.
    relay.set_bucket(key, time.monotonic_ns() - 5 * NANO_ONE_SECOND // 2, 0)
    assert relay.run(initial, repeat=2).counted == {"LONG_HEADER": (2, 2 * len(initial))}
    assert list(relay.run(initial).counted) == ["DROP_HANDSHAKE_RATE"]
    state = relay.bucket(key)
    assert state is not None and state[1] < one

    # An hour idle fills the bucket to the burst, not beyond.
    relay.set_bucket(key, time.monotonic_ns() - 3600 * NANO_ONE_SECOND, 0)
    assert relay.run(initial, repeat=3).counted == {"LONG_HEADER": (3, 3 * len(initial))}
    assert list(relay.run(initial).counted) == ["DROP_HANDSHAKE_RATE"]

    # More tokens than the burst (burst lowered since, or any value userspace
    # wrote, up to the largest): capped at the burst, no overflow.
    for tokens in (1000 * one, 2**64 - 1):
        relay.set_bucket(key, time.monotonic_ns() - 1000, tokens)
        assert relay.run(initial, repeat=3).counted == {"LONG_HEADER": (3, 3 * len(initial))}
        assert list(relay.run(initial).counted) == ["DROP_HANDSHAKE_RATE"]

    # A last refill in the future counts as no time elapsed.
    relay.set_bucket(key, time.monotonic_ns() + 3600 * NANO_ONE_SECOND, 0)
    assert list(relay.run(initial).counted) == ["DROP_HANDSHAKE_RATE"]
    state = relay.bucket(key)
    assert state is not None and state[0] <= time.monotonic_ns()


def test_zero_rate_means_no_limit(relay: Relay) -> None:
    relay.configure(hs_rate_pps=0, hs_burst=1)
    initial = to_relay4(long_hdr())
    assert relay.run(initial, repeat=1000).counted == {"LONG_HEADER": (1000, 1000 * len(initial))}
    assert list(relay.hs_rate.keys()) == []


def test_zero_burst_is_taken_as_one(relay: Relay) -> None:
    relay.configure(hs_rate_pps=1, hs_burst=0)
    initial = to_relay4(long_hdr())
    assert list(relay.run(initial).counted) == ["LONG_HEADER"]
    assert list(relay.run(initial).counted) == ["DROP_HANDSHAKE_RATE"]
