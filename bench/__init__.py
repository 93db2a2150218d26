"""Benchmarks, the offline replay simulator, the emulation runner and reports."""
