"""Data parallelism for the Trainer, with the experts sharded by expert parallelism: what `torchrun -m smoe train`
runs on W processes.

Legend: W ranks, r this rank, B the global batch (`train.batch_size`), E experts.

The W-process run is one process's run spread over W ranks:

- Model: every rank builds the model with the same seed, then `prepare_model` shards its experts
  (`to_expert_parallel`, rank r keeps E / W of each layer's experts) or, with expert parallelism off, keeps them
  all (pure data parallelism). Everything else is replicated; `DataParallel` broadcasts rank 0's copy at start.
- Data: every rank draws the same global batch of B rows from the same data generator and keeps its share, rows
  r B / W .. (r + 1) B / W - 1 (`DataParallel.share`), so the ranks together see exactly one process's batches.
- Gradients: each rank's loss is its share's mean loss plus its routers' aux losses; the run minimises their mean
  over ranks. Replicated gradients are all-reduced and divided by W (one flat buffer per dtype, after the last
  micro-batch; no hooks inside backward). Expert gradients already sum every rank's contribution (their rows
  came through the all-to-all), so they are divided by W and never all-reduced. Clipping uses the norm of the
  whole model's gradient (replicated parts once, expert shards summed over ranks).
- Equality with one process: per-token losses (cross-entropy, the z-loss) averaged over equal shares are the
  batch's loss, so for routers that route each token by itself the W-process run equals the 1-process run with
  the same global batch. The load-balancing loss, capacity and routers that pool tokens (expert choice, Sinkhorn,
  ...) see each rank's share, as in GShard / Switch; the run then equals the 1-process run that accumulates the
  W shares of each global batch as W micro-batches, and `global_view` (expert choice) makes routing pool the
  whole batch again. Both equalities are tested in float64 on 2 processes.
- Randomness: init and data order are the same on every rank; router noise and dropout are drawn per rank
  (rank 0 keeps the 1-process streams, rank r > 0 streams seeded from (seed, r)), so the shares do not share
  noise. Runs with noise or dropout are therefore not bitwise the 1-process run.
- Step state: `after_step` gets the group's total routing counts (an expert-parallel layer sums them itself,
  other layers get them summed here), so replicated router state (expert biases) stays equal on every rank.
- Logging: the step's values are averaged over ranks and written by rank 0 only (also the progress bar,
  config.yaml and final.json). Evaluation runs on every rank over the whole split (expert-parallel layers are
  collectives); the ranks compute the same numbers.
- Checkpoints: `checkpoints/rank-<r>/step-<s>.*` hold rank r's expert shard, its optimizer state and its RNG
  states; then rank 0 writes `checkpoints/step-<s>.*` (replicated parameters and their optimizer state, the
  configuration, the world size). A checkpoint exists once that last JSON does; rank folders keep one more step
  than the top folder, so every kept top-level checkpoint has its shards. Resume needs the same world size.
- Stopping: a SIGINT / SIGTERM on any rank stops every rank after the same step (one all-reduce per step).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from smoe._validate import check_choice, check_float
from smoe.collectives import collective
from smoe.data.batches import map_tensors
from smoe.expert_parallel import ExpertParallelMoE, sum_stats, to_expert_parallel
from smoe.layer import MoE, MoEStats
from smoe.workbench.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@dataclass
class ParallelConfig:
    """How `smoe train` runs on several processes (torchrun); ignored on one.

    expert_parallel: "auto" shards the experts over the ranks when every MoE layer's num_experts is divisible by
    the world size and keeps them replicated otherwise; "on" requires it; "off" is pure data parallelism.
    global_view: routers that pool tokens (expert choice) pool every rank's tokens (needs expert parallelism).
    timeout_s: the process group's timeout, after which a collective waiting for a dead or hung rank fails
    (when smoe creates the group; a group the caller created keeps its own).
    """

    expert_parallel: str = "auto"
    global_view: bool = False
    timeout_s: float = 600.0

    def __post_init__(self):
        check_choice("expert_parallel", self.expert_parallel, ("auto", "on", "off"))
        if not isinstance(self.global_view, bool):
            raise ValueError(f"global_view must be True or False, got {self.global_view!r}")
        check_float("timeout_s", self.timeout_s, low=0.0, low_open=True)


def run_world_size() -> int:
    """Processes of this run: the initialised default group's size, else torchrun's WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def process_group(device: str, timeout_s: float) -> Iterator[str]:
    """The default process group for this run; yields this rank's device.

    An initialised group is used as it is (and left alone). Otherwise it is created from torchrun's environment
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; gloo on CPU, NCCL on CUDA, where rank r uses cuda:LOCAL_RANK)
    and destroyed on exit.
    """
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if dist.is_initialized():
        yield device
        return
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield device
    finally:
        dist.destroy_process_group()


