"""relay.libbpf: struct layouts, error reporting, maps, test runs, XDP attach.

The BPF objects used here are small programs compiled from source in this
file (clang, the same flags as bpf/Makefile), so these tests do not depend on
the project's own programs.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.libbpf import (
    BpfMapType,
    BpfObject,
    LibbpfError,
    XdpAction,
    ffi,
    num_possible_cpus,
)

ROOT = Path(__file__).resolve().parent.parent

# Loading BPF programs needs root (CAP_BPF + CAP_NET_ADMIN): the suite runs as
# root (CI does), and without it these tests fail with EPERM rather than vanish.

# ---------------------------------------------------------------------------
# Struct layouts: cffi's view must equal the C compiler's view of libbpf 1.x
# ---------------------------------------------------------------------------

_LAYOUTS = {
    "struct bpf_test_run_opts": [
        "sz",
        "data_in",
        "data_out",
        "data_size_in",
        "data_size_out",
        "ctx_in",
        "ctx_out",
        "ctx_size_in",
        "ctx_size_out",
        "retval",
        "repeat",
        "duration",
        "flags",
        "cpu",
        "batch_size",
    ],
    "struct bpf_xdp_attach_opts": ["sz", "old_prog_fd"],
}


def _cc() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no C compiler (cc/gcc/clang) found: apt-get install gcc")


def test_struct_layouts_match_libbpf_headers(tmp_path: Path) -> None:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <bpf/libbpf.h>"]
    lines += ["#include <bpf/bpf.h>", "int main(void) {"]
    for struct_name, fields in _LAYOUTS.items():
        lines.append(f'printf("{struct_name} sizeof %zu\\n", sizeof({struct_name}));')
        for field in fields:
            lines.append(
                f'printf("{struct_name} {field} %zu\\n", offsetof({struct_name}, {field}));'
            )
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    proc = subprocess.run(
        [_cc(), "-Wall", "-Wextra", "-Werror", str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"layout probe does not build (libbpf-dev?):\n{proc.stderr}"
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout

    expected: dict[tuple[str, str], int] = {}
    for line in out.splitlines():  # "struct NAME FIELD VALUE"
        keyword, name, field, value = line.split(" ")
        expected[(f"{keyword} {name}", field)] = int(value)
    actual: dict[tuple[str, str], int] = {}
    for struct_name, fields in _LAYOUTS.items():
        actual[(struct_name, "sizeof")] = ffi.sizeof(struct_name)
        for field in fields:
            actual[(struct_name, field)] = ffi.offsetof(struct_name, field)
    assert actual == expected


# ---------------------------------------------------------------------------
# Errors that need no privileges
# ---------------------------------------------------------------------------


def test_open_missing_file_names_the_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "missing.bpf.o"
    with caplog.at_level(logging.DEBUG, logger="relay.libbpf"), pytest.raises(OSError) as exc:
        BpfObject.open(missing)
    err = exc.value
    assert isinstance(err, LibbpfError)
    assert err.errno == errno.ENOENT
    assert err.call == "bpf_object__open_file"
    assert str(missing) in str(err)
    # libbpf's own message arrives through logging, not on stderr.
    if platform.machine() in ("x86_64", "aarch64"):
        assert any(
            r.name == "relay.libbpf" and "missing.bpf.o" in r.getMessage() for r in caplog.records
        )


def test_open_non_elf_file_fails(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.bpf.o"
    bogus.write_bytes(b"not an ELF file at all" * 10)
    with pytest.raises(LibbpfError) as exc:
        BpfObject.open(bogus)
    assert exc.value.call == "bpf_object__open_file"
    assert exc.value.errno


# ---------------------------------------------------------------------------
# Objects built from source here
# ---------------------------------------------------------------------------

_TOY_SRC = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* hash[0] = verdict to return; absent -> XDP_PASS. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

/* Runs per CPU; a 4-byte value is padded to 8 bytes per CPU in look-ups. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} runs SEC(".maps");

SEC("xdp")
int xdp_from_map(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *verdict = bpf_map_lookup_elem(&verdicts, &key);
	__u32 *count = bpf_map_lookup_elem(&runs, &key);

	(void)ctx;
	if (count)
		*count += 1;
	if (!verdict)
		return XDP_PASS;
	return *verdict <= XDP_REDIRECT ? (int)*verdict : XDP_ABORTED;
}

SEC("xdp")
int xdp_grow_tail(struct xdp_md *ctx)
{
	if (bpf_xdp_adjust_tail(ctx, 64))
		return XDP_ABORTED;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""

_UNCHECKED_SRC = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_unchecked(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;

	return data[0] ? XDP_PASS : XDP_DROP; /* no bounds check: rejected */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


def _build(tmp: Path, name: str, source: str) -> Path:
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang is not installed: apt-get install clang llvm libbpf-dev")
    src = tmp / f"{name}.bpf.c"
    obj = tmp / f"{name}.bpf.o"
    src.write_text(source)
    cmd = [clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Wextra", "-Werror"]
    cmd += ["-I/usr/include/bpf", f"-I/usr/include/{platform.machine()}-linux-gnu"]
    cmd += ["-c", str(src), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"clang failed on {name}:\n{proc.stderr}"
    return obj


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("bpf"), "toy", _TOY_SRC)


@pytest.fixture
def toy(toy_path: Path) -> Iterator[BpfObject]:
    with BpfObject.open(toy_path) as obj:
        yield obj


FRAME = bytes.fromhex("02000000000202000000000188b5") + bytes(50)  # local experimental type


def test_names_and_map_metadata(toy: BpfObject) -> None:
    assert toy.program_names() == ["xdp_from_map", "xdp_grow_tail"]
    assert sorted(toy.map_names()) == ["runs", "verdicts"]
    verdicts, runs = toy.map("verdicts"), toy.map("runs")
    assert (verdicts.type, verdicts.key_size, verdicts.value_size) == (BpfMapType.HASH, 4, 8)
    assert verdicts.max_entries == 16 and not verdicts.is_percpu
    assert (runs.type, runs.value_size, runs.percpu_stride) == (BpfMapType.PERCPU_ARRAY, 4, 8)
    assert runs.is_percpu
    assert toy.program("xdp_from_map").fd >= 0 and verdicts.fd >= 0


def test_missing_program_and_map_list_what_exists(toy: BpfObject) -> None:
    with pytest.raises(LibbpfError) as exc:
        toy.program("xdp_nope")
    assert exc.value.errno == errno.ENOENT
    assert exc.value.call == "bpf_object__find_program_by_name"
    assert "xdp_from_map" in str(exc.value)
    with pytest.raises(LibbpfError) as exc:
        toy.map("nope")
    assert exc.value.errno == errno.ENOENT
    assert "verdicts" in str(exc.value)


def test_map_update_steers_program_verdict(toy: BpfObject) -> None:
    prog, verdicts = toy.program("xdp_from_map"), toy.map("verdicts")
    key = struct.pack("=I", 0)

    assert prog.test_run(FRAME).retval == XdpAction.PASS
    with pytest.raises(KeyError):
        verdicts.lookup(key)

    verdicts.update(key, struct.pack("=Q", XdpAction.DROP))
    assert verdicts.lookup(key) == struct.pack("=Q", XdpAction.DROP)
    assert list(verdicts.keys()) == [key]
    result = prog.test_run(FRAME, repeat=10)
    assert result.retval == XdpAction.DROP
    assert result.data_out == FRAME
    assert result.duration_ns >= 0

    verdicts.delete(key)
    with pytest.raises(KeyError):
        verdicts.delete(key)
    assert list(verdicts.keys()) == []
    assert prog.test_run(FRAME).retval == XdpAction.PASS


def test_percpu_values_are_split_and_summed(toy: BpfObject) -> None:
    prog, runs = toy.program("xdp_from_map"), toy.map("runs")
    key0, key1 = struct.pack("=I", 0), struct.pack("=I", 1)
    ncpus = num_possible_cpus()

    prog.test_run(FRAME, repeat=7)
    values = runs.lookup_percpu(key0)
    assert len(values) == ncpus and all(len(v) == 4 for v in values)
    assert sum(struct.unpack("=I", v)[0] for v in values) == 7
    assert len(runs.lookup(key0)) == 8 * ncpus

    # Writes take every CPU's (padded) value.
    runs.update(key1, b"".join(struct.pack("=II", cpu + 1, 0) for cpu in range(ncpus)))
    assert [struct.unpack("=I", v)[0] for v in runs.lookup_percpu(key1)] == list(
        range(1, ncpus + 1)
    )
    assert sorted(runs.keys()) == [key0, key1]


def test_map_argument_checks(toy: BpfObject) -> None:
    verdicts, runs = toy.map("verdicts"), toy.map("runs")
    with pytest.raises(ValueError, match="key is 2 bytes"):
        verdicts.lookup(b"\x00\x00")
    with pytest.raises(ValueError, match="value is 4 bytes"):
        verdicts.update(struct.pack("=I", 0), b"\x00" * 4)
    with pytest.raises(TypeError):
        verdicts.lookup_percpu(struct.pack("=I", 0))
    with pytest.raises(KeyError):  # array index out of range
        runs.lookup(struct.pack("=I", 2))
    with pytest.raises(LibbpfError) as exc:  # array elements cannot be deleted
        runs.delete(struct.pack("=I", 0))
    assert exc.value.errno == errno.EINVAL
    assert exc.value.call == "bpf_map_delete_elem"


def test_test_run_output_may_grow_and_is_bounded(toy: BpfObject) -> None:
    prog = toy.program("xdp_grow_tail")
    result = prog.test_run(FRAME)
    assert result.retval == XdpAction.PASS
    assert len(result.data_out) == len(FRAME) + 64
    assert result.data_out[: len(FRAME)] == FRAME

    with pytest.raises(LibbpfError) as exc:
        prog.test_run(FRAME, data_out_size=len(FRAME))
    assert exc.value.errno == errno.ENOSPC
    assert exc.value.call == "bpf_prog_test_run_opts"

    with pytest.raises(ValueError):
        prog.test_run(FRAME, repeat=0)


def test_open_without_load_then_load(toy_path: Path) -> None:
    with BpfObject.open(toy_path, load=False) as obj:
        assert not obj.loaded
        with pytest.raises(LibbpfError) as exc:
            _ = obj.program("xdp_from_map").fd
        assert exc.value.call == "bpf_program__fd"
        obj.load()
        assert obj.loaded
        assert obj.program("xdp_from_map").test_run(FRAME).retval == XdpAction.PASS


def test_closed_object_refuses_use(toy_path: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    obj = BpfObject.open(toy_path)
    prog, map_ = obj.program("xdp_from_map"), obj.map("verdicts")
    assert len(os.listdir("/proc/self/fd")) > fds_before
    obj.close()
    obj.close()  # idempotent
    assert len(os.listdir("/proc/self/fd")) == fds_before  # every program/map fd released
    assert obj.closed and "closed" in repr(obj)
    with pytest.raises(ValueError, match="closed"):
        prog.test_run(FRAME)
    with pytest.raises(ValueError, match="closed"):
        map_.lookup(struct.pack("=I", 0))
    with pytest.raises(ValueError, match="closed"):
        obj.program("xdp_from_map")


def test_verifier_rejection_reports_load_and_logs_verifier(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _build(tmp_path, "unchecked", _UNCHECKED_SRC)
    with caplog.at_level(logging.DEBUG, logger="relay.libbpf"), pytest.raises(OSError) as exc:
        BpfObject.open(path)
    assert isinstance(exc.value, LibbpfError)
    assert exc.value.call == "bpf_object__load"
    assert exc.value.errno == errno.EACCES
    assert "relay.libbpf" in str(exc.value)  # says where the verifier log went
    if platform.machine() in ("x86_64", "aarch64"):
        log_text = "\n".join(r.getMessage() for r in caplog.records)
        assert "invalid access to packet" in log_text


# ---------------------------------------------------------------------------
# XDP attach/detach, in a throwaway network namespace
# ---------------------------------------------------------------------------

_ATTACH_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    from relay.libbpf import BpfObject, XdpAttachFlags, xdp_attach, xdp_detach, xdp_query_id

    ifindex = socket.if_nametoindex("lo")
    mode = XdpAttachFlags.SKB_MODE
    assert xdp_query_id(ifindex, mode) == 0
    with BpfObject.open(sys.argv[1]) as obj:
        xdp_attach(ifindex, obj.program("xdp_from_map").fd, mode)
        assert xdp_query_id(ifindex, mode) != 0
        try:
            xdp_attach(ifindex, obj.program("xdp_grow_tail").fd,
                       mode | XdpAttachFlags.UPDATE_IF_NOEXIST)
        except OSError as exc:
            assert exc.call == "bpf_xdp_attach", exc
        else:
            raise AssertionError("UPDATE_IF_NOEXIST replaced an attached program")
        xdp_detach(ifindex, mode)
        assert xdp_query_id(ifindex, mode) == 0
    print("attach-ok")
    """
)


@pytest.mark.netns
def test_xdp_attach_query_detach_in_private_netns(toy_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare(1) is missing: apt-get install util-linux")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [unshare, "--net", sys.executable, "-c", _ATTACH_SCRIPT, str(toy_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0 and "attach-ok" in proc.stdout, proc.stderr
