"""Benchmarks (not tests): `python bench/run.py` measures the hit path against no-op routes."""
