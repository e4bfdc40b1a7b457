"""Train state, the jitted train and eval steps, and the training loop."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxgpt import (
  checkpoint,
  data,
  defaults,
  hf,
  metrics,
  plan,
  prepare,
  sampling,
  sharding,
  shards,
  sinks,
  tokenizer,
)
from jaxgpt.model import GPT, GPTConfig, attention_implementation, count_params, init_params
from jaxgpt.optim import lr_schedule, make_optimizer

Batch = jax.Array  # (accum_steps, batch_size, block_size + 1) token ids


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # iterations done
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step s uses fold_in(rng, s), so resuming needs nothing else
  nonfinite: jax.Array  # iterations whose update was dropped for a non-finite loss or gradient


def create_train_state(model: GPT, tx: optax.GradientTransformation, seed: int,
                       params: Any = None) -> TrainState:
  """A fresh state: params from nanoGPT's init unless given (e.g. GPT-2's)."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(model, init_rng) if params is None else jax.device_put(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng, nonfinite=jnp.zeros((), jnp.int32))


def _loss(model: GPT, params: Any, tokens_BT1: jax.Array, rng: jax.Array | None) -> jax.Array:
  tokens_BT1 = tokens_BT1.astype(jnp.int32)
  train = rng is not None
  return model.apply({"params": params}, tokens_BT1[:, :-1], train=train,
                     targets_BT=tokens_BT1[:, 1:], rngs={"dropout": rng} if train else None)


def _mean_grads(model: GPT, params: Any, tokens_ABT1: Batch, step_rng: jax.Array
                ) -> tuple[Any, jax.Array]:
  """Mean gradient and loss over the micro-batches, summed in float32 by a `lax.scan`."""
  grad_fn = jax.value_and_grad(lambda p, t, r: _loss(model, p, t, r))

  def micro_step(grads_sum, xs):
    i, tokens_BT1 = xs
    loss, grads = grad_fn(params, tokens_BT1, jax.random.fold_in(step_rng, i))
    return jax.tree.map(jnp.add, grads_sum, grads), loss

  n_micro = tokens_ABT1.shape[0]
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads_sum, losses_A = jax.lax.scan(micro_step, zeros, (jnp.arange(n_micro), tokens_ABT1))
  return jax.tree.map(lambda g: g / n_micro, grads_sum), losses_A.mean()


