import pytest
import torch

from smoe.layer import MoEOutput, MoEStats
from smoe.models import StackConfig, aux_losses, moe_positions
from smoe.routing import Routing


def test_moe_positions_follow_vmoe_placement():
    assert moe_positions(4, every=1) == [0, 1, 2, 3]
    assert moe_positions(12, every=2) == [1, 3, 5, 7, 9, 11]  # V-MoE B/16 "Every 2"
    assert moe_positions(8, every=2, last=2) == [5, 7]  # V-MoE S/32 "Last 2"
    assert moe_positions(6, every=3) == [2, 5]
    assert moe_positions(4, every=0) == []  # dense
    assert moe_positions(4, every=2, last=9) == [1, 3]


@pytest.mark.parametrize("kwargs, match", [
    ({"every": -1}, "moe_every must be >= 0"),
    ({"every": 2, "last": 0}, "moe_last must be >= 1"),
])
def test_moe_positions_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        moe_positions(4, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"moe": {"num_experts": 4, "router": "nope"}}, "unknown router 'nope'"),
    ({"rule": "nope"}, "rule must be one of"),
    ({"dropout": 1.5}, "dropout must be <= 1"),
    ({"moe": {"num_experts": 0}}, "num_experts must be >= 1"),
    ({"moe": {"num_experts": 4, "capacity_factor": 0.0}}, "capacity_factor must be > 0"),
    ({"moe": {"num_experts": 4, "router_options": "noise"}}, r"\(router 'topk'\) must be a TopKOptions"),
    ({"moe": {"num_experts": 4, "k": 2}}, r"moe: unknown key\(s\) \['k'\]"),
    ({"moe": {"num_experts": 4, "d_model": 64}}, "moe.d_model=64 differs from the model's d_model=128"),
    ({"moe": 4}, "moe must be a MoEConfig or a mapping"),
    ({"moe_every": -2}, "moe_every"),
])
def test_stack_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StackConfig(**kwargs)


def _moe_output(aux: dict) -> MoEOutput:
    routing = Routing(token=torch.zeros(0, dtype=torch.long), expert=torch.zeros(0, dtype=torch.long),
                      weight=torch.zeros(0), probs=torch.zeros(0, 2), num_experts=2, aux=aux)
    stats = MoEStats(counts=torch.zeros(2), routed=torch.zeros(2), dropped_fraction=torch.zeros(()), capacity=None)
    return MoEOutput(y=torch.zeros(0), aux_loss=sum(aux.values(), torch.zeros(())), routing=routing, stats=stats)


def test_aux_losses_sum_each_name_over_layers():
    layers = [_moe_output({"load_balance": torch.tensor(0.5), "z_loss": torch.tensor(0.25)}),
              _moe_output({"load_balance": torch.tensor(1.5)})]
    total = aux_losses(layers)
    assert set(total) == {"load_balance", "z_loss"}
    assert float(total["load_balance"]) == 2.0 and float(total["z_loss"]) == 0.25
    assert aux_losses([]) == {}


def test_a_huge_num_layers_is_refused_before_listing_the_layers():
    with pytest.raises(ValueError, match="num_layers must be <= 1024, got 2147483648"):
        StackConfig(num_layers=2**31)  # validating it once built a list of 2**31 block positions
