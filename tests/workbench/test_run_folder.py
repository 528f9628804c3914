"""Run-folder rules (issue 19): one writer per folder, every file a run reads back is checked, a torn last line of a
log is dropped with a warning, and a run killed before its first checkpoint is not stuck."""

import json
import multiprocessing
import os
import signal
import warnings

import pytest
from torch import nn

from smoe.workbench.grid import compare
from smoe.workbench.measure.probe import RoutingTrace, read_trace
from smoe.workbench.results.record import collect_run
from smoe.workbench.run import analysis, evaluate
from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.entry import Entry, parse_entries
from smoe.workbench.run.runner import train_run
from smoe.workbench.train import trainer
from smoe.workbench.train.checkpoint import CheckpointError, checkpoint_path, state_digest
from smoe.workbench.train.run_folder import (
    LOCK_FILE,
    DamagedFileError,
    FolderBusyError,
    hold_folder,
    make_folder,
    read_json,
    read_jsonl,
    read_yaml,
    remove_temp_files,
)
from tests.workbench.test_probe import DIGITS
from tests.workbench.test_trainer import make_trainer, records, same, state


def _hold_until_killed(folder, ready):
    with hold_folder(folder):
        ready.set()
        signal.pause()


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path / "run" (forked, killed at the end)."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_until_killed, args=(tmp_path / "run", ready), daemon=True)
    proc.start()
    assert ready.wait(30)
    yield proc
    proc.kill()
    proc.join()


# ---------------------------------------------------------------- one writer


def test_a_second_writer_fails_at_once_naming_the_folder_and_the_holders_pid(tmp_path, holder):
    with pytest.raises(FolderBusyError, match=rf"{tmp_path / 'run'} is being written .*pid {holder.pid}"):
        make_trainer(tmp_path / "run", 2).fit()
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing written
    (tmp_path / "run" / "config.yaml").write_text("task: digits\n")
    with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
        evaluate.evaluate_run(tmp_path / "run")
    with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
        analysis.analyze_run(tmp_path / "run")


