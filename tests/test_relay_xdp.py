"""relay.xdp: the XDP front end loaded, attached to a real veth and fed real packets.

Every test gets two fresh network namespaces joined by a veth pair (relay end
``xv-relay``, peer end ``xv-peer``), deleted afterwards whatever happens. The
front end runs in a child process inside the relay namespace (tests/nsexec.py):
netlink attaches to the ifindex of the caller's namespace, and a child that
exits without closing is exactly what a crashed relay leaves behind. Traffic is
sent from sockets opened in the peer namespace, so it crosses the veth and meets
the program on the relay end's receive path.

What is attached is read from two sides: the child's ``bpf_xdp_query_id`` and
``ip -d -j link show`` (the parent's view, through ``ip -n``). The constants and
struct layouts relay/xdp.py re-states are compared with bpf/include/masque_bpf.h
compiled as userspace C, with the probe of tests/test_bpf_relay_xdp.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from relay import xdp
from relay.libbpf import BpfObject, XdpAttachFlags, xdp_attach, xdp_query_id
from relay.xdp import XdpFrontEnd, XdpUnavailable
from tests.netbed import NETNS_PREFIX, Link, add_netns, connect_links, delete_netns
from tests.nsexec import run_in_netns

if TYPE_CHECKING:
    from tests.test_bpf_relay_xdp import Header, Layout

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
COUNT_PROTO_OBJ = ROOT / "bpf" / "build" / "count_proto.bpf.o"

RELAY_IF, PEER_IF = "xv-relay", "xv-peer"
RELAY_V4, PEER_V4 = "10.203.0.1", "10.203.0.2"
RELAY_V6, PEER_V6 = "fd00:203::1", "fd00:203::2"
PORT = 4433
CID_LEN = 8
KNOWN_CID = bytes.fromhex("c1d2c3d4c5d6c7d8")
UNKNOWN_CID = bytes.fromhex("c1d2c3d4c5d6c7d9")

AF_XDP = 44  # <sys/socket.h>; checked against the probe below

# `ip -j link` XDP attach modes (XDP_ATTACHED_*, <linux/if_link.h>).
IP_XDP_MODES = {1: "native", 2: "generic", 3: "offload"}


# ---------------------------------------------------------------------------
# Namespaces and views of what is attached
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Veth:
    relay_ns: str
    peer_ns: str


@pytest.fixture(scope="module")
def bpf_built() -> None:
    from tests.test_bpf_relay_xdp import _build_bpf  # builds every object in bpf/

    _build_bpf()
    assert xdp.DEFAULT_OBJECT.exists() and COUNT_PROTO_OBJ.exists()


@pytest.fixture
def veth(bpf_built: None) -> Iterator[Veth]:
    """A relay and a peer namespace joined by a veth pair; both deleted afterwards."""
    run = f"{NETNS_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
    pair = Veth(relay_ns=f"{run}-xrelay", peer_ns=f"{run}-xpeer")
    try:
        add_netns(pair.relay_ns)
        add_netns(pair.peer_ns)
        connect_links(
            Link(
                pair.relay_ns,
                RELAY_IF,
                ipaddress.IPv4Interface(f"{RELAY_V4}/24"),
                ipaddress.IPv6Interface(f"{RELAY_V6}/64"),
            ),
            Link(
                pair.peer_ns,
                PEER_IF,
                ipaddress.IPv4Interface(f"{PEER_V4}/24"),
                ipaddress.IPv6Interface(f"{PEER_V6}/64"),
            ),
        )
        yield pair
    finally:
        delete_netns(pair.relay_ns)
        delete_netns(pair.peer_ns)


def ip_xdp(ifname: str, netns: str | None = None) -> list[tuple[str, int, str]]:
    """What ``ip -d link show`` says is attached: (mode, program id, name) per program."""
    argv = ["ip", *(["-n", netns] if netns else []), "-d", "-j", "link", "show", "dev", ifname]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    (link,) = json.loads(out)
    attached = link.get("xdp", {}).get("attached", [])
    return [(IP_XDP_MODES[a["mode"]], a["prog"]["id"], a["prog"]["name"]) for a in attached]


def queried(ifname: str) -> dict[str, int]:
    """bpf_xdp_query_id per mode (in the calling process's namespace)."""
    ifindex = socket.if_nametoindex(ifname)
    return {mode: xdp_query_id(ifindex, flags) for mode, flags in xdp.ATTACH_MODES.items()}


# ---------------------------------------------------------------------------
# What the child runs inside the relay namespace (module level: pickled by name)
# ---------------------------------------------------------------------------


def open_front_end(ifname: str = RELAY_IF, mode: str = "auto", **kwargs: Any) -> XdpFrontEnd:
    options: dict[str, Any] = {"port": PORT, "cid_len": CID_LEN} | kwargs
    return XdpFrontEnd.open(ifname, mode=mode, **options)


def attach_and_report(ifname: str, mode: str) -> dict[str, Any]:
    """Open, look at what is attached, close, look again."""
    with open_front_end(ifname, mode) as fe:
        during = {
            "mode": fe.mode,
            "program_id": fe.program_id,
            "ip": ip_xdp(ifname),
            "query": queried(ifname),
        }
    fe.close()  # idempotent
    return {
        **during,
        "closed": fe.closed,
        "ip_after": ip_xdp(ifname),
        "query_after": queried(ifname),
    }


def open_and_forget(ifname: str, mode: str) -> int:
    """Attach and exit without closing, as a crashed relay would."""
    return open_front_end(ifname, mode).program_id


def attach_foreign_and_forget(ifname: str) -> int:
    """Another project's XDP program (count_proto), left attached in generic mode."""
    with BpfObject.open(COUNT_PROTO_OBJ) as obj:
        ifindex = socket.if_nametoindex(ifname)
        xdp_attach(ifindex, obj.program("xdp_count_proto").fd, XdpAttachFlags.SKB_MODE)
        return xdp_query_id(ifindex, XdpAttachFlags.SKB_MODE)


def replace_then_close_both(ifname: str) -> dict[str, Any]:
    first = open_front_end(ifname, "generic")
    second = open_front_end(ifname, "generic")  # takes first's program for a leftover
    first.close()  # must leave second's program attached
    after_first = ip_xdp(ifname)
    second.close()
    return {
        "first": first.program_id,
        "second": second.program_id,
        "after_first_close": after_first,
        "after_second_close": ip_xdp(ifname),
    }


def read_config(**kwargs: Any) -> bytes:
    with open_front_end(**kwargs) as fe:
        return fe.bpf_object.map(xdp.CONFIG_MAP).lookup(bytes(4))


def cid_map_entries(fe: XdpFrontEnd) -> dict[bytes, bytes]:
    cids = fe.bpf_object.map(xdp.CIDS_MAP)
    return {key: cids.lookup(key) for key in cids.keys()}  # noqa: SIM118 (a BpfMap)


def exercise_cids() -> dict[str, Any]:
    other = bytes.fromhex("0102030405060708")
    with open_front_end() as fe:
        fe.add_cid(KNOWN_CID, 7)
        fe.add_cid(other, 0xFFFFFFFF)
        both = cid_map_entries(fe)
        fe.add_cid(KNOWN_CID, 9)  # re-adding updates the session
        updated = cid_map_entries(fe)
        fe.remove_cid(other)
        fe.remove_cid(other)  # idempotent
        fe.remove_cid(UNKNOWN_CID)  # never added
        one = cid_map_entries(fe)
        errors = []
        for bad in (b"short", KNOWN_CID + b"x", b""):
            try:
                fe.add_cid(bad, 1)
            except ValueError as exc:
                errors.append(str(exc))
        fe.remove_cid(KNOWN_CID)
        return {
            "both": both,
            "updated": updated,
            "one": one,
            "none": cid_map_entries(fe),
            "errors": errors,
        }


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Switch this (single-threaded) process to ``netns`` for the block."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/ns/net") as home, open(f"/run/netns/{netns}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({netns})")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(back)")


