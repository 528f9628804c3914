"""`smoe eval-embed`: an MTEB-style mini suite of MoEE embeddings (`smoe.integrations.embed`) on offline data.

The suite, on the BBC News splits (5 topics): classification (logistic regression trained on train-split
embeddings, test accuracy), clustering (k-means with one cluster per topic on the test split, V-measure), and
pair classification (pairs of test documents, same topic or not, average precision of the cosine similarity).
The model's own routing is compared with each router swapped in without training (`smoe.integrations.swap`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from smoe._files import atomic_write
from smoe._validate import check_choice, check_int
from smoe.data.bbc import load_bbc
from smoe.data.text import PAD, get_tokenizer, special_id
from smoe.integrations import hf
from smoe.integrations.embed import KINDS, Embedder, embed_all, hf_embedder, smoe_lm_embedder
from smoe.integrations.swap import swap_router
from smoe.models import LM
from smoe.routing.registry import check_router_options, parse_router_spec
from smoe.workbench.run.runner import load_run
from smoe.workbench.tasks import get_task

TASKS = ("classification", "clustering", "pairs")


@dataclass
class SuiteData:
    """Tokenized documents of the suite: ids (n, T) long, mask (n, T) bool, labels (n,) long, per split."""
    train: tuple[Tensor, Tensor, Tensor]
    test: tuple[Tensor, Tensor, Tensor]
    label_names: list[str]


def classification_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, seed: int = 0) -> float:
    """Logistic regression on standardized embeddings, accuracy on the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(train_x.numpy(), train_y.numpy())
    return float(clf.score(test_x.numpy(), test_y.numpy()))


