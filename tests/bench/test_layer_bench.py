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
    assert lines[2].startswith("| 8 | smoe [topk] | 1000 |") and lines[3].startswith("| 8 | smoe [ssr] | 1250 |")
    assert lines[3].endswith(f"| {1 / 1.25:.2f} |") and lines[4].endswith(f"| {1 / 0.5:.2f} |")
    assert math.isclose(float(lines[4].split("|")[-2]), 2.0)


def test_rows_are_timed_in_interleaved_rounds_and_a_failing_row_does_not_stop_the_others():
    from smoe.bench.layer import measure_times

    size = {"N": 32, "T": 16, "d": 8, "h": 16, "k": 2}
    rows = [("smoe", "topk"), ("smoe", "hash"), ("dense", "topk")]
    records = measure_times(rows, size, 4, repeats=3, device="cpu", dtype="float32")
    assert [r["impl"] for r in records] == ["smoe", "smoe", "dense"]
    assert [r["router"] for r in records] == ["topk", "hash", None]
    assert "vocab_size" in records[1]["error"] and "median_s" not in records[1]
    for r in (records[0], records[2]):
        assert len(r["runs_s"]) == 3 and r["median_s"] == sorted(r["runs_s"])[1] > 0


def test_main_writes_time_and_memory_of_every_row(tmp_path, capsys):
    import json

    from smoe.bench.layer import main

    out = tmp_path / "bench.json"
    assert main(["--quick", "--experts", "4", "--impls", "smoe,dense", "--repeats", "2", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["impl"], r["E"]) for r in records] == [("smoe", 4), ("dense", 4)]
    assert all(r["median_s"] > 0 and r["peak_mb"] >= 0 and len(r["runs_s"]) == 2 for r in records)
    assert "| 4 | smoe [topk] |" in capsys.readouterr().out


def test_a_spec_may_carry_the_layers_own_arguments_and_a_wrong_one_is_named(capsys):
    from smoe.bench.layer import main

    size = {"N": 32, "T": 16, "d": 8, "h": 16, "k": 2}
    _, moe = build("smoe", size, 4, "topk:backend=grouped:capacity_factor=1.25", torch.randn(32, 8))
    assert moe.experts.backend == "grouped" and moe.dispatcher.capacity_factor == 1.25
    with pytest.raises(SystemExit, match=r"unknown option\(s\) \['backnd'\] for 'topk'; valid: .*backend"):
        main(["--quick", "--router", "topk:backnd=grouped"])
