"""A comparison's results: the results.json schema and readers, each run's record, the columns a verdict can be
taken on, and the verdicts themselves (paired statistics against the baseline)."""
