"""Each run's record in results.json, gathered from the files of its folder, and writing results.json with the
paired statistics of `workbench.results.verdicts`."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from smoe._files import atomic_write
from smoe.workbench.measure.rule import Margin
from smoe.workbench.results.schema import RESULTS_FILE, SCHEMA_VERSION
from smoe.workbench.results.verdicts import with_statistics
from smoe.workbench.run.analysis import ANALYSIS_FILE
from smoe.workbench.run.entry import Entry
from smoe.workbench.run.evaluate import eval_file
from smoe.workbench.run.lifecycle import TIMING_FILE
from smoe.workbench.tasks import get_task
from smoe.workbench.train.hints import available_cores
from smoe.workbench.train.run_folder import DamagedFileError, read_json, read_jsonl


def collect_run(entry: Entry, seed: int, run_dir: Path, out: Path, metric_key: str, status: str,
                error: str | None) -> dict:
    """The run's record in results.json (`schema`), from the files in its folder; a damaged file makes it a
    failed run (the error names the file and line)."""
    record: dict = {"router": entry.router, "label": entry.label, "seed": seed, "options": entry.describe(),
                    "run_dir": str(run_dir.relative_to(out)), "status": status, "error": error}
    try:
        return _add_run_files(record, run_dir, metric_key)
    except DamagedFileError as e:
        return {**record, "status": "failed", "error": f"{type(e).__name__}: {e}"}


def _add_run_files(record: dict, run_dir: Path, metric_key: str) -> dict:
    final = read_json(run_dir / "final.json")
    if final is None:
        return record
    valid, test = final.get("valid", {}), final.get("test", {})
    record["steps"] = final["step"]
    extras = {k: v for k, v in test.items() if k not in (metric_key, "loss")}  # e.g. unigram perplexity
    record["final"] = {"metric": test.get(metric_key), "valid_metric": valid.get(metric_key),
                       "valid_loss": valid.get("loss"), **extras}
    logged = read_jsonl(run_dir / "metrics.jsonl")
    record["curve"] = [{"step": r["step"], "valid_loss": r.get("loss"), "metric": r.get(metric_key)}
                       for r in logged if r["split"] == "valid"]
    rates = sorted(r["per_s"] for r in logged if r["split"] == "train" and "per_s" in r)
    if rates:
        record["tokens_per_s"] = rates[len(rates) // 2]  # median: robust to a stalled step
    timing = read_json(run_dir / TIMING_FILE)
    if timing:
        record["train_time_s"] = timing["train_time_s"]
        if "load_average" in timing:
            record["load_average"] = timing["load_average"]
    analysis = read_json(run_dir / ANALYSIS_FILE)
    if analysis:
        record["routing"] = analysis["routing"]
        per_token = [layer.get("experts_per_token") for layer in analysis["routing"]["layers"]]
        if per_token and all(isinstance(v, (int, float)) for v in per_token):
            record["final"]["experts_per_token"] = sum(per_token) / len(per_token)
        if "latent" in analysis:
            record["latent"] = analysis["latent"]
    evaluation = read_json(run_dir / eval_file(None))
    if evaluation:
        record["robustness"] = [{k: e[k] for k in ("corruption", "level", "severity", "metric")}
                                for e in evaluation["robustness"]]
        record["final"]["eval_time_s"] = evaluation["eval_time_s"]
        if evaluation.get("clean_bootstrap"):
            record["eval_sd"] = evaluation["clean_bootstrap"]["sd"]
    return record


def machine(device: str, jobs: int | str = 1) -> dict:
    """The machine block of results.json: CPU, torch threads, versions, device; `jobs`: runs trained at once on
    this machine (an int, or "cluster"), `cores` this process may use and the load average (1, 5, 15 minutes) as
    results are written: a cost measured beside other work is read with them."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = f"{names[0]} x {len(names)}" if names else cpu
    out = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "device": device,
           "python": platform.python_version(), "jobs": jobs, "cores": available_cores()}
    if hasattr(os, "getloadavg"):
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


def write_results(out: str | Path, task: str, preset: str, device: str, entries: Sequence[str], baseline: str,
                  records: list[dict], command: str, margin: Margin | None = None, tuning: dict | None = None,
                  jobs: int | str = 1, code: dict | None = None) -> Path:
    """Write out/results.json (schema `SCHEMA_VERSION`): the run records of `entries` (labels, in order) with the
    verdicts against `baseline` (with `margin`, `verdicts.with_statistics`), the record of the entries' tuning
    (`workbench.grid.tune`) if any; jobs: runs trained at once (`machine`); `code`: the provenance
    (`smoe.plugins.provenance`), recorded with the directory `command` was run in."""
    spec = get_task(task)
    results = {"schema": SCHEMA_VERSION, "task": task, "preset": preset, "command": command,
               **({"provenance": {**code, "cwd": os.getcwd()}} if code is not None else {}),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "metric": {"name": spec.metric_key, "higher_is_better": spec.higher_is_better},
               "machine": machine(device, jobs), "runs": records, "entries": list(entries),
               **({"tuning": tuning} if tuning is not None else {})}
    results = with_statistics(results, baseline, margin=margin)
    path = Path(out) / RESULTS_FILE
    atomic_write(path, json.dumps(results, indent=1).encode())  # NaN / inf stay numbers, as the schema allows
    return path
