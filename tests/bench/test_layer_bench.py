import math

import pytest
import torch

from smoe.bench.layer import build, markdown_table, parse_router_spec


def test_router_spec_parsing():
    assert parse_router_spec("topk") == ("topk", {})
    assert parse_router_spec("ssr:p=1.0:cost=probs:plan_grad=False") == (
        "ssr", {"p": 1.0, "cost": "probs", "plan_grad": False})
    with pytest.raises(ValueError, match="expected name:option=value"):
        parse_router_spec("ssr:p")


@pytest.mark.parametrize("spec", ["xmoe", "vmoe:group_size=16", "sinkhorn", "ssr:p=1.0"])
def test_every_router_builds_in_the_benchmark(spec):
    size = {"N": 32, "T": 16, "d": 8, "h": 16, "k": 2}
    x = torch.randn(32, 8, requires_grad=True)
    for impl in ("smoe", "experts-only"):
        fn, module = build(impl, size, 4, spec, x)
        fn().sum().backward()
        assert module.training  # timed in train mode


def test_table_labels_rows_by_router_and_uses_the_first_as_reference():
    rec = lambda impl, router, t: {"impl": impl, "router": router, "E": 8, "median_s": t, "peak_mb": 1.0}  # noqa: E731
    table = markdown_table([rec("smoe", "topk", 1.0), rec("smoe", "ssr", 1.25), rec("dense", None, 0.5)])
    lines = table.splitlines()
    assert "smoe [topk] ÷ this" in lines[0]
    assert lines[2].startswith("| 8 | smoe [topk] | 1.000") and lines[3].startswith("| 8 | smoe [ssr] | 1.250")
    assert lines[3].endswith(f"| {1 / 1.25:.2f} |") and lines[4].endswith(f"| {1 / 0.5:.2f} |")
    assert math.isclose(float(lines[4].split("|")[-2]), 2.0)
