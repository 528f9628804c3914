import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def set_gate(router, weight):
    """Give a router's gate a hand-chosen (E, d) weight."""
    with torch.no_grad():
        router.gate.weight.copy_(torch.as_tensor(weight, dtype=router.gate.weight.dtype))
