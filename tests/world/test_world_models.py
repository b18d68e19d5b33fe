"""experiments/world_models.py end to end (tiny: 2 episodes of 12 steps, 2 steps per model, 1-2
CMA-ES generations) through the CLI, then `world replay` reproducing a held-out return."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("gymnasium", reason='the `world` extra: pip install -e ".[world]"')
pytest.importorskip("Box2D", reason='the `world` extra: pip install -e ".[world]"')
pytest.importorskip("evosax", reason='the `world` extra: pip install -e ".[world]"')

from gdl_jax import cli  # noqa: E402


def test_tiny_end_to_end_and_replay(tmp_path, capsys):
  run, rollouts = str(tmp_path / "run"), str(tmp_path / "rollouts")
  rc = cli.main(["world", "run", "--variant", "tiny", "--workdir", run, "--rollouts", rollouts, "--quiet"])
  assert rc == 0, capsys.readouterr().err
  for f in ("metrics.json", "reconstructions.png", "real_rollout.gif", "dream_rollout.gif",
            "returns.png", "agent.msgpack", "controller_real.npy", "controller_dream.npy"):
    assert os.path.exists(os.path.join(run, f)), f
  m = json.load(open(os.path.join(run, "metrics.json")))
  for k in ("mdn_heldout_nll", "mdn_gaussian_heldout_nll", "persistence_heldout_nll"):
    assert np.isfinite(m[k])
  assert len(m["real_history"]) == 1 and len(m["dream_history"]) == 2
  assert len(m["random_returns"]) == len(m["real_eval_returns"]) == 2
  capsys.readouterr()
  # the saved controller replays its held-out return exactly (rollouts are functions of the seed)
  seed = m["eval_seeds"][1]
  assert cli.main(["world", "replay", run, "--seed", str(seed), "--quiet"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["return"] == pytest.approx(m["real_eval_returns"][1], abs=1e-9)


def test_pipeline_is_not_a_train_experiment(tmp_path, capsys):
  assert "world_models" not in cli.experiment_names()
  assert cli.main(["train", "world_models", "--check"]) == 2
  assert "gdl-jax world run" in capsys.readouterr().err
  assert cli.main(["world", "replay", str(tmp_path / "nope")]) == 2
  capsys.readouterr()
  assert cli.main(["world", "run", "--variant", "tiny", "--workdir", str(tmp_path / "w"),
                   "--config.controller.mode=sideways"]) == 2
  err = capsys.readouterr().err
  assert "controller.mode" in err and err.count("gdl-jax: error:") == 1
  assert not (tmp_path / "w").exists()
