"""Every task builds, trains a few steps and evaluates (small overrides); the tiny presets reach sane figures
(-m slow)."""

import json
import math

import numpy as np
import pytest
import torch

from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.runner import train_run
from smoe.workbench.tasks import available_tasks, get_task
from smoe.workbench.tasks.text import next_token_loss, unigram_perplexity, window_index, window_losses

SMALL_LM = ["data.vocab_size=300", "data.seq_len=16", "data.eval_tokens=256", "model.d_model=16",
            "model.num_layers=1", "model.num_heads=2", "model.ffn_hidden=16", "train.batch_size=4"]
SMALL = {
    "lm-bbc": SMALL_LM,
    "cls-bbc": SMALL_LM,
    "digits": ["model.d_model=16", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden=16",
               "train.batch_size=8"],
    "mnist1d": ["data.num_samples=200", "model.d_model=16", "model.num_layers=2", "model.num_heads=2",
                "model.ffn_hidden=16", "train.batch_size=8"],
    "sketch-vae": ["data.num_per_class=20", "encoder_channels=[2, 2, 2]", "train.batch_size=8"],
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Tokenizers go to one temporary cache per test session, not the user's."""
    monkeypatch.setenv("SMOE_CACHE", str(tmp_path_factory.getbasetemp() / "smoe-cache"))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """A small English text file: BBC articles, blank-line separated (what a user points `text` at)."""
    from smoe.data.bbc import load_bbc

    path = tmp_path_factory.mktemp("text") / "articles.txt"
    path.write_text("\n\n".join(d.strip() for d in load_bbc().documents[:400]), encoding="utf-8")
    return path


def overrides(task, text_file):
    if task == "text":
        return [*SMALL_LM, f"data.path={text_file}"]
    return SMALL[task]


def test_every_task_is_registered_with_tiny_and_small_presets():
    assert available_tasks() == ["cls-bbc", "digits", "lm-bbc", "mnist1d", "sketch-vae", "text"]
    for name in available_tasks():
        assert {"tiny", "small"} <= set(get_task(name).presets)
        resolve_config(name, "small")  # every preset is a valid configuration


@pytest.mark.parametrize("task", ["lm-bbc", "text", "cls-bbc", "digits", "mnist1d", "sketch-vae"])
def test_task_trains_and_evaluates(task, tmp_path, text_file):
    run = resolve_config(task, steps=2, overrides=[*overrides(task, text_file), "train.eval_every=1"])
    result = train_run(run, tmp_path, progress=False)
    assert result.status == "done" and set(result.final) == {"valid", "test"}
    metric = {"lm-bbc": "perplexity", "text": "perplexity", "cls-bbc": "accuracy", "digits": "accuracy",
              "mnist1d": "accuracy", "sketch-vae": "sse_per_image"}[task]
    assert all(metric in result.final[s] for s in ("valid", "test"))
    saved = (tmp_path / "config.yaml").read_text()
    assert f"task: {task}" in saved and "router: topk" in saved


@pytest.mark.parametrize("task", ["lm-bbc", "text", "cls-bbc", "digits", "mnist1d", "sketch-vae"])
def test_task_probe_labels_every_routed_token_and_level_zero_is_clean(task, text_file):
    from smoe.workbench.measure.probe import route_probe

    t = get_task(task)
    small = [o for o in overrides(task, text_file) if not o.startswith("encoder_channels")]  # VAE: no dead ReLUs
    setup = t.setup(resolve_config(task, overrides=[*small, "data.probe_tokens=64"]))
    probed = route_probe(setup.model, setup.probe)
    n = probed.routings[0].num_tokens
    assert 0 < n <= 64 + 16 and all(y.shape == (n,) for y in setup.probe.labels.values())
    expected = {"lm-bbc": {"topic"}, "text": set(), "cls-bbc": {"topic"}, "digits": {"digit"}, "mnist1d": {"digit"},
                "sketch-vae": {"class", "style"}}[task]
    assert set(setup.probe.labels) == expected
    assert math.isfinite(setup.probe.metric(setup.model, torch.Generator()))
    setup.model.eval()
    generator = torch.Generator()
    clean = setup.evaluate(setup.model, "valid", generator)
    assert t.metric_key in clean and t.corruptions
    assert setup.evaluate(setup.model, "valid", generator, corruption=f"{t.corruptions[0]}:0") == pytest.approx(clean)
    hit = setup.evaluate(setup.model, "valid", generator, corruption=f"{t.corruptions[0]}:5", seed=1)
    assert hit != clean and math.isfinite(hit[t.metric_key])


def test_next_token_loss_scores_only_the_kept_targets():
    class Bigram(torch.nn.Module):  # logits of token t+1 given t: row idx of a fixed table
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.log_softmax(torch.randn(5, 5), -1))

        def forward(self, idx, generator=None):
            return type("Out", (), {"logits": self.table[idx]})

    model = Bigram()
    windows = torch.tensor([[0, 1, 2, 3], [4, 4, 0, 2]])
    scored = torch.tensor([[True, False, True], [False, False, True]])
    # mean of -log p(next | current) over the kept targets: (0->1), (2->3), (0->2)
    logp = model.table.detach()
    expected = -(logp[0, 1] + logp[2, 3] + logp[0, 2]) / 3
    assert next_token_loss(model, windows, 1, torch.Generator(), scored) == pytest.approx(float(expected))
    everything = -logp[windows[:, :-1], windows[:, 1:]].mean()
    assert next_token_loss(model, windows, 2, torch.Generator()) == pytest.approx(float(everything))


