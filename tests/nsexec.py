"""Run a Python function inside a network namespace, in a child process.

    result = run_in_netns(bed.relay_ns, some_module_level_function, arg1, key=value)

The function (and its arguments) are pickled by reference to a fresh interpreter
started with ``ip netns exec NETNS``, which runs it and pickles back the return
value, or the exception with its traceback (re-raised here, with the child's
traceback attached as a note). A fresh process per call means that nothing the
function opens -- TUN devices, netlink sockets, threads -- outlives the call,
even when it fails: the process exits, and on timeout its whole process group is
killed. (``setns`` in a forked child was the alternative; forking a pytest
process that may hold threads and event loops is the less robust of the two.)

The function must be importable by its qualified name (defined at module level
in ``tests.*`` or a package), its arguments and result picklable. Anything it
prints goes to the child's stderr, which is passed through to ours.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

__all__ = ["NsExecError", "run_in_netns"]

P = ParamSpec("P")
R = TypeVar("R")

_REPO = Path(__file__).resolve().parent.parent


class NsExecError(RuntimeError):
    """The child could not run the function or report its outcome."""


def run_in_netns(netns: str, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call ``func(*args, **kwargs)`` inside ``netns`` and return its result.

    The call is killed after ``NSEXEC_TIMEOUT`` seconds (environment; default 120).
    """
    timeout = float(os.environ.get("NSEXEC_TIMEOUT", "120"))
    payload = pickle.dumps((func, args, kwargs))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.nsexec"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,  # the child's diagnostics go straight to our stderr
        cwd=_REPO,
        env=env,
        start_new_session=True,  # own process group: a timeout kills everything it started
    )
    try:
        out, _ = proc.communicate(payload, timeout=timeout)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    if not out:
        raise NsExecError(
            f"{func.__qualname__} in {netns}: child exited {proc.returncode} without a result"
        )
    status, value, child_tb = pickle.loads(out)
    if status == "ok":
        return value  # type: ignore[no-any-return]
    assert isinstance(value, BaseException)
    value.add_note(f"raised in network namespace {netns}; child traceback:\n{child_tb}")
    raise value


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _child() -> None:
    # Keep the real stdout for the result; everything else printed (by the
    # function or by processes it starts) goes to stderr.
    result_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    outcome: tuple[str, Any, str]
    try:
        func, args, kwargs = pickle.loads(sys.stdin.buffer.read())
        outcome = ("ok", func(*args, **kwargs), "")
    except BaseException as exc:  # reported to the parent, which re-raises
        child_tb = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
            outcome = ("error", exc, child_tb)
        except Exception:
            outcome = ("error", NsExecError(f"unpicklable {exc!r}"), child_tb)
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:
        data = pickle.dumps(("error", NsExecError(f"unpicklable result: {exc!r}"), ""))
    result_out.write(data)
    result_out.flush()


if __name__ == "__main__":
    # Run from the importable module, not __main__, so that NsExecError pickles by
    # a name the parent can resolve.
    from tests.nsexec import _child as child_main

    child_main()
