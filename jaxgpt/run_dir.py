"""The run directory: the one module that knows what lives where under `out_dir`.

  out_dir/
    run.lock                   held by the live run (host and pid inside)
    config.json                the resolved config of the latest accepted start
    metrics.jsonl              one JSON record per train log, evaluation or task scoring
    metrics.jsonl.superseded   records of iterations that a resume redid
    metrics.jsonl.<n>          the records of an earlier run that never checkpointed (and
                               its config.json.<n>, metrics.jsonl.superseded.<n>,
                               wandb_run_id.<n>)
    checkpoints/<step>/        Orbax: state, data, meta (see checkpoint.py)
    tensorboard/               event files, with tensorboard_log=True
    tensorboard.<n>/           the event files of that earlier run (metrics.jsonl.<n>'s)
    wandb/                     Weights & Biases' local files (wandb_log=True): W&B makes it
    wandb_run_id               the W&B run the directory logs to, which a resume logs to again
    report.png                 drawn by `python -m jaxgpt.report`

Training writes it; sample, export, evaluate, plan, report and bench read it
through `RunDir`, never through the training loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
from absl import logging

from jaxgpt import checkpoint, formatting
from jaxgpt.errors import UserError, folder_problem, missing_folders, read_json_object, same_file

SHARED = ("out_dir must be one folder that every host shares (each process saves its part of a "
          "checkpoint in it), not each host's own disk")
Records = dict[str, list[dict[str, Any]]]  # event ("train", "eval", "tasks") -> records


LOCK_OPENS = 10  # tries at a run.lock that is removed between its open and its lock


class RunDir:
  """Paths, checkpoints and metrics of one run directory."""

  def __init__(self, out_dir: str):
    self.out_dir = os.path.expanduser(out_dir)  # `--out_dir=~/x` reaches us unexpanded
    self.metrics_path = self._path("metrics.jsonl")
    self.tensorboard_dir = self._path("tensorboard")
    self.wandb_dir = self._path("wandb")  # W&B names it, under the dir it is given
    self.checkpoints_dir = self._path("checkpoints")
    self.report_path = self._path("report.png")

  def _path(self, name: str) -> str:
    return os.path.join(self.out_dir, name)

  @contextlib.contextmanager
  def lock(self, writes: bool = True) -> Iterator[None]:
    """Holds the directory for one live run; a second run is refused, naming the holder.

    An advisory `flock` on out_dir/run.lock, which the OS drops when the holder
    dies however it dies; the file names the holder's host and pid for the
    message, and a name left by a dead run is taken over with a warning. A run
    that `writes` nothing (eval_only on a resume) shares the lock with others like
    it, through a run.lock it can only read in a directory it cannot write (an
    archived run's, a colleague's: flock needs no more); it goes on unlocked where
    there is none, and beside a training run that holds it, with a warning.
    """
    check_utf8(self.out_dir)  # before anything is made there
    made = missing_folders(self.out_dir)  # taken back, as what it adds, by a start left unused
    try:
      had = [] if made else os.listdir(self.out_dir)
    except OSError:  # not a folder (refused below), or not readable: what it had is unknown
      had = None
    fd, named = self._acquire(writes)
    if fd is None:  # unlocked, as said
      yield
      return
    try:
      yield
    finally:
      if named:  # a clean exit leaves no holder to warn about
        try:
          os.ftruncate(fd, 0)
        except OSError as e:  # a lost mount, say: no traceback after a run that ended well,
          # nor one in place of the error a run ends on (a failed save)
          logging.warning("%s: cannot clear this run's name from it (%s); the next run takes it "
                          "over", self._path("run.lock"), e.strerror)
      self._remove_if_unused(made, had)  # while locked: a run that opened run.lock retries
      os.close(fd)  # and drops the lock

  def _acquire(self, writes: bool) -> tuple[int | None, bool]:
    """run.lock's descriptor, locked, and whether this run names itself in it (it `writes`);
    None where the run goes on unlocked. A run.lock removed between its open and its lock
    (by a start taking back what it added) is opened again."""
    path = self._path("run.lock")
    for _ in range(LOCK_OPENS):
      fd, named = self._open_lock(path, writes)
      if fd is None:
        return None, False
      try:
        fcntl.flock(fd, (fcntl.LOCK_EX if named else fcntl.LOCK_SH) | fcntl.LOCK_NB)
      except BlockingIOError:  # held by another: a run that `writes` is refused, naming it
        holder = _read_holder(fd) or "one that does not name itself"
        if writes:
          with contextlib.suppress(BlockingIOError):  # shared: only evaluations hold it so
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            holder = "an evaluation of its checkpoint, eval_only"
          os.close(fd)
          raise UserError(f"{self.out_dir} is in use by another run ({holder}); nothing was "
                          "changed. Wait for it to end, or stop it first.") from None
        os.close(fd)  # an evaluation goes on beside it, writing nothing, as nanoGPT's eval_only
        logging.warning("%s is in use by a training run (%s); evaluating its checkpoint beside "
                        "it", self.out_dir, holder)
        return None, False
      except OSError as e:  # a filesystem without locks: Lustre without -o flock, NFS w/o lockd
        logging.warning("%s: cannot be locked (%s); a second run started on this directory "
                        "meanwhile would not be refused", path, e.strerror)
        break
      if same_file(fd, path):
        break
      os.close(fd)
    else:
      raise UserError(f"{path}: removed or replaced each of the {LOCK_OPENS} times it was "
                      "locked; is another program deleting it?")
    if named:
      try:
        self._record_holder(fd, path)
      except UserError:
        os.close(fd)
        raise
    return fd, named

  def _open_lock(self, path: str, writes: bool) -> tuple[int | None, bool]:
    """run.lock opened to write (a run that `writes` names itself in it), else to read where it
    cannot be written; None where neither (a warning says so)."""
    try:
      os.makedirs(self.out_dir, exist_ok=True)
      # Not through a symlink: the file it names would be emptied.
      return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), writes
    except OSError as e:
      if writes or not os.path.isdir(self.out_dir):
        odd = os.path.islink(path) or os.path.isdir(path)  # no file a lock can be held on
        where = path if odd else self.out_dir
        why = "a symlink" if os.path.islink(path) else folder_problem(where, e)
        raise UserError(f"{where}: a run cannot write there ({why}); pick a writable "
                        "--config.out_dir") from None
      try:
        return os.open(path, os.O_RDONLY), False  # flock needs no more
      except OSError:
        logging.warning("%s: cannot be locked (%s, and no run.lock to read); a run started "
                        "on it meanwhile would not be refused", self.out_dir, e.strerror)
        return None, False

  @staticmethod
  def _record_holder(fd: int, path: str) -> None:
    """Names this run in its run.lock, for a second run's refusal."""
    previous = _read_holder(fd)
    if previous and not previous.startswith("pid "):
      raise UserError(f"{path}: not a jaxgpt run's lock (it reads {previous[:40]!r}), and a run "
                      "would empty it; nothing was changed. Pick another --config.out_dir.")
    if previous:
      logging.warning("%s: taking over the lock left by a run that is no longer running (%s)",
                      path, previous)
    holder = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%F %T')}"
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, holder.encode(), 0)
    except OSError as e:  # a full disk: the lock holds; a second run's message names no holder
      logging.warning("%s: cannot record this run as its holder (%s)", path, e.strerror)
    with contextlib.suppress(OSError):  # a filesystem without it (some FUSE ones)
      os.fsync(fd)  # for the other hosts' `holder` now (NFS sends it at close otherwise)

  def holder(self, wait_s: float = 0) -> str:
    """The run that run.lock names; '' where this host sees none in `wait_s` (an out_dir on
    its own disk, where another host's run locked it; NFS may take its attribute cache's
    60 s to show a folder another host just made)."""
    deadline = time.monotonic() + wait_s
    while True:
      with contextlib.suppress(OSError), open(self._path("run.lock"), "rb") as f:
        if held_by := _read_holder(f.fileno()):
          return held_by
      if time.monotonic() >= deadline:
        return ""
      time.sleep(1)

  def _remove_if_unused(self, made: list[str], had: list[str] | None) -> None:
    """Takes back what a start that was refused added: a run.lock and an empty checkpoints/
    that out_dir did not have (its names `had`; None: unknown), and the folders it `made`
    (out_dir and those above it). Called with the lock held: a run that opened run.lock
    meanwhile finds, once it locks it, that it was removed, and opens it again."""
    with contextlib.suppress(OSError):  # not empty, or not ours to remove: left as it is
      added = set(os.listdir(self.out_dir)) - set(had if had is not None else ["run.lock"])
      if not added <= {"run.lock", "checkpoints"}:
        return
      if "checkpoints" in added:
        os.rmdir(self.checkpoints_dir)
      if "run.lock" in added:
        os.remove(self._path("run.lock"))
        for folder in made:  # a parent another run made use of meanwhile is not empty: stays
          os.rmdir(folder)

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    """config.json, the run's whole config, for a resume and the commands that read the run."""
    os.makedirs(self.out_dir, exist_ok=True)
    self._write_whole("config.json", config.to_json_best_effort(indent=2))

  def _write_whole(self, name: str, text: str) -> None:
    """Replaces `name` whole: a failed write (a full disk) leaves the one before it."""
    written = self._path(f".{name}.tmp{os.getpid()}")
    try:
      with open(written, "w", encoding="utf-8", errors="surrogateescape") as f:  # bytes as read
        f.write(text)
      os.replace(written, self._path(name))
    except OSError:
      with contextlib.suppress(OSError):
        os.remove(written)
      raise

  def read_config(self) -> dict[str, Any] | None:
    """The config.json of the latest accepted start; None where there is none."""
    return read_json_object(self._path("config.json"), "a run's config")

  def write_wandb_run_id(self, run_id: str) -> None:
    self._write_whole("wandb_run_id", run_id + "\n")  # cut short, a resume starts another run

  def read_wandb_run_id(self) -> str | None:
    """The W&B run of the latest accepted start; None where none logged to W&B."""
    path = self._path("wandb_run_id")
    try:
      with open(path, encoding="utf-8") as f:
        return f.read().strip() or None
    except FileNotFoundError:
      return None
    except (OSError, UnicodeDecodeError) as e:  # a folder in its place, bytes not UTF-8
      raise UserError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e}); move it "
                      "aside to start a new W&B run") from None

  def checkpoints(self, *, keep: int = 3, read_only: bool = False) -> checkpoint.Checkpoints:
    return checkpoint.Checkpoints(self.checkpoints_dir, keep=keep, read_only=read_only)

  def checkpoints_for(self, *, resume: bool, keep: int, saves: bool, auto_resume: bool
                      ) -> checkpoint.Checkpoints:
    """The run's checkpoints, refusing what `check_start` refuses."""
    self.check_start(resume=resume, saves=saves)
    return checkpoint.Checkpoints(self.checkpoints_dir, keep=keep, auto_resume=auto_resume)

  def finished_steps(self) -> list[int]:
    """The steps of the checkpoints saved whole, from the folder names alone: without a
    checkpoint manager, whose barriers the other processes would meet elsewhere."""
    return checkpoint.finished_steps(os.path.abspath(self.checkpoints_dir))

  def saved_config(self, steps: list[int]) -> dict[str, Any]:
    """The config that the newest of `steps` whose metadata reads back was saved with; {}
    where none reads (a resume then says why)."""
    for step in reversed(steps):
      with contextlib.suppress(Exception):  # an unreadable checkpoint: the one before it
        return checkpoint.read_meta(os.path.abspath(self.checkpoints_dir), step)["config"]
    return {}

  def check_start(self, *, resume: bool, saves: bool = True) -> None:
    """Refuses, with nothing made: a checkpoints/ a run that `saves` (not eval_only) cannot
    save in (found at the first save, an eval_interval in, otherwise); a config.json the run
    would replace but did not write (an export's, or a Hugging Face checkpoint's that
    init_from=gpt2 reads from there); a new run over checkpoints, or a resume from none."""
    directory = os.path.abspath(self.checkpoints_dir)
    if saves and os.path.exists(directory) and not (
        os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)):
      raise UserError(f"{directory}: the run cannot save its checkpoints there ("
                      f"{'not writable' if os.path.isdir(directory) else 'not a folder'}); "
                      "nothing was changed")
    try:
      config = self.read_config()
    except UserError:  # a run's, damaged: the start replaces it, as it would a sound one
      config = None
    if config is not None and "init_from" not in config:
      raise UserError(f"{self._path('config.json')} is not a jaxgpt run's config (a Hugging "
                      "Face model's?), which the run would replace; nothing was changed. Pick "
                      "another --config.out_dir.")
    existing = self.finished_steps()
    if not resume and existing:
      raise UserError(
          f"{directory} already holds checkpoints (steps {existing}); nothing was "
          f"changed. To {'continue that run' if saves else 'evaluate its latest checkpoint'} "
          "add --config.init_from=resume; to start a new one, pick another --config.out_dir.")
    if resume and not existing:
      nanogpt = os.path.join(os.path.dirname(directory), "ckpt.pt")  # nanoGPT's out_dir
      raise UserError(f"{directory}: no checkpoints to resume from; start the run with "
                      + (f"--config.init_from={shlex.quote('nanogpt:' + nanogpt)} (nanoGPT's "
                         "checkpoint there) or "
                         if os.path.isfile(nanogpt) else "") + "--config.init_from=scratch")

  def read_metrics(self) -> Records:
    """The records of metrics.jsonl by event, each list in iteration order.

    A resumed run appends from its checkpoint's iteration: a record at or before
    the last one of its event replaces those, so the lists hold the run that
    continued. An unfinished last line (a run writing right now) is skipped.
    """
    path = self.metrics_path
    if os.path.isfile(self.out_dir):
      raise UserError(f"{self.out_dir}: a file, not a run directory (one holding metrics.jsonl)")
    events: Records = {"train": [], "eval": [], "tasks": []}
    try:
      with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
      raise UserError(f"{path}: no such metrics file (is the directory a run's out_dir?)"
                      ) from None
    except OSError as e:  # another user's run, say (its out_dir too: no file it could stat)
      raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
      if not line.endswith("\n"):
        break
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        kept = events.setdefault(record["event"], [])
        it = record["iter"]
        if type(it) is not int or not 0 <= it < 2**63:  # as an int64, which plots take
          raise TypeError(f"iter {it!r} is not a whole number from 0 to 2**63 - 1")
      except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}:{n}: not a metrics record ({e}): {line.strip()[:80]}") from e
      while kept and kept[-1]["iter"] >= it:
        kept.pop()
      kept.append(record)
    return events

  def keep_metrics_until(self, resumed_at: int | None, *, evaluated: bool) -> None:
    """metrics.jsonl as a start needs it: a new run (`resumed_at` None) moves an earlier run's
    records aside; a resume moves those of the iterations it will redo to .superseded.

    Kept: train records of iterations before `resumed_at`, evaluations and task
    scores before it, and those at it where the checkpoint was `evaluated` (else
    the resume scores it again, and a second resume would add a third). A line cut
    off by a crash or power loss is moved too, with a warning; none is deleted.
    TensorBoard keeps the same records (see sinks.TensorBoardSink).
    """
    if resumed_at is None:
      self.set_aside_metrics()
      return
    path = self.metrics_path
    if not os.path.isfile(path):
      return
    keep, moved, redone_records = [], [], 0
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # bytes kept as they are
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        record = _record(line)
        if record is None:
          logging.warning("%s:%d: not a whole record (%r...) moved to %s.superseded", path, n,
                          line.strip()[:40], path)
          moved.append(line if line.endswith("\n") else line + "\n")
          continue
        scored = evaluated and record["event"] in ("eval", "tasks")
        redone = record["iter"] > resumed_at or (record["iter"] == resumed_at and not scored)
        (moved if redone else keep).append(line)
        redone_records += redone
    if moved:
      with open(path + ".superseded", "a", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(moved)
      self._write_whole("metrics.jsonl", "".join(keep))
      if redone_records:
        logging.info("%s of redone iterations moved to %s.superseded",
                     formatting.plural(redone_records, "record"), path)

  def records(self) -> list[dict[str, Any]]:
    """The records metrics.jsonl holds, in iteration order; none where there is no file."""
    if not os.path.isfile(self.metrics_path):
      return []
    return sorted((r for records in self.read_metrics().values() for r in records),
                  key=lambda r: r["iter"])

  def set_aside_metrics(self) -> None:
    """Moves an earlier run's records out of a new run's way, as metrics.jsonl.<n>,
    config.json.<n> (the config they are of) and the like: that run never checkpointed (a
    new run over checkpoints is refused), and its records are the user's, so none is
    deleted."""
    files = (self.metrics_path, self.metrics_path + ".superseded", self._path("config.json"),
             self._path("wandb_run_id"))  # else a resume of the new run logs to the old's
    paths = (*files, self.tensorboard_dir)
    moving = [p for p in files if os.path.isfile(p)]  # a folder of such a name is not a run's
    if os.path.isdir(self.tensorboard_dir):
      moving.append(self.tensorboard_dir)
    if not moving:
      return
    n = 1
    while any(os.path.exists(f"{p}.{n}") for p in paths):
      n += 1
    logged = any(os.path.getsize(p) for p in moving if p.startswith(self.metrics_path))
    for path in moving:
      os.rename(path, f"{path}.{n}")
    held = ("records of an earlier run without checkpoints" if logged else
            "files of an earlier run that stopped before its first record")
    logging.warning("%s held the %s; moved to %s", self.out_dir, held,
                    ", ".join(f"{os.path.basename(p)}.{n}" for p in moving))


def check_utf8(out_dir: str) -> None:
  """Refuses a path holding bytes that are not UTF-8 (a Latin-1 name), under which Orbax can
  neither save nor read checkpoints: a run would train to its first save and fail there."""
  path = os.path.abspath(out_dir)  # the working directory's name counts too
  try:
    path.encode("utf-8")
  except UnicodeEncodeError:
    raise UserError(f"out_dir={path!r}: its path holds bytes that are not UTF-8, under which "
                    "Orbax can neither save nor read checkpoints; rename the folder or pick "
                    "another") from None


def _record(line: str) -> dict[str, Any] | None:
  """A metrics.jsonl line's record; None for a line cut off by a crash or power loss (before
  its newline, the next record would join it) or one that is no record (a note added by hand)."""
  try:
    record = json.loads(line) if line.endswith("\n") else None
  except ValueError:
    return None
  whole = (isinstance(record, dict) and isinstance(record.get("event"), str)
           and isinstance(record.get("iter"), int))
  return record if whole else None


def _read_holder(fd: int) -> str:
  return os.pread(fd, 1024, 0).decode(errors="replace").strip()
