"""Captions and the caption tokenizer (gdl_jax.data.captions)."""

import numpy as np
import pytest

from gdl_jax.data import captions as C


@pytest.fixture(scope="module")
def digits_captions(digits):
  return C.add_captions(digits)


def _texts(ds, split):
  tok = C.tokenizer_for(ds.info)
  return {tok.decode(c) for c in ds.__getattribute__(split)["caption"].reshape(-1, C.MAX_LEN)}


def test_held_out_template_captions_never_appear_in_training(digits_captions):
  train, test = _texts(digits_captions, "train"), _texts(digits_captions, "test")
  assert train and test and not train & test
  held_out_prefixes = ("an image showing", "this is")
  assert not [t for t in train if t.startswith(held_out_prefixes)]
  assert all(t.startswith(held_out_prefixes) for t in test)
  # and every held-out template filled with any training phrase is absent from training too
  for tmpl in C.HELD_OUT_TEMPLATES:
    for y in range(10):
      for choice in range(3):
        assert C.prompt("digits", y, {"ink": 1}, tmpl, choice) not in train


def test_captions_name_the_class_and_the_measured_attribute(digits_captions):
  ds = digits_captions
  tok = C.tokenizer_for(ds.info)
  assert ds.info.name == "digits_captions" and ds.info.base == "digits"
  assert ds.train["caption"].shape == (len(ds.train["label"]), C.VARIANTS, C.MAX_LEN)
  ink = C.mean_intensity(ds.train["image"], ds.info.levels)
  for i in range(60):
    y, bucket = int(ds.train["label"][i]), int(ds.train["attributes"][i, 0])
    for c in ds.train["caption"][i]:
      ws = C.words(tok.decode(c))
      assert C.DIGIT_WORDS[y] in ws or str(y) in ws
      assert "thick" not in ws or bucket == 1
      assert "thin" not in ws or bucket == -1
  # "thick" images of a class carry more ink than its "thin" ones
  for y in range(10):
    sel = ds.train["label"] == y
    att = ds.train["attributes"][sel, 0]
    assert ink[sel][att == 1].min() > ink[sel][att == -1].max()


def test_tokenizer_round_trip_and_padding():
  tok = C.Tokenizer(C.vocabulary("fashion_mnist"))
  ids = tok.encode("A photo of a dark T-shirt")
  assert ids.shape == (C.MAX_LEN,) and ids.dtype == np.int32
  assert tok.decode(ids) == "a photo of a dark t-shirt"
  n = len(C.words("a photo of a dark t-shirt"))
  assert ids[n] == C.EOS and (ids[n + 1:] == C.PAD).all() and (ids[:n] > C.UNK).all()


def test_unknown_words_get_one_clear_message_or_unk():
  tok = C.Tokenizer(C.vocabulary("fashion_mnist"))
  with pytest.raises(C.CaptionError, match=r"'purple'.*'ankel' \(did you mean ankle\?\)"):
    tok.encode("a purple ankel boot")
  ids = tok.encode("a purple boot", unknown="unk")
  assert ids[1] == C.UNK and tok.decode(ids) == "a <unk> boot"
  with pytest.raises(C.CaptionError, match="at most"):
    tok.encode("a " * 20 + "coat")
  with pytest.raises(C.CaptionError, match="no words"):
    tok.encode("  !! ")


def test_class_prompts(digits_captions):
  assert C.class_prompts(digits_captions.info)[7] == "a photo of a seven"
  info = digits_captions.info
  fashion = type(info)(name="fashion_mnist", kind="image", shape=(28, 28, 1), levels=256,
                       num_classes=10)
  assert C.class_prompts(fashion)[9] == "a photo of an ankle boot"
  assert C.prompt("fashion_mnist", 9, {"brightness": -1, "width": 0}) == "a photo of a dark ankle boot"


def test_photo_crops_captions_name_the_photo_and_its_measured_tint():
  pytest.importorskip("skimage")
  from gdl_jax import data
  ds = data.load("photo_crops_captions")
  tok = C.tokenizer_for(ds.info)
  assert ds.info.base == "photo_crops" and ds.info.shape == (32, 32, 3)
  assert [n for n in C.attribute_words("photo_crops")] == ["brightness", "tint"]
  tint = C.red_minus_blue(ds.train["image"], ds.info.levels)
  for i in range(0, len(ds.train["label"]), 97):
    y, (b, t) = int(ds.train["label"][i]), ds.train["attributes"][i]
    for c in ds.train["caption"][i]:
      text = tok.decode(c)
      assert any(n in text for n in C.PHOTO_NOUNS[y]), text
      ws = C.words(text)
      assert "reddish" not in ws or t == 1
      assert "bluish" not in ws or t == -1
      assert "dark" not in ws or b == -1
  for y in range(len(C.PHOTO_NOUNS)):  # within each photo, "reddish" crops lean redder than "bluish"
    sel = ds.train["label"] == y
    att = ds.train["attributes"][sel, 1]
    assert tint[sel][att == 1].min() > tint[sel][att == -1].max()
  # red minus blue on hand-made pixels: pure red +1, pure blue -1, grey 0
  px = np.array([[[[255, 0, 0]]], [[[0, 0, 255]]], [[[128, 128, 128]]]], np.uint8)
  np.testing.assert_allclose(C.red_minus_blue(px, 256), [1.0, -1.0, 0.0], atol=1e-7)
  with pytest.raises(C.DataError, match="RGB"):
    C.red_minus_blue(px[..., :1], 256)
  # held-out templates stay out of training here too
  assert not _texts(ds, "train") & _texts(ds, "test")
