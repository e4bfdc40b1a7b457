"""The training loop: batches in, steps, evaluations, checkpoints and metrics out.

`train(config)` is the whole of a run; `launch.py` calls it, handing in what
lies beyond training itself: the weights to start from (a params tree) and
`Hooks` for evaluation tasks and a closing sample. The step math is in
train_step.py, the run directory's layout in run_dir.py, the data in data.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grain
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from jaxgpt import (
  checkpoint,
  data,
  defaults,
  preemption,
  resume,
  run_dir,
  sharding,
  sinks,
  summary,
  train_step,
)

TasksHook = Callable[[Any], tuple[dict[str, float], list[str]]]  # params -> numbers, log lines
EndHook = Callable[[Any], None]  # params -> nothing: what runs once training is over
UNUSED_TOKENS_WARNED = 0.1  # a split's share of tokens in no window said at the start
# Processes started with different configs would train apart without a word (another learning
# rate: checkpoints none reads back) or wait for each other forever (max_iters); launch.py checks
# first, before a step that the config decides (a resume, a data prep).
DIFFERENT_CONFIGS = ("the processes were started with different configs ({keys} differ); start "
                     "every process with the same command")


@dataclasses.dataclass(frozen=True)
class Hooks:
  """`tasks(params)` runs every `eval_tasks_interval` iterations and at the end, before that
  iteration's evaluation and checkpoint; `at_end(params)` once training has reached max_iters
  (not after a stop, nor with eval_only; a stop in it cuts it short, in a one-process run).
  Every process calls both."""

  tasks: TasksHook | None = None
  at_end: EndHook | None = None


def val_losses(eval_step: Callable, params: Any, sources: dict[str, data.TokenWindows],
               n_windows: int, seed: int, layout: sharding.BatchLayout) -> dict[str, float]:
  """Mean loss over the same `n_windows` windows of each split at every call, whatever the layout.

  The windows are the first of a fixed-seed shuffle of the split; they are
  read in batches of the layout's global batch, and those left over (a
  layout other than the one the run started with) in replicated batches of a
  device's micro-batch (one of up to the global batch would not fit a device on
  many), under dp split over the devices where their rows divide evenly.
  """
  full, rest = divmod(n_windows, layout.global_batch)
  losses = {}
  for split, source in sources.items():
    split_seed = data.eval_seed(seed, split)
    total = jnp.zeros((), jnp.float32)
    for batch in data.eval_batches(source, batch_size=layout.local_batch, n_batches=full,
                                   seed=split_seed, shard_index=jax.process_index(),
                                   shard_count=jax.process_count()):
      total += eval_step(params, layout.eval_batch(batch))
    if not rest:
      losses[split] = float(total) / full  # one host sync per split
      continue
    tail = data.stream_windows(source, split_seed, full * layout.global_batch, n_windows)
    chunks = [tail[i:i + layout.batch_size] for i in range(0, rest, layout.batch_size)]
    tail_sum = sum(float(eval_step(params, layout.replicated(c))) * len(c) for c in chunks)
    losses[split] = (float(total) * layout.global_batch + tail_sum) / n_windows
  return losses


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The keys that say when the loop does what (defaults.py says what each means)."""

  max_iters: int
  eval_interval: int
  eval_tasks_interval: int
  log_interval: int
  eval_only: bool
  always_save_checkpoint: bool
  skip_nonfinite: int
  init_from: str
  auto_resume: bool

  @property
  def resumed(self) -> bool:
    return self.init_from == "resume"

  @property
  def writes(self) -> bool:
    """Whether the run writes its directory: all do but an evaluation of its checkpoint."""
    return not (self.eval_only and self.resumed)


