from collections import Counter

import pytest
import torch

from smoe.data.bbc import BBC_TOPICS, bbc_path, load_bbc
from smoe.data.text import classification_tensors, get_tokenizer, lm_streams


@pytest.fixture(scope="module")
def bbc():
    return load_bbc()


@pytest.fixture(scope="module")
def tokenizer(bbc, tmp_path_factory):
    return get_tokenizer(bbc, 2048, cache_dir=tmp_path_factory.mktemp("cache"))


def test_corpus_size_topics_and_labels(bbc):
    assert len(bbc.documents) == 2225
    assert bbc.label_names == list(BBC_TOPICS)
    assert Counter(bbc.labels) == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    assert len(list(bbc_path().rglob("*.txt"))) == 2225
    assert bbc.documents[0].startswith("Ad sales boost Time Warner profit")  # business/001.txt


def test_split_is_fixed_documented_stratified_and_disjoint(bbc):
    assert Counter(bbc.split) == {"train": 1775, "valid": 229, "test": 221}
    per_topic = Counter(zip(bbc.split, bbc.labels))
    assert [per_topic["test", y] for y in range(5)] == [50, 38, 41, 50, 42]
    assert load_bbc().split == bbc.split
    normal = [" ".join(d.split()) for d in bbc.documents]
    owners = {}
    for doc, split in zip(normal, bbc.split):
        owners.setdefault(doc, set()).add(split)
    assert len(owners) == 2125  # 100 articles appear twice in the corpus ...
    assert all(len(s) == 1 for s in owners.values())  # ... and each pair sits in one split


def test_the_one_windows_1252_article_is_decoded(bbc):
    sports = [d for d, y in zip(bbc.documents, bbc.labels) if y == 3]
    assert "a £15.8m signing from Parma" in sports[198]  # sports/199.txt


def test_tokenizer_round_trips_every_article(bbc, tokenizer):
    assert tokenizer.get_vocab_size() == 2048
    for enc, doc in zip(tokenizer.encode_batch(bbc.documents), bbc.documents):
        assert tokenizer.decode(enc.ids, skip_special_tokens=False) == doc


def test_streams_and_classification_tensors(bbc, tokenizer):
    streams = lm_streams(bbc, tokenizer)
    for split, n in (("train", 1775), ("valid", 229), ("test", 221)):
        assert streams[split].dtype == torch.long and streams[split].dim() == 1
        assert int((streams[split] == 0).sum()) == n and streams[split][-1] == 0
        assert int(streams[split].max()) < 2048
    assert streams["train"].numel() > 5 * streams["valid"].numel()
    ids, mask, labels = classification_tensors(bbc, tokenizer, 64)["valid"]
    assert ids.shape == (229, 64) and bool(mask.all())  # every article is longer than 64 tokens
    assert Counter(labels.tolist()) == Counter(y for y, s in zip(bbc.labels, bbc.split) if s == "valid")
