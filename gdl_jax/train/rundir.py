"""Run-directory safety: one writer per directory, atomic files, one clear error for a full disk.

    with rundir.lock(workdir):            # a second `gdl-jax train` on workdir is refused
      rundir.atomic_write(path, text)     # tmp + fsync + os.replace: old or new, never torn
      raise rundir.write_error(e, where)  # ENOSPC / EROFS / EACCES -> one RunDirWriteError

The lock is `fcntl.flock` on `<workdir>/.lock`: the kernel releases it when its process dies (even
on `kill -9`), so a killed run never leaves a directory locked; the file only says who held it last.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Iterator

LOCK_FILE = ".lock"


class RunDirError(ValueError):
  """The run directory cannot be used: another config or experiment, another live run, no space."""


class RunDirBusyError(RunDirError):
  """Another live process is training into this run directory."""


class RunDirWriteError(RunDirError):
  """The run directory cannot be written (full disk, read-only filesystem, no permission)."""


# ---------------------------------------------------------------------------------------------
# one writer per run directory

def holder(workdir: str) -> dict:
  """What the lock file says about its last holder ({} if nothing readable)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


def describe_holder(info: dict) -> str:
  if not info:
    return "a process that has not written its name yet"
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started "
          f"{info.get('started', '?')}" + (f": {info['command']}" if info.get("command") else ""))


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive `flock` on `<workdir>/.lock` for the block, or raises RunDirBusyError.

  The holder's pid, host, start time and command line are written into the file (for the error
  the next process prints); the kernel drops the lock when this process exits or is killed.
  """
  import fcntl
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise write_error(e, workdir) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RunDirBusyError(
          f"run directory {workdir} is being written by another gdl-jax process "
          f"({describe_holder(holder(workdir))}). Wait for it to finish or stop it, or pass "
          "another --workdir; two runs in one directory would interleave their checkpoints "
          "and metrics.") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise write_error(e, workdir) from None
      # A filesystem without flock (some network mounts): run unlocked rather than not at all.
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join(["gdl-jax"] + sys.argv[1:])[:300]}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError as e:
      raise write_error(e, workdir) from None
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the flock


# ---------------------------------------------------------------------------------------------
# atomic files

def atomic_write(path: str, data: str | bytes, *, fix: str | None = None) -> None:
  """Writes `path` so that a reader (or a kill) sees the old file or the new one, never a torn one.

  A temporary file in the same directory is written, fsynced and renamed over `path`.
  Raises RunDirWriteError (full disk, read-only directory) naming the directory; `fix` as in
  `write_error`.
  """
  d = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    tmp = None
    _fsync_dir(d)
  except OSError as e:
    raise write_error(e, d, fix=fix) from None
  finally:
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp)


def _fsync_dir(d: str) -> None:
  with contextlib.suppress(OSError):
    fd = os.open(d, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


# ---------------------------------------------------------------------------------------------
# full disk / read-only: one error

_DISK_MARKERS = {
    errno.ENOSPC: ("No space left on device", "RESOURCE_EXHAUSTED", "[Errno 28]",
                   "os_error_code='28'"),
    errno.EDQUOT: ("Disk quota exceeded", "[Errno 122]"),
    errno.EROFS: ("Read-only file system", "[Errno 30]", "os_error_code='30'"),
    errno.EACCES: ("Permission denied", "[Errno 13]", "PERMISSION_DENIED"),
}


def disk_errno(exc: BaseException | None) -> int | None:
  """ENOSPC/EDQUOT/EROFS/EACCES if `exc` (or its cause/context chain) is a write failure of that kind.

  Orbax and tensorstore raise ValueError('RESOURCE_EXHAUSTED: ... No space left on device') from
  their threads, so the message is read as well as `errno`.
  """
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _DISK_MARKERS:
      return exc.errno
    text = str(exc)
    for code, marks in _DISK_MARKERS.items():
      if any(m in text for m in marks):
        return code
    exc = exc.__cause__ or exc.__context__
  return None


def format_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"


def free_bytes(path: str) -> int | None:
  """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
  p = os.path.abspath(path)
  while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
  try:
    return shutil.disk_usage(p).free
  except OSError:
    return None


