"""Benchmarks run by `ferry bench`: Ferry measured against a peer in the same command."""
