"""Argument checks shared by both wings: each raises a ValueError that names the argument and what it accepts."""

from __future__ import annotations

import contextlib
import math
import os

import torch


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def check_float(name: str, value: object, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, finite: bool = True) -> None:
    """A real number within the bounds; NaN and +-inf are refused unless finite=False (then NaN still is)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        float(value)
    except OverflowError:  # an int no float holds
        raise ValueError(f"{name} must be a finite number, got an int of {value.bit_length()} bits") from None
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_memory(what: str, num_bytes: int) -> None:
    """Refuse, before allocating, `num_bytes` of tensors that exceed the memory of torch's default device: the
    host's available RAM on CPU (past it the process would be killed, not warned), the GPU's on CUDA; other
    devices (meta) are not checked."""
    device = torch.get_default_device()
    if device.type == "cpu":
        total = _available_ram()
    elif device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        return
    if num_bytes > total:
        raise ValueError(f"{what} need {num_bytes / 2**30:,.1f} GiB, more than the {total / 2**30:,.1f} GiB of "
                         f"memory available on {device.type}")


def _available_ram() -> int:
    """Bytes of RAM available to a new allocation (Linux MemAvailable; else the physical RAM)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
