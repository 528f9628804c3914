"""One run from its configuration to its files: the run config (preset + overrides), train or resume, evaluate clean
and corrupted, analyse routing, the routing view, the embedding suite. Imports `train`, `measure`, `tasks`."""
