"""A small binding of libbpf 1.x (cffi ABI mode) for loading and driving BPF objects.

Only what the relay's XDP code needs: open/load/close an object file, find
programs and maps by name, read and write map elements, run a program on a
packet with ``BPF_PROG_TEST_RUN``, and attach/detach XDP programs::

    with BpfObject.open("bpf/build/count_proto.bpf.o") as obj:
        result = obj.program("xdp_count_proto").test_run(frame)
        per_cpu = obj.map("proto_counters").lookup_percpu(key)

libbpf is loaded with ``dlopen("libbpf.so.1")`` on first use, so importing this
module works on hosts without libbpf. Failed libbpf calls raise
:class:`LibbpfError`, an ``OSError`` whose ``errno`` is the error libbpf reported
and whose message names the call. libbpf's own messages (including the
verifier log when a program is rejected) go to the ``relay.libbpf`` logger
instead of stderr.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Any, Final, Self

import cffi

__all__ = [
    "BpfMap",
    "BpfMapType",
    "BpfObject",
    "BpfProgram",
    "LibbpfError",
    "MapUpdateFlags",
    "TestRunResult",
    "XdpAction",
    "XdpAttachFlags",
    "num_possible_cpus",
    "xdp_attach",
    "xdp_detach",
    "xdp_query_id",
]

log = logging.getLogger(__name__)

LIBBPF_SONAME: Final = "libbpf.so.1"

# Declarations copied from libbpf 1.1's <bpf/libbpf.h>, <bpf/bpf.h> and
# <bpf/libbpf_legacy.h>. Struct layouts must match the headers byte for byte:
# tests/test_bpf_libbpf.py compares them with what gcc computes. libbpf's
# "opts" structs start with `sz`, which must be set to their size, so a newer
# libbpf.so.1 accepts them as the older layout.
_CDEF: Final = """
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_object_open_opts;

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    uint32_t data_size_in;
    uint32_t data_size_out;
    const void *ctx_in;
    void *ctx_out;
    uint32_t ctx_size_in;
    uint32_t ctx_size_out;
    uint32_t retval;
    int repeat;
    uint32_t duration;
    uint32_t flags;
    uint32_t cpu;
    uint32_t batch_size;
};

struct bpf_xdp_attach_opts {
    size_t sz;
    int old_prog_fd;
};

/* The real last parameter is a va_list. It is only passed through to
   vsnprintf(), which is correct where a va_list parameter travels as one
   pointer-sized word (x86-64: array type decays; aarch64: large struct
   passed by reference). _install_print_callback() checks the machine. */
typedef int (*libbpf_print_fn_t)(int level, const char *fmt, void *ap);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);

long libbpf_get_error(const void *ptr);
int libbpf_strerror(int err, char *buf, size_t size);
int libbpf_num_possible_cpus(void);

struct bpf_object *bpf_object__open_file(const char *path,
                                         const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj,
                                                     const char *name);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj,
                                             struct bpf_program *prog);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);

