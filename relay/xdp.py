"""The relay's XDP front end: bpf/relay_xdp.bpf.o loaded, configured and attached.

One program on one interface, attached directly (libxdp's multi-program
dispatcher cannot load on the kernels we target)::

    with XdpFrontEnd.open("eth0", mode="auto", port=4433, addr4=None, addr6=None,
                          cid_len=8, hs_rate_pps=1000, hs_burst=100) as xdp:
        xdp.add_cid(cid, session_id)         # short headers with this DCID go to the lane
        xdp.register_socket(queue, xsk_fd)   # the lane's AF_XDP socket of RX queue `queue`
        xdp.counters()                       # {"redirect": ..., "long_header": ..., ...}

What the program does with each frame, and the layouts of its maps, are
documented in bpf/include/masque_bpf.h. This module re-states the few layouts it
writes with :mod:`struct` (the relay must not need a C compiler at run time);
tests/test_relay_xdp.py checks them against the header with a compiled probe.

Attaching: ``native`` is driver mode (``XDP_FLAGS_DRV_MODE``), ``generic`` is
SKB mode, ``auto`` tries native and then generic. A relay_xdp program already
on the interface is taken for the leftover of a relay that did not shut down
cleanly and is replaced (atomically when it is in the mode being attached, by
detach-then-attach otherwise: the kernel refuses native and generic programs
at once), never stacked. Any other program is left alone and the front end is
unavailable. :meth:`XdpFrontEnd.close` detaches only the program it attached.
Everything that prevents attaching raises :class:`XdpUnavailable` with a
one-line reason, so the relay can fall back to its UDP socket path.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import cffi

from relay.libbpf import (
    LIBBPF_SONAME,
    BpfMap,
    BpfObject,
    LibbpfError,
    XdpAttachFlags,
    xdp_attach,
    xdp_detach,
    xdp_query_id,
)

__all__ = [
    "ATTACH_MODES",
    "CID_MAX",
    "DEFAULT_OBJECT",
    "MAX_QUEUES",
    "PROGRAM_NAME",
    "REASONS",
    "XdpFrontEnd",
    "XdpUnavailable",
    "encode_cid_key",
    "encode_cid_value",
    "encode_config",
]

log = logging.getLogger(__name__)

DEFAULT_OBJECT: Final = Path(__file__).resolve().parent.parent / "bpf" / "build" / "relay_xdp.bpf.o"

# -- what bpf/include/masque_bpf.h defines (checked by tests/test_relay_xdp.py) --

PROGRAM_NAME: Final = "xdp_relay"  # MASQUE_PROG_RELAY_XDP_NAME
CONFIG_MAP: Final = "relay_config"  # MASQUE_MAP_XDP_CONFIG_NAME
CIDS_MAP: Final = "relay_cids"  # MASQUE_MAP_XDP_CIDS_NAME
XSKS_MAP: Final = "xsks_map"  # MASQUE_MAP_XDP_XSKS_NAME
COUNTERS_MAP: Final = "relay_counters"  # MASQUE_MAP_XDP_COUNTERS_NAME

CID_MAX: Final = 20  # MASQUE_XDP_CID_MAX
MAX_QUEUES: Final = 64  # MASQUE_XDP_MAX_QUEUES
F_ENABLED: Final = 0x1  # MASQUE_XDP_F_ENABLED

#: ``enum masque_xdp_reason``, lower-cased, in slot order (slot i = REASONS[i]).
REASONS: Final = (
    "redirect",
    "pass_other",
    "long_header",
    "unknown_cid",
    "drop_too_short",
    "drop_fixed_bit",
    "drop_handshake_rate",
    "pass_no_xsk",
    "pass_disabled",
    "pass_too_big",
)

# struct masque_xdp_config: flags, addr4 (network order), addr6, port (network
# order), cid_len, reserved0, hs_rate_pps, hs_burst, reserved1.
_CONFIG: Final = struct.Struct("=I4s16s2sBBIII")
# struct masque_xdp_cid_value: session_id, flags.
_CID_VALUE: Final = struct.Struct("=II")
# struct masque_xdp_counter: packets, bytes.
_COUNTER: Final = struct.Struct("=QQ")
# Array, per-CPU array and XSKMAP keys, XSKMAP values (the socket fd).
_U32: Final = struct.Struct("=I")

_U32_MAX: Final = 0xFFFFFFFF

#: Attach modes: the name, and the ``XDP_FLAGS_*`` mode flag.
ATTACH_MODES: Final = {
    "native": XdpAttachFlags.DRV_MODE,
    "generic": XdpAttachFlags.SKB_MODE,
}
_MODE_ORDER: Final = {
    "auto": ("native", "generic"),
    "native": ("native",),
    "generic": ("generic",),
}


def encode_config(
    *,
    port: int,
    addr4: ipaddress.IPv4Address | None,
    addr6: ipaddress.IPv6Address | None,
    cid_len: int,
    hs_rate_pps: int,
    hs_burst: int,
    enabled: bool = True,
) -> bytes:
    """The value of the config map (``struct masque_xdp_config``), host layout."""
    return _CONFIG.pack(
        F_ENABLED if enabled else 0,
        addr4.packed if addr4 is not None else bytes(4),
        addr6.packed if addr6 is not None else bytes(16),
        port.to_bytes(2, "big"),
        cid_len,
        0,
        hs_rate_pps,
        hs_burst,
        0,
    )


def encode_cid_key(cid: bytes) -> bytes:
    """``struct masque_xdp_cid_key``: the CID, zero-padded to :data:`CID_MAX` bytes."""
    if not 1 <= len(cid) <= CID_MAX:
        raise ValueError(f"a connection ID is 1 to {CID_MAX} bytes, not {len(cid)}")
    return cid.ljust(CID_MAX, b"\0")


def encode_cid_value(session_id: int) -> bytes:
    """``struct masque_xdp_cid_value`` for the lane session ``session_id``."""
    return _CID_VALUE.pack(session_id, 0)


class XdpUnavailable(Exception):
    """The XDP front end cannot run on ``ifname``; ``str()`` is the one-line reason."""

    ifname: str
    reason: str

    def __init__(self, ifname: str, reason: str) -> None:
        super().__init__(ifname, reason)  # both in args: the exception pickles
        self.ifname = ifname
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class _Attached:
    """A program found attached to the interface."""

    mode: str  # "native" or "generic"
    prog_id: int


class XdpFrontEnd:
    """relay_xdp attached to one interface; create with :meth:`open`.

    Map updates may be made from any thread; :meth:`open` and :meth:`close`
    talk netlink in the calling thread's network namespace.
    """

    def __init__(
        self, obj: BpfObject, ifname: str, ifindex: int, mode: str, program_id: int, cid_len: int
    ) -> None:
        """Wrap an attached program; use :meth:`open`."""
        self._obj: BpfObject | None = obj
        self._ifname = ifname
        self._ifindex = ifindex
        self._mode = mode
        self._program_id = program_id
        self._cid_len = cid_len
        self._prog_fd = obj.program(PROGRAM_NAME).fd
        self._cids = obj.map(CIDS_MAP)
        self._xsks = obj.map(XSKS_MAP)
        self._counters = obj.map(COUNTERS_MAP)

    @classmethod
    def open(
        cls,
        ifname: str,
        *,
        mode: str = "auto",
        port: int,
        addr4: ipaddress.IPv4Address | None = None,
        addr6: ipaddress.IPv6Address | None = None,
        cid_len: int,
        hs_rate_pps: int = 1000,
        hs_burst: int = 100,
        obj_path: str | os.PathLike[str] = DEFAULT_OBJECT,
    ) -> Self:
        """Load relay_xdp, write its configuration and attach it to ``ifname``.

        ``mode`` is ``"auto"`` (native, else generic), ``"native"`` or
        ``"generic"``. ``addr4``/``addr6`` restrict the destination address
        (``None``: any), ``port`` is the relay's UDP port, ``cid_len`` the
        length of every connection ID the relay issues. Long-header packets
        are limited to ``hs_rate_pps`` per second per source with bursts of
        ``hs_burst`` (rate 0: no limit). Raises :class:`XdpUnavailable` when
        the program cannot be attached in any allowed mode, ``ValueError``
        for bad arguments.
        """
        if mode not in _MODE_ORDER:
            raise ValueError(f"XDP mode must be one of {', '.join(_MODE_ORDER)}, not {mode!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, not {port}")
        if not 1 <= cid_len <= CID_MAX:
            raise ValueError(f"cid_len must be between 1 and {CID_MAX}, not {cid_len}")
        for name, value in (("hs_rate_pps", hs_rate_pps), ("hs_burst", hs_burst)):
            if not 0 <= value <= _U32_MAX:
                raise ValueError(f"{name} must be between 0 and {_U32_MAX}, not {value}")
        config = encode_config(
            port=port,
            addr4=addr4,
            addr6=addr6,
            cid_len=cid_len,
            hs_rate_pps=hs_rate_pps,
            hs_burst=hs_burst,
        )

        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise XdpUnavailable(ifname, "no such interface in this network namespace") from None
        obj = _load(ifname, obj_path)
        try:
            obj.map(CONFIG_MAP).update(_U32.pack(0), config)
            prog_fd = obj.program(PROGRAM_NAME).fd
            program_id = _prog_id_and_name(prog_fd)[0]
            chosen = _attach(ifname, ifindex, prog_fd, _MODE_ORDER[mode])
            front_end = cls(obj, ifname, ifindex, chosen, program_id, cid_len)
        except LibbpfError as exc:  # anything unforeseen: still a reason to fall back
            obj.close()
            raise XdpUnavailable(ifname, str(exc)) from None
        except BaseException:
            obj.close()
            raise
        log.info(
            "XDP: relay_xdp attached to %s in %s mode (program id %d)",
            ifname,
            chosen,
            program_id,
        )
        return front_end

    # -- properties ------------------------------------------------------------------

    @property
    def ifname(self) -> str:
        return self._ifname

    @property
    def ifindex(self) -> int:
        return self._ifindex

    @property
    def mode(self) -> str:
        """The mode the program was attached in: ``"native"`` or ``"generic"``."""
        return self._mode

    @property
    def program_id(self) -> int:
        """The kernel's id of our program (as ``ip -d link`` and ``bpftool`` show it)."""
        return self._program_id

    @property
    def cid_len(self) -> int:
        return self._cid_len

    @property
    def closed(self) -> bool:
        return self._obj is None

    @property
    def bpf_object(self) -> BpfObject:
        """The loaded object, for reading its maps directly (metrics, debugging)."""
        return self._live()

    # -- connection IDs and sockets --------------------------------------------------

    def add_cid(self, cid: bytes, session_id: int) -> None:
        """Steer short-header packets whose destination CID is ``cid`` to the lane."""
        self._live()
        if len(cid) != self._cid_len:
            raise ValueError(
                f"connection ID {cid.hex()} is {len(cid)} bytes; the relay's are {self._cid_len}"
            )
        if not 0 <= session_id <= _U32_MAX:
            raise ValueError(f"session_id must fit 32 bits, not {session_id}")
        self._cids.update(encode_cid_key(cid), encode_cid_value(session_id))

    def remove_cid(self, cid: bytes) -> None:
        """Stop steering ``cid`` (absent is fine)."""
        self._live()
        if not 1 <= len(cid) <= CID_MAX:
            return  # could never have been added
        with contextlib.suppress(KeyError):
            self._cids.delete(encode_cid_key(cid))

    def register_socket(self, queue: int, fd: int) -> None:
        """Put the AF_XDP socket ``fd`` (bound to RX queue ``queue``) in the socket map."""
        self._live()
        self._check_queue(queue)
        self._xsks.update(_U32.pack(queue), _U32.pack(fd))

    def unregister_socket(self, queue: int) -> None:
        """Remove the socket of RX queue ``queue`` (none there is fine)."""
        self._live()
        self._check_queue(queue)
        with contextlib.suppress(KeyError):
            self._xsks.delete(_U32.pack(queue))

    def _check_queue(self, queue: int) -> None:
        if not 0 <= queue < self._xsks.max_entries:
            raise ValueError(
                f"RX queue {queue} is beyond the socket map (0 to {self._xsks.max_entries - 1})"
            )

    # -- counters --------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Packets counted per reason (every name of :data:`REASONS`), all CPUs summed."""
        return {reason: packets for reason, (packets, _) in self._sums().items()}

    def byte_counters(self) -> dict[str, int]:
        """Bytes (from the Ethernet header on) counted per reason, all CPUs summed."""
        return {reason: nbytes for reason, (_, nbytes) in self._sums().items()}

    def _sums(self) -> dict[str, tuple[int, int]]:
        self._live()
        sums = {}
        for slot, reason in enumerate(REASONS):
            packets = nbytes = 0
            for value in self._counters.lookup_percpu(_U32.pack(slot)):
                p, b = _COUNTER.unpack(value)
                packets += p
                nbytes += b
            sums[reason] = (packets, nbytes)
        return sums

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Detach our program (only if it is still the one attached) and unload (idempotent)."""
        obj = self._obj
        if obj is None:
            return
        try:
            with _kernel_messages() as messages:
                xdp_detach(self._ifindex, ATTACH_MODES[self._mode], old_prog_fd=self._prog_fd)
        except LibbpfError as exc:
            if exc.errno == errno.EEXIST:  # another program is attached now: not ours to remove
                log.warning(
                    "XDP: %s no longer runs our program (id %d); leaving the attached one alone",
                    self._ifname,
                    self._program_id,
                )
            elif exc.errno == errno.ENODEV:
                log.info("XDP: %s is gone; nothing to detach", self._ifname)
            else:
                log.warning(
                    "XDP: detaching from %s failed: %s", self._ifname, _reason(exc, messages)
                )
        else:
            log.info("XDP: relay_xdp detached from %s", self._ifname)
        finally:
            self._obj = None
            obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._mode}, program id {self._program_id}"
        return f"<XdpFrontEnd {self._ifname} ({state})>"

    def _live(self) -> BpfObject:
        if self._obj is None:
            raise ValueError(f"the XDP front end on {self._ifname} is closed")
        return self._obj


# -- loading and attaching --------------------------------------------------------------


def _load(ifname: str, obj_path: str | os.PathLike[str]) -> BpfObject:
    """Open and load the object, and check that its maps have the layouts used here."""
    path = Path(obj_path)
    if not path.exists():
        raise XdpUnavailable(ifname, f"{path} does not exist (build it with `make bpf`)")
    try:
        obj = BpfObject.open(path)
    except LibbpfError as exc:
        if exc.errno == errno.EPERM:
            raise XdpUnavailable(
                ifname, "loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN)"
            ) from None
        raise XdpUnavailable(ifname, str(exc)) from None
    except OSError as exc:  # libbpf.so.1 itself is missing
        raise XdpUnavailable(ifname, str(exc)) from None
    try:
        expected = {
            CONFIG_MAP: (_U32.size, _CONFIG.size),
            CIDS_MAP: (CID_MAX, _CID_VALUE.size),
            XSKS_MAP: (_U32.size, _U32.size),
            COUNTERS_MAP: (_U32.size, _COUNTER.size),
        }
        for name, sizes in expected.items():
            map_: BpfMap = obj.map(name)
            if (map_.key_size, map_.value_size) != sizes:
                raise XdpUnavailable(
                    ifname,
                    f"{path} does not match relay/xdp.py: map {name} has key/value sizes "
                    f"{map_.key_size}/{map_.value_size}, expected {sizes[0]}/{sizes[1]} "
                    "(rebuild with `make bpf`)",
                )
        if obj.map(COUNTERS_MAP).max_entries != len(REASONS):
            raise XdpUnavailable(
                ifname,
                f"{path} counts {obj.map(COUNTERS_MAP).max_entries} reasons, "
                f"relay/xdp.py knows {len(REASONS)} (rebuild with `make bpf`)",
            )
        obj.program(PROGRAM_NAME)
    except LibbpfError as exc:  # a program or map missing: not our object
        obj.close()
        raise XdpUnavailable(ifname, f"{path} is not relay_xdp: {exc}") from None
    except BaseException:
        obj.close()
        raise
    return obj


def _attach(ifname: str, ifindex: int, prog_fd: int, modes: tuple[str, ...]) -> str:
    """Attach ``prog_fd`` in the first of ``modes`` that works; return that mode."""
    leftover = _attached_program(ifindex)
    if leftover is not None:
        name = _prog_name_by_id(leftover.prog_id)
        if name != PROGRAM_NAME:
            raise XdpUnavailable(
                ifname,
                f"another XDP program is attached ({name or '?'!r}, id {leftover.prog_id}, "
                f"{leftover.mode} mode) and it is not relay_xdp: not replacing it",
            )
        log.warning(
            "XDP: replacing the relay_xdp program left on %s (id %d, %s mode) "
            "by a relay that did not shut down cleanly",
            ifname,
            leftover.prog_id,
            leftover.mode,
        )
    failures = []
    for mode in modes:
        flags = ATTACH_MODES[mode]
        try:
            with _kernel_messages() as messages:
                if leftover is not None and leftover.mode == mode:
                    # Atomic: the kernel swaps only if the leftover is still there.
                    with _prog_fd_by_id(leftover.prog_id) as old_fd:
                        xdp_attach(ifindex, prog_fd, flags, old_prog_fd=old_fd)
                else:
                    if leftover is not None:
                        # Native and generic cannot be attached at once: remove it first.
                        with _prog_fd_by_id(leftover.prog_id) as old_fd:
                            mode_flags = ATTACH_MODES[leftover.mode]
                            xdp_detach(ifindex, mode_flags, old_prog_fd=old_fd)
                        leftover = None
                    xdp_attach(ifindex, prog_fd, flags | XdpAttachFlags.UPDATE_IF_NOEXIST)
        except LibbpfError as exc:
            if exc.errno == errno.ENODEV:
                raise XdpUnavailable(ifname, "the interface disappeared while attaching") from None
            reason = _reason(exc, messages)
            failures.append(f"{mode} mode: {reason}")
            if mode != modes[-1]:
                log.info(
                    "XDP: %s mode unavailable on %s: %s; trying the next", mode, ifname, reason
                )
            continue
        return mode
    raise XdpUnavailable(ifname, "; ".join(failures))


def _attached_program(ifindex: int) -> _Attached | None:
    """The program attached to ``ifindex`` in native or generic mode, if any."""
    for mode, flags in ATTACH_MODES.items():
        prog_id = xdp_query_id(ifindex, flags)
        if prog_id:
            return _Attached(mode, prog_id)
    return None


def _reason(exc: LibbpfError, kernel_messages: list[str]) -> str:
    """The kernel's own explanation (netlink extack) if it gave one, else the errno text."""
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    if kernel_messages:
        return f"{kernel_messages[-1]} ({text})"
    return text