def make_train_step(model: GPT, tx: optax.GradientTransformation,
                    out_shardings: Any = None, dp_mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """A jitted `train_step(state, batch)` doing one iteration: every micro-batch, then AdamW.

  k micro-batches of b give the update of one batch of k*b. An update whose
  loss or gradient is not finite is dropped (params and optimizer state stay
  as they were) and counted in `state.nonfinite`, so a bad step never reaches
  the params or a checkpoint. The state is donated: its buffers are reused.
  `out_shardings` (state, metrics) pins the new state where the old one was.
  With `dp_mesh` (replicated params), each device accumulates the gradients
  of its share of the batch and they are averaged once per iteration, not
  once per micro-batch as XLA would otherwise schedule it.
  """

  def train_step(state: TrainState, tokens_ABT1: Batch) -> tuple[TrainState, dict]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    if dp_mesh is None:
      grads, loss = _mean_grads(model, state.params, tokens_ABT1, step_rng)
    else:
      def local_then_mean(params, tokens_ABT1, rng):
        rng = jax.random.fold_in(rng, jax.lax.axis_index(sharding.DATA))  # own dropout masks
        return jax.lax.pmean(_mean_grads(model, params, tokens_ABT1, rng), sharding.DATA)

      # check_vma=False: with it, jax would psum the gradient of the replicated params
      # itself (a second all-reduce, and 8x the mean on 8 devices before the pmean).
      P = jax.sharding.PartitionSpec
      grads, loss = jax.shard_map(local_then_mean, mesh=dp_mesh,
                                  in_specs=(P(), P(None, sharding.DATA), P()),
                                  out_specs=P(), check_vma=False)(state.params, tokens_ABT1,
                                                                  step_rng)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1,
                              params=keep_if_finite(params, state.params),
                              opt_state=keep_if_finite(opt_state, state.opt_state),
                              nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
    return new_state, {"loss": loss, "grad_norm": grad_norm}

  return jax.jit(train_step, donate_argnums=0, out_shardings=out_shardings)


def compile_train_step(model: GPT, tx: optax.GradientTransformation, state: Any,
                       batch_spec: jax.ShapeDtypeStruct, state_shardings: Any,
                       mesh: jax.sharding.Mesh, mode: str) -> Callable:
  """The train step compiled ahead of time for these shapes and shardings.

  A batch of another shape is then an error, never a silent recompile.
  """
  dp_mesh = mesh if mode == "dp" and mesh.size > 1 else None
  step = make_train_step(model, tx, (state_shardings, sharding.replicated(mesh)), dp_mesh)
  return step.lower(state, batch_spec).compile()


def make_eval_step(model: GPT) -> Callable[[Any, jax.Array], jax.Array]:
  """A jitted mean loss of one (batch_size, block_size+1) batch, dropout off."""
  return jax.jit(lambda params, tokens_BT1: _loss(model, params, tokens_BT1, None))


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """How a batch is split: micro-batches over every device of every process.

  Each process reads `local_batch` windows per micro-batch (its devices' share)
  and the global array is assembled from all processes' pieces.
  """

  mesh: jax.sharding.Mesh
  local_batch: int

  @classmethod
  def create(cls, config: ml_collections.ConfigDict) -> BatchLayout:
    return cls(sharding.make_mesh(), config.batch_size * jax.local_device_count())

  @property
  def n_devices(self) -> int:
    return self.mesh.size

  @property
  def train_sharding(self) -> jax.sharding.NamedSharding:  # (accum, batch, block+1)
    return sharding.batch_sharding(self.mesh, ndim=3, batch_axis=1)

  @property
  def eval_sharding(self) -> jax.sharding.NamedSharding:  # (batch, block+1)
    return sharding.batch_sharding(self.mesh, ndim=2, batch_axis=0)

  def train_batch(self, local_ABT1: np.ndarray) -> jax.Array:
    return sharding.global_batch(local_ABT1, self.train_sharding, batch_axis=1)

  def eval_batch(self, local_BT1: np.ndarray) -> jax.Array:
    return sharding.global_batch(local_BT1, self.eval_sharding, batch_axis=0)


def evaluate(eval_step: Callable, params: Any, sources: dict[str, data.TokenWindows],
             config: ml_collections.ConfigDict, layout: BatchLayout) -> dict[str, float]:
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


def open_data(config: ml_collections.ConfigDict) -> dict[str, data.TokenWindows]:
  """The train and val windows, making the built-in corpus (or, when allowed, FineWeb) first."""
  data_dir = data.resolve_data_dir(config.dataset, config.data_dir)
  if config.dataset == "python_docs":
    prepare.ensure_python_docs(data_dir)
  if not shards.find_shards(data_dir, "train"):
    command = prepare.make_command(config.dataset, data_dir)
    if config.auto_prepare and config.dataset in prepare.FINEWEB_DATASETS:
      logging.info("no token shards in %s: making them (%s)", data_dir, command)
      prepare.prepare_fineweb(data_dir, edu=prepare.FINEWEB_DATASETS[config.dataset],
                              name=os.path.basename(os.path.abspath(data_dir)),
                              command=command, workers=prepare.cpu_count())
    else:
      auto = ("(or run with --config.auto_prepare=True to make them first), "
              if config.dataset in prepare.FINEWEB_DATASETS else "")
      raise FileNotFoundError(
          f"no token shards in data_dir={data_dir!r} for dataset={config.dataset!r}. "
          f"Make them with:\n  {command}\n{auto}or point --config.data_dir at existing "
          "train/val .bin or .npy shards (nanoGPT, llm.c or build-nanogpt).")
  sources = {split: data.open_split(data_dir, split, config.block_size, config.vocab_size)
             for split in ("train", "val")}
  val = sources["val"]
  if len(val) < config.batch_size * jax.device_count():
    logging.warning(
        "val split holds %s tokens: %d windows of block_size+1=%d, fewer than one eval batch "
        "of batch_size x devices=%d windows; evaluation repeats them. Prepare a larger val "
        "split (--val_fraction / --val_tokens) or lower batch_size.", f"{val.n_tokens:,}",
        len(val), config.block_size + 1, config.batch_size * jax.device_count())
  return sources


# Keys whose change makes a checkpoint's params meaningless for this model.
ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias",
                     "gelu_approximate")


