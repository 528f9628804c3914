"""Data-parallel training (smoe.distributed): a 2-process gloo run of the Trainer on a tiny float64 LM must equal
the 1-process run with the same global batch.

Two references, both 1-process Trainer runs here: "plain" trains on the global batch of 4 sequences (equal when
the loss decomposes over tokens: topk without the load-balancing loss, expert choice with global_view);
"shares" accumulates each global batch as its 2 rank shares, one micro-batch each (equal for every router: the
load-balancing loss, expert choice's pool and step state see one rank's share, as on that rank). All 2-process
scenarios run in one spawn (module fixture); each test checks its own. Further down: sharded checkpoints and
resume, world-size errors, DataParallel's pieces by hand, a dead rank, every router on 2 processes, and
`torchrun -m smoe train` itself.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from smoe.data.batches import lm_batches
from smoe.expert_parallel import ExpertParallelMoE
from smoe.launch_local import LocalRunError, run_local
from smoe.layer import available_layers
from smoe.models import LM, LMConfig
from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.runner import train_run
from smoe.workbench.train.checkpoint import CheckpointError, checkpoint_steps
from smoe.workbench.train.config import TrainConfig
from smoe.workbench.train.data_parallel import DataParallel, ParallelConfig, prepare_model, use_expert_parallel
from smoe.workbench.train.trainer import StepOutput, Trainer

W, BATCH, SEQ, VOCAB = 2, 4, 12, 13
STREAM = torch.randint(0, VOCAB, (3000,), generator=torch.Generator().manual_seed(0))
TIGHT = {"rtol": 0.0, "atol": 1e-9}  # float64; the acceptance bound is 1e-6

SCENARIOS = {
    # name: (router, router options, reference, expert parallel mode, global_view, grad_accum, grad_clip)
    "topk": ("topk", {"z_loss_coef": 0.01}, "shares", "on", False, 2, 0.05),
    "topk_token_losses": ("topk", {"load_balance_coef": 0.0, "z_loss_coef": 0.01}, "plain", "on", False, 1, 1.0),
    "expert_choice": ("expert_choice", {}, "shares", "on", False, 1, 1.0),
    "expert_choice_global_view": ("expert_choice", {}, "plain", "on", True, 1, 1.0),
    "deepseek_pure_ddp": ("deepseek", {"bias_rate": 0.01}, "shares", "off", False, 2, 1.0),
}
STEPS = 3


def lm_loss(model, batch, step, generator):
    x, y = batch
    out = model(x, step=step, generator=generator)
    return StepOutput(F.cross_entropy(out.logits.flatten(0, 1), y.flatten()), out.moe, count=y.numel())


def evaluate(model, split, generator):
    x = STREAM[:65].view(5, 13)
    return {"loss": float(F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()))}


def shares(batches, world_size: int = W):
    """Each global batch as its world_size rank shares, one after the other."""
    for batch in batches:
        n = batch[0].shape[0] // world_size
        for r in range(world_size):
            yield tuple(t[r * n:(r + 1) * n] for t in batch)


def build_model(router: str, options: dict) -> LM:
    torch.manual_seed(0)
    select = {"method": router} if router in available_layers() else {"router": router}
    moe = {"num_experts": 4, **select, "router_options": {"k": 2, **options}}
    return LM(LMConfig(vocab_size=VOCAB, max_len=SEQ, d_model=8, num_layers=2, num_heads=2, ffn_hidden=8,
                       moe=moe)).double()


def make_trainer(out_dir, name: str, steps: int = STEPS, reference: str | None = None, **train) -> Trainer:
    """The 2-process trainer of scenario `name` (reference=None), or its 1-process "plain" / "shares" reference."""
    router, options, _, mode, global_view, grad_accum, grad_clip = SCENARIOS[name]
    model = build_model(router, options)
    parallel = {}
    if reference is None:
        parallel = prepare_model(model, ParallelConfig(expert_parallel=mode, global_view=global_view), W)
    if reference == "shares":
        grad_accum *= W
    cfg = TrainConfig(**{"steps": steps, "schedule_steps": 6, "batch_size": BATCH // W if reference == "shares"
                         else BATCH, "grad_accum": grad_accum, "grad_clip": grad_clip, "lr": 1e-2,
                         "warmup_steps": 1, "eval_every": 2, "checkpoint_every": 2, "log_every": 1, **train})

    def batches(g):
        sampler = lm_batches(STREAM, BATCH, SEQ, g)
        return shares(sampler) if reference == "shares" else sampler

    return Trainer(model, cfg, loss_fn=lm_loss, train_batches=batches, evaluate=evaluate, out_dir=out_dir,
                   run_config={"train": asdict(cfg), **({"parallel": parallel} if parallel else {})}, seed=3,
                   progress=False, data_parallel=reference is None)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def records(out_dir: Path, split: str = "train") -> list[dict]:
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# ---------------------------------------------------------------- what every rank runs

def train_scenarios(root: str) -> dict:
    out = {}
    for name in SCENARIOS:
        trainer = make_trainer(Path(root) / name, name)
        result = trainer.fit()
        out[name] = {"status": result.status, "final": result.final, "state": cpu_state(trainer.model),
                     "expert_layers": sum(isinstance(m, ExpertParallelMoE) for m in trainer.model.modules())}
    return out


def resume_scenarios(root: str, single_process_run: str) -> dict:
    """4 steps straight, and 2 steps then resumed to 4; a one-process checkpoint refused."""
    straight = make_trainer(Path(root) / "straight", "topk", steps=4)
    straight.fit()
    make_trainer(Path(root) / "resumed", "topk", steps=2).fit()
    resumed = make_trainer(Path(root) / "resumed", "topk", steps=4)
    status = resumed.fit(resume=True).status
    try:
        make_trainer(single_process_run, "topk", steps=4).fit(resume=True)
        refused = None
    except CheckpointError as e:
        refused = str(e)
    return {"straight": cpu_state(straight.model), "resumed": cpu_state(resumed.model), "status": status,
            "refused": refused, "rng": torch.get_rng_state(), "noise": resumed.noise.get_state()}


def unit_checks() -> dict:
    """DataParallel's pieces on small hand-made inputs."""
    rank = dist.get_rank()
    model = nn.ModuleDict({"a": nn.Linear(2, 1, bias=False), "b": nn.Linear(2, 1, bias=False),
                           "c": nn.Linear(2, 1, bias=False)}).double()
    with torch.no_grad():  # different on each rank: DataParallel broadcasts rank 0's
        for p in model.parameters():
            p.fill_(1.0 + rank)
    parallel = DataParallel(model, torch.optim.SGD(model.parameters(), lr=0.1))
    after_broadcast = cpu_state(model)
    model["a"].weight.grad = torch.tensor([[1.0, 2.0]], dtype=torch.float64) * (1 + 2 * rank)  # 1, 3 -> mean 2
    if rank == 1:
        model["b"].weight.grad = torch.tensor([[4.0, 6.0]], dtype=torch.float64)  # only rank 1 -> (4 + 0) / 2
    parallel.sync_gradients()
    batch = (torch.arange(8).view(4, 2), {"mask": torch.arange(4) > 0, "scale": torch.tensor(2.0)}, "keep")
    try:
        parallel.share((torch.zeros(3),))
        uneven = None
    except ValueError as e:
        uneven = str(e)
    try:
        train_run(resolve_config("digits", overrides=["train.batch_size=3"]), "unused-folder")
        odd_batch = None
    except ValueError as e:
        odd_batch = str(e)
    values, count = parallel.reduce_log({"loss": torch.tensor(1.0 + rank), "only_rank1": 5.0} if rank else
                                        {"loss": torch.tensor(1.0)}, 10 + rank)
    return {"after_broadcast": after_broadcast, "grads": {n: p.grad for n, p in model.named_parameters()},
            "share": parallel.share(batch), "uneven": uneven, "odd_batch": odd_batch, "log": (values, count),
            "stop": parallel.agree_stop(signal.SIGTERM if rank == 1 else None)}


