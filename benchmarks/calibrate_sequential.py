"""Sequential rule by simulation: python benchmarks/calibrate_sequential.py [--sims N] [--json PATH]"""

import sys

from smoe.bench.calibrate_sequential import main

if __name__ == "__main__":
    sys.exit(main())
