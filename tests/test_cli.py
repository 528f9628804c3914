"""The command line: bad input is one clear line on stderr and exit status 2, never a traceback (issue 19)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoe.cli import main
from smoe.workbench.run_folder import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.d_model=16", "--set", "model.num_layers=1", "--set", "model.ffn_hidden=16",
        "--set", "data.probe_tokens=0"]


def error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_an_output_that_is_a_file_or_not_writable(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a folder"), ("/sys/smoe-run", "cannot create")):
        assert main(["train", "--task", "digits", "--steps", "1", "--out", str(out), *TINY]) == 2
        assert message in error(capsys)
        assert main(["compare", "--task", "digits", "--routers", "topk", "--out", str(out)]) == 2
        assert message in error(capsys)


@pytest.mark.parametrize("item, message", [
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("model.moe.router_options.noise_std=-.inf",
     "model.moe.router_options.noise_std must be a finite number, got -inf"),
    ("model.moe.num_experts=[1", "--set model.moe.num_experts=[1: '[1' is not a YAML value"),
    ("train.lr=@x", "is not a YAML value"),
])
def test_non_finite_floats_and_yaml_errors_in_set(tmp_path, capsys, item, message):
    assert main(["train", "--task", "digits", "--set", item, "--out", str(tmp_path / "run")]) == 2
    err = error(capsys)
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_damaged_config_yaml_is_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("task: digits\nmodel: {d_model: 16\n")
    for command in ("analyze", "eval"):
        assert main([command, str(tmp_path)]) == 2
        err = error(capsys)
        assert f"{tmp_path / 'config.yaml'} is not valid YAML (line 3" in err and err.count("\n") == 1


def test_a_fifo_as_data_path(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    assert main(["train", "--task", "text", "--set", f"data.path={tmp_path / 'pipe'}", "--out",
                 str(tmp_path / "run")]) == 2
    assert "is not a regular file or a folder" in error(capsys)


def test_eval_embed_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval-embed", "-h"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: smoe eval-embed")


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path, capsys):
    args = ["train", "--task", "digits", "--out", str(tmp_path), "--no-progress", *TINY]
    assert main([*args, "--steps", "2"]) == 0
    config = (tmp_path / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*args, "--steps", "1", "--resume"]) == 2
    assert "at step 2, past steps=1; nothing to do" in error(capsys)
    assert (tmp_path / "config.yaml").read_text() == config


@pytest.mark.slow
def test_two_smoe_train_on_one_folder(tmp_path):
    """The red-team case: the second writer exits at once (status 2) naming the folder and the first one's pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "smoe", "train", "--task", "digits", "--out", str(tmp_path / "ct"), "--no-progress",
           *TINY]
    first = subprocess.Popen([*cmd, "--steps", "1000000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = tmp_path / "ct" / LOCK_FILE
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run([*cmd, "--steps", "20", "--seed", "1"], env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert f"{tmp_path / 'ct'} is being written by another smoe process (pid {first.pid})" in second.stderr
    finally:
        first.kill()
        first.wait()
