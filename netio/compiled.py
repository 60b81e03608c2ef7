"""The compiled fast path (``_fastpath``) as the relay's and client's data planes use it.

Two small things the data planes share: loading the extension once (a build
without it falls back to Python, and says so once), and keeping a compiled
snapshot of each session's packet policy that is rebuilt only when the
session's :attr:`~masque.session.ConnectIpSession.policy_revision` moves
(capsules are rare; packets are not).
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import TYPE_CHECKING

from masque.session import ConnectIpSession

if TYPE_CHECKING:
    from _fastpath import PacketPolicy

log = logging.getLogger(__name__)

#: Bytes reserved in front of every packet slot for the HTTP Datagram framing
#: (quarter stream ID, up to 8 bytes, and context ID 0) written in place.
HEADROOM = 16

#: Packets per batch read from the TUN or handed to it.
BATCH_SLOTS = 128

_module: ModuleType | None = None
_tried = False


def fastpath() -> ModuleType | None:
    """The ``_fastpath`` extension, or None (logged once) when it cannot be imported."""
    global _module, _tried
    if not _tried:
        _tried = True
        try:
            import _fastpath

            _module = _fastpath
        except ImportError as error:
            log.warning("fast path unavailable (%s): packets go through Python", error)
    return _module


def slot_size(mtu: int) -> int:
    """A packet slot big enough for any packet of a device with this MTU."""
    return max(2048, (mtu + 63) & ~63)


class PolicySnapshots:
    """Compiled ``PacketPolicy`` per session key, rebuilt when the session's policy changed.

    ``outgoing=False`` mirrors ``check_incoming`` (packets from the peer),
    ``True`` mirrors ``check_outgoing`` (packets to the peer).
    """

    def __init__(self, *, outgoing: bool) -> None:
        self._outgoing = outgoing
        self._snapshots: dict[int, tuple[int, PacketPolicy]] = {}

    def get(self, key: int, session: ConnectIpSession) -> PacketPolicy:
        """The snapshot for ``session`` (stored under ``key``), fresh as of now."""
        entry = self._snapshots.get(key)
        revision = session.policy_revision
        if entry is not None and entry[0] == revision:
            return entry[1]
        module = fastpath()
        assert module is not None, "PolicySnapshots needs the compiled fast path"
        policy: PacketPolicy = module.PacketPolicy(session, outgoing=self._outgoing)
        self._snapshots[key] = (revision, policy)
        return policy

    def forget(self, key: int) -> None:
        """Drop the snapshot of a session that ended."""
        self._snapshots.pop(key, None)

    def __len__(self) -> int:
        return len(self._snapshots)
