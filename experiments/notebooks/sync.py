"""Keeps the committed notebooks (ch*.ipynb) in sync with their sources (ch*.py, jupytext percent).

    python experiments/notebooks/sync.py           # rewrite every ch*.ipynb from its ch*.py
    python experiments/notebooks/sync.py --check   # exit 1 naming each notebook out of sync

The .py is the source: edit it, then run this (the .ipynb is written without outputs, for Colab).
tests/test_notebooks.py runs the check; `pytest -m notebooks` executes every notebook.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def sources(directory: str = HERE) -> list[str]:
  """The notebook sources: ch*.py in `directory`, sorted."""
  return sorted(glob.glob(os.path.join(directory, "ch*.py")))


def _cells(nb) -> list[tuple[str, str]]:
  return [(c.cell_type, c.source) for c in nb.cells]


def differences(py_path: str) -> list[str]:
  """Why the .ipynb beside `py_path` is out of sync with it (empty: in sync): missing, or the
  cells (type and source) jupytext makes from the .py differ from the committed ones."""
  import jupytext
  import nbformat
  ipynb = os.path.splitext(py_path)[0] + ".ipynb"
  if not os.path.exists(ipynb):
    return [f"{os.path.basename(ipynb)} is missing"]
  want = _cells(jupytext.read(py_path))
  have = _cells(nbformat.read(ipynb, as_version=4))
  out = []
  if len(want) != len(have):
    out.append(f"{os.path.basename(ipynb)} has {len(have)} cells, its .py makes {len(want)}")
  for i, (w, h) in enumerate(zip(want, have)):
    if w != h:
      first = (w[1] or "").splitlines()[:1]
      out.append(f"{os.path.basename(ipynb)} cell {i} differs (the .py's starts {first!r})")
      break
  return out


def write(py_path: str) -> str:
  """Writes the .ipynb of `py_path` (no outputs); returns its path. Cell ids are a hash of the
  cell's source, so an unchanged cell keeps its id and a re-sync diff shows only the edits."""
  import hashlib

  import jupytext
  ipynb = os.path.splitext(py_path)[0] + ".ipynb"
  nb = jupytext.read(py_path)
  seen: dict[str, int] = {}
  for cell in nb.cells:
    digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
    seen[digest] = seen.get(digest, 0) + 1
    cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
  jupytext.write(nb, ipynb, fmt="ipynb")
  return ipynb


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true", help="only report; exit 1 when out of sync")
  args = parser.parse_args(argv)
  if args.check:
    problems = [p for py in sources() for p in differences(py)]
    for p in problems:
      print(f"out of sync: {p}", file=sys.stderr)
    if problems:
      print("fix: python experiments/notebooks/sync.py (rewrites the .ipynb from the .py)",
            file=sys.stderr)
    return 1 if problems else 0
  for py in sources():
    if differences(py):
      print("wrote", os.path.relpath(write(py)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
