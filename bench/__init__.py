"""Benchmarks; each prints figures and the command that made them."""
