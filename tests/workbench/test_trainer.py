import json
import os
import signal
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
import yaml

from smoe.data.batches import lm_batches
from smoe.models import LM, LMConfig
from smoe.workbench.train.checkpoint import CheckpointError, checkpoint_steps
from smoe.workbench.train.config import TrainConfig
from smoe.workbench.train.trainer import StepOutput, Trainer, config_differences

STREAM = torch.randint(0, 13, (2000,), generator=torch.Generator().manual_seed(0))


def lm_loss(model, batch, step, generator):
    x, y = batch
    out = model(x, step=step, generator=generator)
    return StepOutput(F.cross_entropy(out.logits.flatten(0, 1), y.flatten()), out.moe, count=y.numel())


def evaluate(model, split, generator):
    x = STREAM[:65].view(5, 13)
    return {"loss": float(F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()))}


ROUTERS = {"topk": {"noise": "fixed"}, "deepseek": {"bias_rate": 0.01}}  # router noise; aux-loss-free bias


def make_trainer(out_dir, steps, run_extra=None, hooks=None, router="topk", **train):
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=13, max_len=12, d_model=8, num_layers=2, num_heads=2, ffn_hidden=8,
                        dropout=0.1, moe={"num_experts": 4, "router": router,
                                          "router_options": {"k": 2, **ROUTERS[router]}}))
    cfg = TrainConfig(**{"steps": steps, "schedule_steps": 12, "batch_size": 4, "warmup_steps": 2,
                         "eval_every": 3, "checkpoint_every": 4, "log_every": 1, **train})
    run_config = {"train": asdict(cfg), **(run_extra or {})}
    return Trainer(model, cfg, loss_fn=lm_loss, train_batches=lambda g: lm_batches(STREAM, 4, 12, g),
                   evaluate=evaluate, out_dir=out_dir, run_config=run_config, seed=3, progress=False, hooks=hooks)


def state(trainer):
    """Parameters and buffers (the expert bias of aux-loss-free balancing is a buffer)."""
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def records(out_dir, split="train"):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_lr_schedule_by_hand():
    cfg = TrainConfig(lr=1.0, warmup_steps=2, schedule_steps=6, min_lr_ratio=0.1)
    # warm-up (s + 1) / 2; then 0.1 + 0.45 * (1 + cos(pi * (s - 2) / 4)); flat 0.1 after step 6
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.55, 6: 0.1, 50: 0.1}
    for step, lr in expected.items():
        assert cfg.lr_at(step) == pytest.approx(lr)


@pytest.mark.parametrize("router, grad_accum", [("topk", 1), ("topk", 2), ("deepseek", 2)])
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, router, grad_accum):
    straight = make_trainer(tmp_path / "a", 8, router=router, grad_accum=grad_accum)
    assert straight.fit().status == "done"
    first = make_trainer(tmp_path / "b", 5, router=router, grad_accum=grad_accum)
    first.fit()
    resumed = make_trainer(tmp_path / "b", 8, router=router, grad_accum=grad_accum)
    result = resumed.fit(resume=True)
    assert result.status == "done" and result.step == 8
    assert same(state(straight), state(resumed))
    if router == "deepseek":  # the bias moved, and it was restored from the checkpoint
        assert any(torch.any(layer.router.expert_bias != 0) for layer in resumed.model.moe_layers())
    # the resumed run's log continues the first one: one train record per step
    assert [r["step"] for r in records(tmp_path / "b")] == list(range(1, 9))
    assert json.loads((tmp_path / "b" / "final.json").read_text())["step"] == 8
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["train"]["steps"] == 8


