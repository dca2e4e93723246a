"""Benchmark scripts (not tests): each prints its figures; see ``docs/benchmarks.md``."""
