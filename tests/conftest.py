import sys

import pytest
import torch
from hypothesis import settings

from smoe import plugins
from smoe.registry import forget_plugin


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

COSINE = '''"""A cosine router with a learnable temperature, written outside smoe."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smoe.init import global_rng
from smoe.routing import Router, Routing, register_router
from smoe.routing.base import RouterOptions, router_dtype


@dataclass
class CosineOptions(RouterOptions):
    k: int = 2
    temperature: float = 0.1


@register_router("cosine")
class CosineRouter(Router):
    """Cosine routing with a learnable temperature (a user's router)."""

    Options = CosineOptions

    def __init__(self, d_model, num_experts, **options):
        super().__init__(d_model, num_experts, **options)
        self.experts = nn.Parameter(torch.empty(num_experts, d_model))
        self.log_tau = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generators=global_rng):
        nn.init.normal_(self.experts, std=self.d_model ** -0.5, generator=generators("experts"))
        self.log_tau.fill_(math.log(self.options.temperature))

    def forward(self, x, ctx):
        dtype = router_dtype(x)
        cos = F.normalize(x.to(dtype), dim=-1) @ F.normalize(self.experts.to(dtype), dim=-1).t()
        probs = torch.softmax(cos / self.log_tau.exp().to(dtype), dim=-1)
        weight, index = probs.topk(self.options.k, dim=-1)
        return Routing.from_token_choice(index, weight / weight.sum(-1, keepdim=True), probs, ctx)
'''


@pytest.fixture
def fresh_plugins():
    """Plugins a test imports are forgotten after it: what they registered, their records and their modules."""
    before = set(plugins._LOADED)
    yield
    for spec in set(plugins._LOADED) - before:
        forget_plugin(spec)
        sys.modules.pop(plugins._LOADED.pop(spec).module, None)


@pytest.fixture
def cosine_file(tmp_path, fresh_plugins):
    """A 40-line cosine router with a learnable temperature in a file outside the repository (tmp/mine/cosine.py)."""
    path = tmp_path / "mine" / "cosine.py"
    path.parent.mkdir()
    path.write_text(COSINE)
    return path
