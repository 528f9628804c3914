"""Training a run: the Trainer, checkpoints, the run folder's rules (one writer, atomic writes, checked reads), data
parallelism. The ground floor of the workbench: it imports only the library."""
