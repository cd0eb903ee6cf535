"""Benchmark scenarios behind ``orstream bench``: they run the real stack and print JSON."""
