"""The training loop: batches in, steps, evaluations, checkpoints and metrics out.

`train(config)` is the whole of a run; `launch.py` calls it. The step math is
in step.py, the run directory's layout in run_dir.py, the data in data.py.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxgpt import (
  attention,
  checkpoint,
  data,
  decoding,
  defaults,
  flops,
  hf,
  nanogpt_ckpt,
  plan,
  preemption,
  resume,
  run_dir,
  scoring,
  sharding,
  sinks,
  step,
  tasks,
)
from jaxgpt.optim import lr_schedule


def evaluate(eval_step: Callable, params: Any, sources: dict[str, data.TokenWindows],
             config: ml_collections.ConfigDict, layout: sharding.BatchLayout
             ) -> dict[str, float]:
  """Mean loss over the same eval_iters batches of each split at every call."""
  losses = {}
  for split, source in sources.items():
    total = jnp.zeros((), jnp.float32)
    for batch in data.eval_batches(source, batch_size=layout.local_batch,
                                   n_batches=config.eval_iters, seed=config.seed,
                                   shard_index=jax.process_index(),
                                   shard_count=jax.process_count()):
      total += eval_step(params, layout.eval_batch(batch))
    losses[split] = float(total) / config.eval_iters  # one host sync per split
  return losses


def _format_train_line(it: int, max_iters: int, m: dict) -> str:
  mfu = "n/a" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
  return (f"iter {it}/{max_iters}: loss {m['loss']:.4f}, lr {m['lr']:.2e}, "
          f"grad norm {m['grad_norm']:.3f}, {m['ms_per_iter']:.1f} ms/iter, "
          f"{m['tokens_per_sec']:,.0f} tok/s, mfu {mfu}")


class _Run:
  """The loop's mutable bookkeeping, and the things it does between steps."""

  def __init__(self, config: ml_collections.ConfigDict, run_plan: plan.Plan,
               start: resume.Start, checkpoints: checkpoint.Checkpoints,
               train_iter: grain.DatasetIterator,
               writer: sinks.Sinks, eval_fn: Callable[[Any], dict[str, float]],
               layout: sharding.BatchLayout,
               tasks_fn: Callable[[Any], dict[str, dict[str, float]]] | None = None):
    self.config, self.plan, self.state, self.start = config, run_plan, start.state, start
    self.checkpoints, self.train_iter, self.writer = checkpoints, train_iter, writer
    self.eval_fn, self.tokens_per_iter = eval_fn, run_plan.tokens_per_iter
    self.tasks_fn = tasks_fn
    self.data_layout = {**resume.data_layout(config, layout), "start_window": start.window}
    self.n_logs = 0
    self.nonfinite_seen = int(start.state.nonfinite)
    device = jax.devices()[0]
    self.peak = flops.peak(device.device_kind, config.peak_flops)
    if self.peak is None and jax.process_index() == 0:  # said once; a CPU has no such figure
      (logging.info if device.platform == "cpu" else logging.warning)(
          flops.unknown_peak_message(device.device_kind))
    self.n_devices = layout.n_devices
    self.best_val_loss = start.best_val_loss
    self.last_saved = start.iter if config.init_from == "resume" else None
    self.schedule = lr_schedule(config, np)  # on the host: logging the rate needs no device
    self.losses: dict[str, float] = {}
    self.pending: tuple[int, dict[str, jax.Array]] | None = None  # a log not yet fetched
    self.mark_time(start.iter)

  def tokens(self, it: int) -> int:
    """Tokens trained on before iteration `it`, true across a resume with another batch."""
    return self.start.tokens + (it - self.start.iter) * self.tokens_per_iter

  def mark_time(self, it: int) -> None:
    """Starts a new timing interval: time spent before (eval, saves) is not train time."""
    self.last_log_time, self.last_log_iter = time.perf_counter(), it

  def save(self, it: int, val_loss: float | None) -> None:
    meta = {"config": self.config.to_dict(), "iter": it, "tokens": self.tokens(it),
            "val_loss": val_loss, "best_val_loss": self.best_val_loss, "data": self.data_layout}
    self.checkpoints.save(it, self.state, self.train_iter, meta, val_loss)
    self.last_saved = it

  def check_finite(self, it: int, count: int) -> None:
    """Stops the run once more iterations were non-finite than `skip_nonfinite` allows.

    `count` is the state's non-finite count after iteration `it`.
    """
    if count <= self.config.skip_nonfinite:
      if count > self.nonfinite_seen:
        logging.warning("%d iteration(s) with a non-finite loss or gradient skipped so far "
                        "(skip_nonfinite=%d)", count, self.config.skip_nonfinite)
      self.nonfinite_seen = count
      return
    since = self.last_log_iter
    where = f"at iter {it}" if since == it else f"between iter {since} and iter {it}"
    good = (f"the last good checkpoint is step {self.last_saved} in "
            f"{self.checkpoints.directory}" if self.last_saved is not None
            else "no checkpoint was saved yet")
    raise FloatingPointError(
        f"non-finite loss or gradient {where} ({count} iteration(s), skip_nonfinite="
        f"{self.config.skip_nonfinite}); the update was not applied and nothing was saved; "
        f"{good}")

  def evaluate_and_save(self, it: int) -> None:
    self.flush_log()
    self.losses = self.eval_fn(self.state.params)
    logging.info("step %d: train loss %.4f, val loss %.4f", it, self.losses["train"],
                 self.losses["val"])
    self.writer.write({"event": "eval", "iter": it, "tokens": self.tokens(it),
                       "train_loss": self.losses["train"], "val_loss": self.losses["val"],
                       "lr": float(self.schedule(it))})
    if self.config.eval_only:
      return
    self.check_finite(it, int(self.state.nonfinite))
    improved = self.losses["val"] < self.best_val_loss
    self.best_val_loss = min(self.best_val_loss, self.losses["val"])
    if it > 0 and (improved or self.config.always_save_checkpoint):
      self.save(it, self.losses["val"])
    self.mark_time(it)

  def evaluate_tasks(self, it: int) -> None:
    """Scores the eval_tasks (HellaSwag, texts) and records them as one 'tasks' event."""
    if self.tasks_fn is None:
      return
    self.flush_log()
    results = self.tasks_fn(self.state.params)
    for name, m in results.items():
      logging.info("step %d: %s", it, tasks.describe(name, m))
    self.writer.write({"event": "tasks", "iter": it, "tokens": self.tokens(it),
                       **tasks.flat(results)})
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
    tok_s = self.tokens_per_iter / dt
    m.update(lr=float(self.schedule(it)), ms_per_iter=1000 * dt, tokens_per_sec=tok_s,
             mfu=flops.mfu(tok_s, self.plan.flops_per_token, self.peak, self.n_devices))
    logging.info(_format_train_line(it, self.config.max_iters, m))
    self.n_logs += 1
    if self.n_logs == 2:  # the first log times one step; the second is a steady measurement
      logging.info(plan.eta_message(self.plan, it + 1, tok_s, m["mfu"]))
    self.writer.write({"event": "train", "iter": it, "tokens": self.tokens(it + 1), **m})
    self.check_finite(it, nonfinite)
    self.last_log_time, self.last_log_iter = now, it + 1

  def stop(self, it: int, reason: str) -> None:
    """Ends the run on a stop request with one checkpoint of the last iteration done."""
    self.flush_log()
    if it == self.start.iter:
      logging.warning("stopped by %s before the first step: nothing new to save", reason)
      return
    if self.last_saved != it:
      self.save(it, None)
    self.checkpoints.wait()
    logging.warning("stopped by %s at iter %d; checkpoint saved. Continue with the same "
                    "command plus --config.init_from=resume", reason, it)

  def close(self) -> None:
    """Lets a save in flight land (it holds a good state, even on an error), then closes."""
    try:
      self.checkpoints.wait()
    finally:
      self.checkpoints.close()
      self.writer.close()
      self.train_iter.close()


