"""Expert parallelism: 2 gloo processes on 127.0.0.1 must reproduce the single-process layer in float64.

Every case below is built the same way here and in the ranks (fixed seeds), so the ranks only send back what
they computed; the single-process references run in this process. The 2-process run is shared by the tests
(one spawn), each test checks its own case.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from smoe import MoE
from smoe.blocks import Block, BlockConfig, run_blocks
from smoe.expert_parallel import ExpertParallelMoE, rows_by_local_expert, shard_experts, to_expert_parallel
from smoe.launch_local import LocalRunError, free_port, run_local

D, H, E = 8, 8, 4  # widths aligned for grouped_mm in bfloat16
F64 = torch.float64
EXACT = {"rtol": 1e-12, "atol": 1e-12}
BF16 = {"rtol": 2e-2, "atol": 2e-2}  # grouping rows of two ranks changes bfloat16 rounding, not the function


def gate_without(*experts: int) -> torch.Tensor:
    """(E, D) gate whose rows for `experts` are negative: with positive inputs those experts are never chosen.

    The other experts e score 3 x[e] + 0.1 sum(x), so which of them a token picks depends on its features.
    """
    w = 3 * torch.eye(E, D, dtype=F64) + 0.1
    w[list(experts)] = -1.0
    return w


def case(seed: int, layer: dict, shapes: list[tuple], padded=(0, 0), gate=None, global_view=False,
         positive=False, constructor=False, dtype=F64, input_grad=(True, True)) -> dict:
    """One scenario: layer options, each rank's input x: (*shape, D), mask (last `padded` tokens False), output
    weights g for the loss sum(y * g) + aux."""
    g = torch.Generator().manual_seed(seed)
    xs, masks, grads = [], [], []
    for shape, pad in zip(shapes, padded):
        x = torch.randn(*shape, D, generator=g, dtype=F64)
        xs.append((x.abs() + 0.1 if positive else x).to(dtype))
        mask = None
        if pad:
            mask = torch.ones(shape, dtype=torch.bool)
            mask.view(-1)[-pad:] = False
        masks.append(mask)
        grads.append(torch.randn(*shape, D, generator=g, dtype=F64).to(dtype))
    return {"layer": layer, "xs": xs, "masks": masks, "grads": grads, "gate": gate, "global_view": global_view,
            "constructor": constructor, "dtype": dtype, "input_grad": input_grad}


CASES: dict[str, dict] = {}
CASES["topk_uneven_batches"] = case(1, {"router": "topk", "k": 2, "bias": True, "z_loss_coef": 0.01},
                                    [(2, 5), (3, 4)], padded=(0, 3))
CASES["topk_constructor"] = case(2, {"router": "topk", "k": 1, "expert": "gelu"}, [(9,), (4,)], constructor=True)
CASES["topk_capacity"] = case(3, {"router": "topk", "k": 2, "capacity_factor": 0.75}, [(12,), (7,)])
CASES["expert_choice"] = case(4, {"router": "expert_choice", "k": 2}, [(2, 6), (9,)], padded=(2, 0))
CASES["expert_choice_global_view"] = case(4, {"router": "expert_choice", "k": 2}, [(2, 6), (9,)], padded=(2, 0),
                                          global_view=True)
CASES["expert_without_tokens"] = case(6, {"router": "topk", "k": 2}, [(8,), (5,)], gate=gate_without(3), positive=True)
CASES["rank_receiving_nothing"] = case(7, {"router": "topk", "k": 2}, [(8,), (5,)], gate=gate_without(2, 3),
                                       positive=True)
CASES["rank_without_tokens"] = case(8, {"router": "expert_choice", "k": 2}, [(8,), (0,)])
CASES["global_view_rank_without_tokens"] = case(10, {"router": "expert_choice", "k": 1}, [(8,), (0,)],
                                                global_view=True)
CASES["no_tokens_anywhere"] = case(9, {"router": "topk", "k": 1}, [(0,), (0,)])
CASES["input_without_grad_on_one_rank"] = case(12, {"router": "topk", "k": 2}, [(6,), (5,)], input_grad=(True, False))
CASES["bfloat16_grouped_experts"] = case(11, {"router": "topk", "k": 2}, [(16,), (24,)], dtype=torch.bfloat16)


def build_layer(spec: dict) -> MoE:
    """The single-process layer of a case (seed 0, float64, the case's gate)."""
    torch.manual_seed(0)
    m = MoE(D, E, H, **spec["layer"]).to(spec["dtype"])
    if spec["gate"] is not None:
        with torch.no_grad():
            m.router.gate.weight.copy_(spec["gate"])
    return m


def loss_of(out, g: torch.Tensor) -> torch.Tensor:
    return (out.y * g).sum() + out.aux_loss


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters()}