class _Loop:
  """The loop's mutable bookkeeping, and the things it does between steps.

  `saved_config` is the run's whole config as checkpoints record it.
  """

  def __init__(self, config: LoopConfig, saved_config: dict[str, Any], counts: summary.Summary,
               setup: train_step.TrainSetup, start: resume.Start,
               checkpoints: checkpoint.Checkpoints, train_iter: grain.DatasetIterator,
               writer: sinks.Sinks, eval_fn: Callable[[Any], dict[str, float]],
               data_record: dict[str, Any], hooks: Hooks):
    self.config, self.saved_config, self.counts = config, saved_config, counts
    self.setup, self.state, self.start = setup, start.state, start
    self.checkpoints, self.train_iter = checkpoints, train_iter
    self.writer, self.eval_fn, self.hooks = writer, eval_fn, hooks
    self.data_record = data_record  # what checkpoints record of the data position
    self.n_logs = 0
    self.nonfinite_seen = int(start.state.nonfinite)
    self.best_val_loss, self.best_kept = start.best_val_loss, start.best_kept
    checkpoints.keep_best(None if start.best_kept is None else start.best_kept[1])
    self.last_saved = start.iter if config.resumed else None
    self.losses: dict[str, float] = {}
    self.evaluated_at: int | None = None  # the iteration `losses` are of
    self.pending: tuple[int, dict[str, jax.Array]] | None = None  # a log not yet fetched
    self.failure: checkpoint.SaveError | None = None  # a write that failed, for `check_failures`
    self.mark_time(start.iter)

  def tokens(self, it: int) -> int:
    """Tokens trained on before iteration `it`, true across a resume with another batch."""
    return self.start.tokens + (it - self.start.iter) * self.counts.tokens_per_iter

  def mark_time(self, it: int) -> None:
    """Starts a new timing interval: time spent before (eval, saves) is not train time."""
    self.last_log_time, self.last_log_iter = time.perf_counter(), it

  def save(self, it: int, val_loss: float | None) -> None:
    self.check_failures(wait=True)  # the previous save, on every process, before this one
    if val_loss is not None:
      self.keep_if_best(it, val_loss)
    meta = {"config": self.saved_config, "iter": it, "tokens": self.tokens(it),
            "val_loss": val_loss, "best_val_loss": self.best_val_loss,
            "best_kept": self.best_kept, "data": self.data_record}
    self.checkpoints.save(it, self.state, self.train_iter, meta)
    self.last_saved = it

  def next_batch(self, it: int) -> Any:
    """Iteration `it`'s batch. Where a data worker process ended under the run, or (one
    process) a window holds an id past vocab_size, the run ends on one error line."""
    try:
      return next(self.train_iter)
    except data.IdPastVocab as e:
      self.end_on_data(it, data.IdPastVocab, f"{e}, read for iteration {it}",
                       "remake the file with python -m jaxgpt.prepare, or remove it")
    except RuntimeError as e:
      how = data.worker_end(e)
      if how is None:
        raise
      self.end_on_data(it, data.WorkerEnded,
                       f"a data worker process ended under the run at iteration {it} ({how})",
                       "fewer data_workers use less memory; 0 reads in a thread of the run")

  def end_on_data(self, it: int, kind: type[Exception], said: str, lever: str) -> NoReturn:
    """Ends the run on a data error before iteration `it`: a one-process run saves `it` first
    (the data position is the main process's: a resume reads on exactly)."""
    if jax.process_count() == 1:
      self.stop(it, "a data error")
    if self.last_saved is None:
      go_on = "no checkpoint was saved: run again to go on"
    else:
      saved = (f"iteration {it} is saved" if self.last_saved == it else
               f"the last checkpoint is step {self.last_saved}")
      go_on = f"{saved}: " + ("run the same command again to go on" if self.config.auto_resume
                              else "add --config.init_from=resume to go on")
    raise kind(f"{said}; {go_on} ({lever})") from None

  def keep_if_best(self, it: int, val_loss: float) -> None:
    """Keeps step `it`'s checkpoint from pruning if its val loss is the lowest of those saved
    (not best_val_loss's step: there is no checkpoint of step 0). A NaN is no candidate: kept,
    it would never be beaten."""
    if math.isfinite(val_loss) and (self.best_kept is None or val_loss < self.best_kept[0]):
      self.best_kept = (val_loss, it)
      self.checkpoints.keep_best(it)

  def write(self, record: dict[str, Any]) -> None:
    """Hands a record to the sinks; a write the disk refuses stops the run as a failed save does
    (with several processes, at their next `check_failures`: only process 0 writes)."""
    try:
      self.writer.write(record)
    except OSError as e:
      error = checkpoint.SaveError(
          f"writing the {record['event']} record of iteration {record['iter']} failed: "
          f"{checkpoint.os_error(e)}; the run stopped; {self.checkpoints.where_to_go_on(e)}")
      if jax.process_count() == 1:
        raise error from e
      self.failure = self.failure or error

  def check_failures(self, *, wait: bool = False) -> None:
    """Raises a failed background save (once it has landed, with `wait`) or metrics write.

    Each process sees only its own saves and process 0 alone writes metrics, so
    every process calls this at the same points, and where one failed all raise
    there: one stopping alone would leave the others waiting at a collective.
    """
    def failed_here() -> None:
      (self.checkpoints.wait if wait else self.checkpoints.check_saves)()
      if self.failure is not None:
        raise self.failure

    sharding.agreed("a checkpoint save or a metrics write", failed_here)

  def check_finite(self, it: int, count: int) -> None:
    """Stops the run once more iterations were non-finite than `skip_nonfinite` allows.

    `count` is the state's non-finite count after iteration `it`.
    """
    allowed = self.config.skip_nonfinite
    if count <= allowed:
      if count > self.nonfinite_seen:
        logging.warning("%d iteration(s) with a non-finite loss or gradient skipped so far "
                        "(skip_nonfinite=%d)", count, allowed)
      self.nonfinite_seen = count
      return
    since = self.last_log_iter
    where = f"at iter {it}" if since == it else f"between iter {since} and iter {it}"
    good = (f"the last good checkpoint is step {self.last_saved} in "
            f"{self.checkpoints.directory}" if self.last_saved is not None
            else "no checkpoint was saved yet")
    raise train_step.NonFiniteError(
        f"non-finite loss or gradient {where} ({count} iteration(s), skip_nonfinite="
        f"{allowed}); the update was not applied and nothing was saved; {good}")

  def eval_and_save(self, it: int) -> None:
    self.flush_log()
    self.losses, self.evaluated_at = self.eval_fn(self.state.params), it
    logging.info("step %d: train loss %.4f, val loss %.4f", it, self.losses["train"],
                 self.losses["val"])
    self.write({"event": "eval", "iter": it, "tokens": self.tokens(it),
                "train_loss": self.losses["train"], "val_loss": self.losses["val"],
                "lr": self.setup.host_lr(it)})
    if self.config.eval_only:
      return
    self.check_finite(it - 1, int(self.state.nonfinite))
    improved = self.losses["val"] < self.best_val_loss
    self.best_val_loss = min(self.best_val_loss, self.losses["val"])
    if it == self.last_saved:  # a resumed checkpoint that a stop saved before its evaluation
      self.keep_if_best(it, self.losses["val"])
    elif it > 0 and not math.isfinite(self.losses["val"]):  # weights skip_nonfinite cannot mend
      logging.warning("step %d: val loss %s: weights that compute no finite loss are not saved",
                      it, self.losses["val"])
    elif it > 0 and (improved or self.config.always_save_checkpoint):
      self.save(it, self.losses["val"])
    self.mark_time(it)

  def score_tasks(self, it: int) -> None:
    """Scores the evaluation tasks (the `tasks` hook) and records them as one 'tasks' event."""
    if self.hooks.tasks is None:
      return
    self.flush_log()
    metrics, lines = self.hooks.tasks(self.state.params)
    for line in lines:
      logging.info("step %d: %s", it, line)
    self.write({"event": "tasks", "iter": it, "tokens": self.tokens(it), **metrics})
    self.mark_time(it)

  def defer_log(self, it: int, step_metrics: dict[str, jax.Array]) -> None:
    """Keeps a step's metrics to log once the next step is queued behind it on the device."""
    self.flush_log()
    self.pending = (it, step_metrics)

  def flush_log(self) -> None:
    """Fetches and logs the pending metrics: the one host sync of a log interval.

    Called one step late, so the device works on the next step while the host
    waits for this one's numbers.
    """
    if self.pending is None:
      return
    (it, step_metrics), self.pending = self.pending, None
    m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    nonfinite = int(m.pop("nonfinite"))
    now = time.perf_counter()
    dt = (now - self.last_log_time) / max(it + 1 - self.last_log_iter, 1)
    tok_s = self.counts.tokens_per_iter / dt
    m.update(lr=self.setup.host_lr(it), ms_per_iter=1000 * dt, tokens_per_sec=tok_s,
             mfu=self.counts.mfu(tok_s))
    mfu = "" if m["mfu"] is None else f", mfu {100 * m['mfu']:.1f}%"
    logging.info(f"iter {it}/{self.config.max_iters}: loss {m['loss']:.4f}, lr {m['lr']:.2e}, "
                 f"grad norm {m['grad_norm']:.3f}, {m['ms_per_iter']:.1f} ms/iter, "
                 f"{m['tokens_per_sec']:,.0f} tok/s{mfu}")
    self.n_logs += 1
    if self.n_logs == 2:  # the first log times one step; the second is a steady measurement
      logging.info(summary.eta(self.config.max_iters - it - 1, self.counts.tokens_per_iter, tok_s,
                               m["mfu"]))
    # A start's first log (its time holds the compile) names the devices: `report` skips it.
    if self.n_logs == 1:
      m["devices"] = f"{self.counts.n_devices} x {jax.devices()[0].device_kind}"
    self.write({"event": "train", "iter": it, "tokens": self.tokens(it + 1), **m,
                **({"skipped_steps": nonfinite} if nonfinite else {})})  # so far: `report` says
    self.check_finite(it, nonfinite)
    self.last_log_time, self.last_log_iter = now, it + 1

  def stop(self, it: int, reason: str) -> None:
    """Ends the run on a stop request with one checkpoint of the last iteration done."""
    self.flush_log()
    if it == self.start.iter:
      logging.warning("stopped by %s before the first step: nothing new to save", reason)
      return
    val_loss = self.losses["val"] if self.evaluated_at == it else None  # a resume's to do
    unsaved = (self.last_saved != it and val_loss is not None
               and not math.isfinite(val_loss))  # as eval_and_save leaves them
    if self.last_saved != it and not unsaved:
      self.check_finite(it - 1, int(self.state.nonfinite))  # the state to save is good
      self.save(it, val_loss)
    self.check_failures(wait=True)
    if unsaved:
      logging.warning("stopped by %s at iter %d, whose weights are not saved", reason, it)
      return
    logging.warning("stopped by %s at iter %d; checkpoint saved. Continue with the same "
                    "command%s", reason, it,
                    "" if self.config.auto_resume else " plus --config.init_from=resume")

  def close(self, failed: bool = False) -> None:
    """Lets a save in flight land (it holds a good state, even on an error), then closes;
    `failed`: the loop ends on an error."""
    try:
      self.checkpoints.wait()
    except BaseException:  # a save that failed: the run ends on its error (W&B: failed)
      failed = True
      raise
    finally:
      with contextlib.ExitStack() as stack:  # each closed, in this order, whichever fails
        stack.callback(self.train_iter.close)
        stack.callback(self.writer.close, failed)
        stack.callback(self.checkpoints.close)


