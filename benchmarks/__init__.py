"""Benchmarks: figures as ratios against a baseline in the same run (run from the repository root,
``python -m benchmarks.throughput``, ``python -m benchmarks.preprocess``)."""
