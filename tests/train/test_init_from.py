"""`train --init_from RUN`: a new run starts from another run's newest parameters (fine-tuning, any
experiment), read without building the source's model; misfits and bad paths are one CLI line."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from gdl_jax import cli, sharding
from gdl_jax.train import loop

TINY_CLASSIFIER = ["train", "classifier", "--dataset", "digits", "--variant", "tiny", "--quiet"]


def _err(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gdl-jax: error:"), err
  return err[0]


def _run_state(run):
  module, _, config, dataset = cli._run_context(run)
  config = cli._tuples(config)
  task = module.build(config, dataset.info)
  return module, config, dataset, task, jax.device_get(loop.latest_state(task, config, dataset, run)[0])


def test_warm_start_takes_params_ema_and_batchnorm_stats_and_a_fresh_optimizer(tmp_path):
  src_dir = str(tmp_path / "src")
  assert cli.main(["train", "dcgan_digits", "--variant", "tiny", "--workdir", src_dir, "--quiet"]) == 0
  module, config, dataset, task, src = _run_state(src_dir)
  assert src.ema_params is not None and jax.tree.leaves(src.extra), "the case needs EMA and BatchNorm"
  config.seed = 7                                           # another initialisation
  fresh = jax.device_get(loop.init_state(task, config, dataset, sharding.make_mesh())[0])
  warm, step = loop.warm_start(fresh, src_dir)
  assert step == int(src.step) == int(config.steps)
  chex.assert_trees_all_close(warm.params, src.params)
  chex.assert_trees_all_close(warm.ema_params, src.ema_params)
  chex.assert_trees_all_close(warm.extra, src.extra)
  chex.assert_trees_all_equal(warm.opt_state, fresh.opt_state)      # Adam starts again
  assert int(warm.step) == 0
  assert not np.allclose(jax.tree.leaves(fresh.params)[0], jax.tree.leaves(src.params)[0])


def test_cli_init_from_starts_records_resumes_and_refuses(tmp_path, capsys):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  assert cli.main(TINY_CLASSIFIER + ["--workdir", a]) == 0
  *_, src = _run_state(a)
  # Fine-tune: another learning rate and length, starting from a's parameters.
  assert cli.main(TINY_CLASSIFIER + ["--workdir", b, "--init_from", a, "--steps", "2",
                                     "--config.optimizer.lr=1e-9"]) == 0
  run = json.load(open(os.path.join(b, "run.json")))
  assert run["init_from"] == os.path.abspath(a) and run["init_step"] == int(src.step)
  *_, tuned = _run_state(b)
  chex.assert_trees_all_close(tuned.params, src.params, atol=1e-5)   # lr ~0: still a's parameters
  capsys.readouterr()
  # The same command again resumes b itself (said once on stderr), nothing restarts from a.
  assert cli.main(TINY_CLASSIFIER + ["--workdir", b, "--init_from", a, "--steps", "2",
                                     "--config.optimizer.lr=1e-9"]) == 0
  assert "has its own checkpoint: resuming it" in capsys.readouterr().err
  # Misfits: other model sizes; not a run; the run itself. One line each, no directory made.
  c = str(tmp_path / "c")
  assert cli.main(TINY_CLASSIFIER + ["--workdir", c, "--init_from", a, "--config.model.dense=8"]) == 2
  err = _err(capsys)
  assert f"--init_from {a}" in err and "do not fit this model" in err and " there, " in err and " here" in err, err
  assert "same experiment and model sizes" in err
  assert not os.path.exists(c)
  assert cli.main(TINY_CLASSIFIER + ["--workdir", c, "--init_from", str(tmp_path / "nope")]) == 2
  assert "is not a run directory" in _err(capsys)
  os.makedirs(tmp_path / "empty")
  assert cli.main(TINY_CLASSIFIER + ["--workdir", c, "--init_from", str(tmp_path / "empty")]) == 2
  assert "has no checkpoint" in _err(capsys)
  assert cli.main(TINY_CLASSIFIER + ["--workdir", b, "--init_from", b]) == 2
  assert "this run's own --workdir" in _err(capsys)
  assert not os.path.exists(c)


@pytest.mark.parametrize("bad", ["", "   "])
def test_init_from_empty_is_refused(tmp_path, capsys, bad):
  assert cli.main(TINY_CLASSIFIER + ["--workdir", str(tmp_path / "x"), "--init_from", bad]) == 2
  assert "is not a run directory" in _err(capsys)


def test_warm_start_from_a_run_without_ema_starts_the_ema_at_its_generator(tmp_path):
  src_dir = str(tmp_path / "src")
  assert cli.main(["train", "dcgan_digits", "--variant", "tiny", "--workdir", src_dir, "--quiet",
                   "--config.model.ema_decay=0"]) == 0
  *_, src = _run_state(src_dir)
  assert src.ema_params is None
  module, config, dataset, task, _ = _run_state(src_dir)
  config.model.ema_decay = 0.999
  task = module.build(config, dataset.info)
  fresh = jax.device_get(loop.init_state(task, config, dataset, sharding.make_mesh())[0])
  warm, _ = loop.warm_start(fresh, src_dir)
  chex.assert_trees_all_close(warm.ema_params, {"gen": src.params["gen"]})
