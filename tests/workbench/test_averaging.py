import json
import math

import pytest
import torch
import yaml
from torch import nn

from smoe.workbench.train.averaging import WeightAverage, load_averaged, mean_of, tail_steps
from smoe.workbench.train.checkpoint import load_checkpoint
from smoe.workbench.train.config import TrainConfig
from tests.workbench.test_trainer import make_trainer, records, same, state

OPTIONS = {"ema_decay": 0.5, "eval_weights": "ema", "tail_evals": 2}


def test_weight_average_is_the_bias_corrected_mean_by_hand():
    model = nn.Linear(1, 1, bias=False)
    average = WeightAverage(model, 0.5)
    for value in (1.0, 2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
    # (0.25 * 1 + 0.5 * 2 + 1 * 4) * (1 - 0.5) / (1 - 0.5 ** 3) = 5.25 * 0.5 / 0.875 = 3
    assert average.averaged()["weight"].item() == pytest.approx(3.0, abs=1e-6)
    with average.swapped_in(model):
        assert model.weight.item() == pytest.approx(3.0, abs=1e-6)
    assert model.weight.item() == 4.0


def test_weight_average_covers_float_buffers_and_leaves_the_rest():
    model = nn.BatchNorm1d(2)
    names = set(WeightAverage(model, 0.9).sums)
    assert names == {"weight", "bias", "running_mean", "running_var"}  # not num_batches_tracked (an int)


def test_tail_steps_are_the_last_periodic_evaluations_and_the_final_one():
    assert tail_steps(300, 50, 1) == [300]
    assert tail_steps(300, 50, 3) == [200, 250, 300]
    assert tail_steps(310, 50, 2) == [300, 310]
    assert TrainConfig(steps=12, eval_every=3, tail_evals=4).tail_steps() == [3, 6, 9, 12]


def test_mean_of_evaluations_by_key():
    assert mean_of([{"loss": 1.0, "ppl": 3.0}, {"loss": 2.0, "ppl": 5.0, "extra": 1.0}]) == {"loss": 1.5, "ppl": 4.0}


def test_wsd_schedule_by_hand():
    cfg = TrainConfig(lr=1.0, warmup_steps=2, schedule_steps=12, min_lr_ratio=0.1, schedule="wsd",
                      decay_fraction=0.5)
    # warm-up (s + 1) / 2; stable 1.0 until step 7 (12 - 0.5 * 10); then 1 - 0.9 (s - 7) / 5; flat 0.1 from 12
    expected = {0: 0.5, 1: 1.0, 5: 1.0, 7: 1.0, 8: 0.82, 10: 0.46, 12: 0.1, 40: 0.1}
    for step, lr in expected.items():
        assert cfg.lr_at(step) == pytest.approx(lr)
    cosine = TrainConfig(lr=1.0, warmup_steps=2, schedule_steps=6, min_lr_ratio=0.0)  # decay to 0
    assert cosine.lr_at(4) == pytest.approx(0.5) and cosine.lr_at(6) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"eval_weights": "ema"}, "needs an average of the weights"),
    ({"ema_decay": 1.0}, "ema_decay must be < 1"),
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"steps": 10, "eval_every": 5, "tail_evals": 3}, "needs 2 periodic evaluations"),
    ({"decay_fraction": 0.0}, "decay_fraction must be > 0"),
])
def test_bad_final_metric_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_the_average_and_the_tail_survive_resume_bit_exact(tmp_path):
    straight = make_trainer(tmp_path / "a", 8, **OPTIONS)
    straight.fit()
    make_trainer(tmp_path / "b", 5, **OPTIONS).fit()
    resumed = make_trainer(tmp_path / "b", 8, **OPTIONS)
    assert resumed.fit(resume=True).status == "done"
    assert same(state(straight), state(resumed))
    a, _ = load_checkpoint(tmp_path / "a" / "checkpoints")
    b, _ = load_checkpoint(tmp_path / "b" / "checkpoints")
    ema = {k: v for k, v in a.items() if k.startswith("ema.")}
    assert ema and same(ema, {k: v for k, v in b.items() if k.startswith("ema.")})
    final = json.loads((tmp_path / "a" / "final.json").read_text())
    assert final == json.loads((tmp_path / "b" / "final.json").read_text())
    assert final["read"] == "ema_tail_mean" and final["tail_steps"] == [6, 8]


def test_the_final_metric_is_the_chosen_read_and_the_tail_mean_of_the_logged_evaluations(tmp_path):
    make_trainer(tmp_path, 8, **OPTIONS).fit()
    final = json.loads((tmp_path / "final.json").read_text())
    reads = final["reads"]
    assert set(reads) == {"last", "ema", "last_tail_mean", "ema_tail_mean"}
    assert final["valid"] == reads["ema_tail_mean"]["valid"] and final["test"] == reads["ema_tail_mean"]["test"]
    for split in ("valid", "test"):
        for weights, logged in (("last", split), ("ema", f"{split}_ema")):
            tail = [r["loss"] for r in records(tmp_path, logged) if r["step"] in (6, 8)]
            assert len(tail) == 2
            assert reads[f"{weights}_tail_mean"][split]["loss"] == pytest.approx(sum(tail) / 2, rel=1e-12)
    assert reads["ema"]["test"] != reads["last"]["test"]  # the average is another model


def test_the_average_only_watches(tmp_path):
    """A run with an average of the weights trains exactly the same model; a run without it writes what it
    always did (final.json of the last weights, no ema tensors, no extra log splits)."""
    plain = make_trainer(tmp_path / "plain", 8)
    plain.fit()
    watched = make_trainer(tmp_path / "watched", 8, ema_decay=0.9)
    watched.fit()
    assert same(state(plain), state(watched))
    final = json.loads((tmp_path / "plain" / "final.json").read_text())
    assert set(final) == {"step", "valid", "test"}
    assert final["test"] == json.loads((tmp_path / "watched" / "final.json").read_text())["reads"]["last"]["test"]
    tensors, _ = load_checkpoint(tmp_path / "plain" / "checkpoints")
    assert not any(k.startswith("ema.") for k in tensors)
    logged = map(json.loads, (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines())
    assert {r["split"] for r in logged} == {"train", "valid", "test"}


def test_load_averaged_puts_the_checkpointed_average_into_a_model(tmp_path):
    trainer = make_trainer(tmp_path, 8, ema_decay=0.8)
    trainer.fit()
    tensors, saved = load_checkpoint(tmp_path / "checkpoints")
    model = make_trainer(tmp_path / "other", 8).model
    load_averaged(model, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, 0.8, saved["step"])
    expected = trainer.average.averaged()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(ValueError, match="does not fit the model"):
        load_averaged(model, {}, 0.8, 8)


def test_a_folder_written_before_the_options_existed_resumes(tmp_path):
    make_trainer(tmp_path, 4).fit()
    path = tmp_path / "config.yaml"
    old = yaml.safe_load(path.read_text())
    for key in ("schedule", "decay_fraction", "ema_decay", "eval_weights", "tail_evals"):
        del old["train"][key]
    path.write_text(yaml.safe_dump(old))
    (tmp_path / "final.json").unlink()
    for f in (tmp_path / "checkpoints").iterdir():
        f.unlink()
    with pytest.warns(UserWarning, match="no checkpoint"):
        assert make_trainer(tmp_path, 4).fit(resume=True).status == "done"
    assert math.isfinite(json.loads((tmp_path / "final.json").read_text())["test"]["loss"])