def check_resumable(saved: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Refuses a resume that changes the architecture; logs every other changed key."""
  mismatched = [k for k in ARCHITECTURE_KEYS if saved.get(k) != config[k]]
  if mismatched:
    details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {config[k]!r}"
                        for k in mismatched)
    raise ValueError(f"cannot resume {config.out_dir}: the architecture changed ({details})")
  for key, value in config.items():
    if key in saved and saved[key] != value and key != "init_from":
      logging.info("resume: %s changed from %r to %r", key, saved[key], value)


class StopSignals:
  """Turns SIGTERM/SIGINT into a request to stop after the current step.

  A second SIGINT interrupts at once, as Ctrl-C usually does.
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self) -> StopSignals:  # noqa: PYI034 - a final class
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum: int, frame) -> None:
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    logging.warning("received %s: stopping after the current step",
                    signal.Signals(signum).name)


def _format_train_line(it: int, max_iters: int, m: dict) -> str:
  mfu = "n/a" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
  return (f"iter {it}/{max_iters}: loss {m['loss']:.4f}, lr {m['lr']:.2e}, "
          f"grad norm {m['grad_norm']:.3f}, {m['ms_per_iter']:.1f} ms/iter, "
          f"{m['tokens_per_sec']:,.0f} tok/s, mfu {mfu}")


class _Run:
  """The loop's mutable bookkeeping, and the three things it does between steps."""

  def __init__(self, config: ml_collections.ConfigDict, run_plan: plan.Plan, state: TrainState,
               start_iter: int, best_val_loss: float, checkpoints: checkpoint.RunCheckpoints,
               train_iter: grain.DatasetIterator, writer: sinks.Sinks,
               eval_fn: Callable[[Any], dict[str, float]], flops_per_token: float,
               peak: float | None, n_devices: int):
    self.config, self.plan, self.state = config, run_plan, state
    self.checkpoints, self.train_iter, self.writer = checkpoints, train_iter, writer
    self.eval_fn, self.tokens_per_iter = eval_fn, run_plan.tokens_per_iter
    self.n_logs = 0
    self.nonfinite_seen = int(state.nonfinite)
    self.flops_per_token, self.peak, self.n_devices = flops_per_token, peak, n_devices
    self.best_val_loss = best_val_loss
    self.last_saved = start_iter if config.init_from == "resume" else None
    self.schedule = lr_schedule(config)
    self.losses: dict[str, float] = {}
    self.mark_time(start_iter)

  def mark_time(self, it: int) -> None:
    """Starts a new timing interval: time spent before (eval, saves) is not train time."""
    self.last_log_time, self.last_log_iter = time.perf_counter(), it

  def save(self, it: int, val_loss: float | None) -> None:
    meta = {"config": self.config.to_dict(), "iter": it, "tokens": it * self.tokens_per_iter,
            "val_loss": val_loss, "best_val_loss": self.best_val_loss}
    self.checkpoints.save(it, self.state, self.train_iter, meta, val_loss)
    self.last_saved = it

  def check_finite(self, it: int) -> None:
    """Stops the run once more iterations were non-finite than `skip_nonfinite` allows."""
    count = int(self.state.nonfinite)  # host sync: called only at log and save points
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
    self.losses = self.eval_fn(self.state.params)
    logging.info("step %d: train loss %.4f, val loss %.4f", it, self.losses["train"],
                 self.losses["val"])
    self.writer.write({"event": "eval", "iter": it, "tokens": it * self.tokens_per_iter,
                       "train_loss": self.losses["train"], "val_loss": self.losses["val"],
                       "lr": float(self.schedule(it))})
    if self.config.eval_only:
      return
    self.check_finite(it)
    improved = self.losses["val"] < self.best_val_loss
    self.best_val_loss = min(self.best_val_loss, self.losses["val"])
    if it > 0 and (improved or self.config.always_save_checkpoint):
      self.save(it, self.losses["val"])
    self.mark_time(it)

  def log(self, it: int, step_metrics: dict[str, jax.Array]) -> None:
    m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}  # the host sync
    now = time.perf_counter()
    dt = (now - self.last_log_time) / max(it + 1 - self.last_log_iter, 1)
    tok_s = self.tokens_per_iter / dt
    m.update(lr=float(self.schedule(it)), ms_per_iter=1000 * dt, tokens_per_sec=tok_s,
             mfu=metrics.mfu(tok_s, self.flops_per_token, self.peak, self.n_devices))
    logging.info(_format_train_line(it, self.config.max_iters, m))
    self.n_logs += 1
    if self.n_logs == 2:  # the first log times one step; the second is a steady measurement
      logging.info(plan.eta_message(self.plan, it + 1, tok_s, m["mfu"]))
    self.writer.write({"event": "train", "iter": it, "tokens": (it + 1) * self.tokens_per_iter,
                       **m})
    self.check_finite(it)
    self.last_log_time, self.last_log_iter = now, it + 1

  def stop_on_signal(self, it: int, signum: int) -> None:
    self.save(it, None)
    self.checkpoints.wait()
    logging.warning("stopped by %s at iter %d; checkpoint saved. Continue with the same "
                    "command plus --config.init_from=resume", signal.Signals(signum).name, it)


