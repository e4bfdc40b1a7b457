"""Orbax checkpoints of a run: train state, Grain iterator state and JSON metadata.

Layout: <directory>/<step>/{state,data,meta}. Orbax writes each save
into a temporary directory and renames it when complete, so a crash mid-save
leaves the previous steps intact; saves run in the background while training
goes on, and a save that fails (a full disk) is reported as soon as the loop
next looks (`check_saves`). Kept: the latest `keep` steps plus the best by
val loss.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from jaxgpt.errors import UserError

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
    self._in_flight: int | None = None  # the step of a save not yet known to have landed

  def steps(self) -> list[int]:
    """Completed checkpoints, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           meta: dict[str, Any], val_loss: float | None) -> None:
    """Starts an asynchronous save; returns once the device buffers are copied."""
    self.wait()  # Orbax would wait for the previous save anyway; this reports its failure
    items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None if val_loss is None else {"val_loss": float(val_loss)}
    self._in_flight = step
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def check_saves(self) -> None:
    """Reports a background save that failed, without waiting for one in progress.

    Cheap and host-only: the loop calls it at every iteration.
    """
    if self._in_flight is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until every save in flight is on disk; a failed one raises a `SaveError`."""
    step, self._in_flight = self._in_flight, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # whatever failed the write, the save is lost
      if step is None:
        raise
      raise self._save_failed(step, e) from e

  def _save_failed(self, step: int, error: Exception) -> SaveError:
    """Removes what the failed save left and says what is lost and what is kept."""
    for partial in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
      shutil.rmtree(partial, ignore_errors=True)
    self.manager.reload()
    good = [s for s in self.steps() if s != step]
    last_good = (f"the last good checkpoint is step {good[-1]} in {self.directory}" if good
                 else "no checkpoint was saved before it")
    free = shutil.disk_usage(self.directory).free / 2**30
    return SaveError(f"saving the checkpoint of step {step} failed: {_os_error(error)} "
                     f"({free:.2f} GiB free on its filesystem). The partial save was removed and "
                     f"the run stopped; {last_good}. Free space (or fix the cause) and resume "
                     "with --config.init_from=resume.")

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """The state (placed per the shardings in `abstract_state`) and metadata of one step."""
    items = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], restored[META]

  def restore_data(self, step: int, data_iterator: grain.DatasetIterator) -> None:
    """Sets the Grain iterator to continue after the batches that `step` had read."""
    items = ocp.args.Composite(**{DATA: grain.checkpoint.CheckpointRestore(data_iterator)})
    self.manager.restore(step, args=items)

  def restore_latest_good(self, abstract_state: Any,
                          check_meta: Callable[[dict[str, Any]], None]
                          ) -> tuple[int, Any, dict[str, Any]]:
    """Restores the newest checkpoint that reads back; the newer ones that did not are set aside.

    `check_meta` sees each candidate's metadata before its state is read; what
    it raises (say, a config whose state has another structure) propagates
    and nothing is set aside. When no checkpoint reads back, nothing is
    touched either: a `UserError` lists what each one failed with.
    """
    steps = self.steps()
    if not steps:
      raise UserError(f"{self.directory}: no checkpoints to resume from")
    unreadable: list[tuple[int, Exception]] = []
    for step in reversed(steps):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back alike
        unreadable.append((step, e))
        continue
      check_meta(meta)
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # noqa: BLE001
        unreadable.append((step, e))
        continue
      for bad_step, error in unreadable:
        self._set_aside(bad_step, error)
      return step, state, meta
    errors = "; ".join(f"step {s}: {type(e).__name__}: {_first_line(e)}" for s, e in unreadable)
    raise UserError(f"{self.directory}: none of the checkpoints {steps} could be restored, and "
                    f"none was moved or changed ({errors})")

  def _set_aside(self, step: int, error: Exception) -> None:
    """Renames an unreadable step out of the way (kept for inspection, never deleted).

    The run will reach that step again and must be able to save it anew.
    """
    path = os.path.join(self.directory, str(step))
    aside = f"{path}.unreadable"
    n = 1
    while os.path.exists(aside):
      n += 1
      aside = f"{path}.unreadable{n}"
    os.rename(path, aside)
    self.manager.reload()
    logging.warning("checkpoint %s is unreadable (%s: %s); moved to %s, using an older one",
                    path, type(error).__name__, _first_line(error), aside)

  def read_meta(self, step: int) -> dict[str, Any]:
    items = ocp.args.Composite(**{META: ocp.args.JsonRestore()})
    return self.manager.restore(step, args=items)[META]

  def close(self) -> None:
    self.manager.close()


class SaveError(UserError):
  """A background checkpoint save failed (a full disk, a lost mount)."""


def _first_line(error: Exception) -> str:
  return (str(error).splitlines() or [""])[0][:300]


def _os_error(error: Exception) -> str:
  """The OS error inside a storage error (tensorstore tags it os_error_code), else its first line."""
  if isinstance(error, OSError) and error.errno:
    return f"{os.strerror(error.errno)} [errno {error.errno}]"
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if code:
    return f"{os.strerror(int(code[1]))} [errno {code[1]}]"
  return f"{type(error).__name__}: {_first_line(error)}"


def abstract_like(tree: Any, shardings: Any) -> Any:
  """Shape/dtype structs of `tree` placed per `shardings` (one, or a matching tree).

  This is the target of a restore: Orbax reads each array straight into its
  place, whatever the device count of the run that saved it.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
