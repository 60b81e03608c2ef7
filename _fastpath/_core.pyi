from typing_extensions import Buffer

def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """Return the Internet checksum (RFC 1071) of ``data`` plus a big-endian partial sum."""

def checksum_partial(data: Buffer, initial: int = 0) -> int:
    """Return the folded one's-complement sum of ``data`` plus ``initial``, not complemented."""
