"""`gdl-jax report RUNS... --out DIR`: one static HTML page of trained runs (no server).

    paths = write_report(["runs/vae_digits", "runs/ddpm_digits"], "report")   # report/index.html

For each run: its sample grid, progress.gif, the other figures it wrote (reconstructions, latent
plots, ...), training curves drawn from metrics.jsonl (a matplotlib PNG), its metrics (metrics.json
and metrics_<tag>.json) in one table per dataset with the classical baselines beside them (the
baseline rows of benchmarks/results/quality_<dataset>.json, or of the files given), links to its
audio / MIDI files and its text samples. Every file the page shows is copied under DIR, linked by a
relative path, so the folder can be moved or zipped. DIR is new, empty, or an earlier report (whose
files, listed in DIR/.gdl_jax_report.json, are replaced); a user's own file is never overwritten.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import time
import urllib.parse
from typing import Iterable, Optional, Sequence

MANIFEST = ".gdl_jax_report.json"  # in DIR: the files a report wrote (so a rerun may replace them)
IMAGE_EXT = (".png", ".gif", ".jpg", ".jpeg", ".svg", ".webp")
AUDIO_EXT = (".wav", ".mp3", ".ogg", ".flac")
MIDI_EXT = (".mid", ".midi")
TEXT_NAMES = re.compile(r"^samples.*\.txt$")
SKIP_DIRS = ("checkpoints", "checkpoints_corrupt", "tb", "progress")
FIRST = ("samples.png", "progress.gif")  # shown first, in this order
MAX_TEXT = 4000  # characters of a text sample shown inline (the whole file is linked)


class ReportError(ValueError):
  """Bad input to the report (a path that is no run, an --out that holds other files)."""


# ---------------------------------------------------------------------------------------------
# inputs


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_run_dir(path: str) -> bool:
  """A directory `gdl-jax train` wrote: run.json naming an experiment, or config.json with metrics."""
  if not os.path.isdir(path):
    return False
  run = _read_json(os.path.join(path, "run.json"))
  if isinstance(run, dict) and isinstance(run.get("experiment"), str):
    return True
  return isinstance(_read_json(os.path.join(path, "config.json")), dict) and \
      os.path.exists(os.path.join(path, "metrics.jsonl"))


def find_runs(paths: Sequence[str]) -> list[str]:
  """The run directories named by `paths`: each a run directory, or a folder of them (its direct
  subdirectories that are runs, e.g. `runs`). Raises ReportError naming the first bad path."""
  if not paths:
    raise ReportError("no run directories given; pass the --workdir of `gdl-jax train` runs "
                      "(or a folder of them, e.g. runs).")
  out, seen = [], set()
  for p in paths:
    if not p.strip():
      raise ReportError("an empty run path was given; pass run directories.")
    if not os.path.exists(p):
      raise ReportError(f"{p!r} does not exist; pass the --workdir of a `gdl-jax train` run.")
    if not os.path.isdir(p):
      raise ReportError(f"{p!r} is a file, not a run directory; pass the --workdir of a "
                        "`gdl-jax train` run.")
    if is_run_dir(p):
      found = [p]
    else:
      found = sorted(os.path.join(p, d) for d in os.listdir(p) if is_run_dir(os.path.join(p, d)))
      if not found:
        raise ReportError(f"{p!r} is not a gdl-jax run directory (no run.json) and holds none; pass "
                          "the --workdir of `gdl-jax train` runs, or a folder of them.")
    for r in found:
      real = os.path.realpath(r)
      if real not in seen:
        seen.add(real)
        out.append(r)
  return out


def check_out(out: str) -> list[str]:
  """Checks that `out` may hold the report: new, an empty directory, or an earlier report. Returns
  the files the earlier report wrote (relative to out; [] otherwise). Raises ReportError."""
  if not out.strip():
    raise ReportError("--out must not be empty; pass a directory for the report.")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ReportError(f"--out {out!r} is a file; pass a new directory (nothing was written).")
  parent = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ReportError(f"--out {out!r} lies under {parent!r}, which is a file; pass another path.")
  if not os.path.isdir(out):
    if not os.access(parent, os.W_OK):
      raise ReportError(f"--out {out!r}: {parent!r} is not writable; pass another path.")
    return []
  entries = os.listdir(out)
  if not entries:
    return []
  manifest = _read_json(os.path.join(out, MANIFEST))
  if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), list)):
    raise ReportError(f"--out {out!r} exists and holds other files (it is not an earlier gdl-jax "
                      "report); pass a new or empty directory (nothing was written).")
  return [f for f in manifest["files"] if isinstance(f, str) and _inside(out, f)]


def _inside(root: str, rel: str) -> bool:
  full = os.path.realpath(os.path.join(root, rel))
  return full.startswith(os.path.realpath(root) + os.sep)


# ---------------------------------------------------------------------------------------------
# one run


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "run"


def run_files(run: str) -> list[str]:
  """The files of a run the page shows (relative paths): images, audio, MIDI, text samples; in the
  run directory and its subfolders (one level), not checkpoints/tb/progress or an earlier report."""
  out = []
  for root, dirs, files in os.walk(run):
    rel_root = os.path.relpath(root, run)
    depth = 0 if rel_root == "." else rel_root.count(os.sep) + 1
    dirs[:] = sorted(d for d in dirs if depth < 1 and d not in SKIP_DIRS and not d.startswith(".")
                     and not os.path.exists(os.path.join(root, d, MANIFEST)))
    for f in sorted(files):
      low = f.lower()
      if low.endswith(IMAGE_EXT + AUDIO_EXT + MIDI_EXT) or TEXT_NAMES.match(low):
        out.append(os.path.normpath(os.path.join(rel_root, f)))
  first = [f for f in FIRST if f in out]
  return first + [f for f in out if f not in first]


def metrics_files(run: str) -> list[tuple[str, dict]]:
  """(tag, metrics) of metrics.json ('' tag) and each metrics_<tag>.json the run has."""
  names = sorted(f for f in os.listdir(run) if f.startswith("metrics") and f.endswith(".json"))
  out = []
  for name in names:
    m = _read_json(os.path.join(run, name))
    if isinstance(m, dict):
      out.append(("" if name == "metrics.json" else name[len("metrics_"):-len(".json")], m))
  out.sort(key=lambda t: t[0] != "")
  return out


def training_curves(rows: list[dict], path: str, title: str = "", max_panels: int = 8) -> bool:
  """metrics.jsonl rows -> a PNG of one panel per metric (train and test splits against the step).
  False (nothing written) when there are no rows."""
  series: dict[str, dict[str, tuple[list, list]]] = {}
  for r in rows:
    for k, v in r.items():
      if k in ("step", "split") or not isinstance(v, (int, float)):
        continue
      xs, ys = series.setdefault(k, {}).setdefault(r["split"], ([], []))
      xs.append(r["step"])
      ys.append(float(v))
  if not series:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = list(series)[:max_panels]
  cols = min(4, len(keys))
  nrows = -(-len(keys) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.5 * nrows), squeeze=False)
  for ax, k in zip(axes.flat, keys):
    for split, (xs, ys) in sorted(series[k].items(), key=lambda t: t[0] != "train"):
      ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=split)
    ax.set_title(k, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    if len(series[k]) > 1:
      ax.legend(fontsize=7, loc="upper right")
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


# ---------------------------------------------------------------------------------------------
# baselines and tables


def default_baseline_files() -> list[str]:
  """benchmarks/results/quality_*.json of this checkout (where gdl_jax is installed editable)."""
  d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
  if not os.path.isdir(d):
    return []
  return sorted(os.path.join(d, f) for f in os.listdir(d) if re.match(r"^quality_.+\.json$", f))


def baseline_rows(files: Iterable[str]) -> dict[str, dict[str, dict]]:
  """{dataset: {baseline name: metrics}} from quality_<dataset>.json files (rows that are not runs:
  no "experiment" key). Raises ReportError for a file that is not such a table."""
  out: dict[str, dict[str, dict]] = {}
  for path in files:
    m = re.match(r"^quality_(.+)\.json$", os.path.basename(path))
    rows = _read_json(path)
    if not m or not isinstance(rows, dict):
      raise ReportError(f"--baselines {path!r} is not a quality table (benchmarks/quality.py writes "
                        "results/quality_<dataset>.json); pass one of those.")
    base = {k: v for k, v in rows.items() if isinstance(v, dict) and "experiment" not in v}
    out.setdefault(m.group(1), {}).update(base)
  return out


def _columns(rows: list[dict]):
  from gdl_jax.evaluation import harness
  cols = harness.DEFAULT_COLUMNS + tuple(c for c in harness.OPTIONAL_COLUMNS
                                         if any(c[1] in r for r in rows))
  return cols + (("samples", "num_samples", "{}"), ("step", "step", "{}"))


def metrics_table(rows: list[tuple[str, dict, str]]) -> str:
  """An HTML table of (name, metrics, css class) rows, the harness's columns."""
  from gdl_jax.evaluation.harness import _fmt
  cols = _columns([m for _, m, _ in rows])
  head = "".join(f"<th>{html.escape(t)}</th>" for t, _, _ in cols)
  body = []
  for name, m, cls in rows:
    cells = "".join(f"<td>{html.escape(_fmt(m.get(k), spec))}</td>" for _, k, spec in cols)
    body.append(f'<tr class="{cls}"><th scope="row">{html.escape(name)}</th>{cells}</tr>')
  return (f'<table class="metrics"><thead><tr><th>model</th>{head}</tr></thead>'
          f"<tbody>{''.join(body)}</tbody></table>")


