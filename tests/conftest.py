import pytest
import torch
from hypothesis import settings


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def set_gate(router, weight):
    """Give a router's gate a hand-chosen (E, d) weight."""
    with torch.no_grad():
        router.gate.weight.copy_(torch.as_tensor(weight, dtype=router.gate.weight.dtype))


# Hypothesis: a fixed seed (the same examples on every machine and run) and no example database in the repository
settings.register_profile("smoe", database=None, derandomize=True, deadline=None)
settings.load_profile("smoe")
