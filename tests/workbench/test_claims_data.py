"""The claims as committed data: the run store (--store, $SMOE_STORE, the user's cache), compact results that keep
every value a claim reads, `smoe claims table` round trip, and the committed docs/results.md table equal to the one
regenerated from docs/claims/ (no training)."""

import json
from pathlib import Path

import pytest

from smoe.cli import main
from smoe.workbench.claims.claim import CLAIMS, judge_claims
from smoe.workbench.claims.data import compact_results, store_dir, training_seconds, write_compact
from smoe.workbench.claims.table import CLAIMS_END, CLAIMS_START, judge_data, replace_region, table_markdown, update_doc
from smoe.workbench.results.columns import run_values, strongest_levels

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_is_the_argument_else_the_environment_else_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SMOE_STORE", str(tmp_path / "env"))
    assert store_dir(tmp_path / "arg") == tmp_path / "arg"
    assert store_dir() == tmp_path / "env"
    monkeypatch.delenv("SMOE_STORE")
    monkeypatch.setenv("SMOE_CACHE", str(tmp_path / "cache"))
    assert store_dir() == tmp_path / "cache" / "claims"
    monkeypatch.delenv("SMOE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_dir("") == tmp_path / "home" / ".cache" / "smoe" / "claims"


def full_run(label, seed, ppl, rank):
    """A run record with everything a comparison writes, big parts included (curve, latent map, matrices)."""
    return {"router": "topk", "label": label, "seed": seed, "status": "done", "steps": 300, "train_time_s": 60.0 + seed,
            "options": {}, "run_dir": f"runs/{label}-s{seed}", "error": None, "tokens_per_s": 1e4, "eval_sd": 0.5,
            "final": {"metric": ppl, "valid_metric": ppl + 1, "valid_loss": 5.0},
            "curve": [{"step": s, "valid_loss": 6.0 - s / 100, "metric": ppl + 10} for s in range(0, 300, 10)],
            "routing": {"layers": [{"layer": 0, "load": [0.3, 0.7], "load_cv": 0.4, "effective_rank_input": rank,
                                    "specialization_nmi": {"topic": 0.1}}],
                        "fluctuation": [{"step": 200, "top1": [0.2], "topk_set": [0.3]},
                                        {"step": 300, "top1": [0.1 + seed / 100], "topk_set": [0.2]}],
                        "coactivation": [{"layers": [0, 1], "nmi": 0.05, "matrix": [[0.5, 0.5], [0.5, 0.5]]}],
                        "sensitivity": [{"layer": 0, "clean": ppl, "dropped": ppl + 3}]},
            "robustness": [{"corruption": "substitute", "level": 5, "severity": 0.4, "metric": ppl + 50}],
            "latent": {"points": [[0.1, 0.2]] * 500, "expert": [0] * 500, "label": [1] * 500}}


def xmoe_results():
    """topk and xmoe over 3 seeds: xmoe's effective rank 2 higher in every seed (resolved), its last fluctuation
    the same (not resolved); tuned: topk at lr 3e-3, xmoe at 1e-3."""
    runs = []
    for seed, (ppl, rank) in enumerate([(280.0, 20.0), (292.0, 18.0), (301.0, 21.0)]):
        runs += [full_run("topk", seed, ppl, rank), full_run("xmoe", seed, ppl - 9.5 - seed / 10, rank + 2 + seed / 10)]
    tuning = {"params": {"train.lr": ["1e-3", "3e-3"]}, "seeds": [1000],
              "picks": {"topk": {"train.lr": "3e-3"}, "xmoe": {"train.lr": "1e-3"}},
              "runs": [{"label": "topk", "values": {"train.lr": "1e-3"}, "seed": 1000, "train_time_s": 30.0}]}
    return {"schema": 2, "task": "lm-bbc", "preset": "tiny", "runs": runs, "entries": ["topk", "xmoe"],
            "baseline": "topk", "metric": {"name": "perplexity", "higher_is_better": False}, "tuning": tuning}


def test_compact_results_keep_every_value_a_claim_reads(tmp_path):
    full = xmoe_results()
    path = write_compact(full, tmp_path / "xmoe")
    compact = json.loads(path.read_text())
    assert len(path.read_text()) < len(json.dumps(full)) / 3
    for before, after in zip(full["runs"], compact["runs"]):
        assert "curve" not in after and "latent" not in after and "matrix" not in after["routing"]["coactivation"][0]
        levels = strongest_levels(full["runs"])
        assert run_values(after, levels) == run_values(before, levels)
    assert compact["tuning"] == full["tuning"]
    claims = [CLAIMS.get(name) for name in ("xmoe-collapse", "xmoe-consistency")]
    assert [j.to_dict() for j in judge_claims(claims, {"xmoe": compact})] == \
        [j.to_dict() for j in judge_claims(claims, {"xmoe": full})]
    assert compact_results(path) == compact  # compacting twice changes nothing
    assert training_seconds(full) == 6 * 60 + (0 + 1 + 2) * 2 + 30


def doc_with_markers(path, inside="old table"):
    path.write_text(f"# Results\n\nbefore\n\n{CLAIMS_START}\n{inside}\n{CLAIMS_END}\n\nafter\n")
    return path


def test_claims_table_regenerates_the_region_between_the_markers(tmp_path, capsys):
    data = tmp_path / "claims"
    write_compact(xmoe_results(), data / "xmoe")
    doc = doc_with_markers(tmp_path / "results.md")
    assert main(["claims", "table", "--data", str(data), "--doc", str(doc), "--check"]) == 1
    assert "differs from the one regenerated" in capsys.readouterr().out and "old table" in doc.read_text()
    assert main(["claims", "table", "--data", str(data), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nbefore\n\n" + CLAIMS_START) and text.endswith(CLAIMS_END + "\n\nafter\n")
    assert "2 of 24 registered claims judged, 1 supported, 1 not resolved" in text
    assert "| xmoe-collapse | Chi et al. 2022 (X-MoE) | xmoe - topk on routing.effective_rank_input, claimed higher " \
           "| tiny, 300 steps | train.lr=1e-3 / train.lr=3e-3 |" in text
    assert "| **supported** | " in text and "| claims (2, holm) |" in text  # one family of the claims judged
    assert "| 3 | 6.6 min |\n" in text  # seeds, training time of the comparison (tuning included)
    assert "Not yet run into docs/claims (`smoe claims run NAME` runs one): adam-clean," in text
    assert main(["claims", "table", "--data", str(data), "--doc", str(doc), "--check"]) == 0
    assert update_doc(doc, data) is False  # regenerating the same data changes nothing


def test_claims_table_errors(tmp_path, capsys):
    doc = tmp_path / "results.md"
    doc.write_text(f"{CLAIMS_END}\n{CLAIMS_START}\n")
    with pytest.raises(ValueError, match="doc must hold <!-- claims-table:start --> once, followed by"):
        replace_region(doc.read_text(), "x")
    assert main(["claims", "table", "--data", str(tmp_path), "--doc", str(tmp_path / "nope.md")]) == 2
    assert "doc must be an existing Markdown file" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"data must be a folder of <comparison>/results\.json"):
        table_markdown(tmp_path / "nope")


def test_the_committed_claims_table_is_the_one_regenerated_from_the_committed_data():
    """docs/results.md's claims table equals `smoe claims table`'s output from docs/claims/ (no training)."""
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert replace_region(text, table_markdown(ROOT / "docs" / "claims")) == text, \
        "docs/results.md's claims table is stale: run `smoe claims table`"
    judgments, results = judge_data(ROOT / "docs" / "claims")
    assert set(results) <= {CLAIMS.get(n).comparison for n in CLAIMS.names()}  # no data of an unknown comparison
    assert all(j.verdict != "missing" for j in judgments)