def scalar_table(metrics: dict) -> str:
  """An HTML table of a metrics dict's scalar entries (numbers, booleans, strings), one per row."""
  from gdl_jax.evaluation.harness import _fmt
  rows = [(k, v) for k, v in metrics.items()
          if isinstance(v, (int, float, str, bool)) and k not in ("experiment", "dataset")]
  body = "".join(f'<tr class="run"><th scope="row">{html.escape(str(k))}</th>'
                 f"<td>{html.escape(v if isinstance(v, str) else str(v) if isinstance(v, bool) else _fmt(v, '{:.4g}'))}</td></tr>"
                 for k, v in rows)
  return f'<table class="metrics"><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------
# the page


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .85em; color: #555; text-align: center; }
figure img { min-width: 160px; max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
img.curves { image-rendering: auto; max-width: 100%; }
table.metrics { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: .2em .5em; text-align: right; }
table.metrics th[scope=row] { text-align: left; font-weight: normal; }
tr.run th[scope=row] { font-weight: bold; } tr.baseline { color: #555; background: #f6f6f6; }
pre { background: #f6f6f6; padding: .5em; max-height: 20em; overflow: auto; white-space: pre-wrap; }
.meta { color: #555; font-size: .9em; }
"""


def _url(rel: str) -> str:
  return "/".join(urllib.parse.quote(part) for part in rel.split(os.sep))


def write_report(runs: Sequence[str], out: str, *, baselines: Optional[Sequence[str]] = None,
                 title: str = "gdl-jax runs") -> str:
  """Writes out/index.html (and the files it shows) for `runs` (run directories or folders of them);
  baselines: quality_<dataset>.json files (None: this checkout's benchmarks/results). Returns the
  page's path. Raises ReportError (nothing written) for bad input."""
  runs = find_runs(runs)
  old = set(check_out(out))
  base = baseline_rows(default_baseline_files() if baselines is None else baselines)
  out_real = os.path.realpath(out)
  plan: list[tuple[str, str]] = []  # (source, destination relative to out)
  slugs: set[str] = set()
  entries = []
  for run in runs:
    slug = _slug(os.path.basename(os.path.normpath(os.path.abspath(run))))
    while slug in slugs:
      slug += "_"
    slugs.add(slug)
    files = [f for f in run_files(run)
             if not os.path.realpath(os.path.join(run, f)).startswith(out_real + os.sep)]
    plan += [(os.path.join(run, f), os.path.join("runs", slug, f)) for f in files]
    entries.append((run, slug, files))
  # never overwrite a file the earlier report did not write
  targets = [d for _, d in plan] + ["index.html", MANIFEST] + [os.path.join("curves", f"{s}.png")
                                                               for _, s, _ in entries]
  for rel in targets:
    if os.path.lexists(os.path.join(out, rel)) and rel not in old and rel != MANIFEST:
      raise ReportError(f"{os.path.join(out, rel)!r} exists and was not written by a gdl-jax report; "
                        "pass a new --out (nothing was written).")
  os.makedirs(out, exist_ok=True)
  for rel in sorted(old):  # the earlier report's files (only those), then its emptied folders
    p = os.path.join(out, rel)
    if os.path.isfile(p) or os.path.islink(p):
      os.remove(p)
  for rel in sorted({os.path.dirname(r) for r in old if os.path.dirname(r)}, key=len, reverse=True):
    d = os.path.join(out, rel)
    while d != out and os.path.isdir(d) and not os.listdir(d):
      os.rmdir(d)
      d = os.path.dirname(d)
  written = []
  for src, rel in plan:
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    shutil.copyfile(src, os.path.join(out, rel))
    written.append(rel)
  from gdl_jax.train.loop import read_metrics
  sections, table_rows, own_tables = [], {}, []
  for run, slug, files in entries:
    runinfo = _read_json(os.path.join(run, "run.json")) or {}
    config = _read_json(os.path.join(run, "config.json")) or {}
    name = runinfo.get("experiment", slug)
    dataset = config.get("dataset", "–")
    rows = read_metrics(run)
    curves = os.path.join("curves", f"{slug}.png")
    os.makedirs(os.path.join(out, "curves"), exist_ok=True)
    has_curves = training_curves(rows, os.path.join(out, curves), title=f"{slug} ({name})")
    if has_curves:
      written.append(curves)
    mets = metrics_files(run)
    for tag, m in mets:
      label = f"{slug}" + (f" [{tag}]" if tag else "")
      if "dataset" not in config and "dataset" not in m:   # a pipeline (World Models): its own keys
        own_tables.append(f"<h3>{html.escape(label)} ({html.escape(str(name))})</h3>"
                          f"<p class=meta>no harness dataset: the run's own scalar metrics</p>"
                          + scalar_table(m))
        continue
      table_rows.setdefault(m.get("dataset", dataset), []).append((label, m, "run"))
    sections.append(_run_section(run, slug, name, dataset, config, rows, files,
                                 curves if has_curves else None, mets))
  tables = []
  for ds, rows in table_rows.items():
    brows = [(n, m, "baseline") for n, m in base.get(ds, {}).items()]
    note = (f"baselines fitted by benchmarks/quality.py on {ds} ({brows[0][1].get('num_samples', '?')} "
            "samples)" if brows else f"no baseline table for {ds} (run benchmarks/quality.py "
            f"--dataset {ds} to fit them)")
    tables.append(f"<h3>{html.escape(ds)}</h3><p class=meta>{html.escape(note)}</p>" +
                  metrics_table(rows + brows))
  tables += own_tables
  nav = " ".join(f'<a href="#{s}">{html.escape(s)}</a>' for _, s, _ in entries)
  page = (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
          f"</title><style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
          f"<p class=meta>{len(entries)} run(s); written {time.strftime('%Y-%m-%d %H:%M')} by "
          f"<code>gdl-jax report</code></p>\n<nav>{nav}</nav>\n"
          + (f"<h2 id=metrics>Metrics, with the classical baselines</h2>{''.join(tables)}\n"
             if tables else "") + "\n".join(sections) + "\n</body></html>\n")
  with open(os.path.join(out, "index.html"), "w") as f:
    f.write(page)
  written.append("index.html")
  with open(os.path.join(out, MANIFEST), "w") as f:
    json.dump({"files": sorted(set(written))}, f, indent=1)
  return os.path.join(out, "index.html")


def _run_section(run, slug, name, dataset, config, rows, files, curves, mets) -> str:
  steps = max((r["step"] for r in rows), default=0)
  tt = _read_json(os.path.join(run, "train_time.json")) or {}
  meta = [f"experiment <code>{html.escape(str(name))}</code>", f"dataset {html.escape(str(dataset))}",
          f"{steps} / {config.get('steps', '?')} steps"]
  if isinstance(tt.get("seconds"), (int, float)):
    meta.append(f"last training call {tt['seconds']:.0f}s")
  meta.append(f"from <code>{html.escape(os.path.abspath(run))}</code>")
  parts = [f'<h2 id="{slug}">{html.escape(slug)}</h2>', f"<p class=meta>{', '.join(meta)}</p>"]
  images = [f for f in files if f.lower().endswith(IMAGE_EXT)]
  if images:
    figs = "".join(f'<figure><img src="{_url(os.path.join("runs", slug, f))}" alt="{html.escape(f)}">'
                   f"<figcaption>{html.escape(f)}</figcaption></figure>" for f in images)
    parts.append(f'<div class="figures">{figs}</div>')
  if curves:
    parts.append(f'<h3>Training curves</h3><img class="curves" src="{_url(curves)}" '
                 f'alt="training curves of {html.escape(slug)}">')
  if mets:
    parts.append("<h3>Metrics</h3>" + metrics_table(
        [((f"[{t}]" if t else "metrics.json"), m, "run") for t, m in mets]))
  media = [f for f in files if f.lower().endswith(AUDIO_EXT + MIDI_EXT)]
  if media:
    items = []
    for f in media:
      url = _url(os.path.join("runs", slug, f))
      player = (f' <audio controls preload="none" src="{url}"></audio>'
                if f.lower().endswith(AUDIO_EXT) else "")
      items.append(f'<li><a href="{url}">{html.escape(f)}</a>{player}</li>')
    parts.append(f"<h3>Audio and MIDI</h3><ul>{''.join(items)}</ul>")
  for f in files:
    if TEXT_NAMES.match(f.lower()):
      with open(os.path.join(run, f), errors="replace") as fh:
        text = fh.read(MAX_TEXT + 1)
      more = "\n…" if len(text) > MAX_TEXT else ""
      parts.append(f'<h3><a href="{_url(os.path.join("runs", slug, f))}">{html.escape(f)}</a></h3>'
                   f"<pre>{html.escape(text[:MAX_TEXT])}{more}</pre>")
  if len(parts) == 2:
    parts.append("<p class=meta>nothing written yet (no samples, figures or metrics).</p>")
  return "<section>" + "\n".join(parts) + "</section>"
