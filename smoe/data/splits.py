"""Fixed train/valid/test splits shared by every loader: by content, stratified, duplicates kept together.

A sample's split depends only on its content, the seed and the size of its stratum, never on file order,
platform or Python's hash seed: each stratum (label) orders its distinct samples by a keyed BLAKE2b hash of
their content and cuts that order into test, valid and train. Identical samples (the BBC corpus holds 100
duplicated articles) share a key, so one never sits in two splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from smoe._validate import check_float, check_int

SPLITS = ("train", "valid", "test")


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    """Both in [0, 1) and leaving a non-empty train share."""
    check_float("valid_fraction", valid_fraction, 0.0, 1.0)
    check_float("test_fraction", test_fraction, 0.0, 1.0)
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"valid_fraction + test_fraction must be < 1, got {valid_fraction} + {test_fraction}")


def assign_splits(keys: Sequence[bytes], strata: Sequence[int] | None, valid_fraction: float,
                  test_fraction: float, seed: int) -> list[str]:
    """One of "train" | "valid" | "test" per sample.

    keys: (n,) content of each sample (equal keys = duplicates, same split); strata: (n,) label per sample or
    None. Each stratum of m distinct keys gives round(test_fraction * m) keys to test, round(valid_fraction
    * m) to valid, the rest to train. A split asked for (fraction > 0) that ends up empty is a ValueError.
    """
    check_fractions(valid_fraction, test_fraction)
    check_int("seed", seed, 0)
    if strata is not None and len(strata) != len(keys):
        raise ValueError(f"strata must have one entry per key ({len(keys)}), got {len(strata)}")
    stratum_of: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        stratum_of.setdefault(key, 0 if strata is None else int(strata[i]))
    by_stratum: dict[int, list[bytes]] = {}
    for key, stratum in stratum_of.items():
        by_stratum.setdefault(stratum, []).append(key)

    salt = seed.to_bytes(8, "little")
    split_of: dict[bytes, str] = {}
    for members in by_stratum.values():
        members.sort(key=lambda k: hashlib.blake2b(k, digest_size=16, key=salt).digest())
        n_test = round(test_fraction * len(members))
        n_valid = round(valid_fraction * len(members))
        for j, key in enumerate(members):
            split_of[key] = "test" if j < n_test else "valid" if j < n_test + n_valid else "train"

    split = [split_of[key] for key in keys]
    for name, fraction in (("train", 1.0), ("valid", valid_fraction), ("test", test_fraction)):
        if fraction > 0 and name not in split:
            raise ValueError(f"the {name} split is empty: {len(stratum_of)} distinct samples are too few for "
                             f"valid_fraction={valid_fraction}, test_fraction={test_fraction}")
    return split


def split_index(split: Sequence[str], name: str) -> Tensor:
    """(m,) long positions of the samples in split `name`, in their original order."""
    return torch.tensor([i for i, s in enumerate(split) if s == name], dtype=torch.long)
