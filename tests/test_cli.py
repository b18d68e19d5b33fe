"""The CLI: a tiny train/sample/evaluate round trip, and one clear line + exit 2 for bad input."""

import json
import os

import pytest

from gdl_jax import cli


def _err(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gdl-jax: error:"), err
  return err[0]


def test_train_classifier_tiny_and_resume_refusal(tmp_path, capsys):
  wd = str(tmp_path / "run")
  assert cli.main(["train", "classifier", "--dataset", "digits", "--variant", "tiny", "--workdir", wd,
                   "--quiet", "--config.optimizer.lr=0.01"]) == 0
  cfg = json.load(open(os.path.join(wd, "config.json")))
  assert cfg["optimizer"]["lr"] == 0.01 and cfg["dataset"] == "digits"
  assert os.path.exists(os.path.join(wd, "metrics.jsonl"))
  capsys.readouterr()
  # Same dir, another config: refused, nothing changed.
  before = open(os.path.join(wd, "config.json")).read()
  assert cli.main(["train", "classifier", "--dataset", "digits", "--variant", "tiny", "--workdir", wd,
                   "--quiet", "--config.optimizer.lr=0.02"]) == 2
  assert "different config" in _err(capsys)
  assert open(os.path.join(wd, "config.json")).read() == before


@pytest.mark.parametrize("argv, message", [
    (["train", "classifier", "--dataset", "nope_dataset"], "unknown dataset 'nope_dataset'"),
    (["train", "no_such_model"], "unknown model 'no_such_model'"),
    (["train", "classifier", "--config.optimizer.lrr=1"], "unknown config key 'optimizer.lrr'"),
    (["train", "classifier", "--config.batch_size=abc"], "expected a value of type int"),
    (["train", "classifier", "--config.batch_size=-4"], "must be a positive integer"),
    (["train", "classifier", "--data_dir", "/no/such/dir"], "does not exist"),
    (["evaluate", "/no/such/run"], "not a gdl-jax run directory"),
])
def test_bad_input_one_line_exit_2(argv, message, capsys, tmp_path):
  argv = argv + (["--workdir", str(tmp_path / "w")] if argv[0] == "train" else [])
  assert cli.main(argv) == 2
  assert message in _err(capsys)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_unreadable_checkpoint_skipped_by_train_named_by_evaluate(tmp_path, capsys):
  wd = str(tmp_path / "run")
  assert cli.main(["train", "classifier", "--variant", "tiny", "--workdir", wd, "--quiet"]) == 0
  step_dir = os.path.join(wd, "checkpoints", "4")
  for root, _, files in os.walk(step_dir):
    for f in files:
      open(os.path.join(root, f), "wb").write(b"corrupt")
  capsys.readouterr()
  # evaluate reads only: one line naming the intact step, nothing moved.
  assert cli.main(["evaluate", wd, "--no_features"]) == 2
  assert "cannot be restored" in (msg := _err(capsys)) and "--step 2" in msg
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
  # train resumes from step 2 and moves the corrupt step 4 aside (kept).
  assert cli.main(["train", "classifier", "--variant", "tiny", "--workdir", wd, "--quiet"]) == 0
  assert "skipped checkpoint step 4" in capsys.readouterr().err
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints_corrupt", "4"))) == sorted(os.listdir(step_dir))


def test_datasets_lists_offline_sources(capsys):
  assert cli.main(["datasets"]) == 0
  out = capsys.readouterr().out
  assert "digits" in out and "fashion_mnist" in out and "moons" in out


def test_evaluate_with_sampler_overrides_writes_its_own_file(tmp_path, capsys):
  """`evaluate RUN --config.model.sampler_steps=N` scores another sampler of the same weights into
  metrics_<overrides>.json; the plain metrics.json is left as it was."""
  wd = str(tmp_path / "run")
  assert cli.main(["train", "ddpm", "--dataset", "digits", "--variant", "tiny", "--workdir", wd,
                   "--quiet"]) == 0
  assert cli.main(["evaluate", wd, "--no_features", "--num_samples", "16"]) == 0
  plain = open(os.path.join(wd, "metrics.json")).read()
  assert "bits_per_dim" in json.loads(plain)
  assert cli.main(["evaluate", wd, "--no_features", "--no_log_prob", "--num_samples", "16",
                   "--config.model.sampler_steps=3", "--config.model.sampler_eta=0.0"]) == 0
  other = json.load(open(os.path.join(wd, "metrics_sampler_steps=3,sampler_eta=0.0.json")))
  assert other["overrides"] == ["model.sampler_steps=3", "model.sampler_eta=0.0"]
  assert "bits_per_dim" not in other and "novelty_ratio" in other
  assert open(os.path.join(wd, "metrics.json")).read() == plain
  capsys.readouterr()
  assert cli.main(["evaluate", wd, "--config.model.no_such_key=1"]) == 2
  assert "unknown config key" in _err(capsys)


def test_evaluate_reads_keys_added_later_as_the_old_behaviour():
  """A cGAN run saved before model.aux_weight existed is the book's form, although the Fashion-MNIST
  default is now the AC-GAN: the added keys take the module's KEYS_ADDED values, nothing else."""
  from experiments import cgan_digits
  config = cgan_digits.get_config("default", dataset="fashion_mnist")
  assert config.model.aux_weight == 1.0
  with config.model.unlocked():
    del config.model["aux_weight"], config.model["aux_gen_weight"]
  cli._fill_added_keys(config, cgan_digits)
  assert (config.model.aux_weight, config.model.aux_gen_weight) == (0.0, 0.0)
  config.model.aux_weight = 0.5                                  # a saved value is never replaced
  cli._fill_added_keys(config, cgan_digits)
  assert config.model.aux_weight == 0.5


def test_old_ebm_runs_keep_sampling_from_noise_under_overrides():
  """An EBM run saved before model.sample_init existed read it as "noise" (the build's fallback);
  evaluate with overrides used to fill today's default "buffer" instead."""
  from experiments import ebm_digits
  config = ebm_digits.get_config("default")
  with config.model.unlocked():
    del config.model["sample_init"]
  cli._fill_added_keys(config, ebm_digits)
  cli._add_missing(config, ebm_digits.get_config("default"))
  assert config.model.sample_init == "noise"


def test_gan_family_on_the_photo_crops(tmp_path):
  """`train dcgan --dataset photo_crops` takes the DCGAN to 32x32 RGB (the CIFAR stand-in)."""
  pytest.importorskip("skimage")
  wd = tmp_path / "run"
  assert cli.main(["train", "dcgan", "--dataset", "photo_crops", "--variant", "tiny", "--workdir",
                   str(wd), "--quiet"]) == 0
  cfg = json.load(open(wd / "config.json"))
  assert cfg["dataset"] == "photo_crops" and (wd / "samples.png").exists()
