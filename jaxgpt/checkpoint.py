"""Orbax checkpoints of a run: train state, Grain iterator state and JSON metadata.

Layout: <directory>/<step>/{state,data,meta}. Orbax writes each save
into a temporary directory and renames it when complete, so a crash mid-save
leaves the previous steps intact; saves run in the background while training
goes on, and a save that fails (a full disk) is reported as soon as the loop
next looks (`check_saves`). Kept: the latest `keep` steps plus the one the
loop names best by val loss (`keep_best`).

Every array of the state is fingerprinted when it is saved (on its devices,
`fingerprints`), and the fingerprints go into the same checkpoint's meta; a
restore recomputes them, so a file changed on disk after the save (bit rot,
a bad copy) makes the checkpoint unreadable like a missing or truncated one,
never silently used.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from jaxgpt import sharding
from jaxgpt.errors import FULL, UserError, first_line

SETTLE_S = 60  # the longest a failed save's other writes are waited for before its cleanup

STATE, DATA, META = "state", "data", "meta"


def finished_steps(directory: str) -> list[int]:
  """The steps `Checkpoints(directory).steps()` lists, read from the folder names alone: bare
  numbers as it writes them (Orbax's listing also takes `<name>_<step>`, a copy pinned aside
  as best_4, say, and 04)."""
  if not check_listable(directory):
    return []
  return sorted(int(path.name) for path in ocp.utils.checkpoint_steps_paths(directory)
                if re.fullmatch(r"0|[1-9][0-9]*", path.name))


def check_listable(directory: str) -> bool:
  """Whether `directory` is there as a folder; one there that cannot be listed (another user's
  run, its folder or out_dir closed to others) is refused by name: it read as holding no
  checkpoints ("start with init_from=scratch") or ended in a PermissionError's traceback."""
  try:
    os.listdir(directory)
  except (FileNotFoundError, NotADirectoryError):
    return False
  except OSError as e:
    raise UserError(f"{directory}: cannot list its checkpoints ({e.strerror})") from None
  return True


def read_meta(directory: str, step: int) -> dict[str, Any]:
  """One step's metadata, read with no manager; that of a copy put back under another step's
  name (another run's, say) is CorruptCheckpoint."""
  meta = dict(ocp.JsonCheckpointHandler().restore(epath.Path(directory, str(step), META)))
  if meta.get("iter", step) != step:
    raise CorruptCheckpoint(f"it holds step {meta['iter']}'s checkpoint, not its own")
  return meta


