"""Run-folder rules: one writer at a time, and every file a run reads back is checked.

- **One writer.** `hold_folder(folder)` takes an exclusive `fcntl.flock` on `folder/.smoe.lock` for as long as the
  block runs; the OS releases it when the process dies, so a killed run never leaves a stale lock. A second
  process fails at once with `FolderBusyError` naming the folder and the holder's pid. Nested holds of one folder
  in one process are allowed (`smoe compare` holds a run folder while the Trainer holds it too).
- **JSON lines** (`metrics.jsonl`, `routing_trace.jsonl`): `read_jsonl` drops a torn last line (no newline at the
  end and not valid JSON: what a kill during an append leaves) with a warning; any other line that is not a JSON
  object with an integer "step" is a `DamagedFileError` naming the file and line.
- **JSON and YAML files** (`final.json`, `eval.json`, `analysis.json`, `config.yaml`): `read_json` / `read_yaml`
  raise `DamagedFileError` naming the file (and line) instead of a parser's traceback; so do all three readers
  for a file that is a folder, not UTF-8 or unreadable.
- **The metrics log**: `RunLog` appends to `metrics.jsonl` and TensorBoard (`NoLog` on ranks that write nothing).
- **Temporary files** of an interrupted atomic write (`.<name>.tmp-<pid>`) are removed by `remove_temp_files` when
  the next writer starts: `hold_folder` removes those in the folder itself, the Trainer those of a run folder's
  sub-folders (checkpoints/).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml

from smoe._files import atomic_write, read_text

LOCK_FILE = ".smoe.lock"
TEMP_GLOB = ".*.tmp-*"  # the temporary names of `smoe.workbench.train.checkpoint.atomic_write`

_held: dict[Path, int] = {}  # folders this process holds, with their lock file descriptors


class FolderBusyError(ValueError):
    """Another process is writing the folder."""


class DamagedFileError(ValueError):
    """A file of a run folder that cannot be parsed: the message names the file (and the line)."""


def make_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) if needed; ValueError when it is empty (''), a file or cannot be written."""
    if not str(folder).strip():
        raise ValueError(f"--out must name a folder, got {str(folder)!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder; choose a folder for the output (--out)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder {folder} ({e.strerror or e}); choose a writable --out") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"the folder {folder} is not writable; choose a writable --out")
    return folder


@contextlib.contextmanager
def hold_folder(folder: str | Path, create: bool = True) -> Iterator[Path]:
    """Hold the exclusive writer's lock of `folder` for the duration of the block. The folder is created if
    needed (create=True) or must be an existing run folder, with a config.yaml (create=False: to analyse or
    evaluate it)."""
    if not create and not (Path(folder) / "config.yaml").is_file():
        raise ValueError(f"{folder} is not a run folder of `smoe train` or `smoe compare` (no config.yaml)")
    folder = make_folder(folder)
    key = folder.resolve()
    if key in _held:  # this process already holds it (an outer block)
        yield folder
        return
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(f"cannot create the lock file {path} ({e.strerror or e}); choose a writable --out") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderBusyError(f"{folder} is being written by another smoe process (pid {holder}); wait for it to "
                              "finish or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd
    remove_temp_files(folder, recursive=False)  # a dead writer's; sub-folders may be other writers' (runs/<run>/)
    try:
        yield folder
    finally:
        del _held[key]
        os.close(fd)  # releases the lock; the file stays (removing it would race with a process opening it)


def remove_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left in `folder` (and its sub-folders when recursive);
    returns them.

    Only call it while holding the folder (`hold_folder`): a live writer's temporary file would go too.
    """
    folder = Path(folder)
    found = (folder.rglob if recursive else folder.glob)(TEMP_GLOB) if folder.is_dir() else []
    removed = [p for p in found if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def read_json(path: str | Path) -> dict | None:
    """The JSON object in `path`, or None when there is no such file; DamagedFileError when it does not parse."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        value = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise DamagedFileError(f"{path} is damaged ({_where(e)}); remove it or restore it") from None
    if not isinstance(value, dict):
        raise DamagedFileError(f"{path} is damaged (a JSON object expected, got {type(value).__name__})")
    return value


def read_yaml(path: str | Path) -> dict:
    """The YAML mapping in `path` (a run's config.yaml); DamagedFileError naming the file and line otherwise."""
    path = Path(path)
    try:
        value = yaml.safe_load(_read(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise DamagedFileError(f"{path} is not valid YAML ({line}{getattr(e, 'problem', None) or e})") from None
    if not isinstance(value, dict):
        raise DamagedFileError(f"{path} must hold a YAML mapping, got {type(value).__name__}")
    return value


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log ([] when there is no file), each a JSON object with an integer "step".

    A torn last line (no newline at the end and not valid JSON) is dropped with a warning; any other bad line is a
    DamagedFileError naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = _read(path).split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    records = [_record(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if torn.strip():
        try:
            records.append(_record(path, len(lines) + 1, torn))
        except DamagedFileError:
            warnings.warn(f"{path}: dropped a torn last line (line {len(lines) + 1}, {len(torn)} characters, no "
                          "newline): the writer was stopped during an append", stacklevel=2)
    return records


def _read(path: Path) -> str:
    """The text of a run folder's file; DamagedFileError when it is a folder, not UTF-8, or cannot be read."""
    try:
        return read_text(path)
    except ValueError as e:
        raise DamagedFileError(f"{e}; remove it or restore it") from None


def jsonl_bytes(records: list[dict]) -> bytes:
    """The bytes of `records` as JSON lines (for an atomic rewrite of a log)."""
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _record(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DamagedFileError(f"{path} line {number} is damaged ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) or isinstance(record["step"], bool):
        raise DamagedFileError(f"{path} line {number} is damaged (a JSON object with an integer \"step\" expected)")
    return record


def _where(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno} column {e.colno}: {e.msg}"
    return str(e)


class RunLog:
    """Metrics to `metrics.jsonl` (one record per line) and TensorBoard (`tb_dir`, default `folder/tb`).

    Starting at `start_step`, the log is cut back to what it held when that step's checkpoint was written: its
    first `records` records (the checkpoint's count), or without a count every record up to start_step. `count` is
    the number of records in the log."""

    def __init__(self, folder: Path, start_step: int, records: int | None = None, tb_dir: Path | None = None):
        self.path = folder / "metrics.jsonl"
        self.count = 0
        if self.path.exists():  # a torn last line is dropped with a warning
            kept = [r for r in read_jsonl(self.path) if r["step"] <= start_step][:records]
            atomic_write(self.path, jsonl_bytes(kept))
            self.count = len(kept)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(tb_dir or folder / "tb"), purge_step=start_step + 1)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.count += 1
        for name, value in values.items():
            self.tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        self.tb.close()


class NoLog:
    """RunLog's interface on ranks other than 0, which write no files (and outside training)."""

    count = 0

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass
