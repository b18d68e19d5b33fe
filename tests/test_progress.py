"""Progress and output: every long step says what it does on stderr, each result is printed once on
stdout, and --quiet leaves only the paths written (and errors)."""

import re

import jax
import numpy as np

from gdl_jax import cli, progress
from gdl_jax.evaluation import classifier, harness

TABLE_HEAD = "| model | bits/dim | FD |"


def _tiny_classifier(monkeypatch, tmp_path, steps: int = 12):
  """A fresh classifier cache holding nothing, and a classifier of a few tiny steps (trained here in
  seconds, as the real one is on a new machine in minutes)."""
  cache = tmp_path / "cache"
  monkeypatch.setenv("GDL_CACHE_DIR", str(cache))
  original = classifier.classifier_config

  def tiny(variant="default", dataset="digits"):
    c = original("tiny", dataset)
    c.steps, c.log_every, c.eval_every, c.ckpt_every = steps, steps, steps, steps
    c.optimizer.warmup_steps = 2
    return c

  monkeypatch.setattr(classifier, "classifier_config", tiny)
  return cache


def test_train_evaluate_shows_each_step_once_and_quiet_is_silent(tmp_path, monkeypatch, capsys):
  cache = _tiny_classifier(monkeypatch, tmp_path)
  wd = str(tmp_path / "vae")
  argv = ["train", "vae", "--dataset", "digits", "--variant", "tiny", "--steps", "4", "--workdir", wd,
          "--evaluate", "--config.num_samples=16"]
  assert cli.main(argv) == 0
  out, err = capsys.readouterr()
  # why the pause after training: the classifier trains, once, into the cache, with its own bar
  line = [ln for ln in err.splitlines() if "feature classifier" in ln]
  assert len(line) == 1 and line[0].startswith("training the digits feature classifier for the "
                                               "Fréchet distance") and str(cache) in line[0], line
  assert "classifier: 100%" in err.replace("\r", "\n")
  for step in (r"held-out log-likelihood: 100%", r"drawing \d+ samples: done in",
               r"nearest neighbours in \d+ training examples \(novelty\): done in"):
    assert re.search(step, err.replace("\r", "\n")), step
  # each result once, on stdout; the bars and notes only on stderr
  assert out.count(TABLE_HEAD) == 1 and out.count("| vae_digits |") == 1, out
  assert out.count("run written to") == 1 and out.count("metrics written to") == 1, out
  assert TABLE_HEAD not in err and "%|" not in out
  done = cache / "classifiers" / "digits_default" / "done.json"
  stamp = done.stat().st_mtime_ns
  assert cli.main(argv + ["--quiet"]) == 0  # the finished run again: samples and evaluation only
  out, err = capsys.readouterr()
  assert err == "", err
  assert [ln.split(":")[0] for ln in out.splitlines()] == [f"run written to {wd}",
                                                          f"metrics written to {wd}/metrics.json (and .md)"]
  assert done.stat().st_mtime_ns == stamp  # the cached classifier was used, not trained again
  assert cli.main(["sample", wd, "--num", "4", "--quiet"]) == 0
  out, err = capsys.readouterr()
  assert err == "" and out.splitlines() == [f"wrote {wd}/samples_seed0.png"]


def test_baseline_fits_show_progress(digits, capsys):
  kw = dict(key=jax.random.key(0), num_samples=40, mixture_ks=(2, 3), em_iters=3, gmm_components=(1, 2),
            kde_bandwidths=(0.2, 0.4), fit_subset=300, train_subset=300)
  rows = harness.baseline_table(digits, None, **kw)
  err = capsys.readouterr().err.replace("\r", "\n")
  for step in ("fitting the baselines gmm, independent, kde, mixture on digits",
               "EM mixtures (3 iterations), k on validation: 100%", "EM mixture k=",
               "GaussianMixture components: 100%", "KernelDensity bandwidth search: 100%",
               "held-out log-likelihood: 100%", "drawing 40 samples: done in"):
    assert step in err, step
  assert "3/3" in err.split("KernelDensity bandwidth search")[-1]  # 2 bandwidths + the refit
  with progress.quiet():
    again = harness.baseline_table(digits, None, which=("mixture", "kde"), **kw)
  assert capsys.readouterr().err == ""
  for name, m in again.items():  # progress changes nothing computed
    assert np.allclose([m[k] for k in ("nll", "novelty_ratio")], [rows[name][k] for k in ("nll", "novelty_ratio")])


def test_ticker_and_bar_follow_the_switch(capsys):
  with progress.ticker("opaque step", interval=0.01):
    pass
  for _ in progress.bar(range(2), desc="a loop"):
    pass
  err = capsys.readouterr().err
  assert "opaque step: done in" in err and "a loop: 100%" in err
  with progress.quiet():
    with progress.ticker("hidden"):
      pass
    assert list(progress.bar(range(3), desc="hidden")) == [0, 1, 2]
    progress.note("hidden")
  assert capsys.readouterr().err == "" and progress.enabled()