def all_runs(root: str, single_process_run: str) -> dict:
    return {"train": train_scenarios(root), "resume": resume_scenarios(root, single_process_run),
            "unit": unit_checks()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The references (here) and the 2-process runs (one spawn)."""
    root = tmp_path_factory.mktemp("distributed")
    refs = {}
    for name, (_, _, reference, *_) in SCENARIOS.items():
        trainer = make_trainer(root / "ref" / name, name, reference=reference)
        trainer.fit()
        refs[name] = cpu_state(trainer.model)
    ranks = run_local(all_runs, W, (str(root / "ep"), str(root / "ref" / "topk_token_losses")), timeout_s=60.0,
                      deadline_s=300.0, num_threads=1)
    return {"root": root, "refs": refs, "ranks": ranks}


def full_state(rank_states: list[dict]) -> dict[str, torch.Tensor]:
    """The one-process state dict: replicated tensors (equal on every rank) and the experts' shards concatenated."""
    full = {}
    for key, value in rank_states[0].items():
        if ".experts." in key and not torch.equal(value, rank_states[1][key]):
            full[key] = torch.cat([s[key] for s in rank_states])
        else:
            assert torch.equal(value, rank_states[1][key]), f"replicated {key} differs between ranks"
            full[key] = value
    return full


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_process_training_equals_one_process(runs, name):
    got = [r["train"][name] for r in runs["ranks"]]
    assert [g["status"] for g in got] == ["done", "done"]
    expected_layers = 2 if SCENARIOS[name][3] == "on" else 0
    assert [g["expert_layers"] for g in got] == [expected_layers] * W
    full, ref = full_state([g["state"] for g in got]), runs["refs"][name]
    assert full.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(full[key], ref[key], **TIGHT, msg=key)
    start = build_model(*SCENARIOS[name][:2]).state_dict()
    assert not torch.equal(ref["blocks.0.ffn.router.gate.weight"], start["blocks.0.ffn.router.gate.weight"])
    root = runs["root"]
    mine, theirs = records(root / "ep" / name), records(root / "ref" / name)
    assert [r["step"] for r in mine] == list(range(1, STEPS + 1))  # rank 0 alone logs: one record per step
    for a, b in zip(mine, theirs):
        assert a.keys() == b.keys()
        for k in a.keys() - {"per_s", "split", "step"}:
            assert a[k] == pytest.approx(b[k], rel=0, abs=1e-9), k
    for split in ("valid", "test"):
        assert records(root / "ep" / name, split)[0]["loss"] == pytest.approx(records(root / "ref" / name, split)[0][
            "loss"], abs=1e-9)


def test_clipping_uses_the_whole_models_norm(runs):
    norms = [r["grad_norm"] for r in records(runs["root"] / "ep" / "topk")]
    assert all(n > 0.05 for n in norms)  # the 0.05 clip bit in every step, and the run still equals one process


def test_local_pools_differ_from_the_plain_one_process_run(runs):
    """The 'shares' reference matters: with the load-balancing loss the plain 1-process run is another run."""
    plain = make_trainer(runs["root"] / "plain-topk", "topk", reference="plain")
    plain.fit()
    full = full_state([r["train"]["topk"]["state"] for r in runs["ranks"]])
    assert not torch.allclose(full["blocks.0.ffn.router.gate.weight"], plain.model.state_dict()[
        "blocks.0.ffn.router.gate.weight"], atol=1e-6)


def test_step_state_stays_replicated_under_pure_data_parallelism(runs):
    states = [r["train"]["deepseek_pure_ddp"]["state"] for r in runs["ranks"]]
    bias = states[0]["blocks.0.ffn.router.expert_bias"]
    assert torch.equal(bias, states[1]["blocks.0.ffn.router.expert_bias"]) and bias.abs().sum() > 0
    torch.testing.assert_close(bias, runs["refs"]["deepseek_pure_ddp"]["blocks.0.ffn.router.expert_bias"], **TIGHT)


def test_only_rank_zero_writes_the_run_files_and_each_rank_its_shard(runs):
    run = runs["root"] / "ep" / "topk"
    assert (run / "config.yaml").exists() and (run / "final.json").exists()
    assert checkpoint_steps(run / "checkpoints") == [2, 3]
    for rank in range(W):
        assert checkpoint_steps(run / "checkpoints" / f"rank-{rank}") == [2, 3]
    top = json.loads((run / "checkpoints" / "step-00000003.json").read_text())
    assert top["world_size"] == W and "rng" not in top
    shard = json.loads((run / "checkpoints" / "rank-1" / "step-00000003.json").read_text())
    assert shard["rank"] == 1 and set(shard["rng"]) == {"global", "data", "noise"}
    from safetensors.torch import load_file

    top_tensors = load_file(run / "checkpoints" / "step-00000003.safetensors")
    shard_tensors = load_file(run / "checkpoints" / "rank-1" / "step-00000003.safetensors")
    assert "model.blocks.0.ffn.router.gate.weight" in top_tensors
    assert not any(".experts." in k for k in top_tensors)
    assert shard_tensors["model.blocks.0.ffn.experts.w_in"].shape[0] == 2  # 2 of the 4 experts
    assert any(k.startswith("optim.") for k in shard_tensors)  # the shard's AdamW moments


def test_resume_on_two_processes_is_bit_identical(runs):
    for r in runs["ranks"]:
        got = r["resume"]
        assert got["status"] == "done"
        assert got["straight"].keys() == got["resumed"].keys()
        assert all(torch.equal(got["straight"][k], got["resumed"][k]) for k in got["straight"])


def test_resume_on_another_world_size_is_a_clear_error(runs):
    for r in runs["ranks"]:
        assert "written by 1 process(es) and this run has 2; resume it with one process" in r["resume"]["refused"]
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\) and this run has 1; resume it with "
                                              r"torchrun --nproc_per_node=2"):
        make_trainer(runs["root"] / "ep" / "topk", "topk", steps=5, reference="plain").fit(resume=True)


