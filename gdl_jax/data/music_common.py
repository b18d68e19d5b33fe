"""What the music datasets share: the music21 import guard and the seeded split by piece.

Both chorale views (the token sequences of `gdl_jax.data.music` and the MuseGAN grid) split the
same 371 pieces the same way, so no chorale is in the training set of one view and the test set of
the other:

    train, valid, test = split_by_piece(chorale_names())      # lists of corpus paths
"""

from __future__ import annotations

import numpy as np

from gdl_jax.data.info import DataError

INSTALL_HINT = 'pip install -e ".[music]"'


def require_music21():
  """The music21 module, or one DataError naming the install line."""
  try:
    import music21  # noqa: PLC0415
  except ImportError:
    raise DataError(f"the music datasets need music21, which is not installed; run: {INSTALL_HINT}"
                    ) from None
  return music21


def chorale_names() -> list[str]:
  """The corpus paths of music21's Bach chorales ('bach/bwv269', ...), sorted; 371 of them."""
  music21 = require_music21()
  names = list(music21.corpus.chorales.Iterator(returnType="filename"))
  return sorted(dict.fromkeys(names))  # a path listed twice is one piece


def split_by_piece(names: list[str], seed: int = 0,
                   fractions: tuple[float, float] = (0.8, 0.1)) -> tuple[list[str], list[str], list[str]]:
  """(train, valid, test) lists of pieces: a seeded permutation cut at `fractions` (train, valid).

  Deterministic for a given list and seed; every piece lands in exactly one split.
  """
  names = sorted(dict.fromkeys(names))
  if len(names) < 3:
    raise DataError(f"a split by piece needs at least 3 pieces, got {len(names)}")
  order = np.random.default_rng(seed).permutation(len(names))
  n_train = max(1, int(round(fractions[0] * len(names))))
  n_valid = max(1, int(round(fractions[1] * len(names))))
  n_train = min(n_train, len(names) - 2)
  picked = [names[i] for i in order]
  return (sorted(picked[:n_train]), sorted(picked[n_train:n_train + n_valid]),
          sorted(picked[n_train + n_valid:]))
