"""Scale study (paired noise per preset): python benchmarks/resolve_scale.py [--tasks ...] [--presets ...] ..."""

import sys

from smoe.bench.scale import main

if __name__ == "__main__":
    sys.exit(main())
