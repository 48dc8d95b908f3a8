"""Benchmarks that decide: adaptation methods over shifting streams, reported from one run."""