class Checkpoints:
  """Saves and restores the step checkpoints in one directory (`RunDir` says which)."""

  def __init__(self, directory: str, *, keep: int = 3, read_only: bool = False,
               auto_resume: bool = False):
    self._best = _KeepStep()
    self._auto_resume = auto_resume  # its command resumes the run: `where_to_go_on` says so
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=True,
        # A step's folders made before `save` returns: made in the background, a folder that
        # cannot be made (no permission, no inodes) left the run waiting 300 s for it.
        async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False),
        preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(n=keep),
                                                            self._best]),
        read_only=read_only,
        create=not read_only,
    )
    self.directory = os.path.abspath(directory)
    check_listable(self.directory)  # else Orbax's PermissionError, in a traceback
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._in_flight: int | None = None  # the step of a save not yet known to have landed

  def steps(self) -> list[int]:
    """The checkpoints, oldest first, with a save in flight: the run ends only once it lands,
    and one that fails ends it on its own error, which names the previous step."""
    return sorted(self.manager.all_steps())

  def remove_unfinished(self) -> None:
    """Deletes the folders of saves that never finished (killed mid-way, by a SIGKILL after a
    scheduler's grace period, say): each holds up to a whole state, none is ever read, and
    Orbax reuses one only if that very step is saved again."""
    for path in glob.glob(os.path.join(glob.escape(self.directory), "*.orbax-checkpoint-tmp*")):
      logging.warning("removing %s: a save that never finished", path)
      shutil.rmtree(path, ignore_errors=True)

  def keep_best(self, step: int | None) -> None:
    """Keeps `step`'s checkpoint (the best by val loss) however many newer ones are saved."""
    self._best.step = step

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           meta: dict[str, Any]) -> None:
    """Starts an asynchronous save; returns once the device buffers are copied."""
    self.wait()  # Orbax would wait for the previous save anyway; this reports its failure
    meta = {**meta, FINGERPRINTS: fingerprints(state)}  # for restores to check
    items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    self._in_flight = step
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # the step's folders could not be made
      self._in_flight = None
      raise self._save_failed(step, e) from e

  def check_saves(self) -> None:
    """Reports a background save that failed, without waiting for one in progress.

    Cheap and host-only: the loop calls it at every iteration (at log intervals on several
    processes, where agreeing on it is a host sync).
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
    self._settle()
    for partial in glob.glob(os.path.join(glob.escape(self.directory),
                                          f"{step}.orbax-checkpoint-tmp*")):
      shutil.rmtree(partial, ignore_errors=True)
    self.manager.reload()
    return SaveError(f"saving the checkpoint of step {step} failed: {os_error(error)}. The "
                     f"partial save was removed and the run stopped; "
                     f"{self.where_to_go_on(error, excluding=step)}")

  def _settle(self) -> None:
    """Waits for the writes of the last save that are still going: Orbax reports the first of
    its items' writes to fail while the others go on, and those made the folder of the failed
    save again after it was removed (a meta that could not be written, the state still being
    written)."""
    writer = getattr(getattr(self.manager, "_checkpointer", None), "_async_manager", None)
    deadline = time.monotonic() + SETTLE_S  # a write stuck on a dead mount is waited out
    for commit in getattr(writer, "_commit_futures", None) or ():  # Orbax's own, not its API
      with contextlib.suppress(Exception):  # each failure is the save's, reported already
        commit.result(timeout=max(0.0, deadline - time.monotonic()))

  def where_to_go_on(self, error: Exception, excluding: int | None = None) -> str:
    """The free space, the last good checkpoint and how to go on from it, for a stop by a
    storage `error`; from scratch where there is none."""
    fix = remedy(error)
    good = [s for s in self.steps() if s != excluding]
    try:
      space = f"{shutil.disk_usage(self.directory).free / 2**30:.2f} GiB are free on its filesystem"
    except OSError as e:  # the directory is gone (a lost mount)
      space = f"its filesystem cannot be read ({e.strerror})"
    if not good:
      return (f"no checkpoint was saved before it, and {space}. {fix} and run the same "
              "command again: it starts over.")
    how = "run the same command again" if self._auto_resume else "add --config.init_from=resume"
    return (f"the last good checkpoint is step {good[-1]} in {self.directory}, and {space}. "
            f"{fix} and {how} to continue.")

  def restore(self, step: int, abstract_state: Any, meta: dict[str, Any]) -> Any:
    """One step's state, placed per the shardings in `abstract_state` and checked against the
    fingerprints in its `meta` (`CorruptCheckpoint`).

    Each process reads its part without the barrier an Orbax restore ends with
    (one whose read fails would leave the others waiting there); they agree on
    the read before checking it.
    """
    state = sharding.agreed("reading it", self._read, step, abstract_state)
    verify(state, meta)  # a computation over every process's part
    return state

  def restore_params(self, step: int, abstract_params: Any, meta: dict[str, Any]) -> Any:
    """Only the params of one step's state, checked as `restore` checks the state: what
    sampling, evaluating and exporting need, without the optimizer's moments (twice the
    params' memory) ever read."""

    def read() -> Any:
      item = {"params": abstract_params}
      with contextlib.closing(ocp.PyTreeCheckpointHandler()) as handler:
        return handler.restore(self._item(step, STATE), args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))["params"]

    params = sharding.agreed("reading it", read)
    verify(params, meta, under=".params")
    return params

  def _read(self, step: int, abstract_state: Any) -> Any:
    with contextlib.closing(ocp.StandardCheckpointHandler()) as handler:
      return handler.restore(self._item(step, STATE), args=ocp.args.StandardRestore(abstract_state))

  def restore_data(self, step: int, data_iterator: grain.DatasetIterator) -> None:
    """Sets the Grain iterator to continue after the batches that `step` had read.

    Grain's handler reads this process's own file, without the barrier an Orbax
    restore ends with: the file of one process can fail alone (resume.py then
    starts every process at the window the checkpoint reached).
    """
    grain.checkpoint.CheckpointHandler().restore(self._item(step, DATA), data_iterator)

  def restore_latest_good(self, abstract_state: Any,
                          check_meta: Callable[[dict[str, Any]], None],
                          finish: Callable[[int, dict[str, Any]], Any],
                          discard: Callable[[Any], None]
                          ) -> tuple[int, Any, dict[str, Any], Any, list[int]]:
    """Restores the newest step that reads back whole on every process (its meta, its state
    and what `finish(step, meta)` makes of it: the train batches from there), so all start
    from one step. Returns its step, state, meta, what `finish` made and the newer steps that
    did not read back (for `set_aside` once the run is accepted; nothing is moved here).

    `check_meta` sees each candidate's meta first (what it raises propagates); `discard`
    releases what `finish` made where another process failed.
    """
    steps = self.steps()

    def read_whole(step: int, meta: dict[str, Any]) -> tuple[Any, Any]:
      return self.restore(step, abstract_state, meta), finish(step, meta)

    unreadable: list[tuple[int, Exception]] = []
    for step in reversed(steps):
      error, meta = sharding.agree("reading it", self.read_meta, step)
      if error is not None:
        unreadable.append((step, error))
        continue
      check_meta(meta)
      error, restored = sharding.agree("reading it", read_whole, step, meta)
      if error is not None:
        if restored is not None:  # read here, not by another process
          discard(restored[1])
          restored = None  # its state's buffers, before the next read
        unreadable.append((step, error))
        continue
      state, finished = restored
      if unreadable:  # said by process 0, and by another only for a cause process 0 did not meet
        said = lambda error: zlib.crc32(cause(error).encode())  # a number to compare
        said_by_0 = multihost_utils.broadcast_one_to_all(np.array(
            [said(error) for _, error in unreadable], np.uint32))
        for (bad_step, error), by_0 in zip(unreadable, said_by_0):
          own = not isinstance(error, sharding.FailedElsewhere)  # else process 0 says where
          if jax.process_index() == 0 or (own and said(error) != by_0):
            logging.warning("checkpoint %s/%d is unreadable (%s); using step %d", self.directory,
                            bad_step, cause(error), step)
      return step, state, meta, finished, [bad for bad, _ in unreadable]
    errors = "; ".join(f"step {s}: {cause(e)}" for s, e in unreadable)
    raise UserError(f"{self.directory}: none of the checkpoints {steps} could be restored, and "
                    f"none was moved or changed ({errors})")

  def set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps out of the way (kept for inspection, never deleted), on
    process 0 while the others wait; every process calls it, and all raise if it fails.

    The run will reach those steps again and must be able to save them anew.
    """
    if not steps:
      return
    error, _ = sharding.agree(
        "moving it aside", self._rename_aside if jax.process_index() == 0 else lambda _: None, steps)
    if error is not None:
      raise UserError(f"could not move the unreadable checkpoints {steps} of {self.directory} "
                      f"aside ({cause(error)}); nothing was trained") from error
    self.manager.reload()

  def _rename_aside(self, steps: list[int]) -> None:
    for step in steps:
      path = os.path.join(self.directory, str(step))
      aside = f"{path}.unreadable"
      n = 1
      while os.path.exists(aside):
        n += 1
        aside = f"{path}.unreadable{n}"
      os.rename(path, aside)
      logging.warning("moved the unreadable checkpoint %s aside, to %s", path, aside)

  def read_meta(self, step: int) -> dict[str, Any]:
    """One step's metadata, read without a barrier (as `restore` reads the state)."""
    return read_meta(self.directory, step)

  def _item(self, step: int, item: str) -> epath.Path:
    return epath.Path(self.directory, str(step), item)

  def close(self) -> None:
    self.manager.close()