def test_sigint_writes_a_checkpoint_and_stops_then_resume_continues_exactly(tmp_path):
    def interrupt(step, outputs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    straight = make_trainer(tmp_path / "a", 6)
    straight.fit()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's handler, in a shell's background job
    stopped = make_trainer(tmp_path / "b", 6, hooks=[interrupt])
    result = stopped.fit()
    assert result.status == "interrupted" and result.step == 3 and result.signal == signal.SIGINT
    assert checkpoint_steps(tmp_path / "b" / "checkpoints")[-1] == 3
    assert not (tmp_path / "b" / "final.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    resumed = make_trainer(tmp_path / "b", 6)
    assert resumed.fit(resume=True).status == "done"
    assert same(state(straight), state(resumed))


def test_bias_balancing_moves_once_per_optimizer_step_under_accumulation(tmp_path):
    trainer = make_trainer(tmp_path, 1, router="deepseek", grad_accum=2)
    trainer.fit()
    for layer in trainer.model.moe_layers():  # one update of 0.01 * sign(mean - load): |b_e| is 0.01 or 0
        bias = layer.router.expert_bias.abs()
        assert float(bias.max()) == pytest.approx(0.01) and torch.all((bias < 1e-7) | ((bias - 0.01).abs() < 1e-7))


def test_after_step_once_per_step_with_the_stats_of_every_micro_batch(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, 3, grad_accum=2)
    calls = {i: [] for i in range(2)}
    for i, layer in enumerate(trainer.model.moe_layers()):
        monkeypatch.setattr(layer, "after_step", lambda stats, i=i: calls[i].append(stats))
    trainer.fit()
    for layer_calls in calls.values():
        assert len(layer_calls) == 3  # once per optimizer step
        for stats in layer_calls:
            assert len(stats) == 2  # one MoEStats per micro-batch
            assert all(int(s.counts.sum()) == 4 * 12 * 2 for s in stats)  # B * T tokens, k = 2


def test_aux_losses_are_added_and_logged_by_name(tmp_path):
    make_trainer(tmp_path, 2).fit()
    for r in records(tmp_path):
        assert r["aux/load_balance"] > 0
        assert r["total"] == pytest.approx(r["loss"] + r["aux/load_balance"], rel=1e-6)
        assert {"lr", "grad_norm", "per_s"} <= set(r)
    assert (tmp_path / "tb").is_dir()


def test_aux_loss_gradient_reaches_the_router(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, 1, grad_clip=0.0)
    zero_task = lambda *a: StepOutput(lm_loss(*a).loss * 0, lm_loss(*a).moe)  # noqa: E731
    trainer.loss_fn = zero_task
    gate = trainer.model.moe_layers()[0].router.gate.weight
    before = gate.detach().clone()
    trainer.fit()
    assert not torch.equal(before, gate.detach())  # moved by the load-balancing loss alone


def test_hooks_see_the_step_outputs_and_their_values_are_logged(tmp_path):
    seen = []

    def hook(step, outputs):
        seen.append((step, len(outputs), len(outputs[0].moe)))
        return {"my_metric": float(step) * 2}

    make_trainer(tmp_path, 2, hooks=[hook]).fit()
    assert seen == [(1, 1, 2), (2, 1, 2)]
    assert [r["my_metric"] for r in records(tmp_path)] == [2.0, 4.0]


def test_eval_every_and_checkpoints_keep_last_n(tmp_path):
    make_trainer(tmp_path, 9, keep_checkpoints=2).fit()
    assert [r["step"] for r in records(tmp_path, "valid")] == [3, 6, 9]
    assert [r["step"] for r in records(tmp_path, "test")] == [9]
    assert checkpoint_steps(tmp_path / "checkpoints") == [8, 9]
    assert (tmp_path / "config.yaml").exists()


def test_resume_with_another_config_is_an_error_and_overwrites_nothing(tmp_path):
    make_trainer(tmp_path, 2).fit()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"train\.lr: 0\.001 -> 0\.002"):
        make_trainer(tmp_path, 4, lr=0.002).fit(resume=True)
    with pytest.raises(CheckpointError, match="model: '<missing>' -> 'x'"):
        make_trainer(tmp_path, 4, run_extra={"model": "x"}).fit(resume=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_fresh_run_in_a_folder_with_a_checkpoint_or_final_json_is_an_error(tmp_path):
    make_trainer(tmp_path / "a", 1).fit()
    with pytest.raises(ValueError, match="already holds a run"):
        make_trainer(tmp_path / "a", 1).fit()
    for p in (tmp_path / "a" / "checkpoints").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="already holds a run"):
        make_trainer(tmp_path / "a", 1).fit()


def test_corrupt_checkpoint_on_resume_is_an_error(tmp_path):
    make_trainer(tmp_path, 2).fit()
    (tmp_path / "checkpoints" / "step-00000002.safetensors").write_bytes(b"oops")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        make_trainer(tmp_path, 4).fit(resume=True)


def test_config_differences_lists_changed_leaves():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "train": {"steps": 5}}
    new = {"a": 1, "b": {"c": 4}, "train": {"steps": 9}}
    assert config_differences(old, new, ignore={("train", "steps")}) == ["b.c: 2 -> 4", "b.d: 3 -> '<missing>'"]


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"min_lr_ratio": 2.0}, "min_lr_ratio must be <= 1"),
    ({"grad_accum": 1.5}, "grad_accum must be an int"),
])
def test_bad_train_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
