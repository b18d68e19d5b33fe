"""Neural style transfer: Gatys et al.'s optimisation vs a trained feed-forward style network, on
the same content image, size, style targets and objective (issue 16's acceptance numbers).

    python benchmarks/style_transfer.py --run runs/style_net [--content skimage:chelsea] \\
        [--step N] [--size 128] [--steps 100] [--repeats 3] [--net_repeats 20] [--images docs/images]

Reports (JSON on stdout): the style / content / tv terms of the content image itself, of the
optimised image (L-BFGS, `--steps` steps from the content image) and of the network's one pass
(the run's latest checkpoint, or `--step N`'s), the style term split by VGG16 layer for all three
(`style_per_layer`: which scales of the style each result misses);
the style loss's drop (content image / result); the median wall time of each method after
compiling (the optimisation `--repeats` times, the network `--net_repeats` times) and the speed-up.
The style image, its size and the weights are the run's config (style.image, style.size, style.*),
so both methods minimise the same objective. --images DIR writes content | optimisation | network
strips as PNGs there. Needs the `perceptual` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, repeats: int) -> tuple[float, object]:
  out = jax.block_until_ready(fn())                                    # compile (and a first run)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run", required=True, help="a `gdl-jax train style_net` run directory")
  p.add_argument("--step", type=int, default=None, help="the run's checkpoint (default: latest)")
  p.add_argument("--content", default="skimage:chelsea")
  p.add_argument("--size", type=int, default=128, help="longer side of the content image")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam"))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--net_repeats", type=int, default=20)
  p.add_argument("--images", default=None, help="directory for the result PNGs")
  args = p.parse_args(argv)

  from gdl_jax import cli
  from gdl_jax.data.images import read_image, write_image
  from gdl_jax.nn.vgg import load_vgg16_params
  from gdl_jax.objectives.style_transfer import (style_layer_terms, style_targets,
                                                 style_transfer_terms)
  from gdl_jax.samplers.style_transfer import stylize
  from gdl_jax.train import loop

  module, name, config, dataset = cli._run_context(args.run)
  config = cli._tuples(config)
  task = module.build(config, dataset.info)
  state, _ = loop.latest_state(task, config, dataset, args.run, step=args.step)
  weights = module.weights_of(config)
  vgg = load_vgg16_params()
  content = jnp.asarray(read_image(args.content, args.size, min_side=16))[None]
  style = jnp.asarray(module._style_image(config))
  targets = style_targets(vgg, content, style, weights)
  terms = jax.jit(lambda x, vgg, t: style_transfer_terms(vgg, x, t, weights))
  layer_terms = jax.jit(lambda x, vgg, t: style_layer_terms(vgg, x, t.grams, weights.style_layers))

  def floats(t):
    return {k: float(v[0]) for k, v in t.items()}

  start = floats(terms(content, vgg, targets))
  opt_s, opt = _median_time(lambda: stylize(content, style, vgg, weights=weights, steps=args.steps,
                                            optimizer=args.optimizer), args.repeats)
  opt_terms = floats(terms(opt.image, vgg, targets))
  net = module.stylizer(config)
  net_s, net_out = _median_time(lambda: net(state.params, content), args.net_repeats)
  net_terms = floats(terms(net_out, vgg, targets))
  result = {
      "content": args.content, "style": config.style.image, "size": list(content.shape[1:3]),
      "style_size": int(config.style.size), "run": args.run, "run_step": int(state.step),
      "optimizer": args.optimizer, "steps": args.steps,
      "weights": {"content": weights.content, "style": weights.style, "tv": weights.tv},
      "content_image": start, "optimisation": opt_terms, "network": net_terms,
      "style_per_layer": {what: floats(layer_terms(x, vgg, targets)) for what, x in
                          (("content_image", content), ("optimisation", opt.image),
                           ("network", net_out))},
      "style_drop_optimisation": start["style"] / opt_terms["style"],
      "style_drop_network": start["style"] / net_terms["style"],
      "network_over_optimisation_style": net_terms["style"] / opt_terms["style"],
      "optimisation_seconds_median": opt_s, "network_seconds_median": net_s,
      "speedup": opt_s / net_s, "repeats": args.repeats, "net_repeats": args.net_repeats,
      "devices": str(jax.devices()[0].platform),
  }
  print(json.dumps(result, indent=2))
  if args.images:
    os.makedirs(args.images, exist_ok=True)
    stem = f"{args.content.split(':')[-1].split('/')[-1].split('.')[0]}_{args.size}"
    gap = jnp.ones_like(content[:, :, :4])
    write_image(os.path.join(args.images, f"style_{stem}.png"),
                np.asarray(jnp.concatenate([content, gap, opt.image, gap, net_out], axis=2)[0]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