def write_error(exc: BaseException, where: str, *, need: int | None = None, intact: str = "",
                fix: str | None = None) -> RunDirWriteError | BaseException:
  """The one-line RunDirWriteError for a write failure in `where`; `exc` itself if it is another error.

  need: the bytes the failed write needed (a checkpoint's size), reported beside the free space.
  intact: a sentence on what survived (e.g. 'Checkpoints up to step 28 are intact.').
  fix: what to do instead of the training default (re-run to resume / another --workdir).
  """
  code = disk_errno(exc)
  if code is None:
    return exc
  free = free_bytes(where)
  if code in (errno.ENOSPC, errno.EDQUOT):
    space = (f" ({format_bytes(free)} free" if free is not None else " (") + \
            (f", a checkpoint needs about {format_bytes(need)})" if need else ")")
    what = ("no space left" if code == errno.ENOSPC else "disk quota exceeded") + \
           f" writing to {where}" + space.replace(" ()", "")
    fix = fix or ("free some space (or move the run to a larger disk) and re-run the same command "
                  "to resume.")
  else:
    what = (f"cannot write to {where}: " +
            ("read-only file system" if code == errno.EROFS else "permission denied"))
    fix = fix or "pass a --workdir on a writable disk (copy the run there to resume it)."
  return RunDirWriteError(f"{what}. {intact + ' ' if intact else ''}Nothing was deleted; {fix}")


class _DiskErrorLogFilter(logging.Filter):
  """Drops orbax's background-thread ERROR records about a full/read-only disk (the loop raises one
  RunDirWriteError for them instead)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or "orbax" not in (record.pathname or ""):
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      if disk_errno(record.exc_info[1]) is not None:
        return False
    return disk_errno(Exception(text)) is None and "Save Finalize thread" not in text \
        and "Commit operations" not in text


@contextlib.contextmanager
def quiet_disk_errors() -> Iterator[None]:
  """While the block runs, full-disk/read-only failures of orbax's and tensorboardX's background
  threads, and tensorstore's 'Event loop is closed' callbacks after a failed save, are not printed
  as tracebacks (the caller reports the failure once, as a RunDirWriteError)."""
  filt = _DiskErrorLogFilter()
  loggers = [logging.getLogger("absl"), logging.getLogger()]
  for lg in loggers:
    lg.addFilter(filt)
  handlers = [h for lg in loggers for h in lg.handlers]
  for h in handlers:
    h.addFilter(filt)
  old_hook = threading.excepthook

  def hook(args):
    if disk_errno(args.exc_value) is None and not _closed_handle(args):
      old_hook(args)

  threading.excepthook = hook
  old_unraisable = sys.unraisablehook

  def unraisable_hook(u):  # tensorstore's callbacks into the event loop of a failed async save
    if not _is_closed_loop_noise(u.exc_value):
      old_unraisable(u)

  sys.unraisablehook = unraisable_hook
  try:
    yield
  finally:
    sys.unraisablehook = old_unraisable
    threading.excepthook = old_hook
    for lg in loggers:
      lg.removeFilter(filt)
    for h in handlers:
      h.removeFilter(filt)


def _closed_handle(args) -> bool:
  """tensorboardX's writer thread dies with 'handle is closed' once its queue is torn down."""
  return isinstance(args.exc_value, OSError) and "handle is closed" in str(args.exc_value) and \
      "tensorboardX" in repr(getattr(args.thread, "run", ""))


# ---------------------------------------------------------------------------------------------
# orbax's closed-event-loop noise

def _is_closed_loop_noise(exc: BaseException | None) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


@contextlib.contextmanager
def quiet_closed_loop_callbacks(settle_s: float = 1.0) -> Iterator[None]:
  """Drops the 'RuntimeError: Event loop is closed' tracebacks of a failed orbax restore.

  When a restore fails on one array, orbax closes its event loop while tensorstore still reads the
  others; their completion callbacks then fail in tensorstore's threads and are reported through
  `sys.unraisablehook` (a bare traceback on stderr). This block filters exactly those; after a
  failure it waits (up to `settle_s`, until none has arrived for 0.2 s) for the stragglers.
  """
  previous = sys.unraisablehook
  last = [time.time()]

  def hook(unraisable):
    if _is_closed_loop_noise(unraisable.exc_value):
      last[0] = time.time()
      return
    previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    last[0] = time.time()
    deadline = last[0] + settle_s
    while time.time() < deadline and time.time() - last[0] < 0.2:
      time.sleep(0.05)
    raise
  finally:
    sys.unraisablehook = previous