def _log_setup(config: ml_collections.ConfigDict, layout: sharding.BatchLayout,
               sources: dict[str, data.TokenWindows], kernel: str) -> None:
  for split, source in sources.items():
    logging.info("%s: %s", split, source)
  logging.info("compute: %d device(s) in %d process(es), sharding %s; %s activations, %s "
               "attention (config: %s), loss in chunks of %s tokens, remat %s",
               layout.n_devices, jax.process_count(), config.sharding, config.dtype, kernel,
               config.attention, config.loss_chunk_size or "all", config.remat)


def _loop(run: _Run, train_step: Callable, layout: sharding.BatchLayout,
          signals: preemption.StopSignals) -> None:
  """Iterations start..max_iters: evaluate and save on schedule, stop when asked."""
  config = run.config
  for it in range(run.start.iter, config.max_iters + 1):
    if signals.stop_at(it):
      run.stop(it, signals.name)
      break
    resumed_here = it == run.start.iter and config.init_from == "resume"  # evaluated before
    if (it % config.eval_tasks_interval == 0 or it == config.max_iters) and not resumed_here:
      run.evaluate_tasks(it)
    if (it % config.eval_interval == 0 or it == config.max_iters) and not resumed_here:
      run.evaluate_and_save(it)
      if config.eval_only:
        break
    if it == config.max_iters:
      break
    run.state, step_metrics = train_step(run.state, layout.train_batch(next(run.train_iter)))
    run.checkpoints.check_saves()  # a failed background save stops the run now
    run.flush_log()  # the previous log's step is done, or nearly: this one is queued
    if it % config.log_interval == 0:
      run.defer_log(it, step_metrics)
  run.flush_log()


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Trains per `config` on every device of every process; returns the last eval's losses.

  Stop signals are caught from the start (a stop during start-up ends the run
  before its first step), and process 0 holds the run directory's lock.
  """
  defaults.validate(config)
  run = run_dir.RunDir(config.out_dir)
  lead = jax.process_index() == 0  # the one process that writes logs and metrics
  with preemption.StopSignals(jax.process_count()) as signals, \
      run.lock() if lead else contextlib.nullcontext():
    return _train(config, run, signals)


def _accept(config: ml_collections.ConfigDict, run: run_dir.RunDir,
            start: resume.Start) -> None:
  """Records the run once it is accepted: before, nothing in out_dir has changed."""
  run.write_config(config)
  if config.init_from == "resume":
    moved = run.drop_metrics_after(start.iter)
    logging.info("%d records of redone iterations moved to %s.superseded", moved,
                 run.metrics_path)
  else:
    run.set_aside_metrics()


def _train(config: ml_collections.ConfigDict, run: run_dir.RunDir,
           signals: preemption.StopSignals) -> dict[str, float]:
  lead = jax.process_index() == 0
  checkpoints = run.checkpoints_for(config)
  # GPT-2's (or nanoGPT's) architecture replaces the config's before anything reads it.
  pretrained = None
  if config.init_from in defaults.GPT2_MODELS:
    pretrained = hf.init_from_gpt2(config)
  elif config.init_from.startswith(defaults.NANOGPT):
    pretrained = nanogpt_ckpt.init_from_nanogpt(config)
  sources = data.open_splits(config)
  layout = sharding.BatchLayout.create(config)
  kernel = attention.settle(config)  # before the model is built: it may fall back to XLA's
  setup = step.build(config)
  shardings = sharding.state_shardings(setup.abstract_state, layout.mesh, config.sharding)
  tasks_fn = _tasks_fn(config, setup, layout)  # a missing file stops the run before it starts
  if config.init_from == "resume":
    start = resume.resume(config, setup, shardings, checkpoints, layout)
  else:
    start = resume.Start(jax.jit(setup.new_state, out_shardings=shardings)(pretrained))
  train_iter = iter(data.train_dataset(
      sources["train"], accum_steps=config.gradient_accumulation_steps,
      batch_size=layout.local_batch, seed=config.seed, workers=config.data_workers,
      prefetch=config.data_prefetch, shard_index=jax.process_index(),
      shard_count=jax.process_count(), start_window=start.window))
  if start.data_step is not None:
    checkpoints.restore_data(start.data_step, train_iter)
  if lead:
    _accept(config, run, start)
  # An epoch is what the windows cover: a shard's last partial window is never read.
  run_plan = plan.log_launch(config, train_tokens=len(sources["train"]) * config.block_size,
                             n_devices=layout.n_devices)
  _log_setup(config, layout, sources, kernel)
  t0 = time.perf_counter()
  train_step = step.compile_train_step(setup, start.state, layout.train_spec, shardings,
                                       layout.mesh)
  logging.info("train step compiled in %.1f s", time.perf_counter() - t0)

  eval_step = step.make_eval_step(setup.model)
  loop = _Run(config, run_plan, start, checkpoints, train_iter,
              sinks.open_sinks(config, run, start_iter=start.iter, enabled=lead),
              eval_fn=lambda params: evaluate(eval_step, params, sources, config, layout),
              layout=layout, tasks_fn=tasks_fn)
  try:
    _loop(loop, train_step, layout, signals)
  finally:
    loop.close()
  if config.sample_tokens > 0:
    text = decoding.new_document(setup.model, loop.state.params,
                                 max_new_tokens=config.sample_tokens, seed=config.seed)
    if lead:
      print(f"---------------\n{text}\n---------------", flush=True)
  if lead:
    _log_whats_next(config, checkpoints)
  return loop.losses


def _tasks_fn(config: ml_collections.ConfigDict, setup: step.TrainSetup,
              layout: sharding.BatchLayout
              ) -> Callable[[Any], dict[str, dict[str, float]]] | None:
  """The eval_tasks, read and batched once: each evaluation reuses their compiled shapes."""
  if not config.eval_tasks:
    return None
  scorer = scoring.Scorer(setup.model, mesh=layout.mesh)
  task_list = tasks.load(config.eval_tasks, scorer, limit=config.eval_tasks_limit,
                         hellaswag_file=config.hellaswag_file)
  for task in task_list:
    logging.info("eval task %s: %s, %d rows in %d batches", task.name, task.source, task.n_rows,
                 len(task.batches))
  return lambda params: tasks.run(scorer, params, task_list)


def _log_whats_next(config: ml_collections.ConfigDict, checkpoints: checkpoint.Checkpoints
                    ) -> None:
  """Where the run's checkpoints are, and the commands that read them.

  It reads the closed manager's list: opening another would wait at a barrier
  for the processes that do not log.
  """
  steps = checkpoints.steps()
  where = (f"checkpoints of steps {', '.join(map(str, steps))} in {checkpoints.directory}"
           if steps else f"no checkpoint in {checkpoints.directory}")
  out = shlex.quote(config.out_dir)
  logging.info("done: %s. Next:\n  python -m jaxgpt.sample --out_dir=%s\n"
               "  python -m jaxgpt.report --out_dir=%s", where, out, out)
