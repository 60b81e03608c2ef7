"""The compiled fast path of masque-relay (Cython + C).

Only ``relay/dataplane.py``, ``client/dataplane.py`` and ``relay/xdp.py`` import
this package; the protocol core (``masque``) never does.
"""

from _fastpath._core import checksum_partial, internet_checksum

__all__ = ["checksum_partial", "internet_checksum"]
