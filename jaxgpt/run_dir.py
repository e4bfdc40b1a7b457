"""The run directory: the one module that knows what lives where under `out_dir`.

  out_dir/
    run.lock                   held by the live run (host and pid inside)
    config.json                the resolved config of the latest accepted start
    metrics.jsonl              one JSON record per train log, evaluation or task scoring
    metrics.jsonl.superseded   records of iterations that a resume redid
    metrics.jsonl.<n>          the records of an earlier run that never checkpointed
    checkpoints/<step>/        Orbax: state, data, meta (see checkpoint.py)
    tensorboard/               event files, with tensorboard_log=True
    report.png                 drawn by `python -m jaxgpt.report`

Training writes it; sample, export, plan, report and bench read it through
`RunDir`, never through the training loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
from absl import logging

from jaxgpt import checkpoint, defaults, step
from jaxgpt.errors import UserError

# Keys whose change makes a checkpoint's params meaningless for this model.
ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias",
                     "gelu_approximate")

Records = dict[str, list[dict[str, Any]]]  # event ("train", "eval", "tasks") -> records


class RunDir:
  """Paths, checkpoints and metrics of one run directory."""

  def __init__(self, out_dir: str):
    self.out_dir = out_dir

  def _path(self, name: str) -> str:
    return os.path.join(self.out_dir, name)

  @property
  def metrics_path(self) -> str:
    return self._path("metrics.jsonl")

  @property
  def tensorboard_dir(self) -> str:
    return self._path("tensorboard")

  @property
  def report_path(self) -> str:
    return self._path("report.png")

  @contextlib.contextmanager
  def lock(self) -> Iterator[None]:
    """Holds the directory for one live run; a second run is refused, naming the holder.

    An advisory `flock` on out_dir/run.lock, which the OS drops when the holder
    dies however it dies; the file names the holder's host and pid for the
    message, and a name left by a dead run is taken over with a warning.
    """
    os.makedirs(self.out_dir, exist_ok=True)
    path = self._path("run.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise UserError(f"{self.out_dir} is in use by another run ({holder}); nothing was "
                      "changed. Wait for it to end, or stop it first.") from None
    previous = _read_holder(fd)
    if previous:
      logging.warning("%s: taking over the lock left by a run that is no longer running (%s)",
                      path, previous)
    holder = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%F %T')}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)  # a clean exit leaves no holder to warn about
      os.close(fd)  # and drops the lock

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    os.makedirs(self.out_dir, exist_ok=True)
    with open(self._path("config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))

  def checkpoints(self, *, keep: int = 3, read_only: bool = False) -> checkpoint.Checkpoints:
    return checkpoint.Checkpoints(self._path("checkpoints"), keep=keep, read_only=read_only)

  def checkpoints_for(self, config: ml_collections.ConfigDict) -> checkpoint.Checkpoints:
    """The run's checkpoints, refusing to start over on top of them or resume from none."""
    checkpoints = self.checkpoints(keep=config.keep_checkpoints)
    existing = checkpoints.steps()
    if config.init_from != "resume" and existing:
      raise UserError(
          f"{checkpoints.directory} already holds checkpoints (steps {existing}); nothing was "
          f"changed. To continue that run add --config.init_from=resume; to start a new one, "
          f"pick another --config.out_dir.")
    if config.init_from == "resume" and not existing:
      raise UserError(f"{checkpoints.directory}: no checkpoints to resume from; start the run "
                      "with --config.init_from=scratch")
    return checkpoints

  def restore_params(self, at_step: int | None = None
                     ) -> tuple[ml_collections.ConfigDict, Any, int]:
    """(run config, params, step) of the latest (or the given) checkpoint, on one device."""
    checkpoints = self.checkpoints(read_only=True)
    steps = checkpoints.steps()
    if not steps:
      raise UserError(f"{checkpoints.directory}: no checkpoints; nothing was trained into "
                      f"out_dir={self.out_dir!r} yet")
    if at_step is None:
      at_step = steps[-1]
    elif at_step not in steps:
      raise UserError(f"{checkpoints.directory}: no checkpoint at step {at_step}; it holds "
                      f"{steps}")
    config = defaults.get_config()
    config.update(checkpoints.read_meta(at_step)["config"])
    abstract = checkpoint.abstract_like(step.build(config).abstract_state,
                                        jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    state, _ = checkpoints.restore(at_step, abstract)
    checkpoints.close()
    return config, state.params, at_step

  def metrics_writer(self) -> MetricsWriter:
    return MetricsWriter(self.metrics_path)

  def read_metrics(self) -> Records:
    """The records of metrics.jsonl by event, each list in iteration order.

    A resumed run appends from its checkpoint's iteration: a record at or before
    the last one of its event replaces those, so the lists hold the run that
    continued. An unfinished last line (a run writing right now) is skipped.
    """
    path = self.metrics_path
    if not os.path.isfile(path):
      raise UserError(f"{path}: no such metrics file (is the directory a run's out_dir?)")
    events: Records = {"train": [], "eval": [], "tasks": []}
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.endswith("\n"):
          break
        try:
          record = json.loads(line)
          kept = events.setdefault(record["event"], [])
          it = record["iter"]
        except (ValueError, KeyError, TypeError) as e:
          raise UserError(f"{path}:{n}: not a metrics record ({e}): {line.strip()[:80]}") from e
        while kept and kept[-1]["iter"] >= it:
          kept.pop()
        kept.append(record)
    return events

  def drop_metrics_after(self, at_step: int) -> int:
    """Moves the records of iterations a resumed run will redo to metrics.jsonl.superseded.

    Kept: train records of iterations before `at_step`, and evaluations and
    task scores at or before it. A line cut off by a crash or power loss is moved too, with a
    warning. Returns how many lines were moved; none is deleted.
    """
    path = self.metrics_path
    if not os.path.isfile(path):
      return 0
    keep, moved = [], []
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except ValueError:
          logging.warning("%s:%d: an unfinished record (%r...) moved to %s.superseded", path, n,
                          line.strip()[:40], path)
          moved.append(line if line.endswith("\n") else line + "\n")
          continue
        redone = record["iter"] > at_step or (record["iter"] == at_step
                                              and record["event"] not in ("eval", "tasks"))
        (moved if redone else keep).append(line)
    if moved:
      with open(path + ".superseded", "a", encoding="utf-8") as f:
        f.writelines(moved)
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
      os.replace(tmp, path)
    return len(moved)

  def set_aside_metrics(self) -> None:
    """Moves the metrics.jsonl of an earlier run that never checkpointed out of a new run's way."""
    path = self.metrics_path
    if not os.path.isfile(path):
      return
    n = 1
    while os.path.exists(f"{path}.{n}"):
      n += 1
    os.rename(path, f"{path}.{n}")
    logging.warning("%s held the records of an earlier run without checkpoints; moved to %s.%d",
                    path, path, n)


def _read_holder(fd: int) -> str:
  return os.pread(fd, 1024, 0).decode(errors="replace").strip()


def _state_shapes(config: ml_collections.ConfigDict) -> tuple[Any, list]:
  """The train state's tree and leaf shapes and dtypes under a config (nothing allocated)."""
  leaves, tree = jax.tree.flatten(step.build(config).abstract_state)
  return tree, [(x.shape, x.dtype) for x in leaves]


def check_resumable(saved: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Refuses a resume whose config cannot read the checkpoint; logs every other changed key.

  An architecture change makes the params meaningless; any other key whose
  change gives the train state another structure (grad_clip=0 drops the
  clipping state, say) would make every checkpoint fail to read. Both are
  refused before any checkpoint is touched, naming the keys.
  """
  mismatched = [k for k in ARCHITECTURE_KEYS if saved.get(k) != config[k]]
  if mismatched:
    details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {config[k]!r}"
                        for k in mismatched)
    raise UserError(f"cannot resume {config.out_dir}: the architecture changed ({details})")
  changed = [k for k, v in config.items() if k in saved and saved[k] != v and k != "init_from"]
  if not changed:
    return
  as_saved = config.copy_and_resolve_references()
  with as_saved.unlocked():
    as_saved.update({k: saved[k] for k in changed})
  reference = _state_shapes(as_saved)
  if _state_shapes(config) != reference:
    def alone(key: str) -> ml_collections.ConfigDict:
      c = as_saved.copy_and_resolve_references()
      c[key] = config[key]
      return c
    keys = [k for k in changed if _state_shapes(alone(k)) != reference] or changed
    details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs config {config[k]!r}" for k in keys)
    raise UserError(f"cannot resume {config.out_dir}: with {details} the train state has "
                    "another structure than the checkpoints'; nothing was changed. Resume with "
                    "the checkpoint's values, or start a new run in another out_dir.")
  for key in changed:
    logging.info("resume: %s changed from %r to %r", key, saved[key], config[key])


class MetricsWriter:
  """Appends one JSON object per event to metrics.jsonl, flushed at once."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self.path = path
    self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

  def write(self, record: dict[str, Any]) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def median_throughput(train_records: list[dict[str, Any]]) -> dict[str, float | None]:
  """Median tokens_per_sec, ms_per_iter and mfu of train logs, skipping the first (one step)."""
  steady = train_records[1:] or train_records
  medians: dict[str, float | None] = {}
  for key in ("tokens_per_sec", "ms_per_iter", "mfu"):
    values = [r[key] for r in steady if r.get(key) is not None]
    medians[key] = statistics.median(values) if values else None
  return medians
