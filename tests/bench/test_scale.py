"""The scale study: its noise figures on hand-made results, and the script end to end on a tiny setting."""

import json
import math

import pytest

from smoe.bench.scale import main, scale_rows, table
from smoe.workbench.measure import power
from smoe.workbench.measure.rule import Rule


def run(label, seed, perplexity, train_time=90.0):
    return {"router": label, "label": label, "seed": seed, "status": "done", "steps": 300,
            "train_time_s": train_time, "final": {"metric": perplexity}}


def test_scale_rows_on_hand_made_results():
    topk = [280.0, 290.0, 300.0, 310.0]
    xmoe = [t - 5 + d for t, d in zip(topk, (1.0, -1.0, 0.5, -0.5))]  # differences -4, -6, -4.5, -5.5
    noaux = [t + 1 for t in topk]
    runs = [run(label, s, v[s]) for s in range(4) for label, v in (("topk", topk), ("xmoe", xmoe),
                                                                   ("topk-noaux", noaux))]
    runs.append({"router": "xmoe", "label": "xmoe", "seed": 4, "status": "failed", "error": "boom"})
    results = {"schema": 1, "task": "lm-bbc", "preset": "tiny", "runs": runs,
               "metric": {"name": "perplexity", "higher_is_better": False}}
    rows = {r["pair"]: r for r in scale_rows(results)}
    assert set(rows) == {"xmoe - topk", "topk-noaux - topk"}
    x = rows["xmoe - topk"]
    sd = math.sqrt(((1 ** 2) + 1 ** 2 + 0.5 ** 2 + 0.5 ** 2) / 3)
    assert x["seeds"] == 4 and x["metric"] == 295.0 and x["difference"] == pytest.approx(-5.0)
    assert x["paired_sd"] == pytest.approx(sd) and x["seed_sd"] == pytest.approx(12.9099, abs=1e-4)
    # the rule of the comparison: Bonferroni over its 2 entries, the t-test at 3 seeds
    assert x["mdd3_percent"] == pytest.approx(100 * power.mdd("t", 3, 0.025) * sd / 295.0)
    rule = Rule()
    assert x["seeds_for_target"] == power.seeds_needed(0.02 * 295.0 / sd, 0.025, lambda n: rule.test_for(n, 2))
    assert x["seeds_for_target"] == 3 and x["train_minutes"] == 1.5
    assert x["steps"] == [300]
    n = rows["topk-noaux - topk"]  # a constant difference: no noise, but 7 seeds before 2 / 2^n reaches 0.025
    assert n["paired_sd"] == 0 and n["mdd3_percent"] == 0 and n["seeds_for_target"] == 7
    text = table(list(rows.values()))
    assert "| lm-bbc | tiny (300) | xmoe - topk | 4 | 295 |" in text and "MDD at 3 seeds (% of metric)" in text
    assert x["eval_sd"] is None and "| 0.913 | n/a |" in text  # paired sd, then no evaluation noise: no folder


@pytest.mark.slow
def test_the_script_end_to_end(tmp_path, capsys):
    shrink = ["model.d_model=16", "model.num_heads=2", "model.ffn_hidden=16", "data.probe_tokens=340"]
    argv = ["--tasks", "digits", "--presets", "tiny", "--seeds", "2", "--steps", "12", "--out", str(tmp_path),
            "--json", str(tmp_path / "rows.json"), "--no-progress", *(x for o in shrink for x in ("--set", o))]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["pair"] for r in rows] == ["xmoe - topk", "topk-noaux - topk"]
    assert all(r["seeds"] == 2 and r["steps"] == [12] and r["train_minutes"] > 0 for r in rows)
    # the evaluation noise of each seed's difference, from the checkpoints scored again: a bootstrap of the test images
    assert all(r["eval_sd"] > 0 for r in rows)
    assert "| digits | tiny (12) | xmoe - topk | 2 |" in capsys.readouterr().out
