"""Benchmarks of the edge gateway against a minimal direct bridge: `python -m bench.run`."""
