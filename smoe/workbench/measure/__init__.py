"""Measuring a model: routing metrics, the instrumentation hooks that record or change routing, the probe set and its
traces, the statistics of paired seeds, the verdict rule, its power and its calibration by simulation. Imports
`train` below it, nothing above."""
