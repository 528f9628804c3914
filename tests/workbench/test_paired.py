"""The paired design of a comparison: at one seed every entry starts from the same values of the parameters it shares
with another, trains on the same batches, and an A/A comparison is bit-identical and not resolved."""

import math

import pytest
import torch

from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.results.columns import is_compared
from smoe.workbench.results.schema import load_results
from smoe.workbench.results.verdicts import seed_values
from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.run.runner import task_setup
from smoe.workbench.train.trainer import Trainer

VIT = ["model.d_model=16", "model.num_layers=2", "model.moe_every=1", "model.num_heads=2", "model.ffn_hidden=16",
       "train.batch_size=16", "train.log_every=1"]
LM = ["data.vocab_size=300", "data.seq_len=16", "data.eval_tokens=256", "model.d_model=16", "model.num_layers=2",
      "model.num_heads=2", "model.ffn_hidden=16", "train.batch_size=4"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SMOE_CACHE", str(tmp_path_factory.getbasetemp() / "smoe-cache"))


@pytest.mark.parametrize(("task", "overrides", "routers"), [
    ("digits", VIT, ("topk", "xmoe")),
    pytest.param("lm-bbc", LM, ("topk", "deepseek"), marks=pytest.mark.slow)])  # loads BBC News 3 times
def test_shared_parameters_start_equal_across_routers(task, overrides, routers):
    models = [task_setup(resolve_config(task, router=r, seed=3, overrides=overrides)).model for r in routers]
    a, b = (dict(m.named_parameters()) for m in models)
    shared = [n for n in a if n in b and a[n].shape == b[n].shape]
    assert len(shared) >= len(a) - 2 * len(models[0].moe_layers())  # all but the routers' own parameters
    assert all(torch.equal(a[n], b[n]) for n in shared)
    other_seed = dict(task_setup(resolve_config(task, router=routers[0], seed=4, overrides=overrides))
                      .model.named_parameters())
    name = "blocks.1.ffn.experts.w_in"
    assert name in shared and not torch.equal(a[name], other_seed[name])


def test_batches_and_dropout_do_not_depend_on_the_router(tmp_path):
    """topk with fixed noise and xmoe (random second expert) draw router noise differently; the data stream and
    the dropout stream (0.1 here) must not notice."""
    seen = {}
    for router, options in (("topk", ["model.moe.router_options.noise=fixed"]), ("xmoe", [])):
        run = resolve_config("digits", router=router, seed=1, steps=3, overrides=[*VIT, "model.dropout=0.1", *options])
        setup = task_setup(run)
        batches, masks = [], []

        def loss(model, batch, step, generator, inner=setup.loss, batches=batches):
            batches.append(batch)
            return inner(model, batch, step, generator)

        setup.model.drop.register_forward_hook(lambda m, args, out, masks=masks: masks.append(out == 0))
        Trainer(setup.model, run.train, loss_fn=loss, train_batches=setup.train_batches, out_dir=tmp_path / router,
                seed=run.seed, progress=False).fit()
        seen[router] = batches, masks
    (ba, ma), (bb, mb) = seen["topk"], seen["xmoe"]
    assert len(ba) == len(bb) == 3
    assert all(torch.equal(x, y) for a, b in zip(ba, bb) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(ma[:3], mb[:3]))  # the embedding dropout of the 3 training steps


def tiny(out, entries, seeds, **kw):
    return CompareConfig(task="digits", entries=parse_entries(entries), out=str(out), seeds=seeds, **kw)


def test_a_a_comparison_is_bit_identical_and_not_resolved(tmp_path):
    run_compare(tiny(tmp_path, "a=topk,b=topk", 2, steps=4, overrides=VIT, corruptions=["noise:1"]), progress=False)
    results = load_results(tmp_path)
    values = seed_values(results)
    for seed in (0, 1):
        a, b = values["a"][seed], values["b"][seed]
        compared = [k for k in a if is_compared(k)]
        assert "final.metric" in compared and "robust.noise@1" in compared and "routing.load_cv" in compared
        assert {k: a[k] for k in compared} == {k: b[k] for k in compared}
    b = results["comparisons"]["final.metric"]["b"]
    assert (b["verdict"], b["differences"], b["baseline"]) == ("not resolved", [0.0, 0.0], "a")
    assert all(c["b"]["verdict"] == "not resolved" for c in results["comparisons"].values())
    assert (results["schema"], results["entries"], results["baseline"]) == (3, ["a", "b"], "a")
    assert all(math.isfinite(run["eval_sd"]) and run["eval_sd"] > 0 for run in results["runs"])
    assert results["noise"]["dominant"] in ("seed", "evaluation")
    md = (tmp_path / "report.md").read_text()
    assert "## Verdicts against a" in md and "| b | 2 | 0 (+0.0 %) | unbounded |" in md


def test_an_unknown_baseline_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"baseline must be the label of an entry \(a, b\); got 'c'"):
        tiny(tmp_path, "a=topk,b=xmoe", 1, baseline="c")
    assert tiny(tmp_path, "a=topk,b=xmoe", 1).baseline == "a"
    with pytest.raises(ValueError, match="margin must be a positive number"):
        tiny(tmp_path, "a=topk,b=xmoe", 1, margin="two percent")


@pytest.mark.slow
def test_a_crippled_entry_comes_out_worse(tmp_path):
    config = tiny(tmp_path, "topk,slow=topk+train.lr=1e-5", 3, steps=60, corruptions=[],
                  overrides=["data.probe_tokens=0"])
    run_compare(config, progress=False)
    slow = load_results(tmp_path)["comparisons"]["final.metric"]["slow"]
    assert slow["n"] == 3 and slow["verdict"] == "worse" and slow["ci_high"] < 0


@pytest.mark.slow
def test_a_a_comparison_with_a_margin_is_equivalent(tmp_path):
    # A/A is bit-identical at every seed: zero variance, p = the exact floor 2 / 2^6 = 1/32 < 0.05 at 6 seeds
    run_compare(tiny(tmp_path, "a=topk,b=topk", 6, steps=4, overrides=VIT, corruptions=[], margin="2%"),
                progress=False)
    b = load_results(tmp_path)["comparisons"]["final.metric"]["b"]
    assert (b["verdict"], b["n"], b["margin_spec"], b["p_value"]) == ("equivalent", 6, "2%", 1 / 32)
