"""Benchmarks of masque-relay on the namespace test bed (``make bench``)."""
