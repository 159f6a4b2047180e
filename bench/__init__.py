"""Benchmarks for wabus: `python -m bench ingest` (see bench/README.md)."""
