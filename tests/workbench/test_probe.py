"""The probe set and the routing trace written during training."""

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from smoe import MoE
from smoe.workbench.measure.probe import (
    TRACE_FILE,
    Probe,
    layer_snapshot,
    probe_batches,
    read_trace,
    route_probe,
    snapshot_fluctuation,
    spread,
)
from smoe.workbench.measure.routing_metrics import routing_fluctuation
from smoe.workbench.run.config import resolve_config
from smoe.workbench.run.runner import train_run

DIGITS = ["model.d_model=16", "model.num_layers=2", "model.moe_every=1", "model.num_heads=2", "model.ffn_hidden=16",
          "train.batch_size=16", "data.probe_tokens=170", "train.eval_every=2", "train.checkpoint_every=2",
          "train.schedule_steps=6", "train.warmup_steps=1"]


def test_spread_picks_evenly_and_keeps_the_ends():
    assert spread(10, 4).tolist() == [0, 3, 6, 9]  # linspace(0, 9, 4) = 0, 3, 6, 9
    assert spread(7, 3).tolist() == [0, 3, 6]
    assert spread(3, 10).tolist() == [0, 1, 2]
    assert spread(5, 1).tolist() == [0]
    with pytest.raises(ValueError, match="count"):
        spread(5, 0)


def test_probe_batches_cut_rows_in_order():
    a, b = torch.arange(5), torch.arange(5) * 10
    batches = probe_batches(a, b, batch_size=2)
    assert [tuple(t.tolist() for t in batch) for batch in batches] == [([0, 1], [0, 10]), ([2, 3], [20, 30]),
                                                                       ([4], [40])]


def test_snapshot_fluctuation_equals_routing_fluctuation():
    """Expert choice gives tokens 0..E experts; padding is left out of the snapshot and of the fluctuation."""
    layer = MoE(8, 4, 16, router="expert_choice", k=2).eval()
    x = torch.randn(3, 7, 8)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 4:] = False
    before = layer(x, mask)
    with torch.no_grad():
        layer.router.gate.weight.add_(0.5 * torch.randn_like(layer.router.gate.weight))
    after = layer(x, mask)
    a, b = layer_snapshot(before.routing, [before.stats]), layer_snapshot(after.routing, [after.stats])
    assert len(a["top1"]) == len(a["experts"]) == 18  # real tokens only
    assert any(len(e) == 0 for e in a["experts"]) or any(len(e) > 2 for e in a["experts"])
    got = snapshot_fluctuation(a, b, 4)
    want = routing_fluctuation(before.routing, after.routing)
    assert (got.top1_changed, got.topk_changed) == pytest.approx((want.top1_changed, want.topk_changed))
    assert want.topk_changed > 0
    assert sum(a["load"]) == pytest.approx(1.0)


def test_route_probe_records_every_layer_and_restores_the_mode():
    from smoe.models import LM, LMConfig

    model = LM(LMConfig(vocab_size=11, max_len=6, d_model=8, num_layers=3, num_heads=2, ffn_hidden=8,
                        moe={"num_experts": 4}, moe_every=1)).train()
    ids = torch.randint(0, 11, (5, 6))
    probe = Probe(inputs=probe_batches(ids, batch_size=2))
    probed = route_probe(model, probe)
    assert model.training and len(probed.routings) == 3 and [len(s) for s in probed.stats] == [3, 3, 3]
    assert all(r.num_tokens == 30 for r in probed.routings) and probed.inputs[0].shape == (30, 8)
    assert torch.equal(probed.routings[1].token, model.eval()(ids).moe[1].routing.token)  # eval-mode routing


def test_trace_at_every_eval_resumes_exactly_and_leaves_training_alone(tmp_path):
    run = resolve_config("digits", steps=6, overrides=DIGITS)
    assert train_run(run, tmp_path / "a", progress=False).status == "done"
    trace = read_trace(tmp_path / "a")
    assert [r["step"] for r in trace] == [2, 4, 6] and "fluctuation" not in trace[0]
    for before, after in itertools.pairwise(trace):
        expected = [snapshot_fluctuation(b, a, 4) for b, a in zip(before["layers"], after["layers"])]
        assert after["fluctuation"]["top1"] == [f.top1_changed for f in expected]
        assert after["fluctuation"]["topk_set"] == [f.topk_changed for f in expected]
    assert len(trace[0]["layers"]) == 2 and len(trace[0]["layers"][0]["top1"]) == 170  # 10 images x 17 tokens

    # resumed from step 4 (the trace had a stale step-6 record from a run that went further): same records
    first = resolve_config("digits", steps=4, overrides=DIGITS)
    train_run(first, tmp_path / "b", progress=False)
    with open(tmp_path / "b" / TRACE_FILE, "a") as f:
        f.write(json.dumps({"step": 5, "layers": []}) + "\n")  # past the checkpoint: must be dropped
    train_run(run, tmp_path / "b", resume=True, progress=False)
    assert read_trace(tmp_path / "b") == trace

    # the trace never changes what is trained: same parameters without a probe set
    train_run(resolve_config("digits", steps=6, overrides=[*DIGITS, "data.probe_tokens=0"]), tmp_path / "c",
              progress=False)
    assert not (tmp_path / "c" / TRACE_FILE).exists()
    a = load_file(tmp_path / "a" / "checkpoints" / "step-00000006.safetensors")
    c = load_file(tmp_path / "c" / "checkpoints" / "step-00000006.safetensors")
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