def test_the_lock_dies_with_its_process_and_nests_within_one(tmp_path, holder):
    holder.kill()
    holder.join()
    with hold_folder(tmp_path / "run") as folder, hold_folder(folder):  # the OS released it; nesting is allowed
        assert (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    make_trainer(tmp_path / "run", 1).fit()


def test_a_comparison_folder_has_one_writer(tmp_path, holder):
    config = compare.CompareConfig(task="digits", entries=[Entry("topk", "topk")], out=str(tmp_path / "run"), seeds=1)
    with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
        compare.run_compare(config, progress=False)
    assert not (tmp_path / "run" / "runs").exists()


def test_an_output_that_is_a_file_or_not_writable_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        make_folder(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot create the folder /sys/smoe-run"):
        make_folder("/sys/smoe-run")  # EPERM even for root


# ---------------------------------------------------------------- checkpoints: everything read back is checked


def _edit_checkpoint(folder, step, edit, keep_checksum=False):
    path = checkpoint_path(folder / "checkpoints", step)
    st = json.loads(path.read_text())
    edit(st)
    if keep_checksum:  # an edit that also recomputes the checksum: the fields themselves are validated
        st["state_sha256"] = state_digest(st)
    path.write_text(json.dumps(st))
    return path


@pytest.mark.parametrize("edit", [
    lambda st: st.update(step=3),
    lambda st: st["rng"].update(data=st["rng"]["noise"]),
    lambda st: st["optimizer"]["param_groups"][0].update(lr=1.0),
    lambda st: st["config"]["train"].update(lr=1.0),
    lambda st: st.pop("state_sha256"),
], ids=["step", "rng", "optimizer", "config", "no-checksum"])
def test_an_edited_checkpoint_state_is_refused(tmp_path, edit):
    make_trainer(tmp_path, 2).fit()
    path = _edit_checkpoint(tmp_path, 2, edit)
    with pytest.raises(CheckpointError, match=str(path)):
        make_trainer(tmp_path, 4).fit(resume=True)


@pytest.mark.parametrize("edit, match", [
    (lambda st: st.pop("rng"), "KeyError: 'rng'"),
    (lambda st: st.update(aliases=[1]), "malformed"),
    (lambda st: st["rng"].update(data=7), "malformed"),
    (lambda st: st.update(step="2"), "does not describe step 2"),
])
def test_a_missing_or_mistyped_field_is_a_checkpoint_error_naming_the_file(tmp_path, edit, match):
    make_trainer(tmp_path, 2).fit()
    path = _edit_checkpoint(tmp_path, 2, edit, keep_checksum=True)
    with pytest.raises(CheckpointError, match=match) as info:
        make_trainer(tmp_path, 4).fit(resume=True)
    assert str(path) in str(info.value)


def test_temporary_files_of_an_interrupted_write_are_removed_on_the_next_start(tmp_path):
    make_trainer(tmp_path, 2).fit()
    stale = [tmp_path / "checkpoints" / ".step-00000004.safetensors.tmp-99999", tmp_path / ".final.json.tmp-99999"]
    for p in stale:
        p.write_bytes(b"partial")
    make_trainer(tmp_path, 3).fit(resume=True)
    assert not any(p.exists() for p in stale)
    assert remove_temp_files(tmp_path) == []


def test_taking_a_folder_removes_the_temporary_files_a_dead_writer_left_in_it(tmp_path):
    """A finished run is never trained again, so the Trainer's clean-up never sees what a kill during its analysis
    or evaluation left; the next holder of the folder removes it (not in sub-folders: another writer's)."""
    stale, other = tmp_path / ".eval.json.tmp-99999", tmp_path / "runs" / "a" / ".final.json.tmp-99999"
    other.parent.mkdir(parents=True)
    for p in (stale, other):
        p.write_bytes(b"partial")
    with hold_folder(tmp_path):
        assert not stale.exists() and other.exists()


def test_final_eval_and_analysis_files_are_written_atomically(tmp_path, monkeypatch):
    written = []
    for module in (trainer, evaluate, analysis):
        monkeypatch.setattr(module, "atomic_write", lambda path, data, real=module.atomic_write: (
            written.append(path.name), real(path, data)))
    run = resolve_config("digits", steps=2, overrides=DIGITS)
    train_run(run, tmp_path, progress=False)
    analysis.analyze_run(tmp_path)
    evaluate.evaluate_run(tmp_path, corruptions=[])
    assert {"final.json", "analysis.json", "eval.json"} <= set(written)


# ---------------------------------------------------------------- logs: torn last lines


def test_a_torn_last_line_of_metrics_is_dropped_with_a_warning_on_resume(tmp_path):
    make_trainer(tmp_path, 4, checkpoint_every=2).fit()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "split": "tr')  # a kill during an append
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped a torn last line \(line 8,"):
        make_trainer(tmp_path, 6, checkpoint_every=2).fit(resume=True)
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_a_damaged_line_elsewhere_is_an_error_naming_the_file_and_line(tmp_path):
    make_trainer(tmp_path, 4, checkpoint_every=2).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DamagedFileError, match=r"metrics.jsonl line 3 is damaged"):
        make_trainer(tmp_path, 6, checkpoint_every=2).fit(resume=True)


def test_a_torn_last_line_of_the_routing_trace_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "routing_trace.jsonl"
    path.write_text('{"step": 2, "layers": []}\n{"step": 4, "layers": []}\n{"step": 6, "lay')
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["step"] for r in read_trace(tmp_path)] == [2, 4]
    trace = RoutingTrace(nn.Identity(), None, path, every=2, last_step=8)
    with pytest.warns(UserWarning, match="torn last line"):
        trace._start(5)  # resuming at step 4: records of steps >= 5 are dropped, the torn one with a warning
    assert path.read_text() == '{"step": 2, "layers": []}\n{"step": 4, "layers": []}\n'
    assert trace.previous == {"step": 4, "layers": []}


def test_readers_name_the_damaged_file_and_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}')  # a complete last line without its newline is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in read_jsonl(log)] == [1, 2]
    log.write_text('{"step": 1}\n[1]\n')
    with pytest.raises(DamagedFileError, match=r'log.jsonl line 2 is damaged .*integer "step"'):
        read_jsonl(log)
    (tmp_path / "final.json").write_text('{"step": 4,\n "valid": {')
    with pytest.raises(DamagedFileError, match=r"final.json is damaged \(line 2 column"):
        read_json(tmp_path / "final.json")
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "config.yaml").write_text("task: digits\nmodel: {d_model: 8\n")
    with pytest.raises(DamagedFileError, match=r"config.yaml is not valid YAML \(line 3") as info:
        read_yaml(tmp_path / "config.yaml")
    assert "\n" not in str(info.value)


