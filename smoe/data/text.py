"""Text data: any UTF-8 file or folder -> TextCorpus -> cached byte-level BPE -> LM streams or class tensors.

Legend: n documents, T tokens per padded document.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from smoe._files import atomic_write
from smoe._validate import check_choice, check_int
from smoe.data.splits import SPLITS, assign_splits

EOS = "<|endoftext|>"  # ends every document in an LM stream (id 0)
PAD = "<pad>"  # fills classification rows past the document (id 1); the mask marks it False
TOKENIZER_FORMAT = 1  # bump when the recipe below changes, so old cache files are not reused


@dataclass
class TextCorpus:
    """Documents with a fixed split (and optional labels). Index i describes documents[i] everywhere."""

    name: str
    documents: list[str]
    labels: list[int] | None
    label_names: list[str] | None
    split: list[str]

    def __post_init__(self) -> None:
        n = len(self.documents)
        if n == 0:
            raise ValueError(f"corpus {self.name!r} has no documents")
        if len(self.split) != n:
            raise ValueError(f"split must have one entry per document ({n}), got {len(self.split)}")
        unknown = sorted(set(self.split) - set(SPLITS))
        if unknown:
            raise ValueError(f"split entries must be one of {list(SPLITS)}, got {unknown[0]!r}")
        if (self.labels is None) != (self.label_names is None):
            raise ValueError("labels and label_names must be given together")
        if self.labels is not None:
            if len(self.labels) != n:
                raise ValueError(f"labels must have one entry per document ({n}), got {len(self.labels)}")
            bad = [y for y in self.labels if not 0 <= y < len(self.label_names)]
            if bad:
                raise ValueError(f"labels must be in [0, {len(self.label_names)}), got {bad[0]}")

    def documents_in(self, split: str) -> list[str]:
        check_choice("split", split, SPLITS)
        return [d for d, s in zip(self.documents, self.split) if s == split]

    def labels_in(self, split: str) -> list[int]:
        check_choice("split", split, SPLITS)
        if self.labels is None:
            raise ValueError(f"corpus {self.name!r} has no labels")
        return [y for y, s in zip(self.labels, self.split) if s == split]

    def fingerprint(self) -> str:
        """SHA-256 of the train documents (all a tokenizer trained on this corpus depends on)."""
        h = hashlib.sha256()
        for doc in self.documents_in("train"):
            data = doc.encode("utf-8")
            h.update(len(data).to_bytes(8, "little") + data)
        return h.hexdigest()


def read_text_file(path: Path, fallback_encoding: str | None = None) -> str:
    """The file decoded as UTF-8 (a BOM is dropped, newlines become "\\n"); non-UTF-8 bytes raise ValueError,
    or are decoded with `fallback_encoding` when one is given."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if fallback_encoding is None:
            raise ValueError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                             "convert it to UTF-8 or pass fallback_encoding") from None
        text = data.decode(fallback_encoding)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_documents(text: str, separator: str) -> list[str]:
    chunks = re.split(r"\n[ \t]*\n", text) if separator == "blank_line" else text.split("\n")
    return [c.strip() for c in chunks if c.strip()]


def _read_folder(root: Path, fallback_encoding: str | None) -> tuple[list[str], list[int] | None, list[str] | None]:
    """Each .txt file is one document; .txt files in sub-folders are labelled by the sub-folder's name."""
    top = sorted(p for p in root.glob("*.txt") if p.is_file())
    folders = sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.txt")))
    if top and folders:
        raise ValueError(f"{root} holds .txt files both directly and in sub-folders; use one layout: files "
                         "(unlabelled) or one sub-folder per label")
    if not top and not folders:
        raise ValueError(f"{root} holds no .txt files (directly or in sub-folders)")
    groups = [(None, top)] if top else [(d.name, sorted(d.glob("*.txt"))) for d in folders]
    documents, labels = [], []
    for label, (_, files) in enumerate(groups):
        for f in files:
            doc = read_text_file(f, fallback_encoding).strip()
            if not doc:
                raise ValueError(f"{f} is empty")
            documents.append(doc)
            labels.append(label)
    if top:
        return documents, None, None
    return documents, labels, [name for name, _ in groups]


def load_text(path: str | os.PathLike, valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
              separator: str = "blank_line", name: str | None = None,
              fallback_encoding: str | None = None) -> TextCorpus:
    """A UTF-8 text file or a folder of .txt files as a TextCorpus with a fixed split.

    File: documents are separated by blank lines (`separator="blank_line"`) or are single lines ("line").
    Folder: each .txt file is a document; with one sub-folder per label (`root/<label>/*.txt`) the corpus is
    labelled (labels numbered in sorted folder order). The split is stratified by label, by content (duplicate
    documents share a split) and fixed for a given seed (see `smoe.data.splits`).
    Empty input, non-UTF-8 bytes, a missing path and one that is not a regular file or folder raise ValueError
    naming the path.
    """
    check_choice("separator", separator, ("blank_line", "line"))
    root = Path(path)
    if not root.exists():
        raise ValueError(f"path {str(root)!r} does not exist (expected a UTF-8 text file or a folder of .txt files)")
    if root.is_dir():
        documents, labels, label_names = _read_folder(root, fallback_encoding)
    elif not root.is_file():  # a FIFO or a device would block or never end
        raise ValueError(f"path {str(root)!r} is not a regular file or a folder (a FIFO, socket or device); "
                         "expected a UTF-8 text file or a folder of .txt files")
    else:
        documents = _split_documents(read_text_file(root, fallback_encoding), separator)
        labels = label_names = None
        if not documents:
            raise ValueError(f"{root} is empty (no non-blank text)")
    keys = [" ".join(doc.split()).encode("utf-8") for doc in documents]
    split = assign_splits(keys, labels, valid_fraction, test_fraction, seed)
    return TextCorpus(name or root.stem, documents, labels, label_names, split)


