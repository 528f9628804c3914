"""Noise study (paired sd per CPU-minute per knob): python benchmarks/noise_study.py [--cells ...] [--out ...]"""

import sys

from smoe.bench.noise import main

if __name__ == "__main__":
    sys.exit(main())
