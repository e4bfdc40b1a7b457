"""Orbax checkpoints of a run: train state, Grain iterator state and JSON metadata.

Layout: <directory>/<step>/{state,data,meta}. Orbax writes each save
into a temporary directory and renames it when complete, so a crash mid-save
leaves the previous steps intact; saves run in the background while training
goes on. Kept: the latest `keep` steps plus the best by val loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

STATE, DATA, META = "state", "data", "meta"


class Checkpoints:
  """Saves and restores the step checkpoints in one directory (`RunDir` says which)."""

  def __init__(self, directory: str, *, keep: int = 3, read_only: bool = False):
    keep_latest_and_best = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=True,
        preservation_policy=keep_latest_and_best,
        read_only=read_only,
        create=not read_only,
    )
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Completed checkpoints, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           meta: dict[str, Any], val_loss: float | None) -> None:
    """Starts an asynchronous save; returns once the device buffers are copied."""
    items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None if val_loss is None else {"val_loss": float(val_loss)}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def wait(self) -> None:
    """Blocks until every save in flight is on disk."""
    self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any,
              data_iterator: grain.DatasetIterator | None) -> tuple[Any, dict[str, Any]]:
    """The state (placed per the shardings in `abstract_state`) and metadata of one step.

    The Grain iterator, when given, is set to continue at the next batch.
    """
    items = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], restored[META]

  def restore_latest_good(self, abstract_state: Any, data_iterator: grain.DatasetIterator | None,
                          check_meta: Callable[[dict[str, Any]], None]
                          ) -> tuple[int, Any, dict[str, Any]]:
    """Restores the newest checkpoint that reads back, warning about (not deleting) bad ones.

    `check_meta` sees each candidate's metadata before its state is read; what
    it raises (say, an architecture mismatch) propagates instead of falling back.
    """
    steps = self.steps()
    if not steps:
      raise FileNotFoundError(f"{self.directory}: no checkpoints to resume from")
    for step in reversed(steps):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back alike
        self._set_aside(step, e)
        continue
      check_meta(meta)
      try:
        state, meta = self.restore(step, abstract_state, data_iterator)
        return step, state, meta
      except Exception as e:  # noqa: BLE001
        self._set_aside(step, e)
    raise RuntimeError(f"{self.directory}: none of the checkpoints {steps} could be restored")

  def _set_aside(self, step: int, error: Exception) -> None:
    """Renames an unreadable step out of the way (kept for inspection, never deleted).

    The run will reach that step again and must be able to save it anew.
    """
    message = (str(error).splitlines() or [""])[0][:300]
    path = os.path.join(self.directory, str(step))
    aside = f"{path}.unreadable"
    n = 1
    while os.path.exists(aside):
      n += 1
      aside = f"{path}.unreadable{n}"
    os.rename(path, aside)
    self.manager.reload()
    logging.warning("checkpoint %s is unreadable (%s: %s); moved to %s, trying the previous one",
                    path, type(error).__name__, message, aside)

  def read_meta(self, step: int) -> dict[str, Any]:
    items = ocp.args.Composite(**{META: ocp.args.JsonRestore()})
    return self.manager.restore(step, args=items)[META]

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """Shape/dtype structs of `tree` placed per `shardings` (one, or a matching tree).

  This is the target of a restore: Orbax reads each array straight into its
  place, whatever the device count of the run that saved it.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
