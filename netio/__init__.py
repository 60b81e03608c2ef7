"""I/O-side code shared by the relay and the client.

``relay`` and ``client`` never import each other and ``masque`` performs no I/O,
so what both services need lives here. This ``__init__`` imports nothing: each
module pulls in only its own dependencies (pyroute2, aioquic, ...).

Host networking:

- :mod:`netio.tun` -- :class:`~netio.tun.TunDevice`, a non-blocking layer-3 TUN
  device with a batch-shaped read/write API, configured through netlink;
- :mod:`netio.netlink` -- :class:`~netio.netlink.Netlink`, a small typed wrapper
  around pyroute2's ``IPRoute`` (links, addresses, routes, ``route get``);
- :mod:`netio.sysctl` -- reading, writing and restoring ``/proc/sys`` values.

These act on the network namespace of the calling process (start it with ``ip
netns exec NAME`` to act on another one); kernel errors surface as
:class:`OSError` with the kernel's ``errno``.
"""