def test_ranks_draw_their_own_noise_and_dropout(runs):
    first, second = (r["resume"] for r in runs["ranks"])
    assert not torch.equal(first["rng"], second["rng"]) and not torch.equal(first["noise"], second["noise"])


def test_gradient_sync_averages_and_keeps_missing_gradients_missing(runs):
    for r in runs["ranks"]:
        got = r["unit"]
        assert all(torch.all(v == 1.0) for v in got["after_broadcast"].values())  # rank 0's weights everywhere
        assert got["grads"]["a.weight"].tolist() == [[2.0, 4.0]]  # ([1, 2] + [3, 6]) / 2
        assert got["grads"]["b.weight"].tolist() == [[2.0, 3.0]]  # ([4, 6] + nothing) / 2
        assert got["grads"]["c.weight"] is None  # no rank had one


def test_share_splits_every_tensor_of_the_batch(runs):
    for rank, r in enumerate(runs["ranks"]):
        rows, extra, keep = r["unit"]["share"]
        assert rows.tolist() == ([[0, 1], [2, 3]] if rank == 0 else [[4, 5], [6, 7]])
        assert extra["mask"].tolist() == ([False, True] if rank == 0 else [True, True])
        assert float(extra["scale"]) == 2.0 and keep == "keep"
        assert "a batch of 3 rows does not split evenly over 2 ranks" in r["unit"]["uneven"]
        assert "train.batch_size=3 (the global batch) must be divisible by the world size 2" in r["unit"]["odd_batch"]


