"""Benchmarks of masque-relay on the namespace test bed (``make bench``).

- :mod:`bench.__main__`  command line: what to compare, how long, where results go
- :mod:`bench.topology`  configurations (baseline / tunnel and its switches), bringing them up
- :mod:`bench.scenarios` the scenarios, and A B A B rounds of two configurations
- :mod:`bench.measure`   iperf3 TCP/UDP and ping, run once
- :mod:`bench.loadgen`   CONNECT-IP session-setup load generator (runs in the client netns)
- :mod:`bench.procstat`  CPU time, memory and machine facts from /proc
- :mod:`bench.report`    table, JSON and PNG plots
- :mod:`bench.lock`      the machine-wide lock that keeps benchmarks from overlapping
"""