def test_compare_records_a_run_with_damaged_files_as_failed(tmp_path):
    run_dir = tmp_path / "runs" / "topk-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "final.json").write_text(json.dumps({"step": 2, "valid": {}, "test": {"accuracy": 0.5}}))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 2}\n')
    record = collect_run(Entry("topk", "topk"), 0, run_dir, tmp_path, "accuracy", "done", None)
    assert record["status"] == "failed" and "metrics.jsonl line 2 is damaged" in record["error"]


def test_a_damaged_run_folder_fails_its_run_and_the_grid_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "train_one", lambda run, run_dir, progress: None)
    monkeypatch.setattr(compare, "evaluate_one", lambda run, run_dir, request, device, say: None)
    monkeypatch.setattr(compare, "write_report", lambda out: type("F", (), {"html": out / "report.html"}))
    config = compare.CompareConfig(task="digits", entries=parse_entries("topk,vmoe"), out=str(tmp_path),
                                   seeds=1, steps=2)
    for name, final in (("topk", '{"step": 2, "test": {"accuracy": 0.5}}'), ("vmoe", '{"step": 2, "te')):
        (tmp_path / "runs" / f"{name}-s0").mkdir(parents=True)
        (tmp_path / "runs" / f"{name}-s0" / "final.json").write_text(final)
        (tmp_path / "runs" / f"{name}-s0" / "metrics.jsonl").write_text("")
    result = compare.run_compare(config, progress=False)
    assert len(result.failed) == 1 and result.failed[0].startswith("vmoe s0: DamagedFileError")
    status = {r["label"]: r["status"] for r in json.loads(result.results.read_text())["runs"]}
    assert status == {"topk": "done", "vmoe": "failed"}


# ---------------------------------------------------------------- killed before the first checkpoint; done runs


def _killed_before_first_checkpoint(folder):
    make_trainer(folder, 3).fit()
    for p in [*(folder / "checkpoints").iterdir(), folder / "final.json"]:
        p.unlink()  # what a kill before the first checkpoint leaves: config.yaml, metrics, trace


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    straight = make_trainer(tmp_path / "straight", 3)
    straight.fit()
    _killed_before_first_checkpoint(tmp_path / "a")
    again = make_trainer(tmp_path / "a", 3)
    assert again.fit().status == "done"
    assert same(state(straight), state(again))
    assert [r["step"] for r in records(tmp_path / "a")] == [1, 2, 3]  # the killed run's records are gone


def test_resume_without_a_checkpoint_starts_from_step_zero_with_the_folders_config(tmp_path):
    _killed_before_first_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="no checkpoint .* starting from step 0"):
        assert make_trainer(tmp_path, 3).fit(resume=True).step == 3
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3]
    (tmp_path / "final.json").unlink()
    for p in (tmp_path / "checkpoints").iterdir():
        p.unlink()
    with pytest.raises(CheckpointError, match=r"config.yaml was written with another configuration .*train\.lr"):
        make_trainer(tmp_path, 3, lr=0.5).fit(resume=True)