def _loop(loop: _Loop, compiled_step: Callable | None, layout: sharding.BatchLayout,
          signals: preemption.StopSignals) -> bool:
  """Iterations start..max_iters: evaluate and save on schedule, stop when asked. Returns
  whether training reached max_iters (not stopped, not eval_only).

  eval_only evaluates the starting weights (a checkpoint's, on resume) once. A
  resumed iteration is evaluated unless its checkpoint was (one saved by a
  stop signal was not).
  """
  config = loop.config
  if config.eval_only:  # a stop in the tasks ends it: eval_only has nothing to save
    loop.score_tasks(loop.start.iter)
    if not signals.stopped_alone:
      loop.eval_and_save(loop.start.iter)
    loop.check_failures(wait=True)  # a metrics write that failed on process 0
    return False
  queued = None  # the previous step's loss
  stopped = False
  for it in range(loop.start.iter, config.max_iters + 1):
    stopped = signals.stop_at(it)
    if stopped:
      loop.stop(it, signals.name)
      break
    done_before = it == loop.start.iter and loop.start.evaluated
    if (it % config.eval_tasks_interval == 0 or it == config.max_iters) and not done_before:
      loop.score_tasks(it)
    if (it % config.eval_interval == 0 or it == config.max_iters) and not done_before:
      loop.eval_and_save(it)
    stopped_in_eval = signals.stopped_alone and it > loop.start.iter  # after `stop_at(it)`
    if it == config.max_iters:
      if stopped_in_eval and loop.last_saved != it and math.isfinite(loop.losses["val"]):
        loop.save(it, loop.losses["val"])  # saved, best or not
      break
    if stopped_in_eval:  # no step more, one save of `it`
      stopped = True
      loop.stop(it, signals.name)
      break
    loop.state, step_metrics = compiled_step(loop.state, layout.train_batch(loop.next_batch(it)))
    # One step queued behind the running one keeps the device busy; more would only make a
    # stop (which saves the newest state) wait for all of them.
    if queued is not None:
      queued.block_until_ready()
    queued = step_metrics["loss"]
    # The previous log's step is done: its time is taken before agreeing, which waits for
    # the step just queued (a collective behind it) on several processes.
    loop.flush_log()
    if signals.processes == 1 or it % config.log_interval == 0:  # agreeing is a host sync
      loop.check_failures()  # a failed background save or metrics write stops the run now
    if it % config.log_interval == 0:
      loop.defer_log(it, step_metrics)
  loop.flush_log()
  loop.check_failures(wait=True)  # before what follows the loop (the closing sample) computes
  return not stopped