_KERNEL_MESSAGE_PREFIX: Final = "libbpf: Kernel error message: "


class _KernelMessageFilter(logging.Filter):
    """Takes libbpf's "Kernel error message" lines (netlink extack) out of its log."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(_KERNEL_MESSAGE_PREFIX):
            self.messages.append(text.removeprefix(_KERNEL_MESSAGE_PREFIX).strip())
            return False  # reported in our own message instead
        return True


@contextlib.contextmanager
def _kernel_messages() -> Iterator[list[str]]:
    """Collect the kernel's explanations of failed netlink calls made in the block.

    Best effort: they arrive through libbpf's print callback, which exists only
    where :mod:`relay.libbpf` could install it and the logger is enabled.
    """
    libbpf_log = logging.getLogger("relay.libbpf")
    capture = _KernelMessageFilter()
    libbpf_log.addFilter(capture)
    try:
        yield capture.messages
    finally:
        libbpf_log.removeFilter(capture)


# -- program ids and names (two libbpf calls relay.libbpf does not bind) ----------------

_INFO_CDEF: Final = """
int bpf_prog_get_fd_by_id(uint32_t id);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);
"""
_ffi: Final = cffi.FFI()
_ffi.cdef(_INFO_CDEF)

# struct bpf_prog_info (<linux/bpf.h>) up to and including `name`: the kernel
# fills as much as we pass. tests/test_relay_xdp.py checks these offsets.
PROG_INFO_ID_OFFSET: Final = 4
PROG_INFO_NAME_OFFSET: Final = 64
PROG_INFO_NAME_SIZE: Final = 16  # BPF_OBJ_NAME_LEN
_PROG_INFO_SIZE: Final = PROG_INFO_NAME_OFFSET + PROG_INFO_NAME_SIZE


@cache
def _libbpf() -> Any:
    return _ffi.dlopen(LIBBPF_SONAME)


def _check(rc: int, call: str, detail: str) -> int:
    if rc < 0:
        raise LibbpfError(-rc, call, detail)
    return rc


def _prog_id_and_name(prog_fd: int) -> tuple[int, str]:
    """The kernel's id and (up to 15 characters of) name of the program ``prog_fd``."""
    info = _ffi.new("unsigned char[]", _PROG_INFO_SIZE)
    size = _ffi.new("uint32_t *", _PROG_INFO_SIZE)
    _check(
        _libbpf().bpf_obj_get_info_by_fd(prog_fd, info, size),
        "bpf_obj_get_info_by_fd",
        f"fd={prog_fd}",
    )
    raw = bytes(_ffi.buffer(info, _PROG_INFO_SIZE))
    (prog_id,) = _U32.unpack_from(raw, PROG_INFO_ID_OFFSET)
    name = raw[PROG_INFO_NAME_OFFSET:_PROG_INFO_SIZE].split(b"\0", 1)[0]
    return prog_id, name.decode("ascii", "replace")


@contextlib.contextmanager
def _prog_fd_by_id(prog_id: int) -> Iterator[int]:
    """An fd of the program with kernel id ``prog_id``, closed after the block."""
    fd = _check(_libbpf().bpf_prog_get_fd_by_id(prog_id), "bpf_prog_get_fd_by_id", f"id={prog_id}")
    try:
        yield fd
    finally:
        os.close(fd)


def _prog_name_by_id(prog_id: int) -> str:
    """The name of the program with kernel id ``prog_id``; ``""`` if it cannot be read."""
    try:
        with _prog_fd_by_id(prog_id) as fd:
            return _prog_id_and_name(fd)[1]
    except LibbpfError as exc:
        log.debug("cannot read the name of BPF program %d: %s", prog_id, exc)
        return ""
