"""Regenerates constraints.txt: the exact versions CI tests (`pip install -e ".[test]" -c constraints.txt`).

    python tools/refresh_constraints.py                 # a fresh venv: pip install -e ".[EXTRAS]", freeze
    python tools/refresh_constraints.py --current       # this environment's versions of the same set
    python tools/refresh_constraints.py --check         # exit 1 if constraints.txt misses a dependency

A fresh venv resolves today's newest releases inside setup.cfg's ranges; run the tests with the new
file (`.ci/run`) before committing it. --current pins what is installed here (the closure of
gdl_jax's requirements with EXTRAS, read from the installed packages' metadata), without installing.
The file lists every package of that closure (transitive ones included: jaxlib, ml_dtypes,
tensorstore, protobuf, ...), so an install with it is the environment the tests passed in.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "constraints.txt")
EXTRAS = ("test", "notebooks", "faces", "text", "music", "perceptual", "world")  # not `bench` (torch, keras: baselines of the benchmarks)
HEADER = """\
# Versions CI tests: pip install -e ".[test]" -c constraints.txt
# Regenerate with: python tools/refresh_constraints.py   (then run .ci/run before committing)
# Extras covered: {extras}; python {python}.
"""


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: metadata.Distribution, extras: set[str]) -> list[tuple[str, set[str]]]:
  """(name, its extras) of the requirements of `dist` that apply with `extras` on this Python."""
  from packaging.requirements import Requirement
  out = []
  for text in dist.requires or []:
    req = Requirement(text)
    if req.marker is not None:
      envs = [{"extra": e} for e in (extras or {""})]
      if not any(req.marker.evaluate(env) for env in envs):
        continue
    out.append((req.name, set(req.extras)))
  return out


def root_requirements(extras: tuple[str, ...] = EXTRAS) -> list[str]:
  """setup.cfg's install_requires plus extras_require[extras] (this checkout's, not an installed copy)."""
  import configparser
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  lines = cfg["options"]["install_requires"].splitlines()
  for e in extras:
    lines += cfg["options.extras_require"][e].splitlines()
  return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def closure(extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
  """{name: version} of every installed distribution that gdl_jax[extras] needs (transitively)."""
  from packaging.requirements import Requirement
  pins: dict[str, str] = {}
  todo = [(r.name, set(r.extras)) for r in map(Requirement, root_requirements(extras))]
  seen: set[tuple[str, frozenset]] = set()
  while todo:
    name, ex = todo.pop()
    if (_norm(name), frozenset(ex)) in seen:
      continue
    seen.add((_norm(name), frozenset(ex)))
    try:
      dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
      raise SystemExit(f"{name} (needed by gdl_jax[{','.join(extras)}]) is not installed here; "
                       f"pip install -e \".[{','.join(extras)}]\" first, or run without --current.")
    pins[dist.metadata["Name"]] = dist.version
    todo += _requirements(dist, ex)
  return dict(sorted(pins.items(), key=lambda kv: _norm(kv[0])))


def render(pins: dict[str, str], extras=EXTRAS, python: str | None = None) -> str:
  python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
  return HEADER.format(extras=", ".join(extras), python=python) + "".join(
      f"{name}=={version}\n" for name, version in pins.items())


def fresh_venv(extras=EXTRAS) -> str:
  """Installs gdl_jax[extras] into a new venv (today's releases) and renders its closure there."""
  with tempfile.TemporaryDirectory(prefix="gdl_constraints_") as d:
    subprocess.run([sys.executable, "-m", "venv", d], check=True)
    py = os.path.join(d, "bin", "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip", "packaging"], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{','.join(extras)}]"], check=True)
    return subprocess.run([py, os.path.abspath(__file__), "--current", "--stdout"], check=True,
                          capture_output=True, text=True).stdout


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--current", action="store_true", help="pin this environment's versions (no venv)")
  p.add_argument("--stdout", action="store_true", help="print instead of writing constraints.txt")
  p.add_argument("--check", action="store_true",
                 help="check constraints.txt pins every package of the closure (of this environment)")
  args = p.parse_args(argv)
  if args.check:
    have = {}
    with open(OUT) as f:
      for line in f:
        line = line.split("#")[0].strip()
        if line:
          name, _, version = line.partition("==")
          have[_norm(name)] = version
    missing = [n for n in closure() if _norm(n) not in have]
    if missing:
      print(f"constraints.txt lacks {', '.join(missing)}; run python tools/refresh_constraints.py",
            file=sys.stderr)
      return 1
    print(f"constraints.txt pins all {len(have)} packages of gdl_jax[{','.join(EXTRAS)}]")
    return 0
  text = render(closure()) if args.current else fresh_venv()
  if args.stdout:
    sys.stdout.write(text)
  else:
    with open(OUT, "w") as f:
      f.write(text)
    print(f"wrote {OUT} ({text.count('==')} pins)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