def train(config: ml_collections.ConfigDict, *, params: Any = None, hooks: Hooks = Hooks(),
          config_file: str = "") -> dict[str, float]:
  """Trains per `config` on every device of every process; returns the last eval's losses.

  `params` replaces nanoGPT's init (GPT-2's weights, say) in a run from
  scratch; `config_file`, the recipe's file, is checked against the model's
  size as its name states it (`summary.check`). Stop signals are caught
  from the start: a stop during start-up ends the run before its first step.
  """
  defaults.validate(config)
  sharding.check_same(config.to_dict(), DIFFERENT_CONFIGS)
  rundir = run_dir.RunDir(config.out_dir)
  writes = defaults.view(LoopConfig, config).writes
  with (preemption.StopSignals(jax.process_count(), evaluates_only=config.eval_only) as signals,
        _locked(rundir, writes)):
    return _train(config, rundir, signals, params, hooks, config_file)


def check_start(config: ml_collections.ConfigDict) -> None:
  """What `train` refuses in out_dir (another run in it, checkpoints a new run would
  overwrite, none to resume from) and a resume's data folder missing, said at once: launch.py
  asks before it makes data or loads weights, which can take hours."""
  rundir = run_dir.RunDir(config.out_dir)
  writes = defaults.view(LoopConfig, config).writes  # else never refused: `train` locks it once
  with _locked(rundir, writes) if writes else contextlib.nullcontext():
    rundir.check_start(resume=config.init_from == "resume", saves=not config.eval_only)
    if config.init_from == "resume":
      sharding.agreed("finding the data", resume.check_data_found, rundir.checkpoints_dir,
                      data.resolve_data_dir(config.dataset, config.data_dir))