def long_header(tag: int, size: int = 120) -> bytes:
    """A QUIC v1 Initial-like long-header datagram, told apart by ``tag``."""
    head = bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([CID_LEN]) + UNKNOWN_CID
    head += bytes([CID_LEN]) + tag.to_bytes(CID_LEN, "big")
    return head + bytes(size - len(head))


def short_header(cid: bytes, tag: int) -> bytes:
    """A 1-RTT short-header datagram long enough for the lane (fixed bit set)."""
    return bytes([0x41]) + cid + tag.to_bytes(4, "big") + bytes(40)


FIXED_BIT_CLEAR = bytes([0x00]) + b"this is not a QUIC packet at all" + bytes(7)  # 40 bytes
TOO_SHORT = bytes([0x40]) + b"hi"


class Wire:
    """UDP sockets of the peer (sending) and the relay (receiving what passes)."""

    def __init__(self, peer_ns: str) -> None:
        with in_netns(peer_ns):
            self.tx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.tx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.rx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx4.bind((RELAY_V4, PORT))
        self.rx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.rx6.bind((RELAY_V6, PORT))
        for sock in (self.rx4, self.rx6):
            sock.settimeout(5.0)

    def send(self, payload: bytes, v6: bool = False) -> None:
        if v6:
            self.tx6.sendto(payload, (RELAY_V6, PORT))
        else:
            self.tx4.sendto(payload, (RELAY_V4, PORT))

    def received(self, v6: bool = False) -> bytes:
        """The next datagram the relay's socket gets (packets arrive in order on a veth)."""
        return (self.rx6 if v6 else self.rx4).recv(65535)

    def close(self) -> None:
        for sock in (self.tx4, self.tx6, self.rx4, self.rx6):
            sock.close()


