"""Microbenchmarks of the fast path's batch operations (``make bench-micro``).

Each operation processes one batch of 64 packets per round, once in C
(``_fastpath``) and once in pure Python (``masque``, ``relay``, ``netio``; for
QUIC packet protection, aioquic's own), in one thread: packets/s per core.

- :mod:`bench.micro.corpus`  the inputs: 1280-byte packets, relay sessions and a table,
  one TCP flow, TSO frames, and a Python reference of ``vnet_split``
- :mod:`bench.micro.ops`     the operations, C and Python side by side
- :mod:`bench.micro.harness` how a benchmark times one operation
- ``bench/micro/test_*.py``  the pytest-benchmark benchmarks (group = operation)
- :mod:`bench.micro.report`  runs them and prints packets/s and the speed-up
"""
