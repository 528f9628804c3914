"""A kill at every phase: `smoe compare` (one tiny run) SIGKILLed in each phase of its life (training, a checkpoint
write, a periodic and the final evaluation, final.json, analysis, the corruption sweep, eval.json, results.json, the
report), then run again, leaves the files of a comparison never killed: every record once in metrics.jsonl, the same
final.json, analysis, evaluation and results (less wall-clock times)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smoe.cli import main
from smoe.workbench.train.run_folder import read_jsonl
from tests.workbench.kill_at import PHASES

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.d_model=16", "model.num_layers=2", "model.moe_every=1", "model.num_heads=2", "model.ffn_hidden=16",
        "train.batch_size=16", "train.log_every=1", "data.probe_tokens=340", "data.num_samples=400",
        "train.eval_every=2", "train.checkpoint_every=2"]
ARGS = ["compare", "--task", "digits", "--routers", "topk", "--seeds", "1", "--steps", "6", "--corrupt",
        "noise:1,blur:2", "--threads", "1", "--no-progress", *(x for item in TINY for x in ("--set", item))]
TIMING = {"per_s", "eval_time_s", "train_time_s", "tokens_per_s", "created", "command", "machine", "load_average"}


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def files(out: Path) -> dict:
    """What a comparison leaves, less wall-clock times: the run's logs and records, results.json, the report."""
    run = out / "runs" / "topk-s0"
    found = {name: without_timing(json.loads((run / name).read_text()))
             for name in ("final.json", "analysis.json", "eval.json", "routing_view.json")}
    found["metrics.jsonl"] = without_timing(read_jsonl(run / "metrics.jsonl"))
    found["routing_trace.jsonl"] = read_jsonl(run / "routing_trace.jsonl")
    found["results.json"] = without_timing(json.loads((out / "results.json").read_text()))
    found["report"] = sorted(p.name for p in out.iterdir() if p.name.startswith("report."))
    found["temporary files"] = sorted(str(p) for p in out.rglob(".*.tmp-*"))
    return found


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight")
    assert main([*ARGS, "--out", str(out)]) == 0
    return files(out)


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_comparison_killed_in_any_phase_resumes_to_the_same_files(tmp_path, straight, phase):
    out = tmp_path / "cmp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "tests.workbench.kill_at", phase, *ARGS, "--out", str(out)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert main([*ARGS, "--out", str(out)]) == 0
    resumed = files(out)
    steps = [(r["step"], r["split"]) for r in resumed["metrics.jsonl"]]
    assert len(steps) == len(set(steps))  # no record twice
    assert resumed == straight
