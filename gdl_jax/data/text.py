"""Text sources for language models: char- and word-level tokenizers, fixed windows, train/test split.

    ds = gdl_jax.data.load("pydoc_text")     # Dataset(info(kind="text", vocab=...), {"tokens": [N, T]})
    text = CharTokenizer(ds.info.vocab).decode(ds.test["tokens"][0])

Offline sources: "pydoc" is the Python documentation topics shipped with CPython
(`pydoc_data.topics`, always there); "novel" is Jane Austen's *Lady Susan* (Project Gutenberg) as
shipped in music21 (`pip install music21`). The split is contiguous (the last `test_fraction` of
the token stream is the test set), so no test window overlaps a training window.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Iterable

import numpy as np

from gdl_jax.data.info import DataError, Dataset, DatasetInfo

UNK = "<unk>"
_WORD_RE = re.compile(r"\n|[A-Za-z0-9_']+|[^\sA-Za-z0-9_']")


def pydoc_text() -> str:
  """CPython's documentation topics (the text behind `help('topic')`), joined."""
  from pydoc_data import topics
  return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def novel_text() -> str:
  """Jane Austen's *Lady Susan*, as shipped in music21's language-detection training data."""
  try:
    import music21
  except ImportError as e:
    raise DataError("the 'novel' text source ships with music21: `pip install music21` "
                    "(or `pip install gdl_jax[text]`), or use the 'pydoc' source.") from e
  path = os.path.join(os.path.dirname(music21.__file__), "languageExcerpts", "trainingData", "en.txt")
  if not os.path.exists(path):
    raise DataError(f"music21 is installed but {path} is missing; reinstall music21 "
                    "(`pip install --force-reinstall music21`) or use the 'pydoc' source.")
  with open(path, encoding="utf-8") as f:
    return f.read()


SOURCES = {"pydoc": pydoc_text, "novel": novel_text}


class CharTokenizer:
  """One token per character; the vocabulary is the sorted set of characters seen."""

  level = "char"

  def __init__(self, vocab: Iterable[str]):
    self.vocab = tuple(vocab)
    self._ids = {t: i for i, t in enumerate(self.vocab)}

  @classmethod
  def fit(cls, text: str) -> "CharTokenizer":
    return cls(sorted(set(text)))

  def encode(self, text: str) -> np.ndarray:
    try:
      return np.fromiter((self._ids[c] for c in text), np.int32, count=len(text))
    except KeyError as e:
      raise ValueError(f"character {e.args[0]!r} is not in the vocabulary; fit the tokenizer on "
                       "text that contains it.") from None

  def decode(self, ids) -> str:
    return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))


class WordTokenizer:
  """Words, numbers, single punctuation marks and newlines; rare words map to <unk> (id 0)."""

  level = "word"

  def __init__(self, vocab: Iterable[str], lowercase: bool = True):
    self.vocab = tuple(vocab)
    if not self.vocab or self.vocab[0] != UNK:
      raise ValueError(f"a word vocabulary starts with {UNK!r}; build one with WordTokenizer.fit.")
    self.lowercase = lowercase
    self._ids = {t: i for i, t in enumerate(self.vocab)}

  @staticmethod
  def split(text: str, lowercase: bool = True) -> list[str]:
    return _WORD_RE.findall(text.lower() if lowercase else text)

  @classmethod
  def fit(cls, text: str, min_count: int = 2, lowercase: bool = True) -> "WordTokenizer":
    """Vocabulary: <unk>, then every token seen at least min_count times, most frequent first."""
    counts = collections.Counter(cls.split(text, lowercase))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return cls([UNK] + words, lowercase)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray([self._ids.get(w, 0) for w in self.split(text, self.lowercase)], np.int32)

  def decode(self, ids) -> str:
    out = " ".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))
    return re.sub(r" ?\n ?", "\n", out)


def windows(ids: np.ndarray, length: int, stride: int | None = None) -> np.ndarray:
  """All windows ids[s : s + length] for s = 0, stride, 2 * stride, ... -> int32 [N, length]."""
  stride = stride or length
  if length < 2 or stride < 1:
    raise ValueError(f"window length={length} must be >= 2 and stride={stride} >= 1.")
  n = (len(ids) - length) // stride + 1
  if n < 1:
    raise ValueError(f"text of {len(ids)} tokens is shorter than one window of {length}; use a "
                     "shorter window.")
  idx = np.arange(n)[:, None] * stride + np.arange(length)[None, :]
  return ids[idx].astype(np.int32)


def text_dataset(name: str, text: str, *, level: str = "char", window: int = 128,
                 stride: int | None = None, test_fraction: float = 0.1, min_count: int = 2,
                 source: str = "") -> Dataset:
  """Tokenize `text`, split the token stream (train first), cut windows -> Dataset(kind="text").

  Char level: the vocabulary is every character of the text (a fixed alphabet, so the test split
  has no unknowns). Word level: the vocabulary comes from the training part only; unseen words in
  the test part become <unk>. `stride` applies to the training windows; test windows never overlap.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction} must be in (0, 1).")
  if level == "char":
    cut = int(len(text) * (1.0 - test_fraction))
    tok = CharTokenizer.fit(text)
    train_ids, test_ids = tok.encode(text[:cut]), tok.encode(text[cut:])
  elif level == "word":
    words = WordTokenizer.split(text)
    cut = int(len(words) * (1.0 - test_fraction))
    # Refit on the training words only: rejoin them so `fit` sees exactly those tokens.
    tok = WordTokenizer.fit(" ".join(words[:cut]), min_count=min_count)
    ids = np.asarray([tok._ids.get(w, 0) for w in words], np.int32)
    train_ids, test_ids = ids[:cut], ids[cut:]
  else:
    raise ValueError(f"level={level!r}; use 'char' or 'word'.")
  train = {"tokens": windows(train_ids, window, stride)}
  test = {"tokens": windows(test_ids, window)}
  info = DatasetInfo(name=name, kind="text", shape=(window,), vocab=tok.vocab,
                     source=source or name)
  return Dataset(info, train, test)


def tokenizer_for(info: DatasetInfo):
  """The tokenizer that decodes a text dataset's ids (char when every token is one character)."""
  if info.kind != "text":
    raise ValueError(f"dataset {info.name!r} is {info.kind!r}, not text.")
  if info.vocab and info.vocab[0] == UNK:
    return WordTokenizer(info.vocab)
  return CharTokenizer(info.vocab)


def _register():
  from gdl_jax import data as data_lib
  specs = {
      "pydoc_text": ("pydoc", "char", 128, "Python docs topics (pydoc_data), characters, windows of 128"),
      "pydoc_words": ("pydoc", "word", 64, "Python docs topics (pydoc_data), words, windows of 64"),
      "novel_text": ("novel", "char", 128, "Austen's Lady Susan (music21), characters, windows of 128"),
      "novel_words": ("novel", "word", 64, "Austen's Lady Susan (music21), words, windows of 64"),
  }
  for name, (src, level, window, desc) in specs.items():
    def loader(data_dir, src=src, level=level, window=window, name=name):
      del data_dir  # read from installed packages, nothing to prepare
      return text_dataset(name, SOURCES[src](), level=level, window=window,
                          source=f"{src} text ({level} level)")
    data_lib.register(name, desc)(loader)
    if src == "novel":
      data_lib._STATUS[name] = _novel_status


def _novel_status(data_dir: str) -> str:
  del data_dir
  try:
    import music21  # noqa: F401
    return "offline (music21)"
  except ImportError:
    return "missing: pip install music21"


_register()
