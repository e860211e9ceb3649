"""Benchmarks (``make bench``). Each prints its figure beside the baseline it is compared with."""