# ---------------------------------------------------------------- what every rank runs

def run_case(spec: dict) -> dict:
    """This rank's part of a case through the expert-parallel layer: output, aux, stats, every gradient."""
    rank = dist.get_rank()
    if spec["constructor"]:
        torch.manual_seed(0)
        layer = ExpertParallelMoE(D, E, H, global_view=spec["global_view"], **spec["layer"]).to(spec["dtype"])
    else:
        layer = ExpertParallelMoE.from_moe(build_layer(spec), global_view=spec["global_view"])
    x = spec["xs"][rank].clone().requires_grad_(spec["input_grad"][rank])
    out = layer(x, spec["masks"][rank])
    loss_of(out, spec["grads"][rank]).backward()
    return {"y": out.y.detach(), "aux": out.aux_loss.detach(), "x_grad": x.grad, "counts": out.stats.counts,
            "router_grads": grads(layer.router), "expert_grads": grads(layer.experts),
            "local_experts": layer.local_experts, "backend": layer.experts.active_backend}


def block_model() -> nn.ModuleList:
    torch.manual_seed(1)
    moe = {"num_experts": E, "router": "topk", "router_options": {"k": 2}}
    return nn.ModuleList(Block(BlockConfig(D, 2, H, causal=True, moe=moe)) for _ in range(2)).double()


def block_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randn(2, 3 + rank, D, generator=g, dtype=F64), torch.randn(2, 3 + rank, D, generator=g, dtype=F64)


def run_blocks_case() -> dict:
    """A 2-block transformer converted by to_expert_parallel: output and gradients on this rank."""
    rank = dist.get_rank()
    model = block_model()
    rng = torch.random.get_rng_state()
    to_expert_parallel(model)
    x, g = block_inputs(rank)
    x.requires_grad_()
    y, outs = run_blocks(model, x)
    ((y * g).sum() + sum(o.moe.aux_loss for o in outs)).backward()
    return {"y": y.detach(), "x_grad": x.grad, "grads": grads(model), "types": [type(b.ffn).__name__ for b in model],
            "rng_untouched": torch.equal(rng, torch.random.get_rng_state())}


def run_after_step() -> dict:
    """after_step hands the router the group's total counts."""
    layer = ExpertParallelMoE.from_moe(build_layer(CASES["topk_uneven_batches"]))
    seen = []
    layer.router.after_step = seen.append
    out = layer(CASES["topk_uneven_batches"]["xs"][dist.get_rank()])
    layer.after_step([out.stats])
    return {"local": out.stats.routed, "given": seen[0][0].routed, "given_counts": seen[0][0].counts}


def bad_constructions() -> dict:
    """The error message of each invalid construction (world size 2)."""
    messages = {}
    for name, make in {
        "indivisible": lambda: ExpertParallelMoE(D, 3, H, k=1),
        "global_view_topk": lambda: ExpertParallelMoE(D, E, H, global_view=True),
        "global_view_type": lambda: ExpertParallelMoE(D, E, H, global_view="yes"),
        "from_non_moe": lambda: ExpertParallelMoE.from_moe(nn.Linear(2, 2)),
    }.items():
        try:
            make()
            messages[name] = None
        except ValueError as e:
            messages[name] = str(e)
    return messages


