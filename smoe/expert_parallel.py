"""Expert parallelism on torch.distributed: the E experts of an MoE layer sharded over the ranks of a group.

Legend: W ranks in the expert-parallel group, E experts, L = E / W local experts per rank (rank r owns experts
r L .. r L + L - 1), N this rank's tokens, A' this rank's kept pairs, R rows this rank's experts receive, d width.

Each rank routes its own tokens with the replicated router and plans them with the shared `Dispatcher`, so its
rows leave grouped by expert, hence by the rank owning that expert. One all-to-all of E counts tells every rank
how many rows it will receive per local expert; the rows move with `all_to_all_single` (uneven splits), are
regrouped by local expert, run through the same `Experts` computation and come back the same way; the combine
is the usual one. The two row exchanges are autograd functions whose backward is the reverse exchange.

What the router sees. The router and the dispatcher see only this rank's tokens, so the layer equals, on each
rank, the single-process `MoE` with the same weights applied to that rank's batch (the tests check this to
float64 precision): aux losses and statistics are those of this rank's tokens, `capacity_factor` caps each
expert per rank (C from this rank's pairs), and routers that pool tokens (expert choice; Sinkhorn/SSR, USMoE's
pool and BPR's priorities when they land) pool this rank's tokens. `global_view=True` gives a router that
supports it (`Router.supports_global_view`: expert choice) every rank's tokens as its pool; only their (N, E)
scores are all-gathered, not the d-wide tokens, and the routing then equals one process routing the
concatenated batch.

Rules of use. Every rank calls the layer and its backward the same number of times, with grad enabled or not
alike, even with zero tokens (as with any collective). Replicated parameters (the router) must start equal on
every rank: build the model with the same seed everywhere, or let DDP broadcast them. A collective that fails,
because a peer died or hung past the process group's timeout (`init_process_group(timeout=...)`), raises
`ExpertParallelError` naming the exchange and the rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from smoe.collectives import CollectiveError, collective
from smoe.dispatch import DispatchPlan
from smoe.experts import Experts
from smoe.layer import MoE, MoEStats
from smoe.routing import Routing, RoutingContext, available_routers
from smoe.routing.registry import router_class


class ExpertParallelError(CollectiveError):
    """A collective of the expert-parallel layer failed: a peer rank died, hung past the timeout, or skipped a call."""


def _collective(what: str, group: dist.ProcessGroup | None, op: Callable[[], object]) -> None:
    collective(f"expert-parallel {what}", group, op, ExpertParallelError)


def sum_stats(stats: MoEStats, group: dist.ProcessGroup | None = None) -> MoEStats:
    """This rank's stats summed over the group: counts and routed are totals, dropped_fraction is of the totals;
    capacity stays this rank's."""
    both = torch.stack([stats.counts, stats.routed])
    collective("all-reduce of routing statistics", group, lambda: dist.all_reduce(both, group=group))
    counts, routed = both
    dropped = (routed.sum() - counts.sum()).float() / routed.sum().clamp_min(1).float()
    return MoEStats(counts=counts, routed=routed, dropped_fraction=dropped, capacity=stats.capacity)


def exchange_rows(x: Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup | None,
                  what: str = "all-to-all of token rows") -> Tensor:
    """x: (sum(send), d) -> (sum(recv), d): the next send[r] rows of x go to rank r, recv[r] rows come from r."""
    out = x.new_empty(sum(recv), *x.shape[1:])
    _collective(what, group, lambda: dist.all_to_all_single(out, x.contiguous(), recv, send, group=group))
    return out


class _ExchangeRows(torch.autograd.Function):
    """`exchange_rows` whose backward sends the gradients back along the reverse route."""

    @staticmethod
    def forward(ctx, x: Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup | None) -> Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return exchange_rows(x, send, recv, group)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return exchange_rows(grad, ctx.recv, ctx.send, ctx.group, "all-to-all of row gradients"), None, None, None


def shard_experts(experts: Experts, rank: int, world_size: int) -> Experts:
    """A new `Experts` holding copies of experts rank L .. rank L + L - 1 of `experts` (L = E / world_size).

    Built on the meta device and filled from the slices, so it draws no random numbers.
    """
    if experts.num_experts % world_size:
        raise ValueError(f"num_experts={experts.num_experts} must be divisible by the expert-parallel group size "
                         f"{world_size}")
    per_rank = experts.num_experts // world_size
    with torch.device("meta"):
        shard = Experts(per_rank, experts.d_model, experts.hidden, kind=experts.kind, bias=experts.b_in is not None,
                        backend=experts.backend)
    lo = rank * per_rank
    state = {name: t[lo:lo + per_rank].clone() for name, t in experts.state_dict().items()}
    shard.load_state_dict(state, assign=True)
    return shard


def rows_by_local_expert(received_counts: Tensor) -> Tensor:
    """received_counts: (W, L) rows from rank s for local expert j -> (R,) order grouping them by expert.

    Received rows arrive grouped by source rank, then expert; the stable sort keeps source order within an expert.
    """
    world_size, local = received_counts.shape
    block_expert = torch.arange(local, device=received_counts.device).repeat(world_size)
    return torch.argsort(block_expert.repeat_interleave(received_counts.reshape(-1)), stable=True)