def test_cli_resume_is_bit_identical_on_a_real_task(tmp_path):
    from safetensors.torch import load_file

    from smoe.cli import main

    sets = [*SMALL["digits"], "train.checkpoint_every=1", "model.moe.router_options.noise=fixed", "model.dropout=0.1"]
    args = ["train", "--task", "digits", "--seed", "5", "--no-progress", *(a for s in sets for a in ("--set", s))]
    assert main([*args, "--steps", "4", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--steps", "2", "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--steps", "4", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = load_file(tmp_path / "a" / "checkpoints" / "step-00000004.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "step-00000004.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unigram_perplexity_by_hand():
    train = torch.tensor([0, 0, 0, 1])  # add-one counts (4, 2, 1) / 7 over a vocabulary of 3
    target = torch.tensor([0, 2])
    # exp(-(ln 4/7 + ln 1/7) / 2) = 7 / sqrt(4) = 3.5
    assert unigram_perplexity(train, target, 3) == pytest.approx(3.5)


def test_eval_windows_tile_the_stream():
    w = window_index(10, seq_len=3, max_tokens=0)
    assert w.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert window_index(10, seq_len=3, max_tokens=4).shape == (1, 4)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        window_index(3, seq_len=3, max_tokens=0)


class Uniform(torch.nn.Module):
    """A language model whose next-token distribution is uniform over `vocab`: every target costs log(vocab)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.anchor = vocab, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, generator=None):
        return type("Out", (), {"logits": torch.zeros(*x.shape, self.vocab) + self.anchor})()


def test_window_losses_sum_per_document_when_given_documents():
    windows = window_index(10, seq_len=3, max_tokens=0)  # token = position; targets: positions 1-3, 4-6, 7-9
    documents = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])[windows[:, 1:]]  # docs 0: 1-4, 1: 5-7, 2: 8-9
    by_window = window_losses(Uniform(10), windows, 2, torch.Generator())
    by_doc = window_losses(Uniform(10), windows, 2, torch.Generator(), groups=documents)
    assert by_window.counts.tolist() == [3, 3, 3] and by_doc.counts.tolist() == [4, 3, 2]
    assert by_doc.totals == pytest.approx(np.array([4, 3, 2]) * math.log(10))
    assert by_doc.metric() == pytest.approx(by_window.metric()) == pytest.approx(10.0)


def test_text_task_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="needs a file or folder"):
        train_run(resolve_config("text", steps=1), tmp_path / "run", progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        train_run(resolve_config("text", steps=1, overrides=[f"data.path={empty}"]), tmp_path / "r2", progress=False)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        train_run(resolve_config("text", steps=1, overrides=[f"data.path={latin}"]), tmp_path / "r3", progress=False)


# ---------------------------------------------------------------- the tiny presets reach sane figures


def tiny(task, tmp_path, extra=()):
    result = train_run(resolve_config(task, "tiny", overrides=list(extra)), tmp_path, progress=False)
    assert result.status == "done"
    return result.final["test"]


@pytest.mark.slow
def test_tiny_lm_bbc_beats_the_unigram_model(tmp_path):
    test = tiny("lm-bbc", tmp_path)
    assert test["perplexity"] < 0.6 * test["unigram_perplexity"]


@pytest.mark.slow
def test_tiny_text_beats_the_unigram_model(tmp_path, text_file):
    test = tiny("text", tmp_path, [f"data.path={text_file}"])
    assert test["perplexity"] < 0.8 * test["unigram_perplexity"]


@pytest.mark.slow
def test_tiny_cls_bbc_accuracy(tmp_path):
    assert tiny("cls-bbc", tmp_path)["accuracy"] > 0.8


@pytest.mark.slow
def test_tiny_digits_accuracy_above_90_percent(tmp_path):
    assert tiny("digits", tmp_path)["accuracy"] > 0.9


@pytest.mark.slow
def test_tiny_mnist1d_accuracy(tmp_path):
    assert tiny("mnist1d", tmp_path)["accuracy"] > 0.7  # chance is 0.1


@pytest.mark.slow
def test_tiny_sketch_vae_reconstructs_better_than_the_mean_image(tmp_path):
    test = tiny("sketch-vae", tmp_path)
    assert test["sse_per_image"] < 0.8 * test["mean_image_sse"]
    assert json.loads((tmp_path / "final.json").read_text())["test"] == test


def test_sigterm_to_smoe_train_writes_a_checkpoint_and_exits(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    sets = [a for s in [*SMALL["digits"], "train.log_every=1"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "smoe", "train", "--task", "digits", "--steps", "100000", "--no-progress",
           "--out", str(out), *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint written" in err
    steps = [int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("*.json")]
    assert len(steps) == 1 and 0 < steps[0] < 100000


def test_sketch_vae_trains_on_quickdraw_files_and_rejects_wrong_shapes(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    files = []
    for name in ("cat", "eye"):  # numpy_bitmap files: (n, 784) of 0-255, white strokes on black
        path = tmp_path / f"{name}.npy"
        np.save(path, (rng.random((40, 784)) > 0.9).astype(np.uint8) * 255)
        files.append(str(path))
    over = ["encoder_channels=[2, 2, 2]", "train.batch_size=8", f"data.quickdraw={files}"]
    result = train_run(resolve_config("sketch-vae", steps=2, overrides=over), tmp_path / "run", progress=False)
    assert result.status == "done" and result.final["test"]["sse_per_image"] > 0
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((40, 783), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npy"):
        train_run(resolve_config("sketch-vae", steps=1, overrides=[f"data.quickdraw=['{bad}']"]), tmp_path / "r2",
                  progress=False)
    with pytest.raises(ValueError, match="quickdraw must be a non-empty list"):
        resolve_config("sketch-vae", overrides=["data.quickdraw=[]"])