@contextlib.contextmanager
def _locked(rundir: run_dir.RunDir, writes: bool) -> Iterator[None]:
  """Process 0 holds the run directory's lock; where another run holds it, every process
  stops (the others would wait for process 0 at their first collective). A run that
  `writes` nothing there (eval_only on a resume) may lock a directory it can only read. One
  that writes is refused where a process does not read process 0's name in run.lock: a host
  whose out_dir was its own disk failed at the first save, and the others waited 5 minutes."""
  with contextlib.ExitStack() as held:
    lock = rundir.lock(writes) if jax.process_index() == 0 else contextlib.nullcontext()
    sharding.agreed("locking the run directory", held.enter_context, lock)
    if writes and jax.process_count() > 1:  # NFS may show another host's new folder in 60 s
      holder = rundir.holder(wait_s=0 if jax.process_index() == 0 else 90)
      sharding.check_same({"run.lock": holder}, f"{rundir.out_dir}: not every process sees the "
                          f"run.lock process 0 wrote there; {run_dir.SHARED}; nothing was changed")
    yield


def _train(config: ml_collections.ConfigDict, rundir: run_dir.RunDir,
           signals: preemption.StopSignals, params: Any, hooks: Hooks, config_file: str
           ) -> dict[str, float]:
  loop_config = defaults.view(LoopConfig, config)
  checkpoints = rundir.checkpoints_for(resume=loop_config.resumed, keep=config.keep_checkpoints,
                                       saves=not config.eval_only, auto_resume=config.auto_resume)
  step_config = train_step.StepConfig.from_config(config)
  layout = step_config.layout(sharding.make_mesh())
  data_dir = data.resolve_data_dir(config.dataset, config.data_dir)
  sources, seen = _open_data(data_dir, config.block_size, config.vocab_size, config.seed)
  data_dir = os.path.realpath(data_dir)  # as checkpoints record it and the log names it
  setup = train_step.build(step_config)
  shardings = sharding.state_shardings(setup.abstract_state, layout.mesh, config.sharding)
  start, train_iter = _start(config, setup, shardings, checkpoints, layout, sources["train"],
                             params)
  resumed_at = start.iter if loop_config.resumed else None
  if loop_config.resumed and not config.eval_only and start.iter >= config.max_iters:
    if jax.process_index() == 0:  # the run's, said once
      logging.warning("the checkpoint is at iteration %d and max_iters=%d: nothing to train%s",
                      start.iter, config.max_iters, "" if start.iter == config.max_iters else
                      "; raise --config.max_iters to train on")
    if start.iter > config.max_iters or start.evaluated:  # the run as it was; no plan to log
      train_iter.close()
      checkpoints.close()
      return {}
  try:
    skipped = int(start.state.nonfinite) if loop_config.resumed and loop_config.writes else 0
    if skipped > config.skip_nonfinite:
      raise train_step.NonFiniteError(
          f"checkpoint {start.iter} has skipped {skipped} non-finite iteration(s), more than "
          f"skip_nonfinite={config.skip_nonfinite} allows (it counts the whole run's); resume "
          f"with --config.skip_nonfinite={skipped} or more")
    trains = resume.trains_from(start.iter, config.eval_only, config.max_iters)
    start = resume.data_changes(start, seen, data_dir, config.eval_iters, trains)
    counts, eval_windows = _log_start(config, layout, sources, start, config_file, trains)
    compiled_step = _compile_step(setup, layout, start.state) if trains else None
    signals.end_a_start_up_stopped()  # before the run directory changes
    run_sinks = _accept(config, rundir, checkpoints, start, loop_config.writes, resumed_at)
  except BaseException:
    train_iter.close()  # and its worker processes
    raise

  loop = _Loop(loop_config, config.to_dict(), counts, setup, start, checkpoints, train_iter,
               run_sinks, _evaluator(setup, layout, sources, eval_windows, config.seed),
               {**resume.position_basis(layout, config.data_workers), "start_window": start.window,
                "eval_batch_windows": eval_windows // config.eval_iters,
                **seen, "data_dir": data_dir}, hooks)
  try:
    trained = _loop(loop, compiled_step, layout, signals)
  except BaseException:
    loop.close(failed=True)
    raise
  loop.close()
  if hooks.at_end is not None and trained:
    _end(hooks.at_end, loop.state.params, signals, loop.losses["val"])
  if jax.process_index() == 0:  # a run that writes moved the unreadable steps aside
    _log_whats_next(config.out_dir, checkpoints, () if loop_config.writes else start.unreadable,
                    config.sample_start, config.block_size, config.vocab_size)
  return loop.losses


