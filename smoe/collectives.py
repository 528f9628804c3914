"""Collectives with errors that say what failed: shared by expert parallelism and the Trainer's data parallelism."""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist


class CollectiveError(RuntimeError):
    """A collective failed: a peer rank died, hung past the process group's timeout, or skipped a call."""


def collective(what: str, group: dist.ProcessGroup | None, op: Callable[[], object],
               error: type[CollectiveError] = CollectiveError) -> None:
    """Run the collective `op`, turning a backend failure into `error` that says what failed and on which rank."""
    try:
        op()
    except RuntimeError as e:  # gloo's and NCCL's errors (DistBackendError included) are RuntimeErrors
        raise error(
            f"{what} failed on rank {dist.get_rank(group)} of {dist.get_world_size(group)}: "
            f"a peer rank died, hung past the process group's timeout, or skipped this call ({e})"
        ) from e
