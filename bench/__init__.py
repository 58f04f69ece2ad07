"""Benchmarks of imapsvc against the reference pipeline (see ``bench/README.md``)."""