const char *bpf_program__name(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
uint32_t bpf_map__key_size(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);

int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags,
                   const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_detach(int ifindex, uint32_t flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_query_id(int ifindex, int flags, uint32_t *prog_id);
"""

_LIBC_CDEF: Final = """
int vsnprintf(char *str, size_t size, const char *format, void *ap);
"""

ffi: Final = cffi.FFI()
ffi.cdef(_CDEF)
ffi.cdef(_LIBC_CDEF)


class XdpAction(enum.IntEnum):
    """XDP program verdicts (``enum xdp_action``, <linux/bpf.h>)."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


class XdpAttachFlags(enum.IntFlag):
    """``XDP_FLAGS_*`` from <linux/if_link.h>; no mode flag lets the kernel choose."""

    NONE = 0
    UPDATE_IF_NOEXIST = 1 << 0
    SKB_MODE = 1 << 1
    DRV_MODE = 1 << 2
    HW_MODE = 1 << 3
    REPLACE = 1 << 4


class MapUpdateFlags(enum.IntEnum):
    """``BPF_ANY`` / ``BPF_NOEXIST`` / ``BPF_EXIST`` for :meth:`BpfMap.update`."""

    ANY = 0
    NOEXIST = 1
    EXIST = 2


class BpfMapType(enum.IntEnum):
    """The ``enum bpf_map_type`` values this project uses (<linux/bpf.h>)."""

    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    DEVMAP = 14
    CPUMAP = 16
    XSKMAP = 17


# Map types whose look-ups return one value per possible CPU.
_PERCPU_MAP_TYPES: Final = frozenset(
    {
        BpfMapType.PERCPU_HASH,
        BpfMapType.PERCPU_ARRAY,
        BpfMapType.LRU_PERCPU_HASH,
        21,  # BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
    }
)

# Machines where a va_list parameter is one pointer-sized word (see _CDEF).
_VA_LIST_PASSTHROUGH_MACHINES: Final = frozenset({"x86_64", "aarch64"})

_PRINT_LEVELS: Final = (logging.WARNING, logging.INFO, logging.DEBUG)
_PRINT_BUFSIZE: Final = 32 * 1024


class LibbpfError(OSError):
    """A libbpf call failed.

    ``errno`` is the (positive) error code libbpf reported, ``call`` the name of
    the libbpf function, and the message says what it was called with.
    """

    call: str

    def __init__(self, err: int, call: str, detail: str = "", hint: str = "") -> None:
        self.call = call
        text = f"{call}({detail}) failed: {_strerror(err)}"
        if hint:
            text = f"{text} ({hint})"
        super().__init__(err, text)


@dataclass(frozen=True, slots=True)
class TestRunResult:
    """The outcome of one ``BPF_PROG_TEST_RUN``."""

    __test__ = False  # not a pytest test class despite the name

    retval: int
    """The program's return value (for XDP an :class:`XdpAction` value)."""
    data_out: bytes
    """The packet as the program left it (after any head/tail adjustments)."""
    duration_ns: int
    """Average run time per repetition, in nanoseconds, as measured by the kernel."""


class _Libs:
    """The dlopen()ed libraries; created once by :func:`_libs`."""

    def __init__(self) -> None:
        try:
            self.bpf: Any = ffi.dlopen(LIBBPF_SONAME)
        except OSError as exc:
            raise OSError(
                f"cannot load {LIBBPF_SONAME} (Debian/Ubuntu package: libbpf1): {exc}"
            ) from exc
        self.libc: Any = ffi.dlopen(None)
        self.print_callback: Any = None


@cache
def _libs() -> _Libs:
    libs = _Libs()
    _install_print_callback(libs)
    return libs


def _install_print_callback(libs: _Libs) -> None:
    """Route libbpf's messages to the ``relay.libbpf`` logger (process-wide)."""
    if platform.machine() not in _VA_LIST_PASSTHROUGH_MACHINES:
        log.debug("libbpf messages stay on stderr on %s", platform.machine())
        return

    def on_print(level: int, fmt: Any, ap: Any) -> int:
        pylevel = _PRINT_LEVELS[level] if 0 <= level < len(_PRINT_LEVELS) else logging.WARNING
        if not log.isEnabledFor(pylevel):
            return 0
        buf = ffi.new("char[]", _PRINT_BUFSIZE)
        n: int = libs.libc.vsnprintf(buf, _PRINT_BUFSIZE, fmt, ap)
        text = ffi.string(buf).decode("utf-8", "replace").rstrip("\n")
        if n >= _PRINT_BUFSIZE:
            text += f" [... {n - _PRINT_BUFSIZE + 1} more bytes]"
        log.log(pylevel, "%s", text)
        return max(n, 0)

    try:
        callback = ffi.callback("libbpf_print_fn_t", on_print, error=0)
    except MemoryError:  # no executable memory for the trampoline (hardened hosts)
        log.debug("cannot create a libbpf print callback; messages stay on stderr")
        return
    libs.print_callback = callback  # libbpf keeps only the pointer: keep it alive
    libs.bpf.libbpf_set_print(callback)


def _strerror(err: int) -> str:
    """libbpf's text for ``err`` (knows libbpf's own LIBBPF_ERRNO__* codes)."""
    try:
        lib = _libs().bpf
    except OSError:
        return os.strerror(err)
    buf = ffi.new("char[]", 256)
    if lib.libbpf_strerror(err, buf, 256) != 0:
        return os.strerror(err)
    return str(ffi.string(buf).decode("utf-8", "replace"))


def _check_rc(rc: int, call: str, detail: str = "", hint: str = "") -> int:
    """Return ``rc`` if >= 0; libbpf 1.x int APIs return ``-errno`` on failure."""
    if rc < 0:
        raise LibbpfError(-rc, call, detail, hint)
    return rc


def _check_ptr(ptr: Any, call: str, detail: str = "") -> Any:
    """Return ``ptr`` if it is not NULL; raise with libbpf's error otherwise."""
    if ptr == ffi.NULL:
        err = -int(_libs().bpf.libbpf_get_error(ptr)) or ffi.errno or errno.EINVAL
        raise LibbpfError(err, call, detail)
    return ptr


def num_possible_cpus() -> int:
    """Number of possible CPUs: the count of values in a per-CPU map look-up."""
    return _check_rc(_libs().bpf.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class BpfObject:
    """An opened (and normally loaded) BPF ELF object file; owns its programs and maps.

    Use :meth:`open` as a context manager; :meth:`close` releases every program
    and map fd of the object (an XDP program stays attached where the kernel
    holds it: detach it with :func:`xdp_detach`).
    """

    def __init__(self, obj: Any, path: str) -> None:
        """Wrap a ``struct bpf_object *`` from ``bpf_object__open_file``; use :meth:`open`."""
        self._obj: Any = obj
        self.path = path
        self.loaded = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, load: bool = True) -> Self:
        """Open the ELF object at ``path`` and, unless ``load=False``, load it.

        With ``load=False``, call :meth:`load` after adjusting the object.
        """
        lib = _libs().bpf
        fspath = os.fspath(path)
        raw = _check_ptr(
            lib.bpf_object__open_file(os.fsencode(fspath), ffi.NULL),
            "bpf_object__open_file",
            repr(fspath),
        )
        bpf_obj = cls(ffi.gc(raw, lib.bpf_object__close), fspath)
        if load:
            try:
                bpf_obj.load()
            except BaseException:
                bpf_obj.close()
                raise
        return bpf_obj

    def load(self) -> None:
        """Create the maps and load the programs into the kernel (verifier runs here)."""
        obj = self._live()
        _check_rc(
            _libs().bpf.bpf_object__load(obj),
            "bpf_object__load",
            repr(self.path),
            hint=f"libbpf's log, with the verifier's, is on logger {log.name!r}",
        )
        self.loaded = True

    def close(self) -> None:
        """Unload the programs and maps (idempotent)."""
        if self._obj is not None:
            obj, self._obj = self._obj, None
            ffi.release(obj)  # runs bpf_object__close now instead of at GC time

    @property
    def closed(self) -> bool:
        return self._obj is None

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
        state = "closed" if self.closed else ("loaded" if self.loaded else "opened")
        return f"<BpfObject {self.path!r} {state}>"

    def program(self, name: str) -> BpfProgram:
        """The program whose C function is called ``name``."""
        obj = self._live()
        prog = ffi.NULL
        if name.isascii():
            prog = _libs().bpf.bpf_object__find_program_by_name(obj, name.encode())
        if prog == ffi.NULL:
            raise LibbpfError(
                errno.ENOENT,
                "bpf_object__find_program_by_name",
                f"{self.path!r}, {name!r}",
                hint=f"programs: {', '.join(self.program_names()) or 'none'}",
            )
        return BpfProgram(self, prog, name)

    def map(self, name: str) -> BpfMap:
        """The map whose variable is called ``name``."""
        obj = self._live()
        map_ = ffi.NULL
        if name.isascii():
            map_ = _libs().bpf.bpf_object__find_map_by_name(obj, name.encode())
        if map_ == ffi.NULL:
            raise LibbpfError(
                errno.ENOENT,
                "bpf_object__find_map_by_name",
                f"{self.path!r}, {name!r}",
                hint=f"maps: {', '.join(self.map_names()) or 'none'}",
            )
        return BpfMap(self, map_, name)

    def program_names(self) -> list[str]:
        obj = self._live()
        lib = _libs().bpf
        names = []
        prog = lib.bpf_object__next_program(obj, ffi.NULL)
        while prog != ffi.NULL:
            names.append(ffi.string(lib.bpf_program__name(prog)).decode())
            prog = lib.bpf_object__next_program(obj, prog)
        return names

    def map_names(self) -> list[str]:
        obj = self._live()
        lib = _libs().bpf
        names = []
        map_ = lib.bpf_object__next_map(obj, ffi.NULL)
        while map_ != ffi.NULL:
            names.append(ffi.string(lib.bpf_map__name(map_)).decode())
            map_ = lib.bpf_object__next_map(obj, map_)
        return names

    def _live(self) -> Any:
        if self._obj is None:
            raise ValueError(f"BPF object {self.path!r} is closed")
        return self._obj


class BpfProgram:
    """A program of a :class:`BpfObject`; valid while the object is open."""

    def __init__(self, owner: BpfObject, prog: Any, name: str) -> None:
        self._owner = owner  # keeps the bpf_object (and so `prog`) alive
        self._prog = prog
        self.name = name

    @property
    def fd(self) -> int:
        """The program's fd (the object must be loaded)."""
        self._owner._live()
        return _check_rc(
            _libs().bpf.bpf_program__fd(self._prog), "bpf_program__fd", repr(self.name)
        )

    def test_run(
        self,
        data: bytes,
        repeat: int = 1,
        *,
        data_out_size: int | None = None,
        flags: int = 0,
    ) -> TestRunResult:
        """Run the program on ``data`` with ``BPF_PROG_TEST_RUN``, ``repeat`` times.

        The kernel needs at least an Ethernet header's worth of data (14 bytes)
        for XDP and fails with ``EINVAL`` otherwise. ``data_out_size`` bounds
        the returned packet (default: the input plus one page, room for any
        head/tail growth).
        """
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        out_size = len(data) + 4096 if data_out_size is None else data_out_size
        fd = self.fd
        data_in = ffi.from_buffer(data)
        data_out = ffi.new("unsigned char[]", max(out_size, 1))
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.data_in = data_in
        opts.data_size_in = len(data)
        opts.data_out = data_out
        opts.data_size_out = out_size
        opts.repeat = repeat
        opts.flags = flags
        _check_rc(
            _libs().bpf.bpf_prog_test_run_opts(fd, opts),
            "bpf_prog_test_run_opts",
            f"{self.name!r}, {len(data)} bytes, repeat={repeat}",
        )
        return TestRunResult(
            retval=int(opts.retval),
            data_out=bytes(ffi.buffer(data_out, opts.data_size_out)),
            duration_ns=int(opts.duration),
        )

    def __repr__(self) -> str:
        return f"<BpfProgram {self.name!r} of {self._owner.path!r}>"


class BpfMap:
    """A map of a :class:`BpfObject`; keys and values are raw bytes in host layout."""

    def __init__(self, owner: BpfObject, map_: Any, name: str) -> None:
        lib = _libs().bpf
        self._owner = owner  # keeps the bpf_object (and so `map_`) alive
        self._map = map_
        self.name = name
        self.type: int = lib.bpf_map__type(map_)
        self.key_size: int = lib.bpf_map__key_size(map_)
        self.value_size: int = lib.bpf_map__value_size(map_)
        self.max_entries: int = lib.bpf_map__max_entries(map_)

    @property
    def is_percpu(self) -> bool:
        return self.type in _PERCPU_MAP_TYPES

    @property
    def fd(self) -> int:
        """The map's fd (the object must be loaded)."""
        self._owner._live()
        return _check_rc(_libs().bpf.bpf_map__fd(self._map), "bpf_map__fd", repr(self.name))

    @property
    def percpu_stride(self) -> int:
        """Bytes per CPU in a per-CPU value: value_size rounded up to 8."""
        return (self.value_size + 7) & ~7

    def _buffer_size(self) -> int:
        if self.is_percpu:
            return self.percpu_stride * num_possible_cpus()
        return self.value_size

    def _key(self, key: bytes) -> Any:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name!r}: key is {len(key)} bytes, needs {self.key_size}")
        return ffi.from_buffer(key)

    def lookup(self, key: bytes) -> bytes:
        """The value stored under ``key``; ``KeyError`` if there is none.

        For per-CPU maps this is every possible CPU's value, each padded to
        :attr:`percpu_stride` bytes; :meth:`lookup_percpu` splits them.
        """
        fd = self.fd
        size = self._buffer_size()
        value = ffi.new("unsigned char[]", size)
        rc = _libs().bpf.bpf_map_lookup_elem(fd, self._key(key), value)
        if rc == -errno.ENOENT:
            raise KeyError(key)
        _check_rc(rc, "bpf_map_lookup_elem", f"{self.name!r}, key={key.hex()}")
        return bytes(ffi.buffer(value, size))

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """One ``value_size``-byte value per possible CPU (per-CPU maps only)."""
        if not self.is_percpu:
            raise TypeError(f"map {self.name!r} is not a per-CPU map (type {self.type})")
        raw = self.lookup(key)
        stride = self.percpu_stride
        return [raw[i : i + self.value_size] for i in range(0, len(raw), stride)]

    def update(self, key: bytes, value: bytes, flags: int = MapUpdateFlags.ANY) -> None:
        """Store ``value`` under ``key`` (per-CPU maps: all CPUs' values, padded)."""
        size = self._buffer_size()
        if len(value) != size:
            raise ValueError(f"map {self.name!r}: value is {len(value)} bytes, needs {size}")
        fd = self.fd
        _check_rc(
            _libs().bpf.bpf_map_update_elem(fd, self._key(key), ffi.from_buffer(value), flags),
            "bpf_map_update_elem",
            f"{self.name!r}, key={key.hex()}",
        )

    def delete(self, key: bytes) -> None:
        """Remove ``key``; ``KeyError`` if it is absent (array maps: ``EINVAL``)."""
        fd = self.fd
        rc = _libs().bpf.bpf_map_delete_elem(fd, self._key(key))
        if rc == -errno.ENOENT:
            raise KeyError(key)
        _check_rc(rc, "bpf_map_delete_elem", f"{self.name!r}, key={key.hex()}")

    def keys(self) -> Iterator[bytes]:
        """Iterate over the keys (a snapshot walk; concurrent updates may skip some)."""
        fd = self.fd
        lib = _libs().bpf
        cur: Any = ffi.NULL
        nxt = ffi.new("unsigned char[]", self.key_size)
        while True:
            rc = lib.bpf_map_get_next_key(fd, cur, nxt)
            if rc == -errno.ENOENT:  # no more keys
                return
            _check_rc(rc, "bpf_map_get_next_key", repr(self.name))
            key = bytes(ffi.buffer(nxt, self.key_size))
            yield key
            cur = ffi.from_buffer(key)

    def __repr__(self) -> str:
        return (
            f"<BpfMap {self.name!r} type={self.type} key={self.key_size}B "
            f"value={self.value_size}B max_entries={self.max_entries}>"
        )


def _xdp_opts(old_prog_fd: int | None) -> Any:
    if old_prog_fd is None:
        return ffi.NULL
    opts = ffi.new("struct bpf_xdp_attach_opts *")
    opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
    opts.old_prog_fd = old_prog_fd
    return opts


def xdp_attach(
    ifindex: int,
    prog_fd: int,
    flags: XdpAttachFlags = XdpAttachFlags.NONE,
    *,
    old_prog_fd: int | None = None,
) -> None:
    """Attach ``prog_fd`` as the XDP program of ``ifindex`` (one program per interface).

    ``old_prog_fd`` with :attr:`XdpAttachFlags.REPLACE` replaces atomically
    only if that program is the one attached.
    """
    _check_rc(
        _libs().bpf.bpf_xdp_attach(ifindex, prog_fd, int(flags), _xdp_opts(old_prog_fd)),
        "bpf_xdp_attach",
        f"ifindex={ifindex}, prog_fd={prog_fd}, flags={flags!r}",
    )


def xdp_detach(
    ifindex: int,
    flags: XdpAttachFlags = XdpAttachFlags.NONE,
    *,
    old_prog_fd: int | None = None,
) -> None:
    """Detach the XDP program of ``ifindex`` in the mode given by ``flags``."""
    _check_rc(
        _libs().bpf.bpf_xdp_detach(ifindex, int(flags), _xdp_opts(old_prog_fd)),
        "bpf_xdp_detach",
        f"ifindex={ifindex}, flags={flags!r}",
    )


def xdp_query_id(ifindex: int, flags: XdpAttachFlags = XdpAttachFlags.NONE) -> int:
    """The id of the XDP program attached to ``ifindex`` in that mode, or 0 if none."""
    prog_id = ffi.new("uint32_t *")
    _check_rc(
        _libs().bpf.bpf_xdp_query_id(ifindex, int(flags), prog_id),
        "bpf_xdp_query_id",
        f"ifindex={ifindex}, flags={flags!r}",
    )
    return int(prog_id[0])