def test_log_values_are_averaged_and_counts_summed(runs):
    for r in runs["ranks"]:
        values, count = r["unit"]["log"]
        assert values == {"loss": 1.5, "only_rank1": 5.0} and count == 21  # (1 + 2) / 2; 10 + 11
        assert r["unit"]["stop"] == signal.SIGTERM  # a signal on rank 1 stops both


# ---------------------------------------------------------------- failures


def die_during_training(root: str) -> None:
    def hook(step, outputs):
        if step == 2 and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = make_trainer(Path(root), "topk", steps=5)
    trainer.hooks.append(hook)
    trainer.fit()


def test_a_rank_that_dies_makes_the_other_fail_clearly(tmp_path):
    with pytest.raises(LocalRunError) as info:
        run_local(die_during_training, W, (str(tmp_path),), timeout_s=10.0, deadline_s=120.0, num_threads=1)
    errors = info.value.errors
    assert "CollectiveError: data-parallel all-reduce of a flag failed on rank 0 of 2: a peer rank died" in errors[0]
    assert "killed by SIGKILL" in errors[1]


# ---------------------------------------------------------------- in this process


def test_expert_parallel_modes():
    model = build_model("topk", {})  # 4 experts per layer
    assert use_expert_parallel(model, "auto", 2) and use_expert_parallel(model, "on", 4)
    assert not use_expert_parallel(model, "auto", 3) and not use_expert_parallel(model, "off", 2)
    with pytest.raises(ValueError, match=r"expert_parallel='on' needs MoE layers whose num_experts \(here \[4\]\) "
                                         r"are divisible by the world size 3"):
        use_expert_parallel(model, "on", 3)
    with pytest.raises(ValueError, match="global_view=True needs expert parallelism"):
        prepare_model(model, ParallelConfig(expert_parallel="off", global_view=True), 2)
    assert prepare_model(model, ParallelConfig(expert_parallel="auto"), 3) == {
        "world_size": 3, "expert_parallel": False, "global_view": False}


