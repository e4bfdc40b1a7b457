"""Where the train loop's records go: metrics.jsonl always; TensorBoard, W&B, a terminal line.

The loop writes each record once to `Sinks`, which hands it to every sink.
The optional libraries are imported when the sinks open, at the start of a
run, so a missing one stops the run before any work with a message naming
the package and the config key.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any, Protocol, TextIO

import ml_collections
from absl import logging

from jaxgpt import metrics

Record = dict[str, Any]


class Sink(Protocol):
  def write(self, record: Record) -> None: ...
  def close(self) -> None: ...


def scalars(record: Record) -> dict[str, float]:
  """A record's numbers under '<event>/<key>': 'train/loss', 'eval/val_loss', ..."""
  return {f"{record['event']}/{k}": float(v) for k, v in record.items()
          if k not in ("event", "iter") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
  """Event files under out_dir/tensorboard, one scalar per number, stepped by iteration."""

  def __init__(self, tensorboardx: types.ModuleType, log_dir: str):
    self._writer = tensorboardx.SummaryWriter(log_dir)

  def write(self, record: Record) -> None:
    for tag, value in scalars(record).items():
      self._writer.add_scalar(tag, value, record["iter"])

  def close(self) -> None:
    self._writer.close()


class WandbSink:
  """A Weights & Biases run named by nanoGPT's keys wandb_project and wandb_run_name."""

  def __init__(self, wandb: types.ModuleType, config: ml_collections.ConfigDict):
    self._run = wandb.init(project=config.wandb_project, name=config.wandb_run_name,
                           config=config.to_dict(), dir=config.out_dir)

  def write(self, record: Record) -> None:
    self._run.log(scalars(record), step=record["iter"])

  def close(self) -> None:
    self._run.finish()


class ProgressLine:
  """One live line on a terminal: iter/total, loss, tok/s, MFU and time left; silent elsewhere.

  It draws only from the records the loop already has on the host, so it adds
  no device sync. Log lines through absl erase it first, so none prints over it.
  """

  def __init__(self, max_iters: int, stream: TextIO | None = None):
    self.max_iters = max_iters
    self.stream = stream if stream is not None else sys.stdout
    self.enabled = self.stream.isatty()
    self._shown = False
    if self.enabled:
      logging.get_absl_logger().addFilter(self._erase_before_log)

  def write(self, record: Record) -> None:
    if not self.enabled or record["event"] != "train":
      return
    it = record["iter"] + 1
    left_s = (self.max_iters - it) * record["ms_per_iter"] / 1000
    mfu = "" if record.get("mfu") is None else f" | MFU {record['mfu']:.1%}"
    hours, rest = divmod(int(left_s), 3600)
    self.stream.write(f"\r{it}/{self.max_iters} ({it / self.max_iters:.0%}) | loss "
                      f"{record['loss']:.4f} | {record['tokens_per_sec']:,.0f} tok/s{mfu} | "
                      f"ETA {hours}:{rest // 60:02d}:{rest % 60:02d}\033[K")
    self.stream.flush()
    self._shown = True

  def _erase_before_log(self, _: Any) -> bool:
    if self._shown:
      self.stream.write("\r\033[K")
      self.stream.flush()
      self._shown = False
    return True

  def close(self) -> None:
    if self.enabled:
      self._erase_before_log(None)
      logging.get_absl_logger().removeFilter(self._erase_before_log)


class Sinks:
  """Hands each record to every sink."""

  def __init__(self, sinks: list[Sink]):
    self.sinks = sinks

  def write(self, record: Record) -> None:
    for sink in self.sinks:
      sink.write(record)

  def close(self) -> None:
    for sink in self.sinks:
      sink.close()


def _require(package: str, key: str) -> types.ModuleType:
  try:
    return importlib.import_module(package)
  except ImportError as e:
    raise ImportError(f"config.{key}=True needs the '{package}' package, which is not "
                      f"installed: pip install {package} (or set --config.{key}=False)") from e


def open_sinks(config: ml_collections.ConfigDict, enabled: bool = True) -> Sinks:
  """metrics.jsonl, the terminal line, and the optional sinks the config turns on.

  Only one process of a multi-host run writes; the others get no sinks.
  """
  if not enabled:
    return Sinks([])
  tensorboardx = _require("tensorboardX", "tensorboard_log") if config.tensorboard_log else None
  wandb = _require("wandb", "wandb_log") if config.wandb_log else None
  sinks: list[Sink] = [metrics.MetricsWriter(os.path.join(config.out_dir, "metrics.jsonl")),
                       ProgressLine(config.max_iters)]
  if tensorboardx is not None:
    sinks.append(TensorBoardSink(tensorboardx, os.path.join(config.out_dir, "tensorboard")))
  if wandb is not None:
    sinks.append(WandbSink(wandb, config))
  return Sinks(sinks)
