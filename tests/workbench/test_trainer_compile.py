"""The Trainer with `train.compile=true` (issue 17): the training steps' forward runs under torch.compile, training
gives the eager numbers, and checkpoints hold the uncompiled module's state dict; evaluation and the routing trace
(forward hooks) run the module itself, also on resume."""

import functools

import pytest
import torch
from safetensors import safe_open

from smoe.cli import main
from smoe.data.batches import lm_batches
from smoe.models import LM, LMConfig
from smoe.workbench.train.config import TrainConfig
from smoe.workbench.train.trainer import Trainer
from tests.workbench.test_trainer import STREAM, lm_loss, records, state


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_trainer(out_dir, steps, compile=False):
    """A tiny LM without dropout (compiled dropout draws other random numbers than eager dropout), router noise
    from the Trainer's generator."""
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=13, max_len=12, d_model=8, num_layers=2, num_heads=2, ffn_hidden=8,
                        moe={"num_experts": 4, "router_options": {"k": 2, "noise": "fixed"}}))
    cfg = TrainConfig(steps=steps, schedule_steps=12, batch_size=4, warmup_steps=2, eval_every=0, log_every=1,
                      compile=compile)
    return Trainer(model, cfg, loss_fn=lm_loss, train_batches=lambda g: lm_batches(STREAM, 4, 12, g),
                   out_dir=out_dir, seed=3, progress=False)


def checkpoint_keys(out_dir):
    (path,) = (out_dir / "checkpoints").glob("step-*.safetensors")
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_compiled_training_matches_eager_and_checkpoints_plain_keys(tmp_path, monkeypatch):
    # "aot_eager" traces like inductor (graph breaks at the CPU float32 loop experts and the router noise's
    # generator) without generating kernels, so the test stays fast
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    eager = make_trainer(tmp_path / "eager", steps=4)
    compiled = make_trainer(tmp_path / "compiled", steps=4, compile=True)
    assert compiled.step_model is not compiled.model and eager.step_model is eager.model
    eager.fit()
    compiled.fit()
    for a, b in zip(records(tmp_path / "eager"), records(tmp_path / "compiled"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["total"] == pytest.approx(b["total"], rel=1e-5)
    for name, value in state(eager).items():
        torch.testing.assert_close(state(compiled)[name], value, rtol=1e-4, atol=1e-6)
    assert checkpoint_keys(tmp_path / "compiled") == checkpoint_keys(tmp_path / "eager")


def test_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="compile must be True or False"):
        TrainConfig(compile="yes")


@pytest.mark.slow
def test_cli_trains_the_tiny_lm_compiled_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--task", "lm-bbc", "--preset", "tiny", "--set", "train.compile=true", "--set",
            "train.eval_every=0", "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "2"]) == 0
    assert not any("_orig_mod" in key for key in checkpoint_keys(out))
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert '"step": 3' in (out / "final.json").read_text()
