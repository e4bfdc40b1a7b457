"""Where a run starts: a fresh state, or a checkpoint's state and the data position it reached.

Also what a resume may change. The data position is a window of the one
global window stream (see data.py): an iteration of W windows moves it by W
whatever the batch layout.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import zlib
from collections.abc import Callable
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from jaxgpt import checkpoint, data, defaults, model, optim, sharding, train_step
from jaxgpt.errors import UserError


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a run starts: a fresh state, or a checkpoint's state and position."""

  state: train_step.TrainState
  iter: int = 0
  tokens: int = 0  # tokens trained on before `iter`
  best_val_loss: float = math.inf
  best_kept: tuple[float, int] | None = None  # val loss and step of the best checkpoint saved
  window: int = 0  # the data stream's window the train dataset starts at
  evaluated: bool = False  # the checkpoint's iteration was evaluated before it was saved
  eval_batch_windows: int | None = None  # the run's evaluation batch (see train.val_losses)
  eval_iters: int | None = None  # the checkpoint's: how many of those batches it evaluated
  split_windows: dict[str, int] | None = None  # each split's windows when it was saved
  val_print: int | None = None  # and the val split's fingerprint (see data_seen)
  data_dir: str | None = None  # the data folder the run read, its real path
  unreadable: tuple[int, ...] = ()  # newer steps passed over: set aside once the run is accepted


Batches = Callable[[int], grain.DatasetIterator]  # the train batches from a window of the stream
VAL_PRINT_WINDOWS = 16  # read at every start: 32 KB at block_size 1024
# The keys an evaluation reads beyond the architecture: the changes a resume that trains
# nothing (eval_only, a checkpoint at max_iters) says.
_EVALUATED = ("dataset", "data_dir", "eval_iters", "dtype", "attention", "loss_chunk_size",
              "sharding", "eval_tasks", "eval_tasks_limit", "hellaswag_file")


def trains_from(step: int, eval_only: bool, max_iters: int) -> bool:
  """Whether a run starting at `step` trains (and reads batches); else it evaluates alone."""
  return not eval_only and step < max_iters


def position_basis(layout: sharding.BatchLayout, workers: int) -> dict[str, int | str]:
  """What a saved data position depends on; a resume that changes it converts the position.
  Grain's worker processes save their state in a format of its version's own."""
  return {"windows_per_iter": layout.accum_steps * layout.global_batch,
          "processes": jax.process_count(), "workers": workers, "devices": layout.n_devices,
          "grain": grain.__version__}


def resume(config: ml_collections.ConfigDict, setup: train_step.TrainSetup, shardings: Any,
           checkpoints: checkpoint.Checkpoints, layout: sharding.BatchLayout,
           open_batches: Batches) -> tuple[Start, grain.DatasetIterator]:
  """The latest good checkpoint's state, and the train batches from where it stopped.

  Under the batch layout it was saved with, the saved data iterator continues. Under another (batch
  size, accumulation, devices, processes, workers; with workers, Grain's version), or where the
  saved iterator state of any process does not read back (a missing or damaged file), every process
  starts a new one at the window the checkpoint reached: the same tokens in the same order, and one
  start window in the checkpoints they save next. A data position never makes a resume fall back.
  """
  now = position_basis(layout, config.data_workers)
  speaks = jax.process_index() == 0  # what every process would say alike, said once
  trains = lambda step: trains_from(step, config.eval_only, config.max_iters)
  reached = lambda meta, why, said: _reached(meta["tokens"], config.block_size, why, said)

  def batches_from(step: int, meta: dict[str, Any]) -> tuple[grain.DatasetIterator, int]:
    saved = meta.get("data") or {**now, "start_window": 0}  # written before they were recorded
    if saved["devices"] != now["devices"] and speaks and trains(step):
      logging.warning("resume: %d device(s); the checkpoint was written on %d", now["devices"],
                      saved["devices"])
    why_not = _not_continued(saved, now)
    if why_not:
      window = reached(meta, why_not, speaks and trains(step))
      return open_batches(window), window
    window = saved["start_window"]
    batches = open_batches(window)
    try:  # agreed: the processes record one start window in the checkpoints they save
      error, _ = sharding.agree("reading the data position", checkpoints.restore_data, step,
                                batches)
    except BaseException:
      batches.close()
      raise
    if error is None:
      return batches, window
    batches.close()
    window = reached(meta, f"the data position saved with step {step} does not read back "
                     f"({checkpoint.cause(error)})",  # each cause said where it was met
                     trains(step) and (speaks or not isinstance(error, sharding.FailedElsewhere)))
    return open_batches(window), window

  changed = {}  # keys: what config changes of the last checkpoint checked, the one restored
  it, state, meta, (batches, window), unreadable = checkpoints.restore_latest_good(
      sharding.abstract_like(setup.abstract_state, shardings),
      check_meta=lambda meta: changed.update(keys=check_resumable(meta["config"], config)),
      finish=batches_from, discard=lambda made: made[0].close())
  then = defaults.with_defaults(meta["config"])  # a key the run predates: as it is now
  saved = meta.get("data") or {}
  # The data folder, where the checkpoint names it, `data_changes` compares as a path.
  if speaks:
    _log_changes([k for k in changed["keys"] if k != "data_dir" or not saved.get("data_dir")],
                 meta["config"], then, config.to_dict(), trains(it))
    if trains(it):
      warn_if_lr_moves(*(defaults.view(optim.OptimConfig, c) for c in (then, config)), it)
  logging.info("resumed from %s/%d", checkpoints.directory, it)
  return Start(state, it, meta["tokens"], meta.get("best_val_loss") or math.inf,
               _best_kept(meta, checkpoints, it), window,
               evaluated=meta.get("val_loss") is not None, unreadable=tuple(unreadable),
               eval_iters=then["eval_iters"],
               **_recorded(saved, then["batch_size"], layout.n_devices)), batches


