"""Benchmarks (not tests): `python bench/run.py` measures the hit path against a no-op route."""
