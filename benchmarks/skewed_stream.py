"""Skewed-stream experiment (aux-loss-free bias balancing): python benchmarks/skewed_stream.py [--steps N] ..."""

import sys

from smoe.bench.skewed import main

if __name__ == "__main__":
    sys.exit(main())