def test_resume_past_the_requested_steps_is_refused_and_a_done_run_is_left_alone(tmp_path):
    make_trainer(tmp_path, 4).fit()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"at step 4, past steps=2; nothing to do \(pass --steps 4 or more"):
        make_trainer(tmp_path, 2).fit(resume=True)
    done = make_trainer(tmp_path, 4).fit(resume=True)
    assert done.status == "done" and done.step == 4 and set(done.final) == {"valid", "test"}
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_extended_run_never_has_a_config_that_disagrees_with_final_json(tmp_path):
    make_trainer(tmp_path, 2).fit()
    extended = make_trainer(tmp_path, 4)
    extended.train_step = _interrupt_after(extended.train_step, calls=1)
    with pytest.raises(KeyboardInterrupt):
        extended.fit(resume=True)
    config = read_yaml(tmp_path / "config.yaml")
    final = read_json(tmp_path / "final.json")
    assert final is None or final["step"] == config["train"]["steps"]


def _interrupt_after(fn, calls):
    count = [0]

    def wrapped(*args):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt
        return fn(*args)

    return wrapped


# ---------------------------------------------------------------- killed in the final phase; forged checkpoints


@pytest.mark.parametrize("where", ["final-eval", "final.json"])
def test_a_kill_after_the_last_checkpoint_leaves_one_record_per_evaluation(tmp_path, monkeypatch, where):
    """The default presets checkpoint at their last step, then evaluate valid and test, then write final.json; a run
    killed in between resumes to the files of a run never killed (no record twice)."""
    make_trainer(tmp_path / "straight", 4).fit()
    killed = make_trainer(tmp_path / "run", 4)
    if where == "final-eval":
        real = killed.evaluate
        killed.evaluate = lambda model, split, g: (_ for _ in ()).throw(KeyboardInterrupt) if split == "test" \
            else real(model, split, g)
    else:
        monkeypatch.setattr(trainer, "atomic_write", lambda path, data, real=trainer.atomic_write: (
            (_ for _ in ()).throw(KeyboardInterrupt) if path.name == "final.json" else real(path, data)))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.undo()
    assert make_trainer(tmp_path / "run", 4).fit(resume=True).status == "done"

    def log(folder):
        return [{k: v for k, v in r.items() if k != "per_s"} for r in read_jsonl(folder / "metrics.jsonl")]

    assert log(tmp_path / "run") == log(tmp_path / "straight")
    assert read_json(tmp_path / "run" / "final.json") == read_json(tmp_path / "straight" / "final.json")


def _forge(folder, step, as_step):
    """Checkpoint `step` renamed to `as_step`, its step field and both checksums rewritten (a deliberate forgery)."""
    ckpt = folder / "checkpoints"
    st = json.loads(checkpoint_path(ckpt, step).read_text())
    name = f"step-{as_step:08d}.safetensors"
    (ckpt / name).write_bytes((ckpt / st["tensors_file"]).read_bytes())
    st.update(step=as_step, tensors_file=name)
    st["state_sha256"] = state_digest(st)
    checkpoint_path(ckpt, as_step).write_text(json.dumps(st))


@pytest.mark.parametrize("step, as_step", [(4, 5), (2, 4)])
def test_a_forged_checkpoint_step_contradicts_the_optimizers_step_count(tmp_path, step, as_step):
    make_trainer(tmp_path, 4, checkpoint_every=2).fit()
    (tmp_path / "final.json").unlink()
    _forge(tmp_path, step, as_step)
    with pytest.raises(CheckpointError, match=rf"says step {as_step}, but its optimizer state took {step} steps"):
        make_trainer(tmp_path, 6, checkpoint_every=2).fit(resume=True)


def test_a_final_json_that_is_a_folder_is_a_damaged_file(tmp_path):
    make_trainer(tmp_path, 2).fit()
    (tmp_path / "final.json").unlink()
    (tmp_path / "final.json").mkdir()
    with pytest.raises(DamagedFileError, match=r"final.json is not a regular file \(a folder\); remove it"):
        make_trainer(tmp_path, 4).fit(resume=True)
    for read in (read_jsonl, read_yaml):
        with pytest.raises(DamagedFileError, match=r"final.json is not a regular file \(a folder\)"):
            read(tmp_path / "final.json")