def all_checks() -> dict:
    out = {name: run_case(spec) for name, spec in CASES.items()}
    out["blocks"] = run_blocks_case()
    out["after_step"] = run_after_step()
    out["bad"] = bad_constructions()
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_local(all_checks, 2, timeout_s=60.0, deadline_s=300.0, num_threads=1)


# ---------------------------------------------------------------- single-process references

def reference(spec: dict) -> tuple[list[dict], dict, dict]:
    """Per rank (y, aux, x_grad, counts) and the summed router / full expert gradients of the reference layer.

    Local view: the layer on each rank's batch separately (gradients accumulate over the ranks' losses).
    Global view: the layer on the concatenated batch, once.
    """
    m = build_layer(spec)
    xs = [x.clone().requires_grad_(g) for x, g in zip(spec["xs"], spec["input_grad"])]
    per_rank = []
    if spec["global_view"]:
        flat = torch.cat([x.reshape(-1, D) for x in xs])
        mask = torch.cat([mk.reshape(-1) if mk is not None else torch.ones(x.shape[:-1]).bool().reshape(-1)
                          for x, mk in zip(xs, spec["masks"])])
        out = m(flat, mask)
        loss_of(out, torch.cat([g.reshape(-1, D) for g in spec["grads"]])).backward()
        ys = out.y.detach().split([x.reshape(-1, D).shape[0] for x in xs])
        per_rank = [{"y": y.reshape(x.shape), "x_grad": x.grad, "routing": out.routing} for y, x in zip(ys, xs)]
    else:
        for x, mk, g in zip(xs, spec["masks"], spec["grads"]):
            out = m(x, mk)
            loss_of(out, g).backward()
            per_rank.append({"y": out.y.detach(), "aux": out.aux_loss.detach(), "x_grad": x.grad,
                             "counts": out.stats.counts, "routing": out.routing})
    return per_rank, grads(m.router), grads(m.experts)


def check_case(name: str, ranks: list[dict]) -> list[dict]:
    """Output, aux, x gradient of each rank; router gradients summed over ranks; each rank's expert shard."""
    spec = CASES[name]
    tol = EXACT if spec["dtype"] == F64 else BF16
    per_rank, router_grads, expert_grads = reference(spec)
    got = [r[name] for r in ranks]
    for ref, ep in zip(per_rank, got):
        torch.testing.assert_close(ep["y"], ref["y"], **tol)
        if ref["x_grad"] is None:
            assert ep["x_grad"] is None
        else:
            torch.testing.assert_close(ep["x_grad"], ref["x_grad"], **tol)
        if not spec["global_view"]:
            torch.testing.assert_close(ep["aux"], ref["aux"], **tol)
            assert torch.equal(ep["counts"], ref["counts"])
    for n, g in router_grads.items():
        torch.testing.assert_close(got[0]["router_grads"][n] + got[1]["router_grads"][n], g, **tol)
    for ep in got:
        experts = ep["local_experts"]
        assert len(experts) == E // 2
        for n, g in expert_grads.items():
            torch.testing.assert_close(ep["expert_grads"][n], g[experts.start:experts.stop], **tol)
    return per_rank


# ---------------------------------------------------------------- tests

def test_topk_with_padding_and_uneven_batches_equals_single_process(ranks):
    check_case("topk_uneven_batches", ranks)


def test_constructor_with_same_seed_holds_the_single_process_weights(ranks):
    check_case("topk_constructor", ranks)


def test_capacity_applies_per_rank_like_the_single_process_layer_on_that_batch(ranks):
    per_rank = check_case("topk_capacity", ranks)
    assert all(int(r["counts"].sum()) < r["routing"].num_pairs for r in per_rank)  # capacity did drop pairs


