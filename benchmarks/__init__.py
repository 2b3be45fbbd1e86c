"""Measured figures: `python -m benchmarks [--quick] [--json FILE]`."""
from __future__ import annotations

from .harness import Benchmark, Row, median_of, percentile, run_all, timed

__all__ = ["Benchmark", "Row", "median_of", "percentile", "run_all", "timed"]