def default_cache_dir() -> Path:
    """`$SMOE_CACHE`, else `~/.cache/smoe`."""
    return Path(os.environ.get("SMOE_CACHE") or Path.home() / ".cache" / "smoe")


def train_bpe(documents: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style, no prefix space, so decode(encode(s)) == s) with EOS = 0 and PAD = 1.

    The vocabulary holds the 256 byte symbols and the two special tokens, then merges of pairs seen at least
    twice, up to `vocab_size` entries (fewer if the documents run out of such pairs).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def get_tokenizer(corpus: TextCorpus, vocab_size: int, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Byte-level BPE trained on the corpus's train split only, cached on disk.

    Cache file: `<cache_dir>/tokenizers/bpe<format>-<train fingerprint>-<vocab_size>.json` (default cache dir
    `$SMOE_CACHE` or `~/.cache/smoe`), written atomically; an unreadable cache file is retrained and replaced.
    The actual vocabulary size is `tokenizer.get_vocab_size()` (<= vocab_size on small corpora).
    """
    check_int("vocab_size", vocab_size, 258)
    if "train" not in corpus.split:
        raise ValueError(f"corpus {corpus.name!r} has no train documents to train a tokenizer on")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "tokenizers" / f"bpe{TOKENIZER_FORMAT}-{corpus.fingerprint()[:24]}-{vocab_size}.json"
    if path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # a foreign or damaged file: retrain below and replace it
            warnings.warn(f"tokenizer cache {path} is damaged ({type(e).__name__}: {e}); training the tokenizer "
                          "again and replacing it", stacklevel=2)
    tokenizer = train_bpe(corpus.documents_in("train"), vocab_size)
    atomic_write(path, tokenizer.to_str())
    return tokenizer


def special_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a special token (EOS or PAD); ValueError for a tokenizer not made by `get_tokenizer`."""
    idx = tokenizer.token_to_id(token)
    if idx is None:
        raise ValueError(f"tokenizer has no {token!r} token; build it with smoe.data.text.get_tokenizer")
    return idx


def _encode(tokenizer: Tokenizer, documents: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(documents, add_special_tokens=False)] if documents else []


def lm_streams(corpus: TextCorpus, tokenizer: Tokenizer) -> dict[str, Tensor]:
    """{split: (L,) long}: the split's documents in corpus order, each followed by EOS."""
    eos = special_id(tokenizer, EOS)
    streams = {}
    for split in SPLITS:
        ids = _encode(tokenizer, corpus.documents_in(split))
        flat = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)
        streams[split] = torch.from_numpy(flat)
    return streams


def stream_documents(corpus: TextCorpus, tokenizer: Tokenizer, split: str) -> Tensor:
    """(L,) long: the index (within the split) of the document each token of `lm_streams(...)[split]` belongs to,
    its EOS included."""
    lengths = [len(doc) + 1 for doc in _encode(tokenizer, corpus.documents_in(split))]
    return torch.arange(len(lengths)).repeat_interleave(torch.tensor(lengths, dtype=torch.long))


def stream_labels(corpus: TextCorpus, tokenizer: Tokenizer, split: str) -> Tensor | None:
    """(L,) long: the label of each token of `lm_streams(...)[split]` (its document's, EOS included); None when
    the corpus has no labels."""
    if corpus.labels is None:
        return None
    lengths = [len(doc) + 1 for doc in _encode(tokenizer, corpus.documents_in(split))]
    return torch.tensor(corpus.labels_in(split), dtype=torch.long).repeat_interleave(torch.tensor(lengths))


def classification_tensors(corpus: TextCorpus, tokenizer: Tokenizer,
                           max_len: int) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """{split: (ids (n, T) long, mask (n, T) bool, labels (n,) long)} with T = max_len.

    Each document keeps its first max_len tokens; shorter ones are padded with PAD; mask is True on real tokens.
    """
    check_int("max_len", max_len, 1)
    if corpus.labels is None:
        raise ValueError(f"corpus {corpus.name!r} has no labels; classification needs a labelled corpus")
    pad = special_id(tokenizer, PAD)
    out = {}
    for split in SPLITS:
        ids = _encode(tokenizer, corpus.documents_in(split))
        tokens = torch.full((len(ids), max_len), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), max_len, dtype=torch.bool)
        for i, doc in enumerate(ids):
            doc = doc[:max_len]
            tokens[i, :len(doc)] = torch.tensor(doc, dtype=torch.long)
            mask[i, :len(doc)] = True
        out[split] = (tokens, mask, torch.tensor(corpus.labels_in(split), dtype=torch.long))
    return out