def test_expert_choice_variable_experts_per_token_equals_single_process(ranks):
    per_rank = check_case("expert_choice", ranks)
    per_token = torch.cat([r["routing"].experts_per_token() for r in per_rank])
    assert per_token.min() == 0 and per_token.max() >= 2  # the case really exercises 0..E experts per token


def test_expert_choice_global_view_equals_one_process_on_the_concatenated_batch(ranks):
    per_rank = check_case("expert_choice_global_view", ranks)
    local_y = torch.cat([r["expert_choice"]["y"].reshape(-1, D) for r in ranks])
    global_y = torch.cat([r["y"].reshape(-1, D) for r in per_rank])
    assert not torch.allclose(local_y, global_y)  # the global pool routes differently from each rank's own


def test_an_expert_without_tokens(ranks):
    check_case("expert_without_tokens", ranks)
    shard = ranks[1]["expert_without_tokens"]["expert_grads"]["w_in"]
    assert torch.all(shard[1] == 0) and shard[0].abs().sum() > 0  # expert 3 got nothing, expert 2 did


def test_a_rank_whose_experts_receive_nothing(ranks):
    check_case("rank_receiving_nothing", ranks)
    assert all(torch.all(g == 0) for g in ranks[1]["rank_receiving_nothing"]["expert_grads"].values())


def test_a_rank_without_tokens(ranks):
    check_case("rank_without_tokens", ranks)
    assert ranks[1]["rank_without_tokens"]["y"].shape == (0, D)


def test_no_tokens_on_any_rank(ranks):
    check_case("no_tokens_anywhere", ranks)


def test_input_without_grad_on_one_rank_still_pairs_the_backward_exchanges(ranks):
    check_case("input_without_grad_on_one_rank", ranks)


def test_global_view_with_a_rank_without_tokens(ranks):
    check_case("global_view_rank_without_tokens", ranks)


def test_bfloat16_through_grouped_mm_matches_single_process(ranks):
    check_case("bfloat16_grouped_experts", ranks)
    assert [r["bfloat16_grouped_experts"]["backend"] for r in ranks] == ["grouped", "grouped"]


def test_to_expert_parallel_on_a_transformer_stack(ranks):
    model = block_model()
    for rank, got in enumerate(r["blocks"] for r in ranks):
        assert got["types"] == ["ExpertParallelMoE"] * 2 and got["rng_untouched"]
        x, g = block_inputs(rank)
        x.requires_grad_()
        y, outs = run_blocks(model, x)
        ((y * g).sum() + sum(o.moe.aux_loss for o in outs)).backward()
        torch.testing.assert_close(got["y"], y.detach(), **EXACT)
        torch.testing.assert_close(got["x_grad"], x.grad, **EXACT)
    ref_grads = grads(model)
    for name, g in ref_grads.items():
        if ".experts." in name:
            for rank, got in enumerate(r["blocks"] for r in ranks):
                torch.testing.assert_close(got["grads"][name], g[2 * rank:2 * rank + 2], **EXACT)
        else:  # replicated: data parallelism sums the ranks' gradients
            torch.testing.assert_close(ranks[0]["blocks"]["grads"][name] + ranks[1]["blocks"]["grads"][name], g,
                                       **EXACT)


def test_after_step_gives_the_router_the_group_totals(ranks):
    total = ranks[0]["after_step"]["local"] + ranks[1]["after_step"]["local"]
    assert not torch.equal(ranks[0]["after_step"]["local"], total)
    for r in ranks:
        assert torch.equal(r["after_step"]["given"], total) and torch.equal(r["after_step"]["given_counts"], total)


def test_bad_constructions_name_the_problem(ranks):
    bad = ranks[0]["bad"]
    assert "num_experts=3 must be divisible by the expert-parallel group size 2" in bad["indivisible"]
    assert "global_view=True needs a router" in bad["global_view_topk"] and "expert_choice" in bad["global_view_topk"]
    assert "global_view must be True or False" in bad["global_view_type"]
    assert "moe must be a single-process MoE layer, got Linear" in bad["from_non_moe"]


