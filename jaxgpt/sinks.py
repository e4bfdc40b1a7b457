"""Where the train loop's records go: metrics.jsonl always; TensorBoard, W&B, a progress bar."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import sys
import time
import types
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

import tqdm
import tqdm.contrib
from absl import logging

from jaxgpt import formatting, run_dir
from jaxgpt.errors import UserError, first_line

Record = dict[str, Any]


class Sink(Protocol):
  def write(self, record: Record) -> None: ...
  def close(self, failed: bool = False) -> None: ...  # failed: the run ends on an error


def scalars(record: Record) -> dict[str, float]:
  """A record's numbers under '<event>/<key>': 'train/loss', 'eval/val_loss', ..."""
  return {f"{record['event']}/{k}": float(v) for k, v in record.items()
          if k not in ("event", "iter") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsWriter:
  """Appends one JSON object per record to metrics.jsonl, flushed at once."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

  def write(self, record: Record) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self, failed: bool = False) -> None:
    with contextlib.suppress(OSError):  # a full disk: the write that hit it stopped the run
      self._file.close()


class TensorBoardSink:
  """Event files under out_dir/tensorboard, one scalar per number, stepped by iteration.

  Each record is written and flushed in the loop's thread, so a write that fails (a full
  disk) stops the run as metrics.jsonl's does; tensorboardX's SummaryWriter writes from a
  thread of its own, which such an error ends, and after it every record would wait for ever.
  A resume's file opens with a session start at step 0 (as tensorboardX's `purge_step=0`):
  TensorBoard's reader drops every earlier file's events, and the records metrics.jsonl
  keeps, `kept`, are written again, so the two hold the same records: a redone iteration is
  one point, not two curves.
  """

  def __init__(self, tensorboardx: types.ModuleType, log_dir: str, *,
               kept: Sequence[Record] | None = None):
    self._event_pb2, self._summary_pb2 = (tensorboardx.proto.event_pb2,
                                          tensorboardx.proto.summary_pb2)
    os.makedirs(log_dir, exist_ok=True)
    self._events = tensorboardx.event_file_writer.EventsWriter(os.path.join(log_dir, "events"))
    if kept is not None:
      start = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
      self._events.write_event(self._event_pb2.Event(step=0, wall_time=time.time(),
                                                     session_log=start))
      for record in kept:  # one flush: one a record took 80 s at 300,000 of them
        self._add(record)
      self._events.flush()

  def write(self, record: Record) -> None:
    self._add(record)
    self._events.flush()

  def _add(self, record: Record) -> None:
    values = [self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
              for tag, value in scalars(record).items()]
    summary = self._summary_pb2.Summary(value=values)
    self._events.write_event(self._event_pb2.Event(step=record["iter"], wall_time=time.time(),
                                                   summary=summary))

  def close(self, failed: bool = False) -> None:
    with contextlib.suppress(OSError):  # a full disk: each record was flushed, or stopped the run
      self._events.close()


class WandbSink:
  """A Weights & Biases run named by nanoGPT's keys wandb_project and wandb_run_name.

  A resume logs to the run it resumes (`run_id`, which out_dir keeps) from
  the step W&B resumes at: W&B takes no step at or below its last, so the
  iterations a resume redoes are not sent again, and neither is the train
  record of the iteration W&B ended on (a finished run's last evaluation,
  continued with a larger max_iters); metrics.jsonl has every one. The kept
  records from that step on (those a kill kept from W&B) are sent first.

  W&B mirrors metrics.jsonl: where it fails mid-run (its service killed, say),
  the run says so once and trains on without it; a resume that trains on sends it the
  records it lacks.
  """

  def __init__(self, wandb: types.ModuleType, *, project: str, name: str,
               config: dict[str, Any], out_dir: str, run_id: str | None):
    # W&B keeps its files in a folder of its own, `wandb/`, under `dir`.
    self._run = wandb.init(project=project, name=name, config=config, dir=out_dir, id=run_id,
                           resume="allow")
    self.run_id: str = self._run.id
    self._next_step = self._run.step
    self._broken = False

  def write(self, record: Record) -> None:
    if self._broken or record["iter"] < self._next_step:
      return
    values = scalars(record)
    try:
      self._run.log(values, step=record["iter"])
    except Exception as e:  # noqa: BLE001 - whatever W&B raises: training is not stopped for it
      self._broken = True
      logging.warning("W&B failed at the %s record of iteration %d (%s): training goes on "
                      "without it; metrics.jsonl has every record (a resume that trains on "
                      "sends W&B those it lacks)", record["event"], record["iter"],
                      first_line(e))

  def close(self, failed: bool = False) -> None:
    if self._broken:  # its finish would fail again, in place of the run's own error
      return
    self._run.finish(exit_code=1 if failed else 0)  # W&B shows a failed run as "failed"


class ProgressBar:
  """A tqdm bar on a terminal: iter/total, loss, tok/s, MFU, time left; silent elsewhere.

  It draws only from the records the loop already has on the host, so it adds
  no device sync. The time left is the steps' own (their ms_per_iter), as the
  log's estimate is: tqdm's rate would count the start-up and each evaluation
  as a few slow steps, and say many times the time left. While it is shown,
  absl's log lines go through `tqdm.write`, which clears the bar first, so none
  prints over it.
  """

  def __init__(self, max_iters: int, start_iter: int = 0, stream: TextIO | None = None):
    stream = stream if stream is not None else sys.stderr
    self.bar = tqdm.tqdm(total=max_iters, initial=start_iter, file=stream, unit="it",
                         disable=not stream.isatty(), dynamic_ncols=True, mininterval=0,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    self._log_handler = logging.get_absl_handler().python_handler
    self._log_stream = self._log_handler.stream
    if not self.bar.disable:
      self._log_handler.stream = tqdm.contrib.DummyTqdmFile(self._log_stream)
    self._figures, self._ms_per_iter = "", 0.0  # the last train log's

  def write(self, record: Record) -> None:  # a disabled bar's update and postfix do nothing
    """The time left is counted from where the bar is, so a finished run's says none (the
    last train log's, an interval before max_iters, stayed beside 100%)."""
    done = record["iter"]  # an evaluation at iteration i comes after i iterations
    if record["event"] == "train":
      done += 1
      mfu = "" if record.get("mfu") is None else f", MFU {record['mfu']:.1%}"
      self._figures = f"loss {record['loss']:.4f}, {record['tokens_per_sec']:,.0f} tok/s{mfu}"
      self._ms_per_iter = record["ms_per_iter"]
    if done > self.bar.n:
      left = (self.bar.total - done) * self._ms_per_iter / 1000
      if self._figures:  # none before a resume's first train log
        self.bar.set_postfix_str(f"{self._figures}, {formatting.duration(left)} left"
                                 if done < self.bar.total else self._figures, refresh=False)
      self.bar.update(done - self.bar.n)

  def close(self, failed: bool = False) -> None:
    self.bar.close()
    self._log_handler.stream = self._log_stream


