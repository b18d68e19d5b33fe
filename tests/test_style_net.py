"""The feed-forward style network's experiment: fine-tuning from another run (config init_from),
e.g. a net trained on 64x64 crops carried on at 128x128, and the refusals of a wrong source run."""

import json

import jax
import numpy as np
import pytest

from gdl_jax import cli, data
from gdl_jax.configs import ConfigError
from gdl_jax.nn import vgg as vgg_lib

pytest.importorskip("skimage")
if not vgg_lib.available():
  pytest.skip(f"needs the perceptual extra: {vgg_lib.INSTALL_HINT}", allow_module_level=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  wd = tmp_path_factory.mktemp("style") / "source"
  assert cli.main(["train", "style_net", "--variant", "tiny", "--workdir", str(wd), "--quiet"]) == 0
  return wd


def _params(workdir, config, dataset):
  from experiments import style_net
  from gdl_jax.train import loop
  state, _ = loop.latest_state(style_net.build(config, dataset.info), config, dataset, str(workdir))
  return state.params


def test_init_from_starts_at_the_source_runs_network_on_another_dataset(source):
  from experiments import style_net
  from gdl_jax import sharding
  from gdl_jax.train import loop
  trained = _params(source, cli._tuples(style_net.get_config("tiny")), data.load("photo_crops_64"))
  c = style_net.get_config("tiny", "photo_crops_128")
  c.init_from = str(source)
  ds = data.load("photo_crops_128")
  state, _ = loop.init_state(style_net.build(c, ds.info), c, ds, sharding.make_mesh())
  jax.tree.map(np.testing.assert_array_equal, state.params, trained)
  # From scratch (the default) the same seed gives other weights.
  c.init_from = ""
  fresh, _ = loop.init_state(style_net.build(c, ds.info), c, ds, sharding.make_mesh())
  assert not np.allclose(fresh.params["Conv_0"]["kernel"], trained["Conv_0"]["kernel"])


def test_init_from_refuses_another_shape_another_experiment_or_no_run(source, tmp_path, capsys):
  from experiments import style_net
  c = style_net.get_config("tiny")
  c.init_from = str(source)
  c.model.num_res = 2
  with pytest.raises(ConfigError, match="model.num_res"):
    style_net.build(c, data.load("photo_crops_64").info)
  other = tmp_path / "other"
  other.mkdir()
  for f in ("config.json", "run.json"):
    (other / f).write_text((source / f).read_text().replace('"style_net"', '"dcgan_digits"'))
  c = style_net.get_config("tiny")
  c.init_from = str(other)
  with pytest.raises(ConfigError, match="dcgan_digits run"):
    style_net.build(c, data.load("photo_crops_64").info)
  assert cli.main(["train", "style_net", "--variant", "tiny", "--workdir", str(tmp_path / "x"),
                   f"--config.init_from={tmp_path / 'missing'}", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "init_from" in err and "no readable run.json" in err and len(err.strip().splitlines()) == 1
