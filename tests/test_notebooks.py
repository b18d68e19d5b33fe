"""The chapter notebooks (experiments/notebooks): the committed .ipynb match their jupytext
sources (fast, default suite), and every notebook executes headless with its tiny variants
(`pytest -m notebooks`, a CI step of its own after the tests; minutes)."""

import importlib.util
import os
import resource
import shutil
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "experiments", "notebooks")


def _sync_module():
  spec = importlib.util.spec_from_file_location("notebook_sync", os.path.join(NB_DIR, "sync.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sync = _sync_module()
NOTEBOOKS = [os.path.basename(p)[:-3] for p in sync.sources()]
# One per chapter family (issue 18): a family dropped by accident fails here.
FAMILIES = ("ch01_02", "ch03", "ch04", "ch05", "ch06", "ch07", "ch08", "ch10")


def test_every_chapter_family_has_a_notebook():
  for prefix in FAMILIES:
    assert any(n.startswith(prefix + "_") for n in NOTEBOOKS), f"no notebook for {prefix}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_ipynb_matches_its_source(name):
  assert sync.differences(os.path.join(NB_DIR, name + ".py")) == [], (
      "the .ipynb is out of sync with its .py: run `python experiments/notebooks/sync.py`")


def test_sync_check_sees_an_edit(tmp_path):
  """The check compares cell sources: an edited .py (or a missing .ipynb) is reported, and
  writing the .ipynb from the .py makes them agree."""
  name = NOTEBOOKS[0]
  for ext in (".py", ".ipynb"):
    shutil.copy(os.path.join(NB_DIR, name + ext), tmp_path / (name + ext))
  py = str(tmp_path / (name + ".py"))
  assert sync.differences(py) == []
  with open(py, "a") as f:
    f.write("\n# %%\nprint('an edit')\n")
  assert any("cells" in d or "differs" in d for d in sync.differences(py))
  ipynb = sync.write(py)
  assert sync.differences(py) == []
  first = open(ipynb).read()
  assert open(sync.write(py)).read() == first   # cell ids from the sources: a re-sync is a no-op
  os.remove(tmp_path / (name + ".ipynb"))
  assert sync.differences(py) == [f"{name}.ipynb is missing"]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path, record_property):
  """Runs the notebook in a fresh kernel (nbclient) with the tiny variants on 2 CPU devices
  (so the sharded path runs too); a cell that raises, or runs past GDL_NOTEBOOK_TIMEOUT seconds
  (default 900), fails the test with its traceback. The executed notebook is kept in tmp_path."""
  import jupytext
  import nbformat
  from nbclient import NotebookClient
  nb = jupytext.read(os.path.join(NB_DIR, name + ".py"))
  env = dict(os.environ)
  env.update(GDL_NOTEBOOK_FULL="0", GDL_NOTEBOOK_WORKDIR=str(tmp_path / "runs"),
             PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p]),
             XLA_FLAGS=(env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip(),
             MPLBACKEND="module://matplotlib_inline.backend_inline")
  timeout = int(os.environ.get("GDL_NOTEBOOK_TIMEOUT", "900"))   # seconds per cell
  client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}})
  before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
  try:
    client.execute(env=env)
  finally:
    nbformat.write(nb, str(tmp_path / (name + ".ipynb")))
  after = resource.getrusage(resource.RUSAGE_CHILDREN)   # the kernel, reaped at its shutdown
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  record_property("kernel_cpu_seconds", round(cpu, 1))
  print(f"{name}: wall {time.time() - t0:.1f} s, kernel CPU {cpu:.1f} s")
  images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
  assert images >= 3, f"{name} showed {images} images inline; expected sample grids and plots"
