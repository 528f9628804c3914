"""What a run's final metric is read from: an exponential moving average of the weights (`WeightAverage`) and
the mean of the last evaluations (`tail_steps`, `mean_of`).

The average is bias-corrected: it starts from zero and after t updates with values p_1 .. p_t it is
sum_i (1 - d) d^(t - i) p_i / (1 - d^t), a weighted mean of the weights seen (the initial weights take no part).
It covers every floating-point tensor of the state dict (parameters and float buffers such as an expert bias);
other buffers are the model's own. Its running sums are checkpointed as `ema.<name>` tensors, so a resumed run
continues it bit for bit.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from smoe._validate import check_float


class WeightAverage:
    """The bias-corrected exponential moving average of `model`'s floating-point state, decay `decay` in (0, 1).

    `update(model)` after each optimizer step; `averaged()` the average; `swapped_in(model)` evaluates with it."""

    def __init__(self, model: nn.Module, decay: float):
        check_float("ema_decay", decay, low=0.0, high=1.0, low_open=True, high_open=True)
        self.decay, self.count = decay, 0
        self.sums = {name: torch.zeros_like(t) for name, t in _float_state(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, t in _float_state(model).items():
            self.sums[name].mul_(self.decay).add_(t, alpha=1 - self.decay)

    def averaged(self) -> dict[str, Tensor]:
        """name -> the average (each sum divided by 1 - decay^count); the model's state when count is 0."""
        return averaged(self.sums, self.decay, self.count)

    def state(self) -> dict[str, Tensor]:
        """The running sums, to checkpoint (restore with `load`, the count being the step)."""
        return dict(self.sums)

    @torch.no_grad()
    def load(self, sums: Mapping[str, Tensor], count: int) -> None:
        if set(sums) != set(self.sums):
            raise ValueError(f"the weight average does not fit the model: missing {sorted(set(self.sums) - set(sums))}"
                             f", unexpected {sorted(set(sums) - set(self.sums))}")
        for name, value in sums.items():
            self.sums[name].copy_(value)
        self.count = count

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Within the block the model holds the average; its own weights are put back after."""
        state = _float_state(model)
        kept = {name: t.clone() for name, t in state.items()}
        with torch.no_grad():
            for name, value in self.averaged().items():
                state[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in kept.items():
                    state[name].copy_(value)


def averaged(sums: Mapping[str, Tensor], decay: float, count: int) -> dict[str, Tensor]:
    """The bias-corrected average of running sums after `count` updates (count 0: the sums, all zero)."""
    factor = 1.0 / (1.0 - decay ** count) if count else 1.0
    return {name: s * factor for name, s in sums.items()}


def load_averaged(model: nn.Module, sums: Mapping[str, Tensor], decay: float, count: int) -> None:
    """Put the average of checkpointed running sums into `model` (its floating-point state)."""
    state = _float_state(model)
    if set(sums) != set(state):
        raise ValueError(f"the weight average does not fit the model: missing {sorted(set(state) - set(sums))}, "
                         f"unexpected {sorted(set(sums) - set(state))}")
    with torch.no_grad():
        for name, value in averaged(sums, decay, count).items():
            state[name].copy_(value)


def _float_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's floating-point state dict tensors (sharing storage with the model), tied ones once."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.is_floating_point() and key not in seen:
            out[name] = t
            seen.add(key)
    return out


def tail_steps(steps: int, eval_every: int, count: int) -> list[int]:
    """The steps of the last `count` evaluations of a run of `steps` steps: the periodic ones (multiples of
    eval_every below steps) and the final one, at `steps`."""
    periodic = list(range(eval_every, steps, eval_every)) if eval_every else []
    before = periodic[len(periodic) - (count - 1):] if count > 1 else []
    return [*before, steps]


def mean_of(evaluations: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise mean of evaluations ({metric: value}); keys missing from one are left out."""
    keys = [k for k in evaluations[0] if all(k in e for e in evaluations)]
    return {k: statistics.fmean(e[k] for e in evaluations) for k in keys}