class _KeepStep(policies.PreservationPolicy):
  """Preserves one step that the loop names.

  Orbax's BestN ranks the metrics given with a save, but a checkpoint saved by
  a stop signal is evaluated only when the run resumes, after its save.
  """

  step: int | None = None

  def should_preserve(self, checkpoints: Sequence[policies.PolicyCheckpointInfo], *,
                      context: policies.PreservationContext) -> list[bool]:
    return [c.step == self.step for c in checkpoints]


class SaveError(UserError):
  """A checkpoint save, or another write of the run's, failed (a full disk, a lost mount)."""


class CorruptCheckpoint(ValueError):
  """A checkpoint that is not what its step saved: arrays that differ from the fingerprints
  saved with them, or another step's checkpoint under this step's name."""


FINGERPRINTS = "fingerprints"  # meta's key: the state's, at the save


@jax.jit
def _fingerprints(tree: Any) -> Any:
  def fingerprint(x: jax.Array) -> jax.Array:
    # Each element's bits times an odd number of its own (uint32 arithmetic wraps): a change to
    # any one element changes the sum, and the sum is exact in any order, on any device count.
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}"))
    bits = bits.reshape(-1).astype(jnp.uint32)
    return jnp.sum(bits * (2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1), dtype=jnp.uint32)

  return jax.tree.map(fingerprint, tree)


