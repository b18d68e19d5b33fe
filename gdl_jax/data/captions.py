"""Captions for labelled image datasets, made from each image's label and measured attributes, and
the small word-level tokenizer that reads them (Ch. 13: CLIP, text-to-image diffusion).

    ds = gdl_jax.data.load("fashion_mnist_captions")   # fashion_mnist + "caption" [N, K, L] tokens
    tok = tokenizer_for(ds.info)                       # words <-> ids, vocabulary = ds.info.vocab
    tok.encode("a dark ankle boot")                    # [L] int32, 0-padded; unknown words raise

A caption is a template filled with a noun phrase: "a photo of a dark wide coat", "the digit 7",
"a thick seven". Nouns are the class name or a synonym; attribute words come from measurements of
the image itself, split into terciles *within its class* (so "dark" means dark for a coat):
- Fashion-MNIST: "dark" / "light" from the mean intensity, "narrow" / "wide" from the silhouette
  width (columns holding any pixel above a quarter of full scale); the middle tercile says nothing.
- digits: "thin" / "thick" strokes from the mean intensity (the ink mass of the 8x8 image).
- photo_crops: the photo's subject ("a cat", "a rocket", ...); "dark" / "light" from the mean
  intensity and the dominant colour as "bluish" / "reddish" from the mean red minus the mean blue
  (both within the photo, so "reddish" is a crop redder than that photo's usual crop).
Each present attribute word appears in a caption with probability 0.7, so short captions ("a
coat") and long ones ("a picture of a dark narrow coat") both occur.

Templates: the training split's captions use TRAIN_TEMPLATES only; the test split's use
HELD_OUT_TEMPLATES only, so retrieval on test captions measures generalisation to new phrasings
(a held-out template's caption never appears in training: tests/data/test_captions.py).

Tokenizer: lower-cased words (`t-shirt` is one word), ids 0 = <pad>, 1 = <eos> (appended after the
last word), 2 = <unk>; the rest is the sorted vocabulary of every word the templates, nouns and
attributes can produce (fixed, not data dependent). `encode` raises CaptionError naming the unknown
words and the nearest known ones (pass unknown="unk" to map them to <unk> instead).
"""

from __future__ import annotations

import dataclasses
import difflib
import re

import numpy as np

from gdl_jax.data.info import DataError, Dataset, DatasetInfo

PAD, EOS, UNK = 0, 1, 2
SPECIALS = ("<pad>", "<eos>", "<unk>")
MAX_LEN = 16
VARIANTS = 4  # captions drawn per image (the train step picks one per example)
ATTRIBUTE_P = 0.7

TRAIN_TEMPLATES = (
    "{p}",
    "a photo of {p}",
    "a picture of {p}",
    "{p} on a black background",
    "a small grey image of {p}",
    "a low resolution photo of {p}",
)
HELD_OUT_TEMPLATES = (
    "an image showing {p}",
    "this is {p}",
)
CLASS_PROMPT = "a photo of {p}"  # zero-shot classification prompt (a training template)

FASHION_NOUNS = (
    ("t-shirt", "top", "tee"),
    ("pair of trousers", "pair of pants", "pair of jeans"),
    ("pullover", "sweater", "jumper"),
    ("dress", "gown", "frock"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "summer shoe", "open shoe"),
    ("shirt", "blouse", "button shirt"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "short boot"),
)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# attribute name -> (word for the low tercile, word for the high tercile)
FASHION_ATTRIBUTES = {"brightness": ("dark", "light"), "width": ("narrow", "wide")}
DIGIT_ATTRIBUTES = {"ink": ("thin", "thick")}
# photo_crops' labels, in gdl_jax.data.photos.PHOTOS order
PHOTO_NOUNS = (
    ("astronaut", "spacewoman", "person in a space suit"),
    ("cup of coffee", "coffee cup", "mug of coffee"),
    ("cat", "tabby cat", "kitten"),
    ("rocket", "space rocket", "rocket on its launch pad"),
    ("stained tissue sample", "microscope slide", "tissue section"),
    ("field of galaxies", "deep space picture", "night sky full of galaxies"),
    ("retina", "eye fundus", "retinal scan"),
)
PHOTO_ATTRIBUTES = {"brightness": ("dark", "light"), "tint": ("bluish", "reddish")}
SCHEMES = ("fashion_mnist", "digits", "photo_crops")
_NOUNS = {"fashion_mnist": FASHION_NOUNS, "photo_crops": PHOTO_NOUNS}
_ATTRIBUTES = {"fashion_mnist": FASHION_ATTRIBUTES, "digits": DIGIT_ATTRIBUTES,
               "photo_crops": PHOTO_ATTRIBUTES}

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class CaptionError(DataError):
  """A prompt the tokenizer cannot read (unknown words, too long); the message says which."""