def traffic(mode: str, peer_ns: str) -> dict[str, Any]:
    """Each verdict once or twice, with real packets; what arrived and what was counted."""
    wire = Wire(peer_ns)
    arrived: list[str] = []

    def expect(payload: bytes, label: str, v6: bool = False) -> None:
        got = wire.received(v6)
        arrived.append(label if got == payload else f"{label}: got {got[:12].hex()}")

    xsk = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    try:
        with open_front_end(
            mode=mode,
            addr4=ipaddress.IPv4Address(RELAY_V4),
            addr6=ipaddress.IPv6Address(RELAY_V6),
            hs_rate_pps=1000,
            hs_burst=100,
        ) as fe:
            before = fe.counters()
            wire.send(long_header(1))
            expect(long_header(1), "long 1")
            # Dropped: the next packet to arrive is the one sent after it.
            wire.send(FIXED_BIT_CLEAR)
            wire.send(long_header(2))
            expect(long_header(2), "long 2 after fixed-bit-clear")
            wire.send(TOO_SHORT)
            wire.send(long_header(3))
            expect(long_header(3), "long 3 after too-short")
            wire.send(short_header(UNKNOWN_CID, 1))
            expect(short_header(UNKNOWN_CID, 1), "unknown cid")
            fe.add_cid(KNOWN_CID, 5)
            wire.send(short_header(KNOWN_CID, 2))
            expect(short_header(KNOWN_CID, 2), "known cid, no socket")
            fe.register_socket(0, xsk.fileno())  # veth: one RX queue, index 0
            wire.send(short_header(KNOWN_CID, 3))  # redirected to the (unbound) socket
            wire.send(long_header(4))
            expect(long_header(4), "long 4 after redirect")
            fe.unregister_socket(0)
            fe.unregister_socket(0)  # idempotent
            wire.send(short_header(KNOWN_CID, 4))
            expect(short_header(KNOWN_CID, 4), "known cid, socket gone")
            fe.remove_cid(KNOWN_CID)
            wire.send(short_header(KNOWN_CID, 5))
            expect(short_header(KNOWN_CID, 5), "cid removed")
            wire.send(long_header(5), v6=True)
            expect(long_header(5), "long 5 over IPv6", v6=True)
            return {
                "mode": fe.mode,
                "arrived": arrived,
                "before": before,
                "counters": fe.counters(),
                "bytes": fe.byte_counters(),
            }
    finally:
        xsk.close()
        wire.close()