def fingerprints(state: Any) -> dict[str, int]:
  """A 32-bit fingerprint of every array of the state, by its path, computed where it lies."""
  values = jax.device_get(_fingerprints(state))
  return {jax.tree_util.keystr(path): int(value)
          for path, value in jax.tree.leaves_with_path(values)}


def verify(state: Any, meta: dict[str, Any], under: str = "") -> None:
  """Raises `CorruptCheckpoint` where the state's arrays (the part of it `under` a path, such
  as ".params") differ from the ones that were saved.

  A checkpoint written before checkpoints carried fingerprints is checked for
  non-finite values instead.
  """
  saved = meta.get(FINGERPRINTS)
  if saved is None:
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state)
               if jnp.issubdtype(x.dtype, jnp.floating)):
      raise CorruptCheckpoint("its contents changed after the save: non-finite values in a "
                              "state written without fingerprints")
    return
  changed = [under + path for path, value in fingerprints(state).items()
             if saved.get(under + path) != value]
  if changed:
    raise CorruptCheckpoint(f"its contents changed after the save: {len(changed)} array(s) "
                            f"differ from the fingerprints saved with them "
                            f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})")


CAUSE_CHARS = 160  # an error of the storage layer can be a dump of the whole state's tree


def cause(error: Exception) -> str:
  """What an unreadable checkpoint's error means, in a line (not the storage layer's dump).

  Read from the error and those it was raised from: Orbax's own says only which array it
  read, the storage layer's below it what went wrong.
  """
  if isinstance(error, (sharding.FailedElsewhere, CorruptCheckpoint)):
    return str(error)
  chain = [error]
  while (below := chain[-1].__cause__ or chain[-1].__context__) and below not in chain:
    chain.append(below)
  text = "\n".join(map(str, chain))
  if (any(isinstance(e, FileNotFoundError) for e in chain) or "NOT_FOUND" in text
      or "No such file" in text or re.search(r"File \S+ does not exist", text)):  # Grain's
    return "a file of it is missing"
  json_error = next((e for e in chain if isinstance(e, ValueError)
                     and ("JSON" in str(e) or "Expecting" in str(e))), None)
  if json_error:
    return f"a JSON file of it is not readable ({first_line(json_error)})"
  if any(word in text for word in ("DATA_LOSS", "OUT_OF_RANGE", "truncated", "Error reading",
                                   "decompress", "Failed to decode")):
    return "a file of it is truncated or corrupt"
  line = f"{type(chain[-1]).__name__}: {first_line(chain[-1])}"
  return line if len(line) <= CAUSE_CHARS else line[:CAUSE_CHARS - 3] + "..."


def error_number(error: Exception) -> int | None:
  """The OS error number inside a storage error (tensorstore tags it os_error_code)."""
  if isinstance(error, OSError) and error.errno:
    return error.errno
  code = re.search(r"os_error_code='(\d+)'", str(error))
  return int(code[1]) if code else None


def remedy(error: Exception) -> str:
  """What a user does about a storage error, as the start of a sentence."""
  return "Free space" if error_number(error) in FULL else "Fix the cause"


def os_error(error: Exception) -> str:
  """The OS error inside a storage error, else its first line."""
  number = error_number(error)
  if number is not None:
    return f"{os.strerror(number)} [errno {number}]"
  return f"{type(error).__name__}: {first_line(error)}"