# ---------------------------------------------------------------- failures stay bounded and clear

def die_before_exchange() -> None:
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    layer = ExpertParallelMoE(D, E, H)
    layer(torch.randn(5, D))


def hang_before_exchange() -> None:
    if dist.get_rank() == 1:
        time.sleep(600)
    layer = ExpertParallelMoE(D, E, H)
    layer(torch.randn(5, D))


def test_a_dead_rank_makes_the_other_fail_clearly():
    with pytest.raises(LocalRunError) as info:
        run_local(die_before_exchange, 2, timeout_s=10.0, deadline_s=120.0, num_threads=1)
    errors = info.value.errors
    assert "ExpertParallelError: expert-parallel all-to-all of expert counts failed on rank 0 of 2" in errors[0]
    assert "killed by SIGKILL" in errors[1]


def test_a_hanging_rank_makes_the_other_fail_after_the_group_timeout():
    with pytest.raises(LocalRunError) as info:
        run_local(hang_before_exchange, 2, timeout_s=2.0, deadline_s=120.0, num_threads=1)
    errors = info.value.errors
    assert "ExpertParallelError: expert-parallel all-to-all of expert counts failed on rank 0 of 2" in errors[0]
    assert "Timed out" in errors[0]
    assert "killed" in errors[1]


def sleep_forever() -> None:
    time.sleep(600)


def test_run_local_kills_ranks_at_the_deadline():
    with pytest.raises(LocalRunError, match="rank 0: still running at the deadline"):
        run_local(sleep_forever, 1, deadline_s=3.0)


# ---------------------------------------------------------------- in this process

def test_rows_by_local_expert_by_hand():
    # from rank 0: 2 rows for local expert 0, 1 for expert 1; from rank 1: 1 row for expert 0, none for expert 1
    # rows arrive as [s0e0, s0e0, s0e1, s1e0] -> grouped by expert: rows 0, 1, 3 (expert 0), then row 2
    assert rows_by_local_expert(torch.tensor([[2, 1], [1, 0]])).tolist() == [0, 1, 3, 2]
    assert rows_by_local_expert(torch.tensor([[0, 0], [0, 0]])).tolist() == []


def test_shard_experts_copies_its_slice_without_drawing_random_numbers():
    full = build_layer(CASES["topk_uneven_batches"]).experts
    rng = torch.random.get_rng_state()
    shard = shard_experts(full, rank=1, world_size=2)
    assert torch.equal(rng, torch.random.get_rng_state())
    for name, p in shard.named_parameters():
        assert p.dtype == F64 and p.requires_grad
        assert torch.equal(p, getattr(full, name)[2:4]) and p.data_ptr() != getattr(full, name)[2:4].data_ptr()
    with pytest.raises(ValueError, match="num_experts=4 must be divisible by the expert-parallel group size 3"):
        shard_experts(full, rank=0, world_size=3)


def test_needs_an_initialised_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        ExpertParallelMoE(D, E, H)


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_gradcheck_through_the_exchanges_on_one_rank(one_rank_group):
    layer = ExpertParallelMoE(4, 2, 6, k=2, bias=True, z_loss_coef=0.1).double()
    x = torch.randn(5, 4, dtype=F64, requires_grad=True)

    def f(x, *params):
        out = layer(x)
        return out.y, out.aux_loss

    assert torch.autograd.gradcheck(f, (x, *layer.parameters()), fast_mode=True)


@pytest.mark.slow
def test_bench_parallel_runs_a_short_setting(capsys):
    from smoe.bench.parallel import main

    assert main(["--quick", "--tokens", "64", "--repeats", "1", "--threads", "2"]) == 0
    table = capsys.readouterr().out
    assert "| moe | 1 |" in table and "| ep | 1 |" in table and "| ep | 2 |" in table and "error" not in table
    assert "| lm | 1 |" in table and "| lm-ep | 2 |" in table and "| lm-dp | 2 |" in table  # the tiny-LM rows