def use_expert_parallel(model: nn.Module, mode: str, world_size: int) -> bool:
    """Whether `prepare_model` shards the experts of model's MoE layers over world_size ranks (see ParallelConfig)."""
    check_choice("expert_parallel", mode, ("auto", "on", "off"))
    sizes = sorted({m.num_experts for m in model.modules() if isinstance(m, MoE)})
    divisible = bool(sizes) and all(e % world_size == 0 for e in sizes)
    if mode == "on" and not divisible:
        raise ValueError(f"expert_parallel='on' needs MoE layers whose num_experts (here {sizes or 'none'}) are "
                         f"divisible by the world size {world_size}; use 'auto' or 'off' (pure data parallelism)")
    return mode != "off" and divisible


def prepare_model(model: nn.Module, config: ParallelConfig, world_size: int) -> dict:
    """Shard model's experts in place when expert parallelism applies; returns what the run config records."""
    expert_parallel = use_expert_parallel(model, config.expert_parallel, world_size)
    if config.global_view and not expert_parallel:
        raise ValueError("global_view=True needs expert parallelism (expert_parallel 'on', or 'auto' with "
                         "num_experts divisible by the world size)")
    if expert_parallel:
        to_expert_parallel(model, global_view=config.global_view)
    return {"world_size": world_size, "expert_parallel": expert_parallel, "global_view": config.global_view}


def check_world_size(state: dict, world_size: int, folder: Path) -> None:
    """A checkpoint resumes only on the world size that wrote it (one-process checkpoints record none: 1)."""
    written = state.get("world_size", 1)
    if written != world_size:
        how = f"torchrun --nproc_per_node={written}" if written > 1 else "one process (without torchrun)"
        raise CheckpointError(f"the checkpoint in {folder} was written by {written} process(es) and this run has "
                              f"{world_size}; resume it with {how}")


class SingleProcess:
    """The Trainer's one-process case: `DataParallel`'s hooks with nothing to synchronise."""

    rank, world_size, is_main = 0, 1, True

    def share(self, batch):
        return batch

    def barrier(self) -> None:
        pass

    def sync_gradients(self) -> None:
        pass

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def layer_stats(self, layer: nn.Module, stats: list[MoEStats]) -> list[MoEStats]:
        return stats

    def reduce_log(self, record: dict, count: int) -> tuple[dict[str, float], int]:
        return {k: float(v) for k, v in record.items()}, count

    def agree_stop(self, signum: int | None) -> int | None:
        return signum

    def save_checkpoint(self, folder: Path, step: int, tensors: dict[str, Tensor], state: dict, keep: int) -> Path:
        return save_checkpoint(folder, step, tensors, state, keep)

    def load_checkpoint(self, folder: Path) -> tuple[dict[str, Tensor], dict]:
        tensors, state = load_checkpoint(folder)
        check_world_size(state, 1, folder)
        return tensors, state


