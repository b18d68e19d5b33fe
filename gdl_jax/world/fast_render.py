"""CarRacing-v3 with the same pixels, drawn faster: the road and grass transformed in numpy.

The stock `CarRacing._render_road` rotates and culls ~700 polygons (400 grass patches, ~300 road
tiles) one Python `Vector2` at a time on every step and draws the ~60 that are on screen; that loop
is ~60% of an environment step on CPU (profiled: 2.7 of 4.0 s over 300 steps), and World Models'
real-environment stages (collection, CMA-ES fitness, evaluation) are bound by it. Here every
vertex is rotated at once with the arithmetic `pygame.math.Vector2.rotate_rad` performs (the same
angle reduction, the same sin/cos, the same products in float64), the same polygons pass the same
bounding-box cull, and they are drawn in the same order by the same gfxdraw calls, so an observation
is bit-identical to the stock environment's (tests/world/test_world_models.py pins it over whole
episodes). Physics, rewards and termination are the stock environment's: only drawing changed.

Imports gymnasium and pygame at module level: reach it through `env.make_env`, which checks the
`world` extra first.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium.envs.box2d import car_racing as cr
from pygame import gfxdraw

_TWO_PI = 2.0 * math.pi
_EPS = 1e-6   # pygame's default rotation epsilon (special-cased multiples of 90 degrees)


def _rotation(angle: float) -> tuple[float, float] | int:
  """What `Vector2.rotate_rad(angle)` multiplies by: (cos, sin) of the reduced angle, or the
  quarter-turn index 0..3 pygame special-cases (an exact permutation of the coordinates)."""
  a = math.fmod(angle, _TWO_PI)
  if a < 0:
    a += _TWO_PI
  if math.fmod(a + _EPS, math.pi / 2) < 2 * _EPS:
    return int((a + _EPS) / (math.pi / 2)) % 4
  return math.cos(a), math.sin(a)


def _rotate(xy: np.ndarray, angle: float) -> np.ndarray:
  """xy [..., 2] float64 rotated exactly as pygame's Vector2.rotate_rad does each vector."""
  r = _rotation(angle)
  x, y = xy[..., 0], xy[..., 1]
  if isinstance(r, int):
    out = [(x, y), (-y, x), (-x, -y), (y, -x)][r]
    return np.stack([out[0] + 0.0, out[1] + 0.0], axis=-1)
  c, s = r
  return np.stack([c * x - s * y, s * x + c * y], axis=-1)


def _grass() -> np.ndarray:
  """The stock grass patches, [400, 4, 2], in the stock order."""
  g = cr.GRASS_DIM
  quads = []
  for x in range(-20, 20, 2):
    for y in range(-20, 20, 2):
      quads.append([(g * x + g, g * y + 0), (g * x + 0, g * y + 0), (g * x + 0, g * y + g),
                    (g * x + g, g * y + g)])
  return np.asarray(quads, np.float64)


_GRASS = _grass()


class FastCarRacing(cr.CarRacing):
  """`CarRacing` whose `_render_road` transforms all polygons with numpy (same pixels)."""

  _road_cache = None   # (vertex array or None,) for the current track; cleared by reset

  def reset(self, *args, **kwargs):
    self._road_cache = None
    return super().reset(*args, **kwargs)

  def _road_arrays(self):
    """The road tiles' vertices as one [N, V, 2] array, built at the first draw after a reset
    (`road_poly` is final by then); None where tiles have different vertex counts (not in
    CarRacing-v3's track builder; then the stock per-polygon path draws them). Colours are read
    when drawn: a tile's colour changes when the car first touches it (the contact listener writes
    `tile.color[:]`)."""
    if self._road_cache is None:
      sizes = {len(poly) for poly, _ in self.road_poly}
      arr = (np.asarray([[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly], np.float64)
             if len(sizes) == 1 else None)
      self._road_cache = (arr,)
    return self._road_cache[0]

  def _draw_batch(self, arr, colors, zoom, translation, angle, *, single: bool):
    """Transforms [N, V, 2] polygons, culls them as `_draw_colored_polygon` does and draws the
    survivors in order; colors: one colour, or (single=False) `road_poly`, read per drawn tile as
    the stock loop converts it."""
    if not len(arr):
      return
    v = _rotate(arr, angle)
    px = v[..., 0] * zoom + translation[0]
    py = v[..., 1] * zoom + translation[1]
    m = cr.MAX_SHAPE_DIM
    inside = ((px >= -m) & (px <= cr.WINDOW_W + m) & (py >= -m) & (py <= cr.WINDOW_H + m)).any(-1)
    for i in np.flatnonzero(inside):
      poly = list(zip(px[i].tolist(), py[i].tolist()))
      color = colors if single else [int(c) for c in colors[i][1]]
      gfxdraw.aapolygon(self.surf, poly, color)
      gfxdraw.filled_polygon(self.surf, poly, color)

  def _render_road(self, zoom, translation, angle):
    bounds = cr.PLAYFIELD
    field = [(bounds, bounds), (bounds, -bounds), (-bounds, -bounds), (-bounds, bounds)]
    self._draw_colored_polygon(self.surf, field, self.bg_color, zoom, translation, angle,
                               clip=False)
    self._draw_batch(_GRASS, self.grass_color, zoom, translation, angle, single=True)
    arr = self._road_arrays()
    if arr is None:
      for poly, color in self.road_poly:
        self._draw_colored_polygon(self.surf, [(p[0], p[1]) for p in poly],
                                   [int(c) for c in color], zoom, translation, angle)
    else:
      self._draw_batch(arr, self.road_poly, zoom, translation, angle, single=False)
