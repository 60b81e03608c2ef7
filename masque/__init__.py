"""Sans-I/O protocol core of masque-relay: CONNECT-IP (RFC 9484) wire formats.

Nothing in this package performs I/O: no sockets, no asyncio, no ``_fastpath``.
The relay, the client and the compiled fast path all stand on these definitions.
"""
