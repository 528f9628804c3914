import pytest
import torch

from smoe.integrations.embed import KINDS, embed_all, embeddings_from, last_token_index, smoe_lm_embedder
from smoe.models import LM, LMConfig
from smoe.workbench.run.embed_suite import (
    TASKS,
    SuiteData,
    classification_accuracy,
    clustering_v_measure,
    markdown_table,
    pair_average_precision,
    run_suite,
)


def tiny_lm():
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=40, max_len=12, d_model=16, num_layers=2, num_heads=2, ffn_hidden=32,
                       moe={"num_experts": 4, "router_options": {"k": 2}})).eval()


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert last_token_index(mask).tolist() == [2, 3, 3]


def test_embeddings_from_picks_the_last_real_token_and_zscores():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    logits = [torch.ones(2, 3, 4), 2 * torch.ones(2, 3, 4)]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    emb = embeddings_from(hidden, logits, mask)
    assert emb["hs"].tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert emb["rw"].shape == (2, 8) and emb["rw"][0, 4] == 2.0
    # hs z-scored over the batch: (2 - 6) / 4 = -1, (10 - 6) / 4 = 1; constant rw columns -> 0
    assert emb["moee"][:, 0].tolist() == [-1.0, 1.0] and torch.all(emb["moee"][:, 2:] == 0)


def test_smoe_lm_embedder_matches_a_manual_forward():
    model = tiny_lm()
    ids = torch.randint(0, 40, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    emb = smoe_lm_embedder(model)(ids, mask)
    captured = {}
    model.ln_f.register_forward_hook(lambda m, a, out: captured.update(h=out))
    out = model(ids, mask)
    assert torch.equal(emb["hs"][0], captured["h"][0, 3]) and torch.equal(emb["hs"][1], captured["h"][1, 5])
    assert emb["rw"].shape == (3, 2 * 4)
    assert torch.equal(emb["rw"][0, :4], out.moe[0].routing.logits.view(3, 6, 4)[0, 3])


def test_embed_all_zscores_moee_over_all_rows_not_per_batch():
    model = tiny_lm()
    ids, mask = torch.randint(0, 40, (7, 5)), torch.ones(7, 5, dtype=torch.bool)
    a = embed_all(smoe_lm_embedder(model), ids, mask, batch_size=3)
    b = embed_all(smoe_lm_embedder(model), ids, mask, batch_size=7)
    for kind in KINDS:
        assert torch.allclose(a[kind], b[kind], atol=1e-5)


def test_suite_scores_on_perfect_and_useless_embeddings():
    y = torch.arange(5).repeat(8)
    perfect = torch.nn.functional.one_hot(y, 5).float() + 0.01 * torch.randn(40, 5)
    assert classification_accuracy(perfect, y, perfect, y) == 1.0
    assert clustering_v_measure(perfect, y) == pytest.approx(1.0)
    assert pair_average_precision(perfect, y) == pytest.approx(1.0)
    noise = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    same = 1 / 5  # base rate of "same label" pairs, about what a useless embedding gets
    assert pair_average_precision(noise, y, num_pairs=4000) < same + 0.1


def test_run_suite_and_table():
    model = tiny_lm()
    gen = torch.Generator().manual_seed(0)
    split = lambda n: (torch.randint(0, 40, (n, 6), generator=gen), torch.ones(n, 6, dtype=torch.bool),  # noqa: E731
                       torch.arange(n) % 3)
    data = SuiteData(train=split(30), test=split(15), label_names=["a", "b", "c"])
    scores = run_suite(smoe_lm_embedder(model), data, batch_size=8)
    assert set(scores) == set(KINDS) and all(set(s) == set(TASKS) for s in scores.values())
    assert all(0.0 <= v <= 1.0 for s in scores.values() for v in s.values())
    table = markdown_table({"topk": scores, "usmoe": scores})
    assert table.count("\n") == 3 and "moee pairs" in table.splitlines()[0]


@pytest.mark.slow
def test_eval_embed_cli_on_a_trained_run_and_a_tiny_hf_model(tmp_path, capsys):
    from smoe.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "--task", "lm-bbc", "--steps", "2", "--set", "model.d_model=16", "--set", "model.num_heads=2",
                 "--set", "model.ffn_hidden=16", "--set", "train.eval_every=2", "--set", "data.eval_tokens=256",
                 "--no-progress", "--out", str(run_dir)]) == 0
    out_json = tmp_path / "scores.json"
    assert main(["eval-embed", str(run_dir), "--router", "usmoe:pool=sequence,topk", "--max-train", "40",
                 "--max-len", "16", "--json", str(out_json)]) == 0
    import json

    scores = json.loads(out_json.read_text())
    assert list(scores) == ["original", "usmoe:pool=sequence", "topk"]
    assert scores["topk"] == scores["original"]  # the same router swapped in reproduces the model exactly
    assert main(["eval-embed", "hf-tiny:mixtral", "--router", "usmoe:pool=sequence", "--max-train", "40",
                 "--max-len", "16"]) == 0
    assert "| usmoe:pool=sequence |" in capsys.readouterr().out


def test_eval_embed_bad_model(tmp_path):
    from smoe.workbench.run.embed_suite import load_model

    with pytest.raises(ValueError, match="neither a run directory"):
        load_model(str(tmp_path), 16)