def handshake_rate(peer_ns: str) -> dict[str, Any]:
    """Burst 2, 1 per second: the third long header in a row is dropped."""
    wire = Wire(peer_ns)
    try:
        with open_front_end(mode="generic", hs_rate_pps=1, hs_burst=2) as fe:
            for tag in (1, 2, 3):
                wire.send(long_header(tag))
            wire.send(short_header(UNKNOWN_CID, 9))
            arrived = [wire.received() for _ in range(3)]
            return {"arrived": arrived, "counters": fe.counters()}
    finally:
        wire.close()


def closed_front_end_refuses_use() -> list[str]:
    fe = open_front_end()
    fe.close()
    errors = []
    for call in (
        lambda: fe.add_cid(KNOWN_CID, 1),
        lambda: fe.counters(),
        lambda: fe.register_socket(0, 0),
    ):
        try:
            call()
        except ValueError as exc:
            errors.append(str(exc))
    return errors


def bad_queue_index() -> str:
    with open_front_end() as fe:
        try:
            fe.register_socket(xdp.MAX_QUEUES, 0)
        except ValueError as exc:
            return str(exc)
    raise AssertionError("queue index beyond the map was accepted")


# ---------------------------------------------------------------------------
# relay/xdp.py against the shared header
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> Header:
    from tests.test_bpf_relay_xdp import _compile_probe, _parse_probe

    exe = _compile_probe(tmp_path_factory.mktemp("probe"), "c11")
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    return _parse_probe(out)


def field(layout: Layout, data: bytes, name: str) -> bytes:
    offset, size = layout.fields[name]
    return data[offset : offset + size]


def test_names_and_constants_match_the_header(header: Header) -> None:
    assert header.str("MASQUE_PROG_RELAY_XDP_NAME") == xdp.PROGRAM_NAME
    assert header.str("MASQUE_MAP_XDP_CONFIG_NAME") == xdp.CONFIG_MAP
    assert header.str("MASQUE_MAP_XDP_CIDS_NAME") == xdp.CIDS_MAP
    assert header.str("MASQUE_MAP_XDP_XSKS_NAME") == xdp.XSKS_MAP
    assert header.str("MASQUE_MAP_XDP_COUNTERS_NAME") == xdp.COUNTERS_MAP
    assert header.int("MASQUE_XDP_CID_MAX") == xdp.CID_MAX
    assert header.int("MASQUE_XDP_MAX_QUEUES") == xdp.MAX_QUEUES
    assert header.int("MASQUE_XDP_F_ENABLED") == xdp.F_ENABLED
    assert header.int("AF_XDP") == AF_XDP
    slots = sorted(header.reasons.items(), key=lambda item: item[1])
    assert tuple(name.lower() for name, _ in slots) == xdp.REASONS
    assert len(xdp.REASONS) == header.int("MASQUE_XDP_REASON_COUNT")


def test_encodings_match_the_header_layouts(header: Header) -> None:
    layouts = header.layouts
    addr4, addr6 = ipaddress.IPv4Address("198.51.100.7"), ipaddress.IPv6Address("2001:db8::7")
    config = xdp.encode_config(
        port=0x1151, addr4=addr4, addr6=addr6, cid_len=8, hs_rate_pps=0x01020304, hs_burst=77
    )
    assert config == layouts["masque_xdp_config"].pack(
        flags=header.int("MASQUE_XDP_F_ENABLED"),
        addr4=addr4.packed,
        addr6=addr6.packed,
        port=(0x1151).to_bytes(2, "big"),
        cid_len=8,
        hs_rate_pps=0x01020304,
        hs_burst=77,
    )
    disabled = xdp.encode_config(
        port=1, addr4=None, addr6=None, cid_len=20, hs_rate_pps=0, hs_burst=0, enabled=False
    )
    assert disabled == layouts["masque_xdp_config"].pack(port=b"\x00\x01", cid_len=20)
    assert xdp.encode_cid_key(b"\xaa\xbb") == layouts["masque_xdp_cid_key"].pack(
        cid=b"\xaa\xbb".ljust(header.int("MASQUE_XDP_CID_MAX"), b"\0")
    )
    assert xdp.encode_cid_value(0xDEADBEEF) == layouts["masque_xdp_cid_value"].pack(
        session_id=0xDEADBEEF
    )
    counter = layouts["masque_xdp_counter"].pack(packets=3, bytes=1500)
    assert xdp._COUNTER.unpack(counter) == (3, 1500)
    with pytest.raises(ValueError, match="1 to 20 bytes"):
        xdp.encode_cid_key(bytes(21))


