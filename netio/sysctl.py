"""Read, write and restore kernel parameters under ``/proc/sys``.

Parameters are named by their path below ``/proc/sys`` with ``/`` separators
(``"net/ipv4/conf/eth0.100/rp_filter"``), never with dots: interface names may
contain dots (VLAN devices), which makes the dotted ``sysctl(8)`` form ambiguous.
``/proc/sys/net`` shows the network namespace of the calling process.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

__all__ = ["SysctlChanges", "read_sysctl", "write_sysctl"]

_log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")


def _path(name: str) -> Path:
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"not a sysctl path relative to /proc/sys: {name!r}")
    return PROC_SYS / name


def read_sysctl(name: str) -> str:
    """Return the value of ``name`` (e.g. ``"net/ipv4/ip_forward"``), whitespace stripped."""
    return _path(name).read_text().strip()


def write_sysctl(name: str, value: str | int) -> None:
    """Set ``name`` to ``value``; raises :class:`OSError` (e.g. ENOENT for a missing device)."""
    _path(name).write_text(f"{value}\n")


class SysctlChanges:
    """Sysctl writes that remember the previous values and undo them in reverse order.

    ``set()`` writes only when the value differs and records the old value the first
    time a name is changed; ``restore()`` puts every recorded value back, newest
    first, skipping parameters whose device has gone (ENOENT). Both are idempotent.
    """

    def __init__(self) -> None:
        self._saved: dict[str, str] = {}  # insertion order = order of first change

    def set(self, name: str, value: str | int) -> bool:
        """Write ``value`` unless already set; return True if the value changed."""
        previous = read_sysctl(name)
        if previous == str(value):
            return False
        write_sysctl(name, value)
        self._saved.setdefault(name, previous)
        _log.info("sysctl %s: %s -> %s", name, previous, value)
        return True

    @property
    def changed(self) -> dict[str, str]:
        """The parameters changed so far, mapped to the values they will be restored to."""
        return dict(self._saved)

    def restore(self) -> None:
        """Restore every changed parameter (newest first); missing devices are skipped.

        Every parameter is attempted; the first failure other than a vanished
        device is raised after the rest have been restored.
        """
        failure: OSError | None = None
        for name in reversed(list(self._saved)):
            previous = self._saved[name]
            try:
                write_sysctl(name, previous)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    _log.warning("cannot restore sysctl %s=%s: %s", name, previous, exc)
                    failure = failure or exc
                    continue
            else:
                _log.info("sysctl %s restored to %s", name, previous)
            del self._saved[name]
        if failure is not None:
            raise failure
