"""A comparison as a grid of (entry, seed) runs: entry syntax, `smoe compare`, the executors (serial, local
workers, Dask) and how `--jobs` sizes them."""
