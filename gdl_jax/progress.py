"""Progress on stderr for every step that can take more than a few seconds, and one switch for it.

    with progress.quiet(args.quiet):        # the CLI's --quiet: no bars, no notes
      for b in progress.bar(range(n), desc="held-out log-likelihood", unit="batch"): ...
      with progress.ticker("sampling 1000 images"):   # one opaque call (a jitted sampler)
        x = sample_fn(key, 1000)
      progress.note("training the digits feature classifier ...")

Bars are tqdm's (as the training loop's). A `ticker` is for a single call whose inside cannot report
(a jitted sampling loop, an sklearn fit): it shows the elapsed seconds, refreshed by a thread, so
the terminal is never silent. Everything goes to stderr, so stdout holds only the results.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Iterable, Iterator, Optional

_QUIET = [False]  # the process-wide switch (the CLI's --quiet)


def enabled() -> bool:
  """Whether bars and notes are shown (False inside `quiet(True)`)."""
  return not _QUIET[0]


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
  """Within the block, no bars and no notes (on=False: leaves the current setting)."""
  before = _QUIET[0]
  _QUIET[0] = before or bool(on)
  try:
    yield
  finally:
    _QUIET[0] = before


def note(message: str) -> None:
  """One line on stderr (unless quiet): what is about to take long and why."""
  if enabled():
    print(message, file=sys.stderr, flush=True)


class _NoBar:
  """tqdm's interface, doing nothing (quiet)."""

  def __init__(self, iterable=None, total=None):
    self._it = iterable
    self.total = total or 0

  def __iter__(self):
    return iter(self._it if self._it is not None else ())

  def update(self, n=1):
    pass

  def set_postfix(self, *a, **kw):
    pass

  def set_postfix_str(self, *a, **kw):
    pass

  def refresh(self):
    pass

  def close(self):
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def bar(iterable: Optional[Iterable] = None, *, desc: str, total: Optional[int] = None,
        unit: str = "it", leave: bool = True, delay: float = 0.0):
  """A tqdm bar on stderr (a do-nothing stand-in when quiet); delay: shown only once the loop has
  run that many seconds (for steps that are usually quick)."""
  if not enabled():
    return _NoBar(iterable, total)
  from tqdm.auto import tqdm
  return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True,
              file=sys.stderr, delay=delay)


@contextlib.contextmanager
def ticker(desc: str, *, interval: float | None = None, delay: float = 0.0) -> Iterator[None]:
  """`desc: 12s` on stderr, refreshed every `interval` seconds (1 on a terminal, 10 in a log) while
  the block runs, then `desc: done in 12.3s`: progress for one call that cannot report its own.
  delay: nothing is shown if the block ends within that many seconds."""
  if not enabled():
    yield
    return
  from tqdm.auto import tqdm
  interval = interval if interval is not None else (1.0 if sys.stderr.isatty() else 10.0)
  stop = threading.Event()
  lock = threading.Lock()
  shown: list = []

  def show():
    with lock:
      if not shown and not stop.is_set():
        shown.append(tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}{postfix}",
                          file=sys.stderr, dynamic_ncols=True, mininterval=0.0))

  def refresh():
    if delay > 0 and stop.wait(delay):
      return
    show()
    while not stop.wait(interval):
      shown[0].refresh()

  t0 = time.time()
  if delay <= 0:
    show()
  thread = threading.Thread(target=refresh, daemon=True)
  thread.start()
  ok = False
  try:
    yield
    ok = True
  finally:
    with lock:
      stop.set()
    thread.join()
    if shown:
      t = shown[0]
      t.bar_format = "{desc}: " + (f"done in {time.time() - t0:.1f}s" if ok else "failed")
      t.close()