@pytest.mark.parametrize("kwargs, match", [
    ({"expert_parallel": "yes"}, "expert_parallel must be one of"),
    ({"global_view": 1}, "global_view must be True or False"),
    ({"timeout_s": 0.0}, "timeout_s must be > 0"),
])
def test_bad_parallel_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParallelConfig(**kwargs)


def test_data_parallel_needs_a_process_group():
    assert not dist.is_initialized()
    model = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DataParallel(model, torch.optim.SGD(model.parameters(), lr=0.1))


# ---------------------------------------------------------------- the command line under torchrun


@pytest.mark.slow  # ~15 s: two fresh interpreters import torch, smoe and the digits data
def test_torchrun_trains_a_task_and_a_one_process_resume_is_refused(tmp_path, capsys):
    import subprocess
    import sys

    import yaml

    from smoe.cli import main
    from smoe.workbench.measure.probe import read_trace

    out = tmp_path / "run"
    args = ["train", "--task", "digits", "--steps", "2", "--no-progress", "--out", str(out),
            "--set", "model.d_model=16", "--set", "model.num_layers=2", "--set", "model.num_heads=2",
            "--set", "model.ffn_hidden=16", "--set", "train.batch_size=8", "--set", "train.checkpoint_every=1"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "smoe", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"step": 2') == 1  # rank 0 alone reports
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["parallel"] == {"world_size": 2, "expert_parallel": True, "global_view": False}
    assert [r["step"] for r in records(out)] == [2]  # log_every 10: the last step only, written once
    assert [r["step"] for r in read_trace(out)] == [2]  # the probe's routing trace, written by rank 0 alone
    assert checkpoint_steps(out / "checkpoints" / "rank-1") == [1, 2]
    assert main([*args, "--resume", "--steps", "3"]) == 2
    assert "written by 2 process(es) and this run has 1; resume it with torchrun --nproc_per_node=2" in \
        capsys.readouterr().err


# ---------------------------------------------------------------- every router trains on 2 processes


def every_router(root: str) -> dict:
    """2 steps of the tiny LM with each registered router and layer-level method, experts sharded."""
    from smoe.routing import available_routers

    out = {}
    for router in available_routers() + available_layers():
        model = build_model(router, {})
        before = cpu_state(model)
        prepare_model(model, ParallelConfig(), W)
        cfg = TrainConfig(steps=2, schedule_steps=2, batch_size=BATCH, warmup_steps=0, lr=1e-2, eval_every=0,
                          checkpoint_every=0, log_every=1)
        trainer = Trainer(model, cfg, loss_fn=lm_loss, train_batches=lambda g: lm_batches(STREAM, BATCH, SEQ, g),
                          out_dir=Path(root) / router, progress=False, data_parallel=True)
        status = trainer.fit().status
        after = {k: v for k, v in cpu_state(model).items() if ".experts." not in k}
        moved = not torch.equal(after["tok_emb.weight"], before["tok_emb.weight"])
        out[router] = {"status": status, "replicated": after, "moved": moved,
                       "finite": all(bool(torch.isfinite(v).all()) for v in cpu_state(model).values())}
    return out


def test_every_router_trains_on_two_processes_and_stays_replicated(tmp_path):
    ranks = run_local(every_router, W, (str(tmp_path),), timeout_s=60.0, deadline_s=300.0, num_threads=1)
    for router, got in ranks[0].items():
        other = ranks[1][router]
        assert got["status"] == other["status"] == "done" and got["finite"] and other["finite"], router
        assert got["moved"], router
        assert all(torch.equal(v, other["replicated"][k]) for k, v in got["replicated"].items()), router