class Sinks:
  """Hands each record to every sink."""

  def __init__(self, sinks: list[Sink]):
    self.sinks = sinks

  def write(self, record: Record) -> None:
    for sink in self.sinks:
      sink.write(record)

  def close(self, failed: bool = False) -> None:
    """Closes every sink, in order, even where one fails to (the last error is raised after,
    the others chained to it)."""
    with contextlib.ExitStack() as stack:
      for sink in reversed(self.sinks):
        stack.callback(sink.close, failed)


@dataclasses.dataclass(frozen=True)
class SinkConfig:
  """The keys that say where a run's records go (defaults.py says what each means)."""

  max_iters: int
  tensorboard_log: bool
  wandb_log: bool
  wandb_project: str
  wandb_run_name: str


@dataclasses.dataclass(frozen=True)
class Libraries:
  """The optional libraries a run turns on, loaded at its start: tensorboardX, W&B's run."""

  tensorboardx: types.ModuleType | None = None
  wandb_run: WandbSink | None = None


def _require(package: str, key: str) -> types.ModuleType:
  try:
    module = importlib.import_module(package)
  except Exception as e:  # a package broken by another's version (protobuf's), or one it lacks
    if isinstance(e, ModuleNotFoundError) and e.name == package:
      raise UserError(f"config.{key}=True needs the '{package}' package, which is not "
                      f"installed: pip install {package} (or set --config.{key}=False)") from e
    raise UserError(f"config.{key}=True: importing '{package}' failed ({type(e).__name__}: "
                    f"{first_line(e)}); reinstall it (or set --config.{key}=False)") from e
  if getattr(module, "__file__", None) is None and hasattr(module, "__path__"):  # a folder
    # of its name found on the path (`wandb offline` writes ./wandb/settings), no package
    raise UserError(f"config.{key}=True needs the '{package}' package, which is not installed "
                    f"({', '.join(module.__path__)} is a folder of its name): pip install "
                    f"{package} (or set --config.{key}=False)")
  return module


