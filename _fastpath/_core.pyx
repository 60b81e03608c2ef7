# cython: language_level=3, boundscheck=False, wraparound=False
"""masque-relay's compiled data path: one module built from several .pxi files.

Python crosses into this module once per batch of packets; the C sources live
in ``_fastpath/csrc`` and their declarations in ``_fastpath/includes``.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t

from _fastpath.includes.csrc cimport masque_csum, masque_csum_partial

include "checksum.pxi"
include "tun.pxi"
include "batch.pxi"
include "packet.pxi"
include "lpm.pxi"
include "udp.pxi"
include "lane.pxi"
include "xsk.pxi"
