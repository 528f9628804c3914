"""Layer benchmark (same as `smoe bench layer`): python benchmarks/bench_layer.py [--quick] [--json PATH] ..."""

import sys

from smoe.bench.layer import main

if __name__ == "__main__":
    sys.exit(main())