def require_packages(c: SinkConfig) -> tuple[types.ModuleType | None, types.ModuleType | None]:
  """Imports the packages `c` turns on (tensorboardX, wandb; None where off): a missing one is
  said before the run's start-up (a dataset to prepare, weights to download), not after it."""
  return (_require("tensorboardX", "tensorboard_log") if c.tensorboard_log else None,
          _require("wandb", "wandb_log") if c.wandb_log else None)


def start_libraries(c: SinkConfig, rundir: run_dir.RunDir, run_config: dict[str, Any],
                    resume: bool) -> Libraries:
  """tensorboardX imported and W&B's run started (a resume's again), before the run writes
  anything: a missing package or a refused W&B run (not logged in, no network) leaves the
  run directory as it was, and is one error line."""
  tensorboardx, wandb = require_packages(c)
  if wandb is None:
    return Libraries(tensorboardx)
  run_id = rundir.read_wandb_run_id() if resume else None
  had_folder = os.path.isdir(rundir.wandb_dir)
  logging.info("starting the W&B run (W&B waits for its server up to 90 s; WANDB_MODE=offline "
               "needs none)")
  try:
    wandb_run = WandbSink(wandb, project=c.wandb_project, name=c.wandb_run_name,
                          config=run_config, out_dir=rundir.out_dir, run_id=run_id)
  except Exception as e:  # wandb's own errors (login, network, quota) share no base class
    if not had_folder:  # made by the start that failed: out_dir as it was
      shutil.rmtree(rundir.wandb_dir, ignore_errors=True)
    raise UserError(f"config.wandb_log=True: W&B could not start a run ({type(e).__name__}: "
                    f"{' '.join(str(e).split())}); check `wandb login` and the network, run "
                    "with WANDB_MODE=offline (then `wandb sync`), or set "
                    "--config.wandb_log=False") from e
  return Libraries(tensorboardx, wandb_run)


def open_sinks(c: SinkConfig, rundir: run_dir.RunDir, libraries: Libraries, *,
               resumed_at: int | None = None) -> Sinks:
  """metrics.jsonl, the progress bar, TensorBoard and W&B where `libraries` has them.

  Only one process of a multi-host run writes; the loop gives the others no
  sinks. A resume (at iteration `resumed_at`) opens them after
  `RunDir.keep_metrics_until`, so TensorBoard and W&B get what metrics.jsonl kept.
  """
  made: list[Sink] = []
  try:  # a failure (a full disk) closes those made
    made.append(MetricsWriter(rundir.metrics_path))
    made.append(ProgressBar(c.max_iters, resumed_at or 0))
    kept = None if resumed_at is None else rundir.records()
    if libraries.tensorboardx is not None:
      made.append(TensorBoardSink(libraries.tensorboardx, rundir.tensorboard_dir, kept=kept))
    if libraries.wandb_run is not None:
      rundir.write_wandb_run_id(libraries.wandb_run.run_id)
      for record in kept or ():
        libraries.wandb_run.write(record)  # what a kill kept from W&B: those from its step on
      made.append(libraries.wandb_run)
  except BaseException:
    Sinks(made).close(failed=True)
    raise
  return Sinks(made)
