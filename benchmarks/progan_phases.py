"""Classifier Fréchet distance of a ProGAN run at every kept checkpoint (phase ends included).

    python benchmarks/progan_phases.py runs/progan_fashion [--num_samples 1000]

The experiment checkpoints every model.phase_steps = L steps and keeps 7, so the checkpoints at
L, 3L, 5L and 7L are the ends of the 4x4, 8x8, 16x16 and 32x32 phases (the even ones end fades).
At step (2q + 1) L the schedule is at the start of the next fade (alpha = 0), where the generator's
output is exactly the finished phase's, upsampled (tests/models/test_progan.py); `Task.sample`
draws the state's phase at the full resolution (nearest-neighbour upsampling) and crops the
padding, so every checkpoint is scored by the same harness as `gdl-jax evaluate` (FD on
num_samples samples vs as many test images, novelty). Writes phases.json into the run and prints
one row per checkpoint with the resolution it samples at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
  from experiments import progan
  from gdl_jax.cli import _run_context, _tuples
  from gdl_jax.evaluation.tasks import evaluate_task
  from gdl_jax.models import progan as pg
  from gdl_jax.train import checkpoint as ckpt
  from gdl_jax.train import loop
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("run")
  p.add_argument("--num_samples", type=int, default=1000)
  args = p.parse_args(argv)
  _, _, config, dataset = _run_context(args.run)
  config = _tuples(config)
  parts = progan.build_parts(config, dataset.info)
  state, keys = loop.latest_state(parts.task, config, dataset, args.run)
  mngr = ckpt.manager(os.path.join(args.run, "checkpoints"), keep=config.keep_checkpoints,
                      save_every=config.ckpt_every)
  saved = set(mngr.all_steps())
  L = parts.phase_steps
  rows = []
  for step in sorted(saved):
    t0 = time.time()
    s = jax.device_put(ckpt.restore(mngr, state, step))
    m = evaluate_task(parts.task, s, dataset, config, keys, num_samples=args.num_samples,
                      use_log_prob=False)
    phase, alpha = parts.schedule(step)
    row = {"step": step, "phase_end": step % (2 * L) == L or step == int(config.steps),
           "resolution": pg.phase_resolution(phase if alpha > 0 or phase == 0 else phase - 1),
           "phase": phase, "alpha": alpha, "seconds": round(time.time() - t0, 1),
           **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
    rows.append(row)
    print(json.dumps(row))
  mngr.close()
  with open(os.path.join(args.run, "phases.json"), "w") as f:
    json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
