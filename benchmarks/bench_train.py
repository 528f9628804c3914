"""Training-throughput benchmark (same as `smoe bench train`): python benchmarks/bench_train.py [--quick] ..."""

import sys

from smoe.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
