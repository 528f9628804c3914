"""smoe analyze and smoe eval on tiny trained runs: what analysis.json and eval.json hold, and the inference
settings (test-time capacity, BPR, eval_k)."""

import json
import math

import pytest
import torch

from smoe.cli import main
from smoe.workbench.measure.probe import probe_generator, route_probe
from smoe.workbench.measure.routing_metrics import coactivation
from smoe.workbench.run.analysis import ANALYSIS_FILE, analyze_run, format_analysis
from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.evaluate import default_sweep, evaluate_run, inference_settings
from smoe.workbench.run.runner import load_run, train_run

DIGITS = ["model.d_model=16", "model.num_layers=2", "model.moe_every=1", "model.num_heads=2", "model.ffn_hidden=16",
          "train.batch_size=16", "data.probe_tokens=170", "train.eval_every=2", "train.schedule_steps=6",
          "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained 6 steps on digits: topk (k=2) and vmoe (BPR), two MoE layers each."""
    root = tmp_path_factory.mktemp("runs")
    for router in ("topk", "vmoe"):
        train_run(resolve_config("digits", router=router, steps=6, overrides=DIGITS), root / router, progress=False)
    return root


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_analysis_of_a_trained_run(runs):
    a = analyze_run(runs / "topk")
    assert json.loads((runs / "topk" / ANALYSIS_FILE).read_text()) == a
    assert a["step"] == 6 and a["task"] == "digits" and a["router"] == "topk"
    assert a["probe"] == {"tokens": 170, "labels": ["digit"]}
    layers = a["routing"]["layers"]
    assert [layer["layer"] for layer in layers] == [0, 1]
    for layer in layers:
        assert sum(layer["load"]) == pytest.approx(1.0) and len(layer["load"]) == 4
        assert layer["experts_per_token"] == 2.0 and layer["dropped_fraction"] == 0.0  # k=2, dropless
        assert all(finite(layer[k]) for k in ("load_cv", "max_over_mean", "entropy", "margin",
                                              "effective_rank_input", "effective_rank_router", "entropy_own"))
        assert 1 <= layer["effective_rank_router"] <= 4 and 0 <= layer["specialization_nmi"]["digit"] <= 1
    # fluctuation from the trace (evals at steps 2, 4, 6), co-activation of the two layers, sensitivity per layer
    assert [f["step"] for f in a["routing"]["fluctuation"]] == [4, 6]
    (co,) = a["routing"]["coactivation"]
    model = load_run(runs / "topk")[1]
    probed = route_probe(model.model, model.probe)
    assert co["layers"] == [0, 1] and co["matrix"] == coactivation(*probed.routings).tolist()
    for row, used in zip(co["matrix"], layers[0]["load"]):
        assert sum(row) == pytest.approx(2.0 if used else 0.0)  # every token has 2 experts in the next layer
    clean = model.probe.metric(model.model, probe_generator())
    assert [s["layer"] for s in a["routing"]["sensitivity"]] == [0, 1]
    assert all(s["clean"] == clean and finite(s["dropped"]) for s in a["routing"]["sensitivity"])
    assert [o["step"] for o in a["over_training"]] == [2, 4, 6] and "latent" not in a
    text = format_analysis(a)
    assert "NMI digit" in text and "top-1 changed L1" in text and "0 -> 1" in text


def test_vae_analysis_has_a_latent_map_and_its_decoder_layer_sensitivity(tmp_path):
    run = resolve_config("sketch-vae", steps=2, overrides=["data.num_per_class=60", "encoder_channels=[4, 4, 4]",
                                                         "train.batch_size=16", "data.probe_tokens=30"])
    train_run(run, tmp_path, progress=False)
    a = analyze_run(tmp_path)
    latent = a["latent"]
    assert len(latent["points"]) == len(latent["expert"]) == len(latent["label"]) == 30  # 6 valid images x 5
    assert all(len(p) == 2 and all(map(finite, p)) for p in latent["points"])
    assert set(latent["label"]) == {0, 1, 2, 3, 4} and a["probe"]["labels"] == ["class", "style"]
    assert a["routing"]["coactivation"] == []
    (sensitivity,) = a["routing"]["sensitivity"]  # the decoder layer meets MoELayer: its top expert is ablated too
    assert sensitivity["layer"] == 0 and finite(sensitivity["clean"]) and finite(sensitivity["dropped"])
    assert sensitivity["dropped"] != sensitivity["clean"]
    assert set(a["routing"]["layers"][0]["specialization_nmi"]) == {"class", "style"}


def test_eval_sweeps_corruptions_and_capacity_with_and_without_bpr(runs):
    e = evaluate_run(runs / "vmoe", corruptions=["noise:2", "blur:0", "occlude:5"], capacities=[1.0, 0.25])
    assert json.loads((runs / "vmoe" / "eval.json").read_text()) == e
    clean = e["clean"]["accuracy"]
    rows = [(r["corruption"], r["level"], r["severity"]) for r in e["robustness"]]
    assert rows == [("noise", 0, 0.0), ("noise", 2, 0.12), ("blur", 0, 0.0), ("occlude", 0, 0.0),
                    ("occlude", 5, 0.4), ("capacity-bpr", 0, 0.0), ("capacity-bpr", 1, 1.0),
                    ("capacity-bpr", 2, 0.25), ("capacity-vanilla", 0, 0.0), ("capacity-vanilla", 1, 1.0),
                    ("capacity-vanilla", 2, 0.25)]
    assert all(r["metric"] == clean for r in e["robustness"] if r["level"] == 0)
    cap = {(c["capacity"], c["bpr"]): c for c in e["capacity"]}
    assert set(cap) == {(1.0, True), (0.25, True), (1.0, False), (0.25, False)}
    # C = 0.25: each expert keeps at most ceil(0.25 A / E) of the A pairs of a call, so about 3/4 are dropped
    # whatever the order (BPR changes which pairs, and through the first layer the second layer's routing)
    assert cap[0.25, True]["dropped_fraction"] >= 0.7 and cap[0.25, False]["dropped_fraction"] >= 0.7
    assert cap[1.0, True]["dropped_fraction"] < cap[0.25, True]["dropped_fraction"]
    model = load_run(runs / "vmoe")[1].model
    assert all(layer.dispatcher.capacity_factor is None for layer in model.moe_layers())


def test_inference_settings_set_and_restore(runs):
    model = load_run(runs / "topk")[1].model
    router = model.moe_layers()[0].router
    with inference_settings(model, capacity=0.5, eval_k=1):
        assert model.moe_layers()[1].dispatcher.capacity_factor == 0.5 and router.options.eval_k == 1
        assert model(torch.randn(3, 16, 4)).moe[0].routing.experts_per_token().max() == 1
    assert model.moe_layers()[1].dispatcher.capacity_factor is None and router.options.eval_k is None
    with pytest.raises(ValueError, match="--bpr needs a router with a batch_priority option"), \
            inference_settings(model, bpr=True):
        pass
    with pytest.raises(ValueError, match="eval_k must be"), inference_settings(model, eval_k=5):
        pass
    vmoe = load_run(runs / "vmoe")[1].model
    with pytest.raises(ValueError, match="--eval-k needs a router with a eval_k option; this model's routers: "
                                         "VMoERouter"), inference_settings(vmoe, eval_k=1):
        pass
    with inference_settings(vmoe, bpr=False):
        assert vmoe.moe_layers()[0].router.options.batch_priority == "never"
    assert vmoe.moe_layers()[0].router.options.batch_priority == "eval"


def test_cli_analyze_and_eval(runs, capsys):
    assert main(["analyze", str(runs / "topk")]) == 0
    assert "NMI digit" in capsys.readouterr().out
    assert main(["eval", str(runs / "topk"), "--eval-k", "1", "--corrupt", "noise:1"]) == 0
    out = capsys.readouterr().out
    assert "(eval_k=1)" in out and "eval-k1.json" in out
    e = json.loads((runs / "topk" / "eval-k1.json").read_text())
    assert e["eval_k"] == 1 and [r["level"] for r in e["robustness"]] == [0, 1]
    assert main(["eval", str(runs / "topk"), "--capacity", "0.5", "--bpr", "on"]) == 2
    assert "bpr='on' needs a router with Batch Prioritized Routing" in capsys.readouterr().err
    assert main(["analyze", str(runs)]) == 2
    assert "run folder" in capsys.readouterr().err


def test_default_sweep_is_every_level():
    assert default_sweep(["noise", "substitute"]) == [f"noise:{i}" for i in range(1, 6)] + [
        f"substitute:{i}" for i in range(1, 6)]


def test_load_run_loads_the_latest_or_a_chosen_checkpoint_and_says_which(tmp_path):
    overrides = [*DIGITS, "train.checkpoint_every=2", "train.keep_checkpoints=3"]
    train_run(resolve_config("digits", steps=4, overrides=overrides), tmp_path / "run", progress=False)
    run, latest, step = load_run(tmp_path / "run")
    assert (run.task, run.router, step) == ("digits", "topk", 4)
    _, earlier, step = load_run(tmp_path / "run", step=2)
    assert step == 2 and not latest.model.training
    assert any(not torch.equal(a, b) for a, b in zip(latest.model.parameters(), earlier.model.parameters()))
    with pytest.raises(ValueError, match=r"config\.yaml"):
        load_run(tmp_path)
