"""Benchmark scripts (run as files or imported by tests/test_benchmarks.py)."""