class ExpertParallelMoE(MoE):
    """An `MoE` whose experts are sharded over the ranks of an expert-parallel process group.

    ExpertParallelMoE(config, group=None, global_view=False) takes `MoE`'s arguments (or its keywords);
    `from_moe(moe)` converts a built layer and `to_expert_parallel(model)` every layer of a model. `group` is
    the expert-parallel process group (None: the default group); num_experts must be divisible by its size.
    Rank r keeps experts r E/W .. (r+1) E/W - 1 as `experts`; the router is replicated. Built with the same seed
    on every rank, the layers hold exactly the weights of a single-process `MoE` built with that seed.
    `global_view`: routers that pool tokens pool every rank's tokens (see the module docstring).
    forward and its output are `MoE`'s; `stats` and the aux losses describe this rank's tokens.
    """

    def __init__(self, *args, group: dist.ProcessGroup | None = None, global_view: bool = False, **kwargs):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ExpertParallelMoE needs torch.distributed: call torch.distributed.init_process_group "
                               "first (torchrun sets up the environment for it)")
        if not isinstance(global_view, bool):
            raise ValueError(f"global_view must be True or False, got {global_view!r}")
        super().__init__(*args, **kwargs)
        self.group, self.global_view = group, global_view
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        if self.rank < 0:
            raise ValueError("group: this process is not a member of the expert-parallel group")
        if global_view and not self.router.supports_global_view:
            able = [n for n in available_routers() if router_class(n).supports_global_view]
            raise ValueError(f"global_view=True needs a router that can pool every rank's tokens; "
                             f"{self.config.router!r} cannot; routers that can: {', '.join(able)}")
        self.experts = shard_experts(self.experts, self.rank, self.world_size)

    @classmethod
    def from_moe(cls, moe: MoE, group: dist.ProcessGroup | None = None, global_view: bool = False
                 ) -> ExpertParallelMoE:
        """The expert-parallel layer with moe's router (the same module) and this rank's copy of its expert shard."""
        if not isinstance(moe, MoE) or isinstance(moe, ExpertParallelMoE):
            raise ValueError(f"moe must be a single-process MoE layer, got {type(moe).__name__}")
        with torch.random.fork_rng(devices=[]):  # the placeholder weights drawn here must not move the caller's RNG
            layer = cls(moe.config, group=group, global_view=global_view)
        layer.router = moe.router
        layer.experts = shard_experts(moe.experts, layer.rank, layer.world_size)
        return layer

    @property
    def local_experts(self) -> range:
        """The global indices of the experts this rank holds."""
        per_rank = self.experts.num_experts
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def extra_repr(self) -> str:
        e = self.local_experts
        return (f"rank={self.rank}, world_size={self.world_size}, experts={e.start}..{e.stop - 1} of "
                f"{self.num_experts}, global_view={self.global_view}")

    def route(self, flat: Tensor, ctx: RoutingContext) -> Routing:
        """The router on this rank's tokens; with global_view it may gather every rank's scores."""
        return self.router(flat, replace(ctx, gather=self.gather_rows) if self.global_view else ctx)

    @torch.no_grad()
    def gather_rows(self, t: Tensor) -> tuple[Tensor, int]:
        """t: (N, ...) -> (every rank's rows in rank order (N_all, ...), offset of this rank's rows); no gradient."""
        size = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        _collective("all-gather of row counts", self.group, lambda: dist.all_gather(sizes, size, group=self.group))
        sizes = [int(s) for s in sizes]
        padded = t.new_zeros(max(sizes), *t.shape[1:])
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        _collective("all-gather of router scores", self.group, lambda: dist.all_gather(parts, padded, group=self.group))
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sum(sizes[: self.rank])

    def expert_outputs(self, flat: Tensor, plan: DispatchPlan) -> Tensor:
        """(R, d): this rank's grouped rows, sent to the ranks owning their experts, run there and sent back; the
        padding rows past the kept ones stay here (zeros)."""
        rows = self.dispatcher.dispatch(flat, plan)  # (R, d) grouped by expert, hence by owning rank
        if torch.is_grad_enabled() and not rows.requires_grad:
            rows = rows.detach().requires_grad_()  # every rank then records, and later runs, the backward exchange
        world_size, local = self.world_size, self.experts.num_experts
        received_counts = torch.empty_like(plan.counts)  # (E,) = (W, L): rows from rank s for local expert j
        _collective("all-to-all of expert counts", self.group,
                    lambda: dist.all_to_all_single(received_counts, plan.counts, group=self.group))
        received_counts = received_counts.view(world_size, local)
        send = plan.counts.view(world_size, local).sum(1).tolist()
        recv = received_counts.sum(1).tolist()
        received = _ExchangeRows.apply(rows[: sum(send)], send, recv, self.group)  # by source rank, then expert
        order = rows_by_local_expert(received_counts)
        out = self.experts(received.index_select(0, order), received_counts.sum(0))
        out = torch.empty_like(out).index_copy(0, order, out)  # back to (source rank, expert) order
        out = _ExchangeRows.apply(out, recv, send, self.group)
        padding = rows.shape[0] - out.shape[0]
        return torch.cat([out, out.new_zeros(padding, out.shape[1])]) if padding else out

    @torch.no_grad()
    def after_step(self, stats: list[MoEStats] | None = None) -> None:
        """The router's step hook, given the group's total counts so the replicated router stays equal on all ranks."""
        self.router.after_step(None if stats is None else [self.group_stats(s) for s in stats])

    def group_stats(self, stats: MoEStats) -> MoEStats:
        """This rank's stats summed over the expert-parallel group (`sum_stats`)."""
        return sum_stats(stats, self.group)


def to_expert_parallel(model: nn.Module, group: dist.ProcessGroup | None = None, global_view: bool = False
                       ) -> nn.Module:
    """Replace every `MoE` in model (in place) by its `ExpertParallelMoE`; returns model (or the new layer when
    model is itself an MoE). Build the model with the same seed on every rank first."""
    if isinstance(model, ExpertParallelMoE):
        return model
    if isinstance(model, MoE):
        return ExpertParallelMoE.from_moe(model, group, global_view)
    for name, child in model.named_children():
        setattr(model, name, to_expert_parallel(child, group, global_view))
    return model
