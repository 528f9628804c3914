"""Routing pictures: the view data (routing_view.json) and figures of tiny trained runs of each task family (text,
image, signal, VAE), `smoe show`, `smoe.load_model`, and the pictures in a report."""

import base64
import os

import numpy as np
import pytest
import torch

import smoe
from smoe.cli import main
from smoe.workbench.report.comparison import write_report
from smoe.workbench.report.routing_plots import (
    decoder_groups,
    expert_color,
    load_over_training,
    patch_pictures,
    picture_set,
    token_text,
    weight_heatmaps,
)
from smoe.workbench.run.analysis import analyze_run
from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.routing_view import PER_EXPERT, read_view
from smoe.workbench.run.runner import load_run, train_run

SMALL = ["model.d_model=16", "model.num_heads=2", "model.ffn_hidden=16", "train.eval_every=2"]
FAMILIES = {  # family: (task, overrides); every run trains 4 steps, its routing is traced at steps 2 and 4
    "text": ("lm-bbc", [*SMALL, "data.vocab_size=300", "data.seq_len=16", "data.eval_tokens=256",
                        "model.num_layers=1", "train.batch_size=4", "data.probe_tokens=64"]),
    "image": ("digits", [*SMALL, "model.num_layers=2", "model.moe_every=1", "train.batch_size=8",
                         "data.probe_tokens=170"]),
    "signal": ("mnist1d", [*SMALL, "data.num_samples=200", "model.num_layers=2", "train.batch_size=8",
                           "data.probe_tokens=110"]),
    "vae": ("sketch-vae", ["data.num_per_class=40", "train.batch_size=8", "train.eval_every=2",
                           "data.probe_tokens=30"]),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """family -> the folder of a run trained 4 steps and analysed (so it holds routing_view.json); trained once."""
    cache_dir = tmp_path_factory.mktemp("smoe-cache")
    runs = {}

    def get(family: str):
        if family not in runs:
            task, overrides = FAMILIES[family]
            if family == "text":
                overrides = [*overrides, f"data.cache_dir={cache_dir}"]
            folder = tmp_path_factory.mktemp(family)
            train_run(resolve_config(task, steps=4, overrides=overrides), folder, progress=False)
            analyze_run(folder)
            runs[family] = folder
        return runs[family]

    return get


def heatmap_shapes(fig):
    return [ax.images[0].get_array().shape for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_text_view_and_pictures(trained):
    view = read_view(trained("text"))
    experts = view["num_experts"]
    assert (view["kind"], view["step"], len(view["layers"]), experts) == ("text", 4, 1, 4)
    assert [s["index"] for s in view["samples"]] == [0, 2, 3]  # 3 of the 4 probe windows, spread
    for sample in view["samples"]:
        route = sample["routes"][0]
        assert len(sample["tokens"]) == len(route["top1"]) == len(route["weight2"]) == 16
        assert all(0 <= e < experts for e in route["top1"]) and all(t != s for t, s in zip(route["top1"],
                                                                                            route["top2"]))
        assert all(w1 >= w2 for w1, w2 in zip(route["weight1"], route["weight2"]))
    weights = np.array(view["weights"][0])
    assert weights.shape == (16, experts) and np.allclose(weights.sum(1), 1, atol=2e-3)  # top-2, renormalised
    assert view["load"][0]["steps"] == [2, 4] and np.allclose(np.sum(view["load"][0]["fractions"], 1), 1, atol=2e-3)
    assert len(view["top_tokens"][0]) == experts
    topic = view["labels"]["topic"]
    assert topic["names"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.array(topic["counts"][0]).shape == (experts, 5) and np.sum(topic["counts"][0]) == 64

    views = {"a": view, "b": view}
    stems = [p.stem for p in picture_set(views)]
    assert stems == ["routing_text_0", "routing_text_1", "routing_text_2", "routing_weights", "routing_load",
                     "routing_tokens", "routing_topic"]
    assert heatmap_shapes(weight_heatmaps(views)) == [(experts, 16)] * 2  # expert x token, per (label, layer)
    text = token_text(views, 1)
    drawn = [t.get_text() for t in text.axes[0].texts]
    assert all(token in drawn for token in view["samples"][1]["tokens"]) and "a \u00b7 layer 0" in drawn


def test_load_over_training_with_one_traced_eval(trained):
    """A run traced once (e.g. `--steps 1`) gets one stacked bar, one segment per expert, summing to its load."""
    view = read_view(trained("text"))
    load = view["load"][0]
    once = {**view, "load": [{**load, "steps": load["steps"][-1:], "fractions": load["fractions"][-1:]}]}
    fig = load_over_training({"a": once})
    bars = fig.axes[0].patches
    assert len(bars) == view["num_experts"] and {b.get_x() + b.get_width() / 2 for b in bars} == {4}
    assert np.allclose([b.get_height() for b in bars], load["fractions"][-1])
    assert bars[-1].get_y() + bars[-1].get_height() == pytest.approx(sum(load["fractions"][-1]))


def test_image_view_and_pictures(trained):
    view = read_view(trained("image"))
    assert (view["kind"], view["grid"], view["prefix"], len(view["layers"])) == ("image", [4, 4], 1, 2)
    assert len(view["samples"]) == 8  # of the 10 probe images (170 tokens / 17)
    for sample in view["samples"]:
        assert np.array(sample["image"]).shape == (8, 8) and len(sample["routes"]) == 2
        assert all(len(route["top1"]) == 17 for route in sample["routes"])  # [CLS] + 16 patches
    assert np.array(view["weights"][1]).shape == (17, 4)
    assert np.array(view["labels"]["digit"]["counts"][0]).shape == (4, 10)
    fig = patch_pictures({"topk": view})
    grid = fig.axes
    assert len(grid) == 2 * (1 + 8)  # a row per layer: its name, then the 8 images
    overlays = [ax.images[1].get_array() for ax in grid if len(ax.images) == 2]
    assert len(overlays) == 16 and overlays[0].shape == (8, 8, 4)
    first = view["samples"][0]["routes"][0]
    assert np.allclose(overlays[0][0, 0, :3], expert_color(first["top1"][1]))  # patch 0 is token 1 ([CLS] first)


def test_signal_view(trained):
    view = read_view(trained("signal"))
    assert (view["kind"], view["grid"], view["prefix"]) == ("signal", [1, 10], 1)  # 40 values, patches of 4
    assert len(view["samples"][0]["signal"]) == 40 and len(view["samples"][0]["routes"][0]["top1"]) == 11
    fig = patch_pictures({"topk": view})
    assert sum(len(ax.patches) for ax in fig.axes) == 10 * len(view["samples"])  # one span per patch


def test_vae_view_and_pictures(trained):
    view = read_view(trained("vae"))
    experts = view["num_experts"]
    assert (view["kind"], len(view["layers"]), view["grid"]) == ("whole", 1, None)
    groups = view["groups"][0]
    assert len(groups) == experts and 0 < sum(map(len, groups)) <= PER_EXPERT * experts
    assert all(np.array(item["image"]).shape == (28, 28) for group in groups for item in group)
    assert np.array(view["weights"][0]).shape == (16, experts)  # the first 16 probe images
    assert set(view["labels"]) == {"class", "style"}
    fig = decoder_groups({"vae": view})
    cols = 1 + max(len(g) for g in groups)
    assert len(fig.axes) == experts * cols  # a row per decoder
    assert heatmap_shapes(weight_heatmaps({"vae": view})) == [(experts, 16)]


@pytest.mark.parametrize("family", ["text", "image", "vae"])
def test_smoe_show_writes_pictures_and_a_page(trained, family, tmp_path, capsys):
    out = tmp_path / "show"
    assert main(["show", str(trained(family)), "--out", str(out)]) == 0
    assert "index.html" in capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    html = (out / "index.html").read_text()
    assert pngs and html.count("<img ") == len(pngs) == html.count("<figcaption>")
    for png in pngs:
        assert base64.b64encode(png.read_bytes()).decode() in html  # self-contained
    expected = {"text": "routing_text_0", "image": "routing_patches", "vae": "routing_decoders"}[family]
    assert (out / f"{expected}.png").exists() and (out / "routing_load.png").exists()


def test_smoe_show_routes_a_users_text(trained, tmp_path, capsys):
    out = tmp_path / "text"
    text = "Oil prices rose on Thursday."
    assert main(["show", str(trained("text")), "--text", text, "--out", str(out)]) == 0
    md = (out / "index.md").read_text()
    assert "the given text" in md and (out / "routing_text_0.png").exists()
    assert not (out / "routing_text_1.png").exists()  # one sample: the text
    assert main(["show", str(trained("image")), "--text", text, "--out", str(out)]) == 2
    assert "--text needs a text task" in capsys.readouterr().err


def test_smoe_show_into_a_file_is_one_clear_line(trained, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["show", str(trained("image")), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err == f"smoe show: error: {tmp_path / 'file'} is a file, not a folder; choose a folder for the output " \
                  "(--out)\n"


def test_load_model_returns_the_trained_model_in_eval_mode(trained):
    folder = trained("image")
    model = smoe.load_model(folder)
    assert not model.training
    _, setup, step = load_run(folder)
    assert step == 4 and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                               setup.model.state_dict().values()))
    assert model(torch.zeros(2, 16, 4)).logits.shape == (2, 10)


def test_report_draws_each_routers_first_seed(trained, tmp_path):
    run_dir = os.path.relpath(trained("text"), tmp_path)
    runs = [{"label": label, "router": "topk", "seed": seed, "status": "done", "run_dir": run_dir,
             "final": {"metric": 100.0 + seed}} for label in ("a", "b") for seed in (1, 0)]
    results = {"schema": 1, "task": "lm-bbc", "metric": {"name": "perplexity", "higher_is_better": False},
               "runs": [*runs, {"label": "c", "seed": 0, "status": "done", "run_dir": "nowhere",
                                "final": {"metric": 90.0}}]}
    files = write_report(results, tmp_path, vector=False)
    md = files.markdown.read_text()
    section = md.split("## Routing pictures")[1]
    assert "(seed 0 of each router)" in section  # the lowest seed; c has no routing_view.json
    for stem in ("routing_text_0", "routing_weights", "routing_load", "routing_tokens", "routing_topic"):
        assert f"(plots/{stem}.png)" in section and (tmp_path / "plots" / f"{stem}.png").exists()
    assert "c \u00b7 layer 0" not in (tmp_path / "report.html").read_text()