def _recorded(saved: dict[str, Any], batch_size: int, n_devices: int) -> dict[str, Any]:
  """The Start fields a checkpoint's data record (`saved`) gives. Before checkpoints recorded
  the evaluation batch, a run evaluated eval_iters of its global batches: `batch_size` x its
  devices (as now where it recorded none, as `batches_from` takes them)."""
  batch = saved.get("eval_batch_windows", batch_size * saved.get("devices", n_devices))
  return {"eval_batch_windows": batch,
          **{key: saved.get(key) for key in ("split_windows", "val_print", "data_dir")}}


def _log_changes(keys: list[str], saved: dict[str, Any], then: dict[str, Any],
                 now: dict[str, Any], trains: bool) -> None:
  """The config `keys` a resume changed from the checkpoint's `saved` to `now` (`then`: the
  saved config with the defaults of keys the run predates); unless it `trains`, only those an
  evaluation reads."""
  for key in (k for k in keys if k in _EVALUATED or trains):
    if key == "attention" and then[key] == "auto":  # saved before runs recorded the kernel
      continue
    predates = "" if key in saved else " (the default; the run predates the key)"
    logging.info("resume: %s changed from %r%s to %r", key, then[key], predates, now[key])


def warn_if_lr_moves(then: optim.OptimConfig, now: optim.OptimConfig, it: int) -> None:
  """Says when a schedule changed on resume (`then` the checkpoint's, `now` the run's) moves
  the learning rate of the resumed iteration `it`, as a larger max_iters does in the recipes,
  whose warmup and decay follow it: the rate jumps at once. Muon's rate, where it runs, too."""
  peaks = {"the learning rate": None}
  if now.optimizer == "muon":
    peaks["Muon's learning rate"] = "muon_learning_rate"
  moved = []  # (name, rate now, rate then)
  for name, peak in peaks.items():
    lr_then, lr_now = (float(optim.lr_schedule(o, np, getattr(o, peak) if peak else None)(it))
                       for o in (then, now))
    if not math.isclose(lr_then, lr_now, rel_tol=1e-3):
      moved.append((name, lr_now, lr_then))
  if not moved:
    return
  keys = optim.SCHEDULE_KEYS + tuple(peak for peak in peaks.values() if peak)
  changed = {k: (getattr(then, k), getattr(now, k)) for k in keys
             if getattr(then, k) != getattr(now, k)}
  (name, lr_now, lr_then), others = moved[0], moved[1:]
  logging.warning("resume: %s of iteration %d is %.3g under the changed schedule (%s), and %.3g "
                  "under the checkpoint's%s; to keep the checkpoint's: %s", name, it, lr_now,
                  ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), lr_then,
                  "".join(f" ({n}: {a:.3g} now, {b:.3g} at the checkpoint)"
                          for n, a, b in others),
                  " ".join(f"--config.{k}={shlex.quote(str(a))}" for k, (a, _) in changed.items()))