def _evaluator(setup: train_step.TrainSetup, layout: sharding.BatchLayout,
               sources: dict[str, data.TokenWindows], n_windows: int, seed: int
               ) -> Callable[[Any], dict[str, float]]:
  """`val_losses` of a run's params, its eval step mapped over the devices where each holds
  the params (dp)."""
  eval_step = train_step.make_eval_step(train_step.model_on(setup, layout.mesh),
                                        train_step.data_parallel(setup.step, layout.mesh))
  return lambda params: val_losses(eval_step, params, sources, n_windows, seed, layout)


def _end(at_end: EndHook, params: Any, signals: preemption.StopSignals, val_loss: float
         ) -> None:
  """The end-of-run hook. A one-process run skips it for a stop that came in the last
  iteration's evaluation and cuts it short for one during it; several processes all run it,
  since only the one signalled knows (StopSignals). `val_loss` is max_iters': weights of a
  non-finite one are not saved (with always_save_checkpoint=False, the best is kept)."""
  skipped, ended = True, False  # skipped: a stop as `closing` is set comes before the hook
  with contextlib.suppress(preemption.StopAtEnd):  # raised by a stop while `closing`
    try:
      signals.closing = True
      skipped = signals.stopped_alone  # a stop came before it (in the last evaluation, say)
      if not skipped:
        at_end(params)
        ended = True  # whole: a stop's StopAtEnd raised in JAX's gc callback is dropped there
    finally:
      signals.closing = False
  if signals.stopped_alone:
    saved = ("the run is saved" if math.isfinite(val_loss) else
             "the last iteration's weights are not saved (its val loss is not finite)")
    logging.warning("stopped by %s: %s%s", signals.name, saved, "" if ended else
                    f", and what it does at its end (the closing sample) is "
                    f"{'skipped' if skipped else 'cut short'}")


def _open_data(data_dir: str, block_size: int, vocab_size: int, seed: int
               ) -> tuple[dict[str, data.TokenWindows], dict[str, Any]]:
  """The token windows of each split, and what checkpoints record of them
  (`resume.data_seen`); every process stops where one cannot read its files or the processes
  read different ones (hosts with copies of their own: one cut short, one made apart), which
  would train on windows some read twice and others never, and decide apart on a resume's
  best."""
  sources = sharding.agreed("reading the token files", lambda: data.open_splits(
      data_dir, block_size, vocab_size, every_id=jax.process_count() > 1))
  seen = sharding.agreed("reading the token files", resume.data_seen, sources, seed)
  sizes = {split: (source.n_tokens, len(source)) for split, source in sources.items()}
  here = ", ".join(f"{split} {tokens:,} tokens in {windows:,} windows"
                   for split, (tokens, windows) in sizes.items())
  sharding.check_same({**sizes, "val": (*sizes["val"], seen["val_print"])},
                      f"the processes read different token files in {data_dir} (their {{keys}} "
                      f"splits differ; on process {jax.process_index()}: {here}): give every "
                      "host the same copy")
  return sources, seen


