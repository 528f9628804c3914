"""Measuring a model: routing metrics, the instrumentation hooks that record or change routing, the probe set and its
traces, and the statistics of paired seeds. Imports `train` below it, nothing above."""
