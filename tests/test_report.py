"""`gdl-jax report`: one static page of runs, checked in a real browser (headless Chromium: every
<img> loaded after the folder was moved), and one clear error line for bad input."""

import json
import math
import os
import re
import shutil
import struct
import subprocess
import wave

import numpy as np
import pytest

from gdl_jax import cli, report

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


def _err(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gdl-jax: error:"), err
  return err[0]


def _tone(path, seconds=0.2, rate=8000):
  """A 440 Hz tone, 16-bit mono: what a music run's .wav looks like to the page."""
  t = np.arange(int(seconds * rate)) / rate
  with wave.open(str(path), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes((np.sin(2 * math.pi * 440 * t) * 20000).astype("<i2").tobytes())


def _midi(path):
  """One note (middle C, a quarter) as a standard MIDI file (format 0)."""
  track = bytes([0, 0x90, 60, 64, 96, 0x80, 60, 0, 0, 0xFF, 0x2F, 0])
  with open(path, "wb") as f:
    f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk" + struct.pack(">I", len(track)) + track)


def _add_music_outputs(run: str) -> None:
  os.makedirs(os.path.join(run, "audio"))
  _tone(os.path.join(run, "audio", "sample_0.wav"))
  _midi(os.path.join(run, "sample_0.mid"))
  with open(os.path.join(run, "samples.txt"), "w") as f:
    f.write("a <b> & c\n")


def _run_from_digits(run: str, digits) -> None:
  """A run directory as `gdl-jax train vae --variant tiny` + `evaluate` leave it, its files made
  from real digits (grids, GIF frames, the harness's metrics of real images): no training."""
  import jax
  from experiments import vae_digits
  from gdl_jax.evaluation import harness
  from gdl_jax.evaluation.grids import save_grid, save_scatter
  from gdl_jax.train import loop
  config = vae_digits.get_config("tiny")
  loop.prepare_workdir(run, config, experiment="vae_digits")
  x, levels = np.asarray(digits.test["image"]), digits.info.levels
  save_grid(x[:16], os.path.join(run, "samples.png"), levels=levels)
  save_grid(x[16:48], os.path.join(run, "reconstructions.png"), nrow=16, levels=levels)
  flat = x[:200].reshape(200, -1).astype(np.float64)
  save_scatter(flat[:, 20:22], np.asarray(digits.test["label"])[:200], os.path.join(run, "latent_scatter.png"))
  os.makedirs(os.path.join(run, "progress"))
  for i in range(3):
    save_grid(x[9 * i:9 * i + 9], os.path.join(run, "progress", f"step_{i:07d}.png"), levels=levels)
  loop._write_progress_gif(run)
  os.makedirs(os.path.join(run, "checkpoints", "4"))
  w = loop.MetricsWriter(run, tensorboard=False)
  for step in range(1, 5):
    w.write(step, "train", {"loss": float(flat[step].mean()), "kl": float(flat[step].std())})
  w.write(4, "test", {"loss": float(flat[:100].mean())})
  m = harness.evaluate(digits, samples=x[:40], key=jax.random.key(0), train_subset=300)
  with open(os.path.join(run, "metrics.json"), "w") as f:
    json.dump({"experiment": "vae_digits", "dataset": "digits", "step": 4, **m}, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two runs: one with progress.gif, one without it but with audio, MIDI and a text sample (as a
  music run writes them)."""
  from gdl_jax import data
  digits = data.load("digits")
  root = tmp_path_factory.mktemp("runs")
  a, b = str(root / "vae_a"), str(root / "vae_b")
  _run_from_digits(a, digits)
  shutil.copytree(a, b)
  os.remove(os.path.join(b, "progress.gif"))
  _add_music_outputs(b)
  return root, a, b


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
  """The same from a real training: the tiny VAE (progress grids -> progress.gif), evaluated
  without the classifier; a copy without the GIF, with music outputs."""
  root = tmp_path_factory.mktemp("trained")
  a, b = str(root / "vae_a"), str(root / "vae_b")
  assert cli.main(["train", "vae", "--dataset", "digits", "--variant", "tiny", "--steps", "4", "--quiet",
                   "--config.num_samples=16", "--workdir", a, "--config.sample_every=2"]) == 0
  assert cli.main(["evaluate", a, "--no_features", "--num_samples", "16", "--quiet"]) == 0
  shutil.copytree(a, b)
  os.remove(os.path.join(b, "progress.gif"))
  _add_music_outputs(b)
  return root, a, b


def test_report_page_lists_every_output(runs, tmp_path, capsys):
  root, a, b = runs
  out = tmp_path / "report"
  assert cli.main(["report", str(root), "--out", str(out), "--baselines"]) == 0
  assert capsys.readouterr().out.startswith(f"wrote {out}/index.html")
  page = (out / "index.html").read_text()
  srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
  for name in ("samples.png", "progress.gif", "reconstructions.png", "latent_scatter.png"):
    assert f"runs/vae_a/{name}" in srcs, name
  assert "runs/vae_b/progress.gif" not in srcs and "curves/vae_a.png" in srcs
  assert all(not s.startswith(("/", "file:")) and (out / s).is_file() for s in srcs)  # relative, copied
  assert 'href="runs/vae_b/audio/sample_0.wav"' in page and 'href="runs/vae_b/sample_0.mid"' in page
  assert "a &lt;b&gt; &amp; c" in page  # text samples inline, escaped
  m = json.load(open(os.path.join(a, "metrics.json")))
  assert f"<td>{m['novelty_ratio']:.3f}</td>" in page  # the harness's columns and formats
  assert not any("checkpoints" in s or "/tb/" in s for s in srcs)


def test_report_baselines_beside_the_runs(runs, tmp_path, capsys):
  root, a, _ = runs
  table = tmp_path / "quality_digits.json"
  table.write_text(json.dumps({
      "independent categorical": {"bits_per_dim": 1.234, "num_samples": 16},
      "vae_digits (old run)": {"experiment": "vae_digits", "bits_per_dim": 9.0}}))
  out = tmp_path / "r"
  assert cli.main(["report", a, "--out", str(out), "--baselines", str(table)]) == 0
  page = (out / "index.html").read_text()
  metrics = page.split('id=metrics')[1].split("<section>")[0]
  assert '<tr class="baseline"><th scope="row">independent categorical</th><td>1.234</td>' in metrics
  assert '<tr class="run"><th scope="row">vae_a</th>' in metrics and "old run" not in metrics


def test_report_bad_input_is_one_line_and_never_overwrites(runs, tmp_path, capsys):
  root, a, _ = runs
  user = tmp_path / "mine"
  user.mkdir()
  (user / "notes.txt").write_text("mine")
  afile = tmp_path / "afile.html"
  afile.write_text("mine")
  for argv, message in [
      ([str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "does not exist"),
      ([os.path.join(a, "config.json"), "--out", str(tmp_path / "o")], "is a file, not a run directory"),
      ([str(user), "--out", str(tmp_path / "o")], "is not a gdl-jax run directory"),
      ([a, "--out", str(user)], "holds other files"),
      ([a, "--out", str(afile)], "is a file"),
      ([a, "--out", str(afile / "sub")], "which is a file"),
      ([a, "--out", str(tmp_path / "o"), "--baselines", str(afile)], "is not a quality table"),
  ]:
    assert cli.main(["report", *argv]) == 2, argv
    assert message in _err(capsys), argv
  assert (user / "notes.txt").read_text() == "mine" and afile.read_text() == "mine"
  assert not (tmp_path / "o").exists()
  # an earlier report is replaced (its own files only); a file a user put there stays
  out = tmp_path / "rep"
  assert cli.main(["report", str(root), "--out", str(out), "--quiet"]) == 0
  (out / "my_notes.txt").write_text("kept")
  assert cli.main(["report", a, "--out", str(out), "--quiet"]) == 0
  assert not (out / "runs" / "vae_b").exists() and (out / "runs" / "vae_a" / "samples.png").exists()
  assert (out / "my_notes.txt").read_text() == "kept"
  # a user's file where the report would write: refused, nothing changed
  os.remove(out / report.MANIFEST)
  assert cli.main(["report", a, "--out", str(out)]) == 2 and "holds other files" in _err(capsys)


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: "
                                    "apt-get install chromium; .ci/run installs it)")


@needs_chromium
def test_report_opens_in_chromium_with_every_image_loaded(runs, tmp_path):
  _check_in_chromium(runs[0], tmp_path)


@pytest.mark.slow
@needs_chromium
def test_report_of_trained_runs_opens_in_chromium(trained_runs, tmp_path):
  root, a, _ = trained_runs
  _check_in_chromium(root, tmp_path)
  page = (tmp_path / "elsewhere" / "report" / "index.html").read_text()
  for name in ("samples.png", "progress.gif", "reconstructions.png", "latent_scatter.png", "morph.png"):
    assert f'src="runs/vae_a/{name}"' in page, name


def _check_in_chromium(root, tmp_path):
  built = tmp_path / "built"
  assert cli.main(["report", str(root), "--out", str(built), "--quiet"]) == 0
  moved = tmp_path / "elsewhere" / "report"  # relative links: the folder works wherever it goes
  moved.parent.mkdir()
  shutil.move(str(built), str(moved))
  page = (moved / "index.html").read_text()
  n_img = page.count("<img ")
  assert n_img >= 8
  probe = page.replace("</body>", """<script>
addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.images = imgs.length;
  document.body.dataset.loaded = ok.length;
  document.body.dataset.broken = imgs.filter(i => !ok.includes(i)).map(i => i.getAttribute('src')).join(' ');
});
</script></body>""")
  (moved / "_probe.html").write_text(probe)
  flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=10000", "--user-data-dir=" + str(tmp_path / "profile")]
  dom = subprocess.run(flags + ["--dump-dom", (moved / "_probe.html").as_uri()], capture_output=True,
                       text=True, timeout=120).stdout
  body = re.search(r"<body([^>]*)>", dom).group(1)
  attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
  assert attrs.get("images") == str(n_img) and attrs.get("loaded") == str(n_img), attrs
  shot = tmp_path / "shot.png"
  subprocess.run(flags + ["--window-size=1280,1600", f"--screenshot={shot}", (moved / "index.html").as_uri()],
                 capture_output=True, timeout=120)
  from PIL import Image
  im = np.asarray(Image.open(shot).convert("L"), np.float32)
  assert im.shape == (1600, 1280)
  # the page is drawn: text, tables and the images (grey sample grids, plots), not a blank page
  assert (im < 128).mean() > 0.01 and len(np.unique(im)) > 50
  if os.environ.get("GDL_REPORT_SCREENSHOT"):  # to look at it: GDL_REPORT_SCREENSHOT=/tmp/shot.png
    shutil.copyfile(shot, os.environ["GDL_REPORT_SCREENSHOT"])


def test_a_run_without_a_harness_dataset_gets_its_own_metrics_table(runs, tmp_path, capsys):
  """A pipeline run (World Models: no `dataset` in its config, its own metrics.json keys) is shown
  with its scalar metrics, not as an empty row under an unknown dataset."""
  root, a, _ = runs
  world = tmp_path / "runs" / "world"
  world.mkdir(parents=True)
  (world / "run.json").write_text(json.dumps({"experiment": "world_models"}))
  (world / "config.json").write_text(json.dumps({"seed": 0, "collect": {"episodes": 2}}))
  (world / "metrics.json").write_text(json.dumps({"real_eval_mean": 30.125, "m_beats_baselines": True,
                                                  "real_eval_returns": [1.0, 2.0]}))
  shutil.copytree(a, tmp_path / "runs" / "vae_a")
  out = tmp_path / "report"
  assert cli.main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
  capsys.readouterr()
  page = (out / "index.html").read_text()
  assert "<h3>world (world_models)</h3>" in page and "<h3>?</h3>" not in page
  assert '<th scope="row">real_eval_mean</th><td>30.12</td>' in page
  assert '<th scope="row">m_beats_baselines</th><td>True</td>' in page
  assert "real_eval_returns" not in page.split("<h3>world (world_models)</h3>")[1].split("</table>")[0]
  assert "<h3>digits</h3>" in page   # the harness runs keep their dataset table
