"""Benchmarks of fmnist-jax: `python -m benchmarks.run` (DESIGN.md §6)."""
