"""Expert-parallel benchmark (same as `smoe bench parallel`): python benchmarks/bench_parallel.py [--quick] ..."""

import sys

from smoe.bench.parallel import main

if __name__ == "__main__":
    sys.exit(main())