def _compile_step(setup: train_step.TrainSetup, layout: sharding.BatchLayout,
                  state: train_step.TrainState) -> Callable:
  """The train step compiled for the run's mesh, refused where it cannot fit the device (an
  eval_only run, or one with nothing to train, compiles none)."""
  t0 = time.perf_counter()
  compiled_step = train_step.compile_train_step(setup, layout.mesh, state)
  logging.info("train step compiled in %.1f s", time.perf_counter() - t0)
  train_step.check_memory(setup.step, compiled_step, state, layout.mesh)
  return compiled_step


def _accept(config: ml_collections.ConfigDict, rundir: run_dir.RunDir,
            checkpoints: checkpoint.Checkpoints, start: resume.Start, accepted: bool,
            resumed_at: int | None) -> sinks.Sinks:
  """The run's changes to out_dir, in order, each agreed (where one fails on any process,
  every process stops): tensorboardX and W&B loaded first (a missing one leaves the run as it
  was), then unreadable checkpoints set aside, then what process 0 writes where the run is
  `accepted`: unfinished saves removed, the metrics a resume keeps (a new run sets an earlier
  one's aside), config.json, the sinks."""
  writes = accepted and jax.process_index() == 0
  sink_config = defaults.view(sinks.SinkConfig, config)
  libraries = sharding.agreed(
      "loading tensorboardX or W&B", sinks.start_libraries if writes else lambda *_: None,
      sink_config, rundir, config.to_dict(), resumed_at is not None)
  # Where `accepted`, out_dir changes from here (before: at most a new out_dir with run.lock,
  # an empty checkpoints/, wandb/).
  checkpoints.set_aside(list(start.unreadable) if accepted else [])  # on every process

  def open_files() -> sinks.Sinks:
    try:
      checkpoints.remove_unfinished()
      rundir.keep_metrics_until(resumed_at, evaluated=start.evaluated)  # first: it sets an
      rundir.write_config(config)  # earlier run's config.json aside with its metrics
      return sinks.open_sinks(sink_config, rundir, libraries, resumed_at=resumed_at)
    except BaseException as e:
      if libraries.wandb_run is not None:  # started: shown as failed, not as running
        with contextlib.suppress(Exception):  # W&B's own error would hide the run's
          libraries.wandb_run.close(failed=True)
      if not isinstance(e, OSError):
        raise
      path = e.filename2 or e.filename  # a full disk, a quota: the file, where the OS names it
      where = f"{os.path.basename(path)}: " if path else ""
      fix = checkpoint.remedy(e)
      raise checkpoint.SaveError(f"{rundir.out_dir}: writing the run's files failed "
                                 f"({where}{checkpoint.os_error(e)}); nothing was trained. "
                                 f"{fix} and run the same command again") from None

  return sharding.agreed("writing the run's files",
                         open_files if writes else lambda: sinks.Sinks([]))


def _start(config: ml_collections.ConfigDict, setup: train_step.TrainSetup, shardings: Any,
           checkpoints: checkpoint.Checkpoints, layout: sharding.BatchLayout,
           train_windows: data.TokenWindows, params: Any
           ) -> tuple[resume.Start, grain.DatasetIterator]:
  """Where the run starts and its train batches from there: a checkpoint's, or from scratch
  (`params`, or nanoGPT's init)."""
  open_batches = lambda window: iter(data.train_dataset(
      train_windows, accum_steps=config.gradient_accumulation_steps,
      batch_size=layout.local_batch, seed=config.seed, workers=config.data_workers,
      prefetch=config.data_prefetch, shard_index=jax.process_index(),
      shard_count=jax.process_count(), start_window=window))
  if config.init_from == "resume":
    return resume.resume(config, setup, shardings, checkpoints, layout, open_batches)
  state = jax.jit(setup.new_state, out_shardings=shardings)(params)
  return resume.Start(state), open_batches(0)