def test_prog_info_offsets_match_linux_bpf_h(tmp_path: Path) -> None:
    """relay/xdp.py reads a program's id and name from a partial struct bpf_prog_info."""
    from tests.test_bpf_relay_xdp import _cc

    src = tmp_path / "info.c"
    src.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/bpf.h>\n"
        "int main(void) {\n"
        '\tprintf("%zu %zu %zu\\n", offsetof(struct bpf_prog_info, id),\n'
        "\t       offsetof(struct bpf_prog_info, name),\n"
        "\t       sizeof(((struct bpf_prog_info *)0)->name));\n"
        "\treturn 0;\n}\n"
    )
    exe = tmp_path / "info"
    subprocess.run([_cc(), "-Wall", "-Werror", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    assert tuple(map(int, out.split())) == (
        xdp.PROG_INFO_ID_OFFSET,
        xdp.PROG_INFO_NAME_OFFSET,
        xdp.PROG_INFO_NAME_SIZE,
    )


def test_xdp_unavailable_pickles_with_its_interface() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(XdpUnavailable("eth0", "no such interface")))
    assert (exc.ifname, exc.reason, str(exc)) == ("eth0", "no such interface", "no such interface")


def test_bad_arguments_are_value_errors() -> None:
    for kwargs, words in (
        ({"mode": "off"}, "XDP mode must be one of auto, native, generic"),
        ({"port": 0}, "port must be between 1 and 65535"),
        ({"cid_len": 0}, "cid_len must be between 1 and 20"),
        ({"cid_len": 21}, "cid_len must be between 1 and 20"),
        ({"hs_rate_pps": -1}, "hs_rate_pps must be between 0"),
        ({"hs_burst": 1 << 32}, "hs_burst must be between 0"),
    ):
        with pytest.raises(ValueError, match=words):
            open_front_end("mqnope0", **kwargs)  # refused before the interface is looked up


# ---------------------------------------------------------------------------
# Attaching, detaching, replacing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "attached_as"), [("native", "native"), ("generic", "generic"), ("auto", "native")]
)
def test_attach_and_close(veth: Veth, mode: str, attached_as: str) -> None:
    report = run_in_netns(veth.relay_ns, attach_and_report, RELAY_IF, mode)
    prog_id = report["program_id"]
    assert report["mode"] == attached_as
    assert report["ip"] == [(attached_as, prog_id, "xdp_relay")]  # exactly ours
    other = "generic" if attached_as == "native" else "native"
    assert report["query"] == {attached_as: prog_id, other: 0}
    assert report["closed"]
    assert report["ip_after"] == [] and report["query_after"] == {"native": 0, "generic": 0}
    assert ip_xdp(RELAY_IF, veth.relay_ns) == []


def test_auto_falls_back_to_generic_where_native_is_unsupported(veth: Veth) -> None:
    report = run_in_netns(veth.relay_ns, attach_and_report, "lo", "auto")  # lo: no native XDP
    assert report["mode"] == "generic"
    assert report["ip"] == [("generic", report["program_id"], "xdp_relay")]
    assert report["ip_after"] == []


def test_native_where_unsupported_is_unavailable(veth: Veth) -> None:
    with pytest.raises(XdpUnavailable) as info:
        run_in_netns(veth.relay_ns, attach_and_report, "lo", "native")
    assert info.value.ifname == "lo"
    reason = str(info.value)
    assert reason.startswith("native mode: ") and "Operation not supported" in reason, reason
    # The kernel's own words, taken from libbpf's log instead of stderr.
    assert "does not support XDP in native mode" in reason, reason
    assert "\n" not in reason
    assert ip_xdp("lo", veth.relay_ns) == []