def _not_continued(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
  """Why the saved data iterator state cannot continue under `now` (see position_basis), or
  None where it can."""
  changed = [k for k in ("windows_per_iter", "processes", "workers") if saved[k] != now[k]]
  if changed:
    return "the batch layout changed ({})".format(
        ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in changed))
  if now["workers"] and saved.get("grain", now["grain"]) != now["grain"]:  # older records lack it
    return (f"the data position was saved by grain {saved['grain']}'s worker processes, in that "
            f"version's own format, which a run under grain {now['grain']} does not read")
  return None


def _reached(tokens: int, block_size: int, why: str, said: bool) -> int:
  """The window a checkpoint's data continues at where its position does not: every window
  before the one holding its `tokens`-th token was trained on; `why`, logged where `said`."""
  window = tokens // block_size
  if said:
    logging.warning("resume: %s; the data continues at window %s (token %s), where the "
                    "checkpoint stopped", why, f"{window:,}", f"{tokens:,}")
  return window


def check_data_found(checkpoints_dir: str, data_dir: str) -> None:
  """Refuses a resume whose relative `data_dir` (data/<dataset> unless set) is missing here,
  from another directory than the run's, where the checkpoint's run read a folder that is
  there: its data would be said missing, or made anew (auto_prepare: a download of hours)."""
  steps = checkpoint.finished_steps(checkpoints_dir)
  if os.path.isabs(data_dir) or os.path.exists(data_dir) or not steps:  # a folder set on purpose
    return
  try:
    read = (checkpoint.read_meta(checkpoints_dir, steps[-1]).get("data") or {}).get("data_dir")
  except Exception:  # noqa: BLE001 - an unreadable checkpoint: the resume says so, later
    return
  if read and os.path.isdir(read):
    raise UserError(f"resume: {data_dir} is not there (from {os.getcwd()}); the run read its "
                    f"data from {read}. Run from the directory the run started in, or add "
                    f"--config.data_dir={shlex.quote(read)}")


def data_seen(sources: dict[str, data.TokenWindows], seed: int) -> dict[str, Any]:
  """What checkpoints record of the data, for `data_changes`: each split's windows, and a CRC
  of the val evaluation stream's first VAL_PRINT_WINDOWS windows (drawn across the split),
  which tells another val split of as many windows (another dataset, one made anew) apart."""
  val = sources["val"]
  first = data.stream_windows(val, data.eval_seed(seed, "val"), 0,
                              min(VAL_PRINT_WINDOWS, len(val)))
  return {"split_windows": {split: len(source) for split, source in sources.items()},
          "val_print": zlib.crc32(first.tobytes())}


def data_changes(start: Start, seen: dict[str, Any], data_dir: str, eval_iters: int,
                 trains: bool) -> Start:
  """Says when the run reads another folder than the checkpoint's did (`data_dir`, both real
  paths: a relative data_dir run from another directory), and when a split has another number
  of windows than when it was saved (`seen`, from `data_seen`), or the val split other tokens:
  the shuffles are over other windows, so the rest of the epoch is another order (some windows
  twice, some not at all), and the val loss is over other windows than before, as under
  another `eval_iters`. Returns `start`, its best then measured afresh where it `trains`:
  compared with the checkpoint's, a higher val loss would never save under
  always_save_checkpoint=False (hours lost at a preemption), nor be kept as the best."""
  speaks = jax.process_index() == 0  # the others read the same windows (train._open_data agrees)
  # Process 0's, which it recorded: hosts may mount the data under paths of their own.
  if speaks and start.data_dir is not None and start.data_dir != data_dir:
    logging.warning("resume: the data is read from %s; the checkpoint's run read %s", data_dir,
                    start.data_dir)
  split_windows = seen["split_windows"]
  was = start.split_windows or split_windows  # a fresh start's, or a run's older than them
  changed = {split: f"{was.get(split, 0):,} -> {n:,} windows"
             for split, n in split_windows.items() if was.get(split) != n}
  if "val" not in changed and start.val_print not in (None, seen["val_print"]):
    changed["val"] = f"{split_windows['val']:,} windows of other tokens"
  other_iters = start.eval_iters not in (None, eval_iters)
  afresh = trains and (other_iters or "val" in changed)
  what = {"train": "training goes on in another order",
          "val": "the val loss is not comparable with the run's before"}
  if speaks and other_iters:  # the evaluation's windows are eval_iters batches of them
    logging.warning("resume: eval_iters changed, so the val loss is over other windows than "
                    "the run's before")
  if speaks and changed:
    logging.warning("resume: the data changed since the checkpoint: %s", "; ".join(
        f"{split} {how}: {what[split]}" for split, how in changed.items()))
  if speaks and afresh:
    kept = "" if start.best_kept is None else (
        f"; step {start.best_kept[1]}, the best kept before, is kept only while among the latest "
        "keep_checkpoints")
    logging.warning("resume: so the best val loss (which always_save_checkpoint=False saves on) "
                    "is measured afresh from this resume's evaluations%s", kept)
  return dataclasses.replace(start, best_val_loss=math.inf, best_kept=None) if afresh else start


