import os

import pytest
import torch

import smoe.data.text as text
from smoe.data.text import (
    EOS,
    PAD,
    TextCorpus,
    classification_tensors,
    get_tokenizer,
    lm_streams,
    load_text,
    stream_labels,
)


def write(path, content, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return path


def numbered_docs(n):
    return [f"Document number {i} talks about topic {i % 3}, with £ and naïve words." for i in range(n)]


def test_file_with_blank_lines_gives_one_document_per_paragraph(tmp_path):
    f = write(tmp_path / "corpus.txt", "\ufeffFirst doc\nstill first.\r\n\r\n  \nSecond doc.\n\n\n Third doc. \n")
    corpus = load_text(f, valid_fraction=0.0, test_fraction=0.0)
    assert corpus.name == "corpus"
    assert corpus.documents == ["First doc\nstill first.", "Second doc.", "Third doc."]
    assert corpus.split == ["train"] * 3 and corpus.labels is None and corpus.label_names is None


def test_file_split_on_lines(tmp_path):
    f = write(tmp_path / "lines.txt", "a b\n\nc d\ne f\n")
    assert load_text(f, 0.0, 0.0, separator="line").documents == ["a b", "c d", "e f"]


def test_folder_with_label_subfolders(tmp_path):
    for label, docs in (("sport", ["goal", "match"]), ("arts", ["film", "song", "play"])):
        for i, doc in enumerate(docs):
            write(tmp_path / label / f"{i}.txt", doc + "\n")
    write(tmp_path / "notes" / "readme.md", "not a .txt file")
    corpus = load_text(tmp_path, 0.0, 0.0, name="mini")
    assert corpus.name == "mini"
    assert corpus.label_names == ["arts", "sport"]
    assert corpus.documents == ["film", "song", "play", "goal", "match"]
    assert corpus.labels == [0, 0, 0, 1, 1]


def test_folder_of_files_is_unlabelled(tmp_path):
    write(tmp_path / "b.txt", "second")
    write(tmp_path / "a.txt", "first")
    corpus = load_text(tmp_path, 0.0, 0.0)
    assert corpus.documents == ["first", "second"] and corpus.labels is None


def test_split_is_fixed_disjoint_and_sized(tmp_path):
    f = write(tmp_path / "c.txt", "\n\n".join(numbered_docs(50)))
    a, b = load_text(f, 0.1, 0.2, seed=7), load_text(f, 0.1, 0.2, seed=7)
    assert a.split == b.split
    # 50 distinct documents: valid round(5.0) = 5, test round(10.0) = 10, train 35.
    assert [a.split.count(s) for s in ("train", "valid", "test")] == [35, 5, 10]
    assert load_text(f, 0.1, 0.2, seed=8).split != a.split
    sets = [set(a.documents_in(s)) for s in ("train", "valid", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


@pytest.mark.parametrize("content", [b"", b"  \n\n \t\n"])
def test_empty_file_raises_naming_the_path(tmp_path, content):
    f = write(tmp_path / "empty.txt", content)
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        load_text(f)


def test_non_utf8_file_raises_naming_the_path_and_byte(tmp_path):
    f = write(tmp_path / "latin.txt", "price: £5", encoding="latin-1")
    with pytest.raises(ValueError, match=r"latin.txt is not UTF-8 text \(byte 0xa3 at offset 7\)"):
        load_text(f)
    corpus = load_text(f, 0.0, 0.0, fallback_encoding="cp1252")
    assert corpus.documents == ["price: £5"]


def test_missing_path_and_bad_folders_raise(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.txt' does not exist"):
        load_text(tmp_path / "nothere.txt")
    with pytest.raises(ValueError, match=r"holds no \.txt files"):
        load_text(tmp_path)
    write(tmp_path / "top.txt", "x")
    write(tmp_path / "label" / "doc.txt", "y")
    with pytest.raises(ValueError, match="both directly and in sub-folders"):
        load_text(tmp_path)
    write(tmp_path / "other" / "blank.txt", " \n")
    (tmp_path / "top.txt").unlink()
    with pytest.raises(ValueError, match=r"blank\.txt is empty"):
        load_text(tmp_path)
    with pytest.raises(ValueError, match="separator"):
        load_text(tmp_path, separator="paragraph")


def test_corpus_validates_itself():
    with pytest.raises(ValueError, match="split must have one entry"):
        TextCorpus("c", ["a", "b"], None, None, ["train"])
    with pytest.raises(ValueError, match="split entries"):
        TextCorpus("c", ["a"], None, None, ["dev"])
    with pytest.raises(ValueError, match="labels must be in"):
        TextCorpus("c", ["a"], [2], ["x", "y"], ["train"])
    with pytest.raises(ValueError, match="no documents"):
        TextCorpus("c", [], None, None, [])


@pytest.fixture
def corpus():
    docs = [*numbered_docs(40), "Unicode: 日本語, emoji 🙂, tabs\tand  double  spaces."]
    labels = [i % 2 for i in range(len(docs))]
    split = ["train"] * 30 + ["valid"] * 5 + ["test"] * 6
    return TextCorpus("toy", docs, labels, ["even", "odd"], split)


def test_tokenizer_round_trips_any_text_and_has_special_ids(corpus, tmp_path):
    tok = get_tokenizer(corpus, 400, cache_dir=tmp_path)
    assert tok.token_to_id(EOS) == 0 and tok.token_to_id(PAD) == 1
    assert 258 < tok.get_vocab_size() <= 400
    for doc in [*corpus.documents, "unseen ✓ text \n with\nnewlines ", "Ωmega"]:
        assert tok.decode(tok.encode(doc).ids, skip_special_tokens=False) == doc


def test_tokenizer_is_cached_and_not_retrained(corpus, tmp_path, monkeypatch):
    first = get_tokenizer(corpus, 400, cache_dir=tmp_path)
    files = list((tmp_path / "tokenizers").iterdir())
    assert len(files) == 1 and files[0].name.endswith("-400.json")

    def fail(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(text, "train_bpe", fail)
    second = get_tokenizer(corpus, 400, cache_dir=tmp_path)
    assert second.to_str() == first.to_str()
    with pytest.raises(AssertionError, match="retrained"):  # another vocab size is another cache entry
        get_tokenizer(corpus, 300, cache_dir=tmp_path)


def test_tokenizer_depends_only_on_train_documents(corpus, tmp_path):
    other = TextCorpus("other", [*corpus.documents[:-1], "changed test document"], corpus.labels,
                       corpus.label_names, corpus.split)
    assert other.fingerprint() == corpus.fingerprint()
    moved = TextCorpus("moved", corpus.documents, corpus.labels, corpus.label_names,
                       ["valid", *corpus.split[1:]])
    assert moved.fingerprint() != corpus.fingerprint()


def test_cache_dir_from_environment_and_damaged_cache_is_replaced(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOE_CACHE", str(tmp_path / "env"))
    tok = get_tokenizer(corpus, 300)
    (path,) = (tmp_path / "env" / "tokenizers").iterdir()
    path.write_text('{"truncated": ')
    with pytest.warns(UserWarning, match="damaged"):
        assert get_tokenizer(corpus, 300).to_str() == tok.to_str()
    assert path.read_text() == tok.to_str()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_lm_streams_join_documents_with_eos(corpus, tmp_path):
    tok = get_tokenizer(corpus, 400, cache_dir=tmp_path)
    streams = lm_streams(corpus, tok)
    for split in ("train", "valid", "test"):
        docs = corpus.documents_in(split)
        expected = [t for d in docs for t in (*tok.encode(d).ids, 0)]
        assert streams[split].dtype == torch.long and streams[split].tolist() == expected
        assert int((streams[split] == 0).sum()) == len(docs)


def test_stream_labels_give_each_token_its_documents_label(corpus, tmp_path):
    tok = get_tokenizer(corpus, 400, cache_dir=tmp_path)
    stream = lm_streams(corpus, tok)["valid"]
    labels = stream_labels(corpus, tok, "valid")
    expected = [y for d, y in zip(corpus.documents_in("valid"), corpus.labels_in("valid"))
                for _ in range(len(tok.encode(d).ids) + 1)]  # the document's tokens and its EOS
    assert labels.dtype == torch.long and labels.tolist() == expected and labels.shape == stream.shape
    assert stream_labels(TextCorpus("u", corpus.documents, None, None, corpus.split), tok, "valid") is None


def test_classification_tensors_pad_truncate_and_mask(corpus, tmp_path):
    tok = get_tokenizer(corpus, 400, cache_dir=tmp_path)
    lengths = [len(tok.encode(d).ids) for d in corpus.documents_in("train")]
    max_len = sorted(lengths)[len(lengths) // 2]  # some rows truncated, some padded
    out = classification_tensors(corpus, tok, max_len)
    ids, mask, labels = out["train"]
    assert ids.shape == mask.shape == (30, max_len) and labels.shape == (30,)
    assert ids.dtype == labels.dtype == torch.long and mask.dtype == torch.bool
    assert labels.tolist() == corpus.labels_in("train")
    for i, doc in enumerate(corpus.documents_in("train")):
        full = tok.encode(doc).ids
        n = min(len(full), max_len)
        assert mask[i].tolist() == [True] * n + [False] * (max_len - n)
        assert ids[i, :n].tolist() == full[:n] and torch.all(ids[i, n:] == 1)
    assert out["test"][0].shape == (6, max_len)


def test_classification_needs_labels_and_a_valid_length(corpus, tmp_path):
    tok = get_tokenizer(corpus, 300, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="max_len"):
        classification_tensors(corpus, tok, 0)
    unlabelled = TextCorpus("u", corpus.documents, None, None, corpus.split)
    with pytest.raises(ValueError, match="no labels"):
        classification_tensors(unlabelled, tok, 8)
    with pytest.raises(ValueError, match="vocab_size"):
        get_tokenizer(corpus, 100, cache_dir=tmp_path)


def test_a_fifo_or_device_is_refused_before_reading(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(ValueError, match="is not a regular file or a folder"):
            load_text(path)
