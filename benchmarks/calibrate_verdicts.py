"""Calibration of the verdict rule by simulation: python benchmarks/calibrate_verdicts.py [--sims 1000] ..."""

import sys

from smoe.bench.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
