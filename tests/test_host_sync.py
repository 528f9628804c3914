"""The hot path never waits for the device: one forward + backward of the layer (grouped backend) dispatches no
operator that reads device data on the host or whose output shape depends on the data (issue 17).

The operators are recorded with a TorchDispatchMode on the CPU (`smoe.host_sync.OpRecorder`), which
sees what a GPU would be asked to run, backward included.
"""

import pytest
import torch

from benchmarks.count_ops import ROUTERS, SETTINGS, count
from smoe.host_sync import OpRecorder


def test_the_recorder_flags_every_kind_of_sync():
    x = torch.randn(6)
    counts = torch.tensor([1, 2])
    with OpRecorder() as rec:
        int(x.sum())
        x[x > 0]
        torch.nonzero(x)
        torch.bincount(counts)
        torch.unique(counts)
        counts.repeat_interleave(counts)
        torch.tensor([3])
        torch.arange(2).repeat_interleave(counts, output_size=3)  # sized: fine
        torch.zeros(2, dtype=torch.long).scatter_add_(0, counts - 1, counts)  # fixed size: fine
    kinds = [kind for _, kind in rec.syncs]
    assert kinds == ["host read", "data-dependent shape", "data-dependent shape", "data-dependent shape",
                     "data-dependent shape", "data-dependent shape", "tensor from host data"]
    assert rec.total > len(kinds)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("router", list(ROUTERS))
def test_forward_and_backward_never_wait_for_the_device(router, setting):
    rec = count(router, setting)
    assert rec.syncs == []
    assert rec.ops["aten._grouped_mm"] == 6  # the experts ran: two GEMMs forward, four backward


@pytest.mark.parametrize("router", ["topk", "vmoe"])
def test_bfloat16_too(router):
    rec = count(router, "capacity 1.25", dtype=torch.bfloat16)
    assert rec.syncs == []


@pytest.mark.parametrize("setting", SETTINGS)
def test_shared_experts_and_biases_stay_on_the_device(setting):
    rec = count("topk", setting, num_shared_experts=1, shared_gate=True, bias=True)
    assert rec.syncs == [] and rec.ops["aten._grouped_mm"] == 12


@pytest.mark.parametrize("router, options", [("topk", {"load_balance_counts": "first"}),
                                             ("xmoe", {"capacity": "release"}),
                                             ("expert_choice", {"z_loss_coef": 0.01})])
def test_options_that_count_or_drop_pairs_too(router, options):
    rec = count(router, "dropless, masked", **options)
    assert rec.syncs == []
