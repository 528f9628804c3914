"""Evaluation noise: each task's per-sample scores give back its headline metric, and eval.json carries their
bootstrap sd."""

import math

import numpy as np
import pytest
import torch

from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.evaluate import evaluate_model
from smoe.workbench.run.runner import task_setup
from smoe.workbench.tasks import get_task
from smoe.workbench.tasks.base import SampleScores

SMALL_LM = ["data.vocab_size=300", "data.seq_len=16", "data.eval_tokens=256", "model.d_model=16",
            "model.num_layers=1", "model.num_heads=2", "model.ffn_hidden=16"]
SMALL = {
    "digits": ["model.d_model=16", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden=16"],
    "sketch-vae": ["data.num_per_class=20"],
    "lm-bbc": [*SMALL_LM, "data.eval_tokens=8192"],  # several articles: the bootstrap resamples documents
    "cls-bbc": SMALL_LM,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SMOE_CACHE", str(tmp_path_factory.getbasetemp() / "smoe-cache"))


def test_sample_scores_by_hand():
    scores = SampleScores(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0]))
    assert scores.metric() == 1.5  # 6 / 4
    assert scores.metric(np.array([2, 2])) == 1.5 and scores.metric(np.array([0, 1])) == 1.5
    assert SampleScores(scores.totals, scores.counts, exp=True).metric() == pytest.approx(math.exp(1.5))
    assert SampleScores(np.full(5, 0.5), np.ones(5)).bootstrap_sd() == 0.0
    # mean of 100 values 0/1 with p = 1/2: bootstrap sd close to sqrt(p (1 - p) / m) = 0.05
    assert SampleScores(np.arange(100) % 2.0, np.ones(100)).bootstrap_sd() == pytest.approx(0.05, rel=0.15)


def test_paired_bootstrap_sd_of_a_difference():
    rng = np.random.default_rng(0)
    a = SampleScores(rng.normal(size=200), np.ones(200))
    # a constant per-sample shift: the difference is the same on every resample
    assert a.paired_bootstrap_sd(SampleScores(a.totals + 0.3, a.counts)) == pytest.approx(0.0, abs=1e-12)
    # independent per-sample differences: the bootstrap sd of a mean difference, about sd(d) / sqrt(m)
    d = rng.normal(scale=2.0, size=200)
    b = SampleScores(a.totals - d, a.counts)
    assert a.paired_bootstrap_sd(b) == pytest.approx(2.0 / math.sqrt(200), rel=0.15)
    # pairing is what makes it small: scored apart, each metric alone varies with the samples
    assert a.bootstrap_sd() > 5 * a.paired_bootstrap_sd(SampleScores(a.totals + 0.01 * d, a.counts))
    with pytest.raises(ValueError, match="other must score the same samples"):
        a.paired_bootstrap_sd(SampleScores(a.totals[:10], a.counts[:10]))


@pytest.mark.parametrize("task", ["digits", "sketch-vae",
                                  pytest.param("lm-bbc", marks=pytest.mark.slow),
                                  pytest.param("cls-bbc", marks=pytest.mark.slow)])
def test_scores_give_the_task_metric_and_eval_json_its_bootstrap(task):
    setup = task_setup(resolve_config(task, overrides=SMALL[task]))
    setup.model.eval()
    key = get_task(task).metric_key
    metric = setup.evaluate(setup.model, "test", torch.Generator().manual_seed(0))[key]
    scores = setup.scores(setup.model, "test", torch.Generator().manual_seed(0))
    assert scores.metric() == pytest.approx(metric, rel=1e-6)
    result = evaluate_model(setup.model, setup.evaluate, key, get_task(task).higher_is_better, scores=setup.scores)
    bootstrap = result["clean_bootstrap"]
    assert bootstrap["samples"] == scores.totals.size and bootstrap["resamples"] == 1000
    assert 0 < bootstrap["sd"] < abs(metric)
    assert evaluate_model(setup.model, setup.evaluate, key, True)["clean_bootstrap"] is None