def clustering_v_measure(x: Tensor, y: Tensor, seed: int = 0) -> float:
    """k-means with one cluster per label on standardized embeddings; V-measure against the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score
    from sklearn.preprocessing import StandardScaler

    k = int(y.unique().numel())
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(StandardScaler().fit_transform(x.numpy()))
    return float(v_measure_score(y.numpy(), pred))


def pair_average_precision(x: Tensor, y: Tensor, num_pairs: int = 5000, seed: int = 0) -> float:
    """Average precision of the cosine similarity for "same label" over random distinct pairs of rows."""
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    a = torch.randint(0, n, (num_pairs,), generator=g)
    b = (a + torch.randint(1, n, (num_pairs,), generator=g)) % n  # b != a
    cos = nn.functional.cosine_similarity(x[a].double(), x[b].double(), dim=-1)
    return float(average_precision_score((y[a] == y[b]).numpy(), cos.numpy()))


def run_suite(embed: Embedder, data: SuiteData, batch_size: int = 32, seed: int = 0) -> dict[str, dict[str, float]]:
    """{kind: {task: score}} for every embedding kind and task of the suite."""
    train_ids, train_mask, train_y = data.train
    test_ids, test_mask, test_y = data.test
    train = embed_all(embed, train_ids, train_mask, batch_size)
    test = embed_all(embed, test_ids, test_mask, batch_size)
    return {
        kind: {
            "classification": classification_accuracy(train[kind], train_y, test[kind], test_y, seed),
            "clustering": clustering_v_measure(test[kind], test_y, seed),
            "pairs": pair_average_precision(test[kind], test_y, seed=seed),
        }
        for kind in KINDS
    }


def bbc_suite_data(encode: Callable[[list[str]], tuple[Tensor, Tensor]], max_train: int = 600,
                   seed: int = 0) -> SuiteData:
    """The BBC News train (a seeded subset of max_train documents) and test splits, encoded by `encode`.

    encode: list of texts -> (ids (n, T) long, mask (n, T) bool).
    """

    corpus = load_bbc()
    splits = {}
    for split, limit in (("train", max_train), ("test", None)):
        docs, labels = corpus.documents_in(split), torch.tensor(corpus.labels_in(split))
        if limit is not None and limit < len(docs):
            keep = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
            docs, labels = [docs[i] for i in keep.tolist()], labels[keep]
        ids, mask = encode(docs)
        splits[split] = (ids, mask, labels)
    return SuiteData(train=splits["train"], test=splits["test"], label_names=list(corpus.label_names))


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows: routers; columns: kind x task. results: {router label: {kind: {task: score}}}."""
    cols = [(kind, task) for kind in KINDS for task in TASKS]
    head = "| routing | " + " | ".join(f"{kind} {task}" for kind, task in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for label, scores in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{scores[k][t]:.3f}" for k, t in cols) + " |")
    return "\n".join(lines)


def encode_with(tokenizer, texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """Texts -> (ids (n, T), mask (n, T)), right-padded, truncated to max_len tokens; `tokenizer` is an smoe
    byte-level BPE (`tokenizers.Tokenizer`) or a HF tokenizer."""
    if hasattr(tokenizer, "encode_batch"):
        rows = [enc.ids[:max_len] or [special_id(tokenizer, PAD)] for enc in tokenizer.encode_batch(texts)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), special_id(tokenizer, PAD), dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), True
        return ids, mask
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


def load_model(spec: str, max_len: int) -> tuple[nn.Module, Callable[[nn.Module], Embedder], object, int]:
    """MODEL of `smoe eval-embed` -> (model, embedder factory, tokenizer, max tokens per document).

    spec: a run directory of `smoe train` (an LM task), "hf-tiny:ARCH" (a random tiny HF model of that
    architecture with the BBC tokenizer's vocabulary), or a local HF model directory (loaded offline).
    """
    from pathlib import Path

    path = Path(spec)
    if (path / "config.yaml").is_file():
        run, setup, _ = load_run(path, device="cpu")
        if not isinstance(setup.model, LM) or setup.model.config.num_classes is not None:
            raise ValueError(f"MODEL {spec!r}: eval-embed needs a language-model run (lm-bbc or text), "
                             f"got task {run.task!r}")
        return setup.model, smoe_lm_embedder, _run_tokenizer(run), min(max_len, setup.model.config.max_len)

    if spec.startswith("hf-tiny:"):
        arch = spec.split(":", 1)[1]
        check_choice("ARCH", arch, hf.TINY_ARCHS)  # before the tokenizer is built
        tokenizer = get_tokenizer(load_bbc(), 2048)
        model = hf.tiny_hf_model(arch, vocab_size=tokenizer.get_vocab_size(),
                                 max_position_embeddings=max(max_len, 256))
        return model, hf_embedder, tokenizer, max_len
    if (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        return model, hf_embedder, AutoTokenizer.from_pretrained(path, local_files_only=True), max_len
    raise ValueError(f"MODEL {spec!r} is neither a run directory (config.yaml), 'hf-tiny:ARCH' "
                     f"(ARCH in {', '.join(hf.TINY_ARCHS)}) nor a local HF model directory (config.json)")


def _run_tokenizer(run) -> object:
    """The tokenizer an LM run was trained with (its task's corpus, its vocabulary size, cached)."""
    return get_tokenizer(get_task(run.task).load_data(run.data), run.data.vocab_size, cache_dir=run.data.cache_dir)


def evaluate_routers(spec: str, routers: list[str], max_len: int = 128, max_train: int = 600, batch_size: int = 32,
                     seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{routing label: {kind: {task: score}}} for the model's own routing and each router swapped in (router specs
    `name[:option=value...]`). Every argument is checked before a model or data is loaded."""
    import copy

    for name, value in (("max_len", max_len), ("max_train", max_train), ("batch_size", batch_size)):
        check_int(name, value, low=1)
    check_int("seed", seed, low=0)
    swaps = {router: parse_router_spec(router) for router in routers}
    for name, options in swaps.values():
        check_router_options(name, options)
    model, embedder, tokenizer, max_len = load_model(spec, max_len)
    data = bbc_suite_data(lambda texts: encode_with(tokenizer, texts, max_len), max_train=max_train, seed=seed)
    results = {"original": run_suite(embedder(model), data, batch_size, seed)}
    for router, (name, options) in swaps.items():
        swapped = copy.deepcopy(model)
        swap_router(swapped, name, **options)
        results[router] = run_suite(embedder(swapped), data, batch_size, seed)
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="smoe eval-embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a run directory of `smoe train` (LM task), hf-tiny:ARCH, or a local HF model dir")
    p.add_argument("--router", default="usmoe:pool=sequence",
                   help="comma-separated router specs name[:option=value...] swapped in without training, each "
                        "compared with the model's own routing (default usmoe:pool=sequence)")
    p.add_argument("--max-len", type=int, default=128, help="tokens per document (default 128)")
    p.add_argument("--max-train", type=int, default=600, help="train-split documents for the classifier")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")
    args = p.parse_args(argv)
    routers = [r.strip() for r in args.router.split(",") if r.strip()]
    results = evaluate_routers(args.model, routers, args.max_len, args.max_train, args.batch_size, args.seed)
    print(f"{args.model}: BBC News suite (test split; classifier trained on {args.max_train} train documents), "
          f"{args.max_len} tokens per document, seed {args.seed}")
    print(markdown_table(results))
    if args.json:
        atomic_write(Path(args.json), json.dumps(results, indent=1).encode())
    return 0