def words(text: str) -> list[str]:
  """Lower-cased words of a text (letters/digits, inner hyphens kept)."""
  return _WORD.findall(text.lower())


def _article(phrase: str) -> str:
  vowel = phrase[0] in "aeiou" and not phrase.startswith("one")  # "an eight", "a one"
  return ("an " if vowel else "a ") + phrase


# ---------------------------------------------------------------------------------------------
# attributes measured on the images

def mean_intensity(images: np.ndarray, levels: int) -> np.ndarray:
  """[N, H, W, C] integer levels -> [N] mean in [0, 1]."""
  return images.reshape(len(images), -1).mean(axis=1) / (levels - 1)


def silhouette_width(images: np.ndarray, levels: int) -> np.ndarray:
  """[N, H, W, C] -> [N] number of columns holding a pixel above a quarter of full scale."""
  col_max = images.max(axis=(1, 3))  # [N, W]
  return (col_max > 0.25 * (levels - 1)).sum(axis=1).astype(np.float32)


def red_minus_blue(images: np.ndarray, levels: int) -> np.ndarray:
  """[N, H, W, 3] -> [N] mean red minus mean blue, in [-1, 1] (> 0: the crop leans red)."""
  if images.shape[-1] != 3:
    raise DataError(f"the tint attribute needs RGB images [N, H, W, 3], got {images.shape}.")
  x = images.reshape(len(images), -1, 3).astype(np.float64).mean(axis=1) / (levels - 1)
  return (x[:, 0] - x[:, 2]).astype(np.float32)


def measure(images: np.ndarray, levels: int, scheme: str) -> dict[str, np.ndarray]:
  """The raw attribute values of each image: {"brightness", "width"}, {"ink"} or {"brightness",
  "tint"}, [N] each."""
  if scheme == "fashion_mnist":
    return {"brightness": mean_intensity(images, levels), "width": silhouette_width(images, levels)}
  if scheme == "photo_crops":
    return {"brightness": mean_intensity(images, levels), "tint": red_minus_blue(images, levels)}
  return {"ink": mean_intensity(images, levels)}


def tercile_edges(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, 2] per-class 1/3 and 2/3 quantiles (of the training split)."""
  return np.stack([np.quantile(values[labels == k], [1 / 3, 2 / 3]) if np.any(labels == k)
                   else np.array([np.inf, -np.inf]) for k in range(num_classes)])


def buckets(values: np.ndarray, labels: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """[N] -1 (low tercile of its class), 0 (middle), +1 (high)."""
  lo, hi = edges[labels, 0], edges[labels, 1]
  return np.where(values < lo, -1, np.where(values > hi, 1, 0)).astype(np.int8)


# ---------------------------------------------------------------------------------------------
# phrases and captions

def _scheme_of(info: DatasetInfo) -> str:
  name = info.base or info.name
  if name not in SCHEMES:
    raise DataError(f"captions exist for {SCHEMES}; {name!r} has none.")
  return name


def attribute_words(scheme: str) -> dict[str, tuple[str, str]]:
  return _ATTRIBUTES[scheme]


def noun_phrase(scheme: str, label: int, adjectives: list[str], choice: int) -> str:
  """The noun phrase with its article: "a dark wide coat", "the thick digit 7", "an eight",
  "a light reddish cat"."""
  adj = " ".join(adjectives)
  if scheme in _NOUNS:
    nouns = _NOUNS[scheme][label]
    return _article(" ".join(filter(None, [adj, nouns[choice % len(nouns)]])))
  form = choice % 3
  if form == 0:
    return _article(" ".join(filter(None, [adj, DIGIT_WORDS[label]])))
  if form == 1:
    return "the " + " ".join(filter(None, [adj, f"digit {label}"]))
  return _article(" ".join(filter(None, [adj, f"{label}"])))


def caption(scheme: str, label: int, attrs: dict[str, int], rng: np.random.Generator,
            templates=TRAIN_TEMPLATES) -> str:
  """One random caption for an image of class `label` with attribute buckets `attrs` (-1/0/1)."""
  adjectives = [attribute_words(scheme)[name][0 if b < 0 else 1]
                for name, b in attrs.items() if b != 0 and rng.random() < ATTRIBUTE_P]
  phrase = noun_phrase(scheme, int(label), adjectives, int(rng.integers(3)))
  return templates[int(rng.integers(len(templates)))].format(p=phrase)


def prompt(scheme: str, label: int, attrs: dict[str, int] | None = None, template: str = CLASS_PROMPT,
           choice: int = 0) -> str:
  """A deterministic caption: the class's first noun, every given attribute word, one template."""
  adjectives = [attribute_words(scheme)[name][0 if b < 0 else 1]
                for name, b in (attrs or {}).items() if b != 0]
  return template.format(p=noun_phrase(scheme, int(label), adjectives, choice))