def _open_checkpoints(config: ml_collections.ConfigDict) -> checkpoint.RunCheckpoints:
  """The run's checkpoints, refusing to start over on top of them or resume from none."""
  checkpoints = checkpoint.RunCheckpoints(config.out_dir, keep=config.keep_checkpoints)
  existing = checkpoints.steps()
  if config.init_from != "resume" and existing:
    raise FileExistsError(
        f"{checkpoints.directory} already holds checkpoints (steps {existing}); nothing was "
        f"changed. To continue that run add --config.init_from=resume; to start a new one, "
        f"pick another --config.out_dir.")
  if config.init_from == "resume" and not existing:
    raise FileNotFoundError(f"{checkpoints.directory}: no checkpoints to resume from; "
                            "start the run with --config.init_from=scratch")
  return checkpoints


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Trains per `config` on every device of every process; returns the last eval's losses."""
  defaults.validate(config)
  lead = jax.process_index() == 0  # the one process that writes logs and metrics
  checkpoints = _open_checkpoints(config)
  # GPT-2's architecture replaces the config's before anything reads or records it.
  pretrained = hf.init_from_gpt2(config) if config.init_from in defaults.GPT2_MODELS else None
  if lead:
    os.makedirs(config.out_dir, exist_ok=True)
    with open(os.path.join(config.out_dir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))

  sources = open_data(config)
  layout = BatchLayout.create(config)
  model = GPT(GPTConfig.from_config(config))
  tx = make_optimizer(config)
  abstract_state = jax.eval_shape(lambda: create_train_state(model, tx, config.seed))
  state_shardings = sharding.state_shardings(abstract_state, layout.mesh, config.sharding)
  train_iter = iter(data.train_dataset(
      sources["train"], accum_steps=config.gradient_accumulation_steps,
      batch_size=layout.local_batch, seed=config.seed, workers=config.data_workers,
      prefetch=config.data_prefetch, shard_index=jax.process_index(),
      shard_count=jax.process_count()))
  metrics_path = os.path.join(config.out_dir, "metrics.jsonl")
  start_iter, best_val_loss = 0, math.inf
  if config.init_from == "resume":
    start_iter, state, meta = checkpoints.restore_latest_good(
        checkpoint.abstract_like(abstract_state, state_shardings), train_iter,
        check_meta=lambda meta: check_resumable(meta["config"], config))
    best_val_loss = meta.get("best_val_loss") or math.inf
    moved = metrics.drop_records_after(metrics_path, start_iter) if lead else 0
    logging.info("resumed from %s/%d (%s records of redone iterations moved to %s.superseded)",
                 checkpoints.directory, start_iter, moved, metrics_path)
  else:
    state = jax.jit(lambda p: create_train_state(model, tx, config.seed, p),
                    out_shardings=state_shardings)(pretrained)

  n_params = count_params(state.params)
  # An epoch is what the windows cover: a shard's last partial window is never read.
  run_plan = plan.log_launch(config, train_tokens=len(sources["train"]) * config.block_size,
                             n_devices=layout.n_devices)
  tokens_per_iter = run_plan.tokens_per_iter
  logging.info("tokens per iteration: %s = %d accum x %d batch x %d devices (%s, %d processes) "
               "x %d block", f"{tokens_per_iter:,}", config.gradient_accumulation_steps,
               config.batch_size, layout.n_devices, config.sharding, jax.process_count(),
               config.block_size)
  for split, source in sources.items():
    logging.info("%s: %s", split, source)
  attention = attention_implementation(config.attention, config.dtype,
                                       config.n_embd // config.n_head, jax.devices()[0])
  logging.info("compute: %s activations, %s attention (config: %s), loss in chunks of %s "
               "tokens, remat %s", config.dtype, attention, config.attention,
               config.loss_chunk_size or "all", config.remat)

  t0 = time.perf_counter()
  batch_spec = jax.ShapeDtypeStruct(
      (config.gradient_accumulation_steps, config.batch_size * layout.n_devices,
       config.block_size + 1), np.uint16, sharding=layout.train_sharding)
  train_step = compile_train_step(model, tx, state, batch_spec, state_shardings, layout.mesh,
                                  config.sharding)
  logging.info("train step compiled in %.1f s", time.perf_counter() - t0)

  eval_step = make_eval_step(model)
  run = _Run(config, run_plan, state, start_iter, best_val_loss, checkpoints, train_iter,
             sinks.open_sinks(config, enabled=lead),
             eval_fn=lambda params: evaluate(eval_step, params, sources, config, layout),
             flops_per_token=metrics.flops_per_token(n_params, config.n_layer, config.n_head,
                                                     config.n_embd, config.block_size),
             peak=metrics.peak_flops(jax.devices()[0].device_kind, config.peak_flops),
             n_devices=layout.n_devices)
  try:
    with StopSignals() as signals:
      for it in range(start_iter, config.max_iters + 1):
        resumed_here = it == start_iter and config.init_from == "resume"  # evaluated before
        if (it % config.eval_interval == 0 or it == config.max_iters) and not resumed_here:
          run.evaluate_and_save(it)
          if config.eval_only:
            break
        if it == config.max_iters:
          break
        if signals.received is not None:
          run.stop_on_signal(it, signals.received)
          break
        run.state, step_metrics = train_step(run.state, layout.train_batch(next(train_iter)))
        if it % config.log_interval == 0:
          run.log(it, step_metrics)
  finally:
    checkpoints.wait()  # a save in flight holds a good state: let it land, even on an error
    checkpoints.close()
    run.writer.close()
    train_iter.close()

  if config.sample_tokens > 0:
    print_sample(model, run.state.params, config)
  return run.losses


def print_sample(model: GPT, params: Any, config: ml_collections.ConfigDict) -> None:
  """Prints one sample that starts a new document (prompt: end-of-text).

  Every process runs the generation (the params may be split over all of
  them); process 0 prints it.
  """
  tokens = sampling.generate(model, params, [[tokenizer.EOT_TOKEN]],
                             jax.random.PRNGKey(config.seed), max_new_tokens=config.sample_tokens,
                             temperature=0.8, top_k=200)
  if jax.process_index() == 0:
    text = tokenizer.gpt2().decode(tokens[0].tolist())
    print(f"---------------\n{text}\n---------------", flush=True)


def restore_params(out_dir: str, step: int | None = None
                   ) -> tuple[ml_collections.ConfigDict, Any, int]:
  """(run config, params, step) of the latest (or the given) checkpoint of a run."""
  checkpoints = checkpoint.RunCheckpoints(out_dir, read_only=True)
  steps = checkpoints.steps()
  if not steps:
    raise FileNotFoundError(f"{checkpoints.directory}: no checkpoints; nothing was trained "
                            f"into out_dir={out_dir!r} yet")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"{checkpoints.directory}: no checkpoint at step {step}; it holds {steps}")
  config = defaults.get_config()
  config.update(checkpoints.read_meta(step)["config"])
  model = GPT(GPTConfig.from_config(config))
  tx = make_optimizer(config)
  abstract = checkpoint.abstract_like(
      jax.eval_shape(lambda: create_train_state(model, tx, config.seed)),
      jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  state, _ = checkpoints.restore(step, abstract, None)
  checkpoints.close()
  return config, state.params, step