def _log_start(config: ml_collections.ConfigDict, layout: sharding.BatchLayout,
               sources: dict[str, data.TokenWindows], start: resume.Start, config_file: str,
               trains: bool) -> tuple[summary.Summary, int]:
  """The run's summary, its warnings, its evaluation set and how it computes, logged; returns
  the summary and the evaluation's windows of each split. A run that only evaluates
  (`trains` false) is planned by its model's size (and the warnings not of a training).

  The evaluation set is fixed for the run: eval_iters batches of the global
  batch it started with, whatever batch layout or device count a resume brings.
  """
  device = jax.devices()[0]
  counts = summary.summarize(config, train_tokens=len(sources["train"]) * config.block_size,
                             n_devices=layout.n_devices, device_kind=device.device_kind,
                             start_iter=start.iter, start_tokens=start.tokens)
  for line in summary.describe(counts, layout)[:None if trains else 1]:
    logging.info("plan: %s", line)
  speaks = jax.process_index() == 0  # the other processes log warnings too: each said once
  for warning in summary.check(config, counts, config_file=config_file, device=device,
                               trains=trains):
    if speaks:
      logging.warning("plan: %s", warning)
  if counts.peak_flops is None and speaks and trains:  # lines leave MFU out
    log = logging.info if device.platform == "cpu" else logging.warning
    log("MFU: the peak FLOP/s of %r is not in jaxgpt's table (gpus.py), so no line shows MFU; "
        "--config.peak_flops=FLOP/s (its dense bf16 rate) sets it", device.device_kind)
  for split, source in sources.items():
    logging.info("%s: %s in %s", split, source, os.path.realpath(os.path.dirname(source.paths[0])))
    unused = source.unread / source.n_tokens
    # Said of small shards; one file's tail (under a window) no shard size takes in.
    if unused > UNUSED_TOKENS_WARNED and len(source.paths) > 1 and speaks:
      logging.warning("%s: %.0f%% of its tokens are in no window (a window never spans two "
                      "files: each file's tokens past its last whole window, and a file shorter "
                      "than one, are left out); make the data in larger shards (prepare's "
                      "--shard_tokens)", split, 100 * unused)
  eval_windows = config.eval_iters * (start.eval_batch_windows or layout.global_batch)
  logging.info("evaluation: the same %s windows (%s tokens) of each split every time",
               f"{eval_windows:,}", f"{eval_windows * config.block_size:,}")
  val_windows, batch_windows = len(sources["val"]), eval_windows // config.eval_iters
  if val_windows < eval_windows and speaks:
    if batch_windows <= val_windows:
      lever = f"lower eval_iters (now {config.eval_iters})"
    elif start.eval_batch_windows:  # a resume keeps its run's evaluation set
      lever = f"one evaluation batch of this run is {batch_windows:,} windows"
    else:
      lever = f"lower batch_size (one evaluation batch is {batch_windows:,} windows)"
    logging.warning("evaluation: the val split holds %s windows, so each evaluation scores "
                    "each about %.1f times; %s, or prepare a larger val split (--val_fraction / "
                    "--val_tokens)", f"{val_windows:,}", eval_windows / val_windows, lever)
  kernel = config.attention + (" (spelled out in training: no fused kernel takes dropout)"
                              if config.dropout and config.attention == "cudnn" else "")
  logging.info("compute: %d device(s) in %d process(es), sharding %s; %s activations, %s "
               "attention, loss in chunks of %s tokens, remat %s", layout.n_devices,
               jax.process_count(), config.sharding, config.dtype, kernel,
               config.loss_chunk_size or "all", config.remat)
  return counts, eval_windows


def _log_whats_next(out_dir: str, checkpoints: checkpoint.Checkpoints,
                    unreadable: tuple[int, ...], prompt: str, block_size: int,
                    vocab_size: int) -> None:
  """Where the run's checkpoints are (but the `unreadable` ones a resume passed over), and the
  commands that read them (sample only where GPT-2's BPE can spell the run's tokens). It reads
  the closed manager's list: opening another would wait at a barrier for the processes that do
  not log."""
  steps = [step for step in checkpoints.steps() if step not in unreadable]
  out = shlex.quote(out_dir)
  commands = [f"python -m jaxgpt.report --out_dir={out}"]
  if steps and vocab_size >= defaults.GPT2_VOCAB:
    commands.insert(0, f"python -m jaxgpt.sample --out_dir={out} --start={shlex.quote(prompt)} "
                       f"--num_samples=3 --max_new_tokens={min(block_size, 500)}")
  saved = (f"checkpoints of steps {', '.join(map(str, steps))}" if len(steps) > 1 else
           f"the checkpoint of step {steps[0]}" if steps else "no checkpoint")
  logging.info("done: %s in %s. Next:%s", saved, checkpoints.directory,
               "".join(f"\n  {command}" for command in commands))