def class_prompts(info: DatasetInfo, template: str = CLASS_PROMPT) -> list[str]:
  """One zero-shot prompt per class: "a photo of a coat", "a photo of a seven"."""
  scheme = _scheme_of(info)
  return [prompt(scheme, k, template=template) for k in range(int(info.num_classes))]


# ---------------------------------------------------------------------------------------------
# tokenizer

def vocabulary(scheme: str) -> tuple[str, ...]:
  """Specials, then every word a caption of `scheme` can contain, sorted."""
  texts = list(TRAIN_TEMPLATES) + list(HELD_OUT_TEMPLATES) + ["a an the"]
  for pair in attribute_words(scheme).values():
    texts += pair
  if scheme in _NOUNS:
    texts += [n for nouns in _NOUNS[scheme] for n in nouns]
  else:
    texts += list(DIGIT_WORDS) + ["digit"] + [str(d) for d in range(10)]
  vocab = sorted({w for t in texts for w in words(t.replace("{p}", ""))})
  return SPECIALS + tuple(vocab)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """Words <-> ids over a fixed vocabulary (ids 0/1/2 = <pad>/<eos>/<unk>)."""

  vocab: tuple[str, ...]
  max_len: int = MAX_LEN

  def __post_init__(self):
    if self.vocab[:3] != SPECIALS:
      raise ValueError(f"a caption vocabulary starts with {SPECIALS}; got {self.vocab[:3]}.")
    object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.vocab)})

  def encode(self, text: str, *, unknown: str = "raise") -> np.ndarray:
    """[max_len] int32: word ids, <eos>, then <pad>. unknown="raise" | "unk"."""
    ws = words(text)
    if not ws:
      raise CaptionError(f"the prompt {text!r} has no words; write e.g. {'a photo of a coat'!r}.")
    missing = [w for w in ws if w not in self._ids]
    if missing and unknown == "raise":
      known = [w for w in self.vocab[3:]]
      hints = []
      for w in dict.fromkeys(missing):
        close = difflib.get_close_matches(w, known, n=3)
        hints.append(f"{w!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
      raise CaptionError(f"the prompt {text!r} has words the model never saw: {'; '.join(hints)}. "
                         f"Known words: {' '.join(known)}.")
    if len(ws) + 1 > self.max_len:
      raise CaptionError(f"the prompt {text!r} has {len(ws)} words; at most {self.max_len - 1} fit.")
    ids = [self._ids.get(w, UNK) for w in ws] + [EOS]
    return np.asarray(ids + [PAD] * (self.max_len - len(ids)), np.int32)

  def encode_batch(self, texts, **kw) -> np.ndarray:
    return np.stack([self.encode(t, **kw) for t in texts])

  def decode(self, ids) -> str:
    out = []
    for i in np.asarray(ids).tolist():
      if i in (PAD, EOS):
        break
      out.append(self.vocab[i])
    return " ".join(out)


def tokenizer_for(info: DatasetInfo) -> Tokenizer:
  """The tokenizer of a captioned dataset (its vocabulary is in the dataset's metadata)."""
  if not info.vocab or info.vocab[:3] != SPECIALS:
    raise DataError(f"dataset {info.name!r} has no captions; use e.g. 'fashion_mnist_captions' or "
                    "'digits_captions'.")
  return Tokenizer(tuple(info.vocab))


# ---------------------------------------------------------------------------------------------
# the captioned dataset

def add_captions(ds: Dataset, *, variants: int = VARIANTS, seed: int = 0) -> Dataset:
  """The dataset plus, per split, "caption" [N, variants, MAX_LEN] int32 token ids and "attributes"
  [N, A] int8 buckets (-1/0/+1, A = the scheme's attributes in order). Train captions use
  TRAIN_TEMPLATES, test captions HELD_OUT_TEMPLATES; terciles come from the training split."""
  info = ds.info
  scheme = _scheme_of(info)
  names = list(attribute_words(scheme))
  tok = Tokenizer(vocabulary(scheme))
  raw_train = measure(ds.train["image"], info.levels, scheme)
  edges = {a: tercile_edges(raw_train[a], ds.train["label"], info.num_classes) for a in names}
  out = {}
  for split_name, split, templates, s in (("train", ds.train, TRAIN_TEMPLATES, 0),
                                          ("test", ds.test, HELD_OUT_TEMPLATES, 1)):
    raw = raw_train if split_name == "train" else measure(split["image"], info.levels, scheme)
    labels = split["label"]
    attrs = np.stack([buckets(raw[a], labels, edges[a]) for a in names], axis=1)  # [N, A]
    rng = np.random.default_rng([seed, s])
    n, a = len(labels), len(names)
    # every random choice at once; a caption is a function of (label, template, noun, words shown)
    tmpl = rng.integers(len(templates), size=(n, variants))
    noun = rng.integers(3, size=(n, variants))
    shown = (rng.random((n, variants, a)) < ATTRIBUTE_P) * attrs[:, None, :]  # [N, K, A] -1/0/1
    code = (labels[:, None] * len(templates) + tmpl) * 3 + noun
    for j in range(a):
      code = code * 3 + (shown[..., j] + 1)
    uniq, inverse = np.unique(code.reshape(-1), return_inverse=True)
    table = np.zeros((len(uniq), MAX_LEN), np.int32)
    for u, c in enumerate(uniq.tolist()):
      digits = []
      for _ in range(a):
        c, r = divmod(c, 3)
        digits.append(r - 1)
      c, nn_ = divmod(c, 3)
      y, t = divmod(c, len(templates))
      adjectives = [attribute_words(scheme)[name][0 if b < 0 else 1]
                    for name, b in zip(names, digits[::-1]) if b != 0]
      table[u] = tok.encode(templates[t].format(p=noun_phrase(scheme, y, adjectives, nn_)))
    caps = table[inverse].reshape(n, variants, MAX_LEN)
    out[split_name] = {**split, "caption": caps, "attributes": attrs}
  new_info = dataclasses.replace(info, name=f"{info.name}_captions", base=info.name,
                                 vocab=tok.vocab, source=f"{info.source}; captions by gdl_jax.data.captions")
  return Dataset(new_info, out["train"], out["test"])


def _register():
  from gdl_jax.data import load, register

  @register("fashion_mnist_captions", "fashion_mnist + generated captions (class, dark/light, "
            "narrow/wide; held-out templates on test)")
  def _fashion(data_dir: str) -> Dataset:
    return add_captions(load("fashion_mnist", data_dir))

  @register("digits_captions", "digits + generated captions ('a seven', 'the digit 7', thin/thick)")
  def _digits(data_dir: str) -> Dataset:
    return add_captions(load("digits", data_dir))

  @register("photo_crops_captions", "photo_crops + generated captions (the photo's subject, "
            "dark/light, bluish/reddish; needs scikit-image)")
  def _photos(data_dir: str) -> Dataset:
    ds = load("photo_crops", data_dir)
    if len(ds.info.class_names) != len(PHOTO_NOUNS):
      raise DataError(f"photo_crops has {len(ds.info.class_names)} photos; captions name "
                      f"{len(PHOTO_NOUNS)}.")
    return add_captions(ds)


_register()