def _best_kept(meta: dict[str, Any], checkpoints: checkpoint.Checkpoints, up_to: int
               ) -> tuple[float, int] | None:
  """The val loss and step of the best checkpoint kept, as the resumed one's `meta` names it;
  where it names none (written before metas did) or a NaN (before NaNs were passed over), the
  lowest among checkpoints up to the resumed one (the newer ones did not read back) evaluated
  before their save."""
  named = meta.get("best_kept")
  if "best_kept" in meta and (named is None or math.isfinite(named[0])):
    return None if named is None else tuple(named)
  scored = []
  for step in [s for s in checkpoints.steps() if s <= up_to]:
    try:
      val_loss = checkpoints.read_meta(step).get("val_loss")
    except Exception:  # noqa: BLE001, S112 - an unreadable checkpoint is no candidate
      continue
    if val_loss is not None and math.isfinite(val_loss):
      scored.append((val_loss, step))
  return min(scored) if scored else None


def _structure(abstract_state: train_step.TrainState) -> tuple[Any, list]:
  """A train state's tree and leaf shapes and dtypes."""
  leaves, tree = jax.tree.flatten(abstract_state)
  return tree, [(x.shape, x.dtype) for x in leaves]


def check_resumable(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Refuses a resume whose config cannot read the checkpoint; returns the keys it changes.

  A change to the architecture (every model field but those that change only
  how it computes, model.HOW_NOT_WHAT) makes the params compute another
  function; any other key whose change gives the train state another
  structure (grad_clip=0 drops the clipping state, say) would make every
  checkpoint fail to read; another seed would reorder the data the checkpoint's
  position counts in. Each is refused before any checkpoint is touched,
  naming the keys.
  """
  saved = defaults.with_defaults(saved)

  def refuse(keys: list[str], what: str) -> UserError:
    """`what` went wrong, with `keys`' values in place of its {}, and how to resume anyway: the
    checkpoint's values (a run from GPT-2's weights took their architecture, which its recipe
    does not hold)."""
    details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs config {config[k]!r}" for k in keys)
    overrides = " ".join(f"--config.{k}={shlex.quote(str(saved[k]))}" for k in keys)
    return UserError(f"cannot resume {config.out_dir}: {what.format(details)}; nothing was "
                     f"changed. Resume with the checkpoint's values ({overrides}), or start a "
                     "new run in another out_dir.")

  mismatched = [k for k in model.ARCHITECTURE if saved[k] != config[k]]
  if mismatched:
    raise refuse(mismatched, "the architecture changed ({})")
  if saved["seed"] != config.seed:
    raise refuse(["seed"], "{}; the seed orders the training windows and picks the evaluated "
                 "ones, so another would repeat and skip data and move the val set")
  changed = [k for k, v in config.items() if k in saved and saved[k] != v and k != "init_from"]
  if not changed:
    return changed
  as_saved = config.copy_and_resolve_references()
  with as_saved.unlocked():
    as_saved.update({k: saved[k] for k in changed})
  shapes = lambda c: _structure(
      train_step.build(train_step.StepConfig.from_config(c)).abstract_state)
  reference = shapes(as_saved)
  if shapes(config) != reference:
    def alone(key: str) -> ml_collections.ConfigDict:
      c = as_saved.copy_and_resolve_references()
      c[key] = config[key]
      return c
    keys = [k for k in changed if shapes(alone(k)) != reference] or changed
    raise refuse(keys, "with {} the train state has another structure than the checkpoints'")
  return changed
