"""Checkpoints: tensors in a safetensors file, everything else in a JSON file, both written atomically.

A checkpoint of step s is `step-<s>.safetensors` + `step-<s>.json` in one folder. Each file is written to a
temporary name, fsynced and renamed; the JSON is written last and records the SHA-256 of the tensor file and of
its own content (`state_sha256`, over the canonical JSON of every other field), so a checkpoint exists once its
JSON does, and a truncated or altered file of either kind is detected (an edited step, RNG state, optimizer state
or config is a `CheckpointError`, never a silent change). Only the last `keep` checkpoints are kept.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from smoe._files import atomic_write

_PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated, or from another configuration."""


def checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints (those with a JSON file) in `folder`, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    steps = []
    for p in folder.glob(f"{_PREFIX}*.json"):
        with contextlib.suppress(ValueError):
            steps.append(int(p.stem[len(_PREFIX):]))
    return sorted(steps)


def checkpoint_path(folder: Path, step: int) -> Path:
    """The JSON file of the checkpoint of `step` in `folder` (the checkpoint's commit point)."""
    return Path(folder) / f"{_PREFIX}{step:08d}.json"


def state_digest(state: dict) -> str:
    """SHA-256 of the canonical JSON of a checkpoint state (sorted keys, no spaces) without `state_sha256`."""
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_checkpoint(folder: Path, step: int, tensors: Mapping[str, Tensor], state: dict, keep: int) -> Path:
    """Write the checkpoint of `step` and delete all but the last `keep`. Returns the JSON path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{_PREFIX}{step:08d}"
    blob = save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    state = {**state, "step": step, "tensors_file": f"{name}.safetensors",
             "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    state = json.loads(json.dumps(state))  # the digest is of what a reader gets back (int keys become strings)
    state["state_sha256"] = state_digest(state)
    atomic_write(folder / f"{name}.safetensors", blob)
    atomic_write(checkpoint_path(folder, step), json.dumps(state, indent=1).encode())
    for old in checkpoint_steps(folder)[:-keep]:
        old_name = f"{_PREFIX}{old:08d}"
        (folder / f"{old_name}.json").unlink(missing_ok=True)
        (folder / f"{old_name}.safetensors").unlink(missing_ok=True)
    return checkpoint_path(folder, step)


def load_checkpoint(folder: Path, step: int | None = None) -> tuple[dict[str, Tensor], dict]:
    """(tensors, state) of checkpoint `step` (default: the latest) in `folder`; CheckpointError if unusable.

    The state's checksum, its step (that of the file name) and the tensor file's checksum are checked.
    """
    folder = Path(folder)
    steps = checkpoint_steps(folder)
    if not steps:
        raise CheckpointError(f"no checkpoint in {folder}")
    step = steps[-1] if step is None else step
    path = checkpoint_path(folder, step)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint state {path} is corrupt or truncated ({e})") from e
    if not isinstance(state, dict) or not isinstance(state.get("state_sha256"), str):
        raise CheckpointError(f"checkpoint state {path} is corrupt or truncated (no state_sha256 checksum)")
    if state_digest(state) != state["state_sha256"]:
        raise CheckpointError(f"checkpoint state {path} is corrupt or was edited (checksum mismatch)")
    tensor_name = f"{_PREFIX}{step:08d}.safetensors"
    if state.get("step") != step or state.get("tensors_file") != tensor_name:
        raise CheckpointError(f"checkpoint state {path} does not describe step {step} ({tensor_name}): step "
                              f"{state.get('step')!r}, tensors_file {state.get('tensors_file')!r}")
    tensor_path = folder / tensor_name
    try:
        blob = tensor_path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint tensors {tensor_path} cannot be read ({e})") from e
    if hashlib.sha256(blob).hexdigest() != state.get("tensors_sha256"):
        raise CheckpointError(f"checkpoint tensors {tensor_path} are corrupt or truncated (checksum mismatch)")
    try:
        tensors = load_tensors(blob)
    except SafetensorError as e:  # pragma: no cover - the checksum catches damage first
        raise CheckpointError(f"checkpoint tensors {tensor_path} are corrupt ({e})") from e
    return tensors, state


@contextlib.contextmanager
def reading_state(path: Path):
    """Inside the block, a missing key, a wrong type or a bad value met while applying the checkpoint state of
    `path` becomes a CheckpointError naming the file (not a KeyError or TypeError from deep inside)."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"checkpoint state {path} has a missing or malformed field "
                              f"({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------- what goes into a checkpoint

def module_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict without duplicates (tied weights): (tensors, aliases {dropped name: kept name})."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            tensors[name] = t
            seen[key] = name
    return tensors, aliases


def load_module_tensors(model: nn.Module, tensors: Mapping[str, Tensor], aliases: Mapping[str, str]) -> None:
    """Inverse of `module_tensors`; a missing or unexpected name is a CheckpointError."""
    state = dict(tensors)
    for name, source in aliases.items():
        state[name] = tensors[source]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint does not fit the model: {e}") from e


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """The optimizer's state: its tensors as {"<param>.<name>": tensor} and the rest (JSON-able)."""
    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["plain"].items():
        state.setdefault(int(index), {}).update(entry)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint optimizer state does not fit the model: {e}") from e


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int | None:
    """The most steps any parameter's optimizer state counts (Adam's "step"); None without such state."""
    steps = [int(entry["step"]) for entry in optimizer.state.values() if "step" in entry]
    return max(steps) if steps else None


def encode_bytes(t: Tensor) -> str:
    """A uint8 tensor (an RNG state) as base64 text for JSON."""
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def decode_bytes(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