def test_missing_interface_is_unavailable(veth: Veth) -> None:
    with pytest.raises(XdpUnavailable) as info:
        run_in_netns(veth.relay_ns, attach_and_report, "mqnope0", "auto")
    assert info.value.ifname == "mqnope0"
    assert str(info.value) == "no such interface in this network namespace"


def test_missing_object_is_unavailable(veth: Veth, tmp_path: Path) -> None:
    with pytest.raises(XdpUnavailable, match=r"does not exist \(build it with `make bpf`\)"):
        run_in_netns(veth.relay_ns, open_front_end, RELAY_IF, obj_path=tmp_path / "none.o")
    with pytest.raises(XdpUnavailable, match="is not relay_xdp"):
        run_in_netns(veth.relay_ns, open_front_end, RELAY_IF, obj_path=COUNT_PROTO_OBJ)
    assert ip_xdp(RELAY_IF, veth.relay_ns) == []


@pytest.mark.parametrize(
    ("first", "second", "attached_as"),
    [
        ("native", "native", "native"),  # same mode: swapped atomically
        ("generic", "generic", "generic"),
        ("generic", "auto", "native"),  # other mode: detached, then attached
        ("native", "generic", "generic"),
    ],
)
def test_leftover_program_is_replaced_not_stacked(
    veth: Veth, first: str, second: str, attached_as: str
) -> None:
    leftover = run_in_netns(veth.relay_ns, open_and_forget, RELAY_IF, first)
    assert ip_xdp(RELAY_IF, veth.relay_ns) == [(first, leftover, "xdp_relay")]

    report = run_in_netns(veth.relay_ns, attach_and_report, RELAY_IF, second)
    assert report["program_id"] != leftover
    assert report["ip"] == [(attached_as, report["program_id"], "xdp_relay")]
    assert ip_xdp(RELAY_IF, veth.relay_ns) == []


def test_foreign_program_is_left_alone(veth: Veth) -> None:
    foreign = run_in_netns(veth.relay_ns, attach_foreign_and_forget, RELAY_IF)
    with pytest.raises(XdpUnavailable) as info:
        run_in_netns(veth.relay_ns, attach_and_report, RELAY_IF, "auto")
    assert str(info.value) == (
        f"another XDP program is attached ('xdp_count_proto', id {foreign}, generic mode) "
        "and it is not relay_xdp: not replacing it"
    )
    assert ip_xdp(RELAY_IF, veth.relay_ns) == [("generic", foreign, "xdp_count_proto")]


def test_close_detaches_only_our_own_program(veth: Veth) -> None:
    report = run_in_netns(veth.relay_ns, replace_then_close_both, RELAY_IF)
    assert report["first"] != report["second"]
    assert report["after_first_close"] == [("generic", report["second"], "xdp_relay")]
    assert report["after_second_close"] == []


def test_closed_front_end_refuses_use(veth: Veth) -> None:
    errors = run_in_netns(veth.relay_ns, closed_front_end_refuses_use)
    assert errors == [f"the XDP front end on {RELAY_IF} is closed"] * 3


# ---------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------


def test_config_map_holds_what_open_was_given(veth: Veth, header: Header) -> None:
    layout = header.layouts["masque_xdp_config"]
    raw = run_in_netns(
        veth.relay_ns,
        read_config,
        port=443,
        addr4=ipaddress.IPv4Address(RELAY_V4),
        addr6=ipaddress.IPv6Address(RELAY_V6),
        cid_len=12,
        hs_rate_pps=250,
        hs_burst=40,
    )
    assert len(raw) == layout.size
    assert layout.unpack_int(raw, "flags") == header.int("MASQUE_XDP_F_ENABLED")
    assert field(layout, raw, "addr4") == socket.inet_pton(socket.AF_INET, RELAY_V4)
    assert field(layout, raw, "addr6") == socket.inet_pton(socket.AF_INET6, RELAY_V6)
    assert field(layout, raw, "port") == (443).to_bytes(2, "big")  # network order
    assert layout.unpack_int(raw, "cid_len") == 12
    assert layout.unpack_int(raw, "hs_rate_pps") == 250
    assert layout.unpack_int(raw, "hs_burst") == 40
    assert layout.unpack_int(raw, "reserved0") == layout.unpack_int(raw, "reserved1") == 0

    any_address = run_in_netns(veth.relay_ns, read_config)
    assert field(layout, any_address, "addr4") == bytes(4)
    assert field(layout, any_address, "addr6") == bytes(16)
    assert layout.unpack_int(any_address, "hs_rate_pps") == 1000
    assert layout.unpack_int(any_address, "hs_burst") == 100


def test_cids_are_added_and_removed_in_the_map(veth: Veth, header: Header) -> None:
    report = run_in_netns(veth.relay_ns, exercise_cids)
    value = header.layouts["masque_xdp_cid_value"]
    cid_max = header.int("MASQUE_XDP_CID_MAX")

    def sessions(entries: dict[bytes, bytes]) -> dict[bytes, int]:
        for key in entries:
            assert len(key) == cid_max and key[CID_LEN:] == bytes(cid_max - CID_LEN)
        return {k[:CID_LEN]: value.unpack_int(v, "session_id") for k, v in entries.items()}

    other = bytes.fromhex("0102030405060708")
    assert sessions(report["both"]) == {KNOWN_CID: 7, other: 0xFFFFFFFF}
    assert sessions(report["updated"]) == {KNOWN_CID: 9, other: 0xFFFFFFFF}
    assert sessions(report["one"]) == {KNOWN_CID: 9}
    assert report["none"] == {}
    assert report["errors"] == [
        "connection ID 73686f7274 is 5 bytes; the relay's are 8",
        f"connection ID {(KNOWN_CID + b'x').hex()} is 9 bytes; the relay's are 8",
        "connection ID  is 0 bytes; the relay's are 8",
    ]


def test_socket_queue_index_is_checked(veth: Veth) -> None:
    message = run_in_netns(veth.relay_ns, bad_queue_index)
    assert message == f"RX queue {xdp.MAX_QUEUES} is beyond the socket map (0 to 63)"


# ---------------------------------------------------------------------------
# Real traffic through the attached program
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_counters_follow_real_traffic(veth: Veth, mode: str) -> None:
    report = run_in_netns(veth.relay_ns, traffic, mode, veth.peer_ns)
    assert report["mode"] == mode
    assert report["before"] == dict.fromkeys(xdp.REASONS, 0)
    assert report["arrived"] == [
        "long 1",
        "long 2 after fixed-bit-clear",
        "long 3 after too-short",
        "unknown cid",
        "known cid, no socket",
        "long 4 after redirect",
        "known cid, socket gone",
        "cid removed",
        "long 5 over IPv6",
    ]
    counters = report["counters"]
    assert counters.pop("pass_other") >= 1  # ARP and neighbour discovery, at least
    assert counters == {
        "redirect": 1,
        "long_header": 5,
        "unknown_cid": 2,
        "drop_too_short": 1,
        "drop_fixed_bit": 1,
        "drop_handshake_rate": 0,
        "pass_no_xsk": 2,
        "pass_disabled": 0,
        "pass_too_big": 0,
    }
    eth_ip4_udp = 14 + 20 + 8
    assert report["bytes"]["drop_fixed_bit"] == eth_ip4_udp + len(FIXED_BIT_CLEAR)
    assert report["bytes"]["drop_too_short"] == eth_ip4_udp + len(TOO_SHORT)
    assert report["bytes"]["long_header"] == 4 * (eth_ip4_udp + 120) + (14 + 40 + 8 + 120)


def test_handshake_rate_limit_applies(veth: Veth) -> None:
    report = run_in_netns(veth.relay_ns, handshake_rate, veth.peer_ns)
    assert report["arrived"] == [long_header(1), long_header(2), short_header(UNKNOWN_CID, 9)]
    counters = report["counters"]
    assert (counters["long_header"], counters["drop_handshake_rate"]) == (2, 1)
