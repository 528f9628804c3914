"""CUDA checks, skipped without a GPU: every router and layer-level method on the GPU against the CPU, the two
expert backends against each other in bf16, the Trainer end to end, and the expert-parallel layer over NCCL."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist

from smoe import build_moe
from smoe.experts import Experts
from smoe.launch_local import run_local
from smoe.layer import available_layers
from smoe.routing import available_routers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

B, T, D, H, E = 2, 16, 32, 64, 8
ROUTERS = [r for r in available_routers() + available_layers() if r != "hash"] + ["hash"]


def _layer(router: str):
    torch.manual_seed(0)
    options = {"vocab_size": 50} if router == "hash" else {}
    return build_moe(D, E, H, router=router, k=2, **options)


def _context(router: str, device: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ctx = {}
    if router == "hash":
        ctx["token_ids"] = torch.randint(0, 50, (B, T), generator=g).to(device)
    if router == "attention":
        ctx["attn_probs"] = torch.softmax(torch.randn(B, T, T, generator=g), -1).to(device)
    return ctx


@pytest.mark.parametrize("router", ROUTERS)
def test_router_on_cuda_equals_cpu_in_eval_and_trains(router):
    cpu = _layer(router).eval()
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = cpu(x, **_context(router, "cpu")).y
        out = gpu(x.cuda(), **_context(router, "cuda")).y
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)

    gpu.train()
    xg = x.cuda().requires_grad_()
    res = gpu(xg, **_context(router, "cuda"))
    (res.y.square().mean() + res.aux_loss).backward()
    assert torch.isfinite(xg.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
def test_grouped_mm_and_loop_backends_agree_in_bf16(kind):
    torch.manual_seed(0)
    grouped = Experts(E, 64, 128, kind=kind, backend="grouped").cuda().bfloat16()
    loop = copy.deepcopy(grouped)
    loop.backend = "loop"
    counts = torch.tensor([5, 0, 17, 3, 9, 0, 1, 29], device="cuda")
    x = torch.randn(int(counts.sum()), 64, device="cuda", dtype=torch.bfloat16)
    outs = []
    for module in (grouped, loop):
        xi = x.clone().requires_grad_()
        y = module(xi, counts)
        y.float().square().sum().backward()
        outs.append((y.float(), xi.grad.float(), module.w_in.grad.float(), module.w_out.grad.float()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
    assert grouped.active_backend == "grouped"


def test_trainer_runs_and_resumes_on_cuda(tmp_path):
    from smoe.workbench.run.config import resolve_config
    from smoe.workbench.run.runner import train_run

    config = resolve_config("digits", "tiny", router="vmoe", device="cuda", steps=20)
    result = train_run(config, tmp_path / "run", progress=False)
    assert result.status == "done" and result.step == 20
    assert 0.0 <= result.final["test"]["accuracy"] <= 1.0
    longer = resolve_config("digits", "tiny", router="vmoe", device="cuda", steps=30)
    assert train_run(longer, tmp_path / "run", resume=True, progress=False).step == 30
    assert json.loads((tmp_path / "run" / "final.json").read_text())["test"]


def expert_parallel_on_nccl() -> float:
    """On a 1-rank NCCL group: ExpertParallelMoE (all-to-all on the GPU) against MoE with the same weights."""
    from smoe import MoE
    from smoe.expert_parallel import ExpertParallelMoE

    torch.cuda.set_device(dist.get_rank())
    torch.manual_seed(0)
    ep = ExpertParallelMoE(D, E, H, k=2).cuda()
    torch.manual_seed(0)
    ref = MoE(D, E, H, k=2).cuda()
    x = torch.randn(B * T, D, device="cuda", requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y, yr = ep(x).y, ref(xr).y
    y.square().sum().backward()
    yr.square().sum().backward()
    return max((y - yr).abs().max().item(), (x.grad - xr.grad).abs().max().item(),
               (ep.experts.w_in.grad - ref.experts.w_in.grad).abs().max().item())


def test_expert_parallel_layer_over_nccl():
    assert run_local(expert_parallel_on_nccl, 1, backend="nccl", timeout_s=60.0, deadline_s=300.0)[0] < 1e-5


@pytest.mark.parametrize("capacity_factor", [None, 1.25])
@pytest.mark.parametrize("router", ["topk", "deepseek", "expert_choice", "xmoe", "vmoe", "usmoe", "hash", "sinkhorn",
                                    "ssr"])
def test_forward_and_backward_never_synchronise(router, capacity_factor):
    """Issue 17 on the device itself: CUDA's sync debug mode turns any host synchronisation into an error."""
    torch.manual_seed(0)
    options = {"vocab_size": 50} if router == "hash" else {}
    layer = build_moe(D, E, H, router=router, k=2, capacity_factor=capacity_factor, backend="grouped", **options)
    layer = layer.to("cuda", torch.bfloat16).train(router not in ("sinkhorn", "ssr"))  # Sinkhorn iterates in training
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
    mask[0, -4:] = False
    generator, context = torch.Generator("cuda").manual_seed(1), _context(router, "cuda")

    def step(m):
        out = layer(x, m, generator=generator, **context)
        (out.y.float().square().mean() + out.aux_loss).backward()

    for m in (None, mask):
        step(m)  # warm-up: lazy CUDA initialisation may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(m)
        finally:
            torch.cuda.set_sync_debug_mode("default")