class DataParallel:
    """The Trainer's hooks for W processes of the default process group (see the module docstring).

    DataParallel(model, optimizer): model already prepared (`prepare_model`) and on its device, optimizer built
    over its parameters. Broadcasts rank 0's replicated parameters and buffers. A failed collective raises
    `smoe.expert_parallel.CollectiveError` (or ExpertParallelError inside a layer) naming it and the rank.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DataParallel needs torch.distributed: call torch.distributed.init_process_group "
                               "first (torchrun sets up the environment for it)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.device = next(model.parameters()).device  # where small collective tensors live (NCCL: on the GPU)
        shards = {f"{name}.experts": m.experts for name, m in model.named_modules() if isinstance(m, ExpertParallelMoE)}
        shard_ids = {id(t) for m in shards.values() for t in (*m.parameters(), *m.buffers())}
        params = [p for p in model.parameters() if p.requires_grad]
        self.replicated = [p for p in params if id(p) not in shard_ids]
        self.sharded = [p for p in params if id(p) in shard_ids]
        # checkpoint keys that belong to this rank: its experts' tensors and their optimizer state
        self.shard_keys = {f"model.{name}.{key}" for name, m in shards.items() for key in m.state_dict()}
        order = [p for group in optimizer.param_groups for p in group["params"]]
        self.shard_indices = {str(i) for i, p in enumerate(order) if id(p) in shard_ids}
        self._broadcast_replicated(model, shard_ids)

    def _collective(self, what: str, op) -> None:
        collective(f"data-parallel {what}", None, op)

    @torch.no_grad()
    def _broadcast_replicated(self, model: nn.Module, shard_ids: set[int]) -> None:
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) in shard_ids:
                continue
            self._collective("broadcast of the replicated parameters", lambda t=t: dist.broadcast(t, src=0))

    def share(self, batch):
        """batch: tensors of B rows (nested in tuples, lists, dicts) -> this rank's rows r B/W .. (r+1) B/W - 1."""
        def part(t: Tensor) -> Tensor:
            if t.dim() == 0:
                return t
            if t.shape[0] % self.world_size:
                raise ValueError(f"a batch of {t.shape[0]} rows does not split evenly over {self.world_size} ranks: "
                                 f"train.batch_size must be divisible by the world size")
            n = t.shape[0] // self.world_size
            return t[self.rank * n:(self.rank + 1) * n]

        return map_tensors(part, batch)

    def barrier(self) -> None:
        self._collective("barrier", dist.barrier)

    @torch.no_grad()
    def sync_gradients(self) -> None:
        """Replicated gradients: summed over ranks and divided by W (a parameter no rank gave a gradient keeps
        None); expert shard gradients: divided by W."""
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in self.replicated:
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, params in by_dtype.items():
            grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
            has_grad = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=params[0].device)
            flat = torch.cat([*grads, has_grad])
            self._collective("all-reduce of gradients", lambda flat=flat: dist.all_reduce(flat))
            summed, given = flat[:-len(params)].div_(self.world_size), flat[-len(params):]
            for p, g, any_grad in zip(params, summed.split([p.numel() for p in params]), given.tolist()):
                if p.grad is not None:
                    p.grad.copy_(g.view_as(p))
                elif any_grad:
                    p.grad = g.view_as(p).clone()
        for p in self.sharded:
            if p.grad is not None:
                p.grad.div_(self.world_size)

    @torch.no_grad()
    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> Tensor:
        """`torch.nn.utils.clip_grad_norm_` over the whole model: replicated gradients once, expert shards summed
        over ranks. Call after `sync_gradients`; returns the total norm (the same on every rank)."""
        shard_ids = {id(p) for p in self.sharded}
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())

        def squared(gs: list[Tensor]) -> Tensor:
            zero = torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)
            return sum((torch.linalg.vector_norm(g) ** 2 for g in gs), zero)

        shard_sq = squared([p.grad for p in params if p.grad is not None and id(p) in shard_ids])
        self._collective("all-reduce of the gradient norm", lambda: dist.all_reduce(shard_sq))
        total = (squared([p.grad for p in params if p.grad is not None and id(p) not in shard_ids]) + shard_sq).sqrt()
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
        for g in grads:
            g.mul_(scale.to(g.dtype))
        return total

    def layer_stats(self, layer: nn.Module, stats: list[MoEStats]) -> list[MoEStats]:
        """The stats `layer.after_step` gets: the group's totals (an expert-parallel layer sums them itself)."""
        if any(isinstance(m, ExpertParallelMoE) for m in layer.modules()):
            return stats
        return [sum_stats(s) for s in stats]

    def reduce_log(self, record: dict, count: int) -> tuple[dict[str, float], int]:
        """The step's log values averaged over the ranks that have them, and the total count of samples."""
        mine = ({k: float(v) for k, v in record.items()}, count)
        every: list = [None] * self.world_size
        self._collective("all-gather of the log values", lambda: dist.all_gather_object(every, mine))
        names = list(dict.fromkeys(k for values, _ in every for k in values))
        means = {}
        for k in names:
            seen = [values[k] for values, _ in every if k in values]
            means[k] = sum(seen) / len(seen)
        return means, sum(c for _, c in every)

    def _max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        self._collective("all-reduce of a flag", lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
        return int(t)

    def agree_stop(self, signum: int | None) -> int | None:
        """The signal that stops every rank after this step: the largest any rank received, or None."""
        return self._max(signum or 0) or None

    def save_checkpoint(self, folder: Path, step: int, tensors: dict[str, Tensor], state: dict, keep: int) -> Path:
        """Rank r writes its shard (expert tensors, their optimizer state, its RNG states) to folder/rank-<r>;
        then rank 0 writes the replicated part to folder. Returns the top-level JSON path on every rank."""
        folder = Path(folder)
        optim = state["optimizer"]
        shard = {k: v for k, v in tensors.items() if self._in_shard(k)}
        shard_state = {"rank": self.rank, "world_size": self.world_size, "rng": state["rng"],
                       "optimizer_plain": {i: v for i, v in optim["plain"].items() if i in self.shard_indices}}
        save_checkpoint(folder / f"rank-{self.rank}", step, shard, shard_state, keep + 1)
        self.barrier()
        if self.is_main:
            top = {k: v for k, v in tensors.items() if not self._in_shard(k)}
            plain = {i: v for i, v in optim["plain"].items() if i not in self.shard_indices}
            top_state = {**{k: v for k, v in state.items() if k != "rng"}, "world_size": self.world_size,
                         "optimizer": {**optim, "plain": plain}}
            save_checkpoint(folder, step, top, top_state, keep)
        self.barrier()  # the checkpoint is complete on every rank's return
        return folder / f"step-{step:08d}.json"

    def load_checkpoint(self, folder: Path) -> tuple[dict[str, Tensor], dict]:
        """The latest checkpoint as one process's (tensors, state): the top-level part with this rank's shard.
        Every rank fails (CheckpointError) if any rank cannot load its part."""
        folder = Path(folder)
        error = None
        try:
            tensors, state = load_checkpoint(folder)
            check_world_size(state, self.world_size, folder)
            shard, shard_state = load_checkpoint(folder / f"rank-{self.rank}", state["step"])
        except CheckpointError as e:
            error = e
        if self._max(error is not None):
            raise error or CheckpointError(f"another rank could not load its part of the checkpoint in {folder}")
        plain = {**state["optimizer"]["plain"], **shard_state["optimizer_plain"]}
        return {**tensors, **shard}, {**state, "rng": shard_state["rng"], "optimizer": {**state["optimizer"],
                                                                                         "plain": plain}}

    def _in_shard(self, key: str) -> bool:
        if key.startswith("ema."):  # the average of a tensor lives where the tensor does
            key = "model." + key[len("ema."):]
        if key.startswith("optim."):
            return key[len("optim."):].split(".", 1)[0] in self.shard_indices
        return key in self.shard_keys
