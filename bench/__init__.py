"""Benchmarks of Maillage, each against a baseline measured in the same run (``make bench``)."""
