"""`python -m tests.workbench.kill_at PHASE ARG...`: `smoe ARG...` that SIGKILLs its own process in PHASE, for the
kill-at-every-phase test. smoe's code has no hook for it: each phase is one function patched here, whose n-th call
(of the kind `when` picks) dies, after writing half a temporary file where the function writes a file atomically
(what a kill during a write leaves)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from smoe.cli import main
from smoe.workbench.report import comparison
from smoe.workbench.results import record
from smoe.workbench.run import analysis, lifecycle
from smoe.workbench.train import checkpoint, trainer


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def half_written(path, data) -> None:
    """Half of `data` in the temporary file of smoe._files.atomic_write, then death."""
    path = Path(path)
    path.with_name(f".{path.name}.tmp-{os.getpid()}").write_bytes(data[: len(data) // 2])
    die()


def kill_on(owner, name: str, count: int = 1, when: Callable[..., bool] = lambda *a, **k: True,
            action: Callable = lambda *a, **k: die()) -> None:
    """Patch owner.name so that its count-th call for which when(*args) holds runs action(*args) instead."""
    real, calls = getattr(owner, name), [0]

    def patched(*args, **kwargs):
        if when(*args, **kwargs):
            calls[0] += 1
            if calls[0] == count:
                return action(*args, **kwargs)
        return real(*args, **kwargs)

    setattr(owner, name, patched)


def corrupted_evaluation_dies(count: int) -> None:
    """The count-th evaluation under a corruption (the robustness sweep of `evaluate_one`) dies."""
    real, calls = lifecycle.evaluate_model, [0]

    def evaluate_model(model, evaluate, *args, **kwargs):
        def dying(model, split, generator, corruption=None, seed=0):
            calls[0] += corruption is not None
            if calls[0] == count:
                die()
            return evaluate(model, split, generator, corruption=corruption, seed=seed)

        return real(model, dying, *args, **kwargs)

    lifecycle.evaluate_model = evaluate_model


def named(file: str) -> Callable[..., bool]:
    return lambda path, data: Path(path).name == file


PHASES: dict[str, Callable[[], None]] = {
    "training": lambda: kill_on(trainer.Trainer, "train_step", count=3),
    "checkpoint": lambda: kill_on(checkpoint, "atomic_write", count=2, action=half_written,
                                  when=lambda path, data: Path(path).suffix == ".safetensors"),
    "evaluation": lambda: kill_on(trainer.Trainer, "_evaluate", count=2, when=lambda self, split: split == "valid"),
    "final-evaluation": lambda: kill_on(trainer.Trainer, "_evaluate", when=lambda self, split: split == "test"),
    "final.json": lambda: kill_on(trainer, "atomic_write", when=named("final.json"), action=half_written),
    "analysis": lambda: kill_on(analysis, "atomic_write", when=named("analysis.json"), action=half_written),
    "corruption-sweep": lambda: corrupted_evaluation_dies(count=2),
    "eval.json": lambda: kill_on(lifecycle, "atomic_write", when=named("eval.json"), action=half_written),
    "results.json": lambda: kill_on(record, "atomic_write", when=named("results.json"), action=half_written),
    "report": lambda: kill_on(comparison, "render_html"),  # report.md written, report.html not
}

if __name__ == "__main__":
    PHASES[sys.argv[1]]()
    sys.exit(main(sys.argv[2:]))
