"""Benchmarks of fmnist-jax: `python -m benchmarks.run` (see benchmarks/run.py)."""
