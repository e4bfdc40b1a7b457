"""Where a run starts: a fresh state, or a checkpoint's state and the data position it reached.

The data position is a window of the one global window stream (see data.py):
an iteration of W windows moves it by W whatever the batch layout. A
checkpoint records the layout it was written under; resuming under the same
layout continues the saved data iterator, and under another a new iterator
starts at the window the checkpoint had reached.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections
from absl import logging

from jaxgpt import checkpoint, run_dir, sharding, step


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a run starts: a fresh state, or a checkpoint's state and position."""

  state: step.TrainState
  iter: int = 0
  tokens: int = 0  # tokens trained on before `iter`
  best_val_loss: float = math.inf
  window: int = 0  # the data stream's window the train dataset starts at
  data_step: int | None = None  # the checkpoint whose saved data position continues the data


def data_layout(config: ml_collections.ConfigDict, layout: sharding.BatchLayout
                 ) -> dict[str, int]:
  """What a saved data position depends on; a resume that changes it converts the position."""
  return {"windows_per_iter": layout.accum_steps * layout.global_batch,
          "processes": jax.process_count(), "workers": config.data_workers,
          "devices": layout.n_devices}




def resume(config: ml_collections.ConfigDict, setup: step.TrainSetup, shardings: Any,
            checkpoints: checkpoint.Checkpoints, layout: sharding.BatchLayout) -> Start:
  """The latest good checkpoint's state, and where the data continues.

  Under the batch layout it was saved with, the data iterator's saved state
  continues at the next batch. Under another (batch size, accumulation,
  devices, processes, workers), a new iterator starts at the window the
  checkpoint had reached: the same tokens, in the same order.
  """
  it, state, meta = checkpoints.restore_latest_good(
      checkpoint.abstract_like(setup.abstract_state, shardings),
      check_meta=lambda meta: run_dir.check_resumable(meta["config"], config))
  logging.info("resumed from %s/%d", checkpoints.directory, it)
  best = meta.get("best_val_loss") or math.inf
  saved, now = meta.get("data"), data_layout(config, layout)
  if saved is None:  # written before data positions were recorded: the same layout
    return Start(state, it, meta["tokens"], best, 0, it)
  if saved["devices"] != now["devices"]:
    logging.warning("resume: %d device(s); the checkpoint was written on %d", now["devices"],
                    saved["devices"])
  keys = ("windows_per_iter", "processes", "workers")
  if all(saved[k] == now[k] for k in keys):
    return Start(state, it, meta["tokens"], best, saved["start_window"], it)
  window = meta["tokens"] // config.block_size
  logging.warning("resume: the batch layout changed (%s); the data continues at window %s "
                  "(token %s), where the checkpoint stopped",
                  ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in keys), f"{window:,}",
                  f"{meta['tokens']:,}")
  return Start(state, it, meta["tokens"], best, window)


