"""`smoe check-router` (`smoe.conformance`): every built-in router and layer-level method passes every check, and
a deliberately broken router fails the check that names its fault (no init rule, a host read in forward, a wrong
output shape, masked tokens routed)."""

import dataclasses

import pytest
import torch
from torch import nn

from smoe.cli import main
from smoe.conformance import CHECKS, check_router, failures, routing_problems
from smoe.layer import available_layers
from smoe.registry import forget_plugin, registering_for
from smoe.routing import Router, Routing, available_routers
from smoe.routing.base import gate_logits
from smoe.routing.registry import ROUTERS
from smoe.routing.topk import TopKRouter

BUILT_IN = available_routers() + available_layers()
FAST = [c for c in CHECKS if c != "compile"]


class NoInitRule(Router):
    """A gate of its own with no reset_parameters(generators)."""

    def __init__(self, d_model, num_experts, **options):
        super().__init__(d_model, num_experts, **options)
        self.weight = nn.Parameter(0.1 * torch.randn(num_experts, d_model))

    def forward(self, x, ctx):
        probs = torch.softmax(gate_logits(x, self.weight), dim=-1)
        weight, index = probs.topk(self.options.k, dim=-1)
        return Routing.from_token_choice(index, weight, probs, ctx)


class ReadsTheHost(TopKRouter):
    def forward(self, x, ctx):
        routing = super().forward(x, ctx)
        if routing.probs.sum().item() > x.shape[0] + 1:
            raise AssertionError("probabilities sum above 1")
        return routing


class WrongShape(TopKRouter):
    def forward(self, x, ctx):
        routing = super().forward(x, ctx)
        routing.probs = routing.probs[:, 1:]  # (N, E - 1)
        return routing


class IgnoresTheMask(TopKRouter):
    def forward(self, x, ctx):
        return super().forward(x, dataclasses.replace(ctx, mask=None))


@pytest.fixture
def broken():
    """The broken routers, registered for the test as if a plugin had."""
    with registering_for("tests/broken"):
        for name, cls in [("no_init_rule", NoInitRule), ("reads_the_host", ReadsTheHost),
                          ("wrong_shape", WrongShape), ("ignores_the_mask", IgnoresTheMask)]:
            ROUTERS.add(name, cls)
    yield
    forget_plugin("tests/broken")


def failed(results) -> dict[str, str]:
    return {r.name: r.reason for r in failures(results)}


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_router_conforms(name):
    results = check_router(name, checks=FAST)
    assert [r.name for r in results] == FAST and failed(results) == {}
    assert all(r.status == "pass" for r in results), [r.line() for r in results]


def test_topk_compiles():
    (result,) = check_router("topk", checks=["compile"])
    assert (result.status, result.reason) == ("pass", "one graph in bfloat16, training, matches eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_router_compiles(name):
    (result,) = check_router(name, checks=["compile"])
    assert result.status == "pass", result.reason


def test_declared_exceptions_are_said():
    results = {r.name: r for r in check_router("sinkhorn", checks=["host-sync"])}
    assert results["host-sync"].status == "pass" and "training declares one: Sinkhorn's stopping test" in \
        results["host-sync"].reason
    assert check_router("hash", checks=["builds"])[0].reason.startswith("HashRouter with {'vocab_size': 64}")


def test_no_init_rule(broken):
    results = check_router("no_init_rule", checks=FAST)
    assert failed(results) == {"init-rule": "init_keyed: module 'router' (NoInitRule) has parameters but no init rule; "
                                            "give it reset_parameters(self, generators) (see smoe.init)"}
    assert {r.name: r.status for r in results}["keyed-init"] == "skip"


def test_a_host_read_in_forward(broken):
    reasons = failed(check_router("reads_the_host"))
    assert set(reasons) == {"host-sync", "compile"}
    assert reasons["host-sync"].startswith("2 operators wait for the device: aten._local_scalar_dense.default (host "
                                           "read, training), aten._local_scalar_dense.default (host read, eval)")


def test_a_wrong_output_shape(broken):
    reasons = failed(check_router("wrong_shape", checks=FAST))
    assert set(reasons) == {"shapes-dtypes"}
    assert reasons["shapes-dtypes"] == "torch.float32: probs must have shape (N, E) = (16, 4), got (16, 3)"


def test_masked_tokens_routed(broken):
    reasons = failed(check_router("ignores_the_mask", checks=FAST))
    assert set(reasons) == {"mask"}
    assert reasons["mask"].startswith("masked tokens [5, 6, 7] are routed")


def test_routing_problems_name_each_field():
    n, e = 3, 2
    good = Routing(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.ones(3), torch.full((3, 2), 0.5), e)
    assert routing_problems(good, n, e, torch.bfloat16) == []
    assert routing_problems(good, n, e, torch.float64) == ["probs must be torch.float64 for torch.float64 input "
                                                           "(smoe.routing.base.router_dtype), got torch.float32"]
    bad = Routing(torch.arange(3).float(), torch.zeros(2, dtype=torch.long), torch.ones(3), torch.ones(3, 2), 3,
                  aux={"x": torch.ones(2)})
    assert routing_problems(bad, n, e, torch.float32) == [
        "pairs.expert must have the shape of pairs.token (3,), got (2,)", "pairs.token must be long, got torch.float32",
        "num_experts must be 2, got 3", "aux['x'] must be a 0-dim floating-point tensor, got tensor([1., 1.])"]
    assert routing_problems("nope", n, e, torch.float32) == ["forward must return a smoe.Routing, got str"]


def test_the_command_line(broken, capsys):
    assert main(["check-router", "topk", "ignores_the_mask", "--checks", "builds,mask"]) == 1
    out = capsys.readouterr().out
    assert "topk: conforms\n  pass  builds " in out and "ignores_the_mask: FAILED mask\n" in out
    assert "  fail  mask           masked tokens [5, 6, 7] are routed" in out and "1 of 2 conform" in out
    assert main(["check-router", "hash:vocab_size=10", "--checks", "builds"]) == 0
    assert "HashRouter with {'vocab_size': 10}" in capsys.readouterr().out
    assert main(["check-router", "nope"]) == 2
    assert "unknown router 'nope'" in capsys.readouterr().err
    assert main(["check-router", "topk", "--checks", "speed"]) == 2
    assert "checks must be among builds" in capsys.readouterr().err
