import json

import pytest
import torch
from torch import nn

from smoe._files import atomic_write
from smoe.workbench.train.checkpoint import (
    CheckpointError,
    checkpoint_steps,
    decode_bytes,
    encode_bytes,
    load_checkpoint,
    load_module_tensors,
    load_optimizer_tensors,
    module_tensors,
    optimizer_tensors,
    save_checkpoint,
)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight
        self.norm = nn.LayerNorm(3)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_roundtrip_and_keep_last_n(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"note": step}, keep=2)
    assert checkpoint_steps(tmp_path) == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000003.json", "step-00000003.safetensors", "step-00000004.json", "step-00000004.safetensors"]
    tensors, state = load_checkpoint(tmp_path)
    assert state["step"] == 4 and state["note"] == 4 and torch.equal(tensors["w"], torch.full((2,), 4.0))
    assert load_checkpoint(tmp_path, step=3)[1]["note"] == 3


def test_missing_truncated_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 5, {"w": torch.arange(100.0)}, {}, keep=1)
    weights = tmp_path / "step-00000005.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path)
    weights.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # one flipped bit
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path)
    (tmp_path / "step-00000005.json").write_text('{"step": 5, "tensors_')
    with pytest.raises(CheckpointError, match=r"state .* is corrupt or truncated"):
        load_checkpoint(tmp_path)


def test_tied_weights_are_stored_once_and_restored_tied(tmp_path):
    model = Tied()
    tensors, aliases = module_tensors(model)
    assert aliases == {"head.weight": "emb.weight"} and "head.weight" not in tensors
    save_checkpoint(tmp_path, 1, tensors, {"aliases": aliases}, keep=1)
    loaded, state = load_checkpoint(tmp_path)
    fresh = Tied()
    load_module_tensors(fresh, loaded, state["aliases"])
    assert torch.equal(fresh.emb.weight, model.emb.weight) and fresh.head.weight is fresh.emb.weight
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_module_tensors(nn.Linear(3, 3), loaded, state["aliases"])


def test_optimizer_state_roundtrip_through_json_and_safetensors(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_tensors(opt)
    assert set(tensors) == {"0.step", "0.exp_avg", "0.exp_avg_sq", "1.step", "1.exp_avg", "1.exp_avg_sq"}
    save_checkpoint(tmp_path, 1, tensors, {"optimizer": meta}, keep=1)
    loaded, state = load_checkpoint(tmp_path)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_optimizer_tensors(opt2, loaded, json.loads(json.dumps(state["optimizer"])))
    assert opt2.param_groups[0]["lr"] == 0.1
    for p in model.parameters():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt2.state[p][name], opt.state[p][name])


def test_rng_state_text_roundtrip():
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    g2 = torch.Generator()
    g2.set_state(decode_bytes(encode_bytes(state)))
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=g2))
