"""Train state, the jitted train and eval steps, and the training loop."""

from __future__ import annotations

import itertools
import math
import os
import time
from typing import Any, Callable

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxgpt import data, defaults, metrics, plan, prepare, sampling, shards, sinks, tokenizer
from jaxgpt.model import GPT, GPTConfig, count_params, cross_entropy, init_params
from jaxgpt.optim import lr_schedule, make_optimizer

Batch = jax.Array  # (accum_steps, batch_size, block_size + 1) token ids


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # iterations done
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step s uses fold_in(rng, s), so resuming needs nothing else


def create_train_state(model: GPT, tx: optax.GradientTransformation, seed: int) -> TrainState:
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(model, init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng)


def _loss(model: GPT, params: Any, tokens_BT1: jax.Array, rng: jax.Array | None) -> jax.Array:
  tokens_BT1 = tokens_BT1.astype(jnp.int32)
  train = rng is not None
  logits_BTV = model.apply({"params": params}, tokens_BT1[:, :-1], train=train,
                           rngs={"dropout": rng} if train else None)
  return cross_entropy(logits_BTV, tokens_BT1[:, 1:])


def make_train_step(model: GPT, tx: optax.GradientTransformation
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """A jitted `train_step(state, batch)` doing one iteration: every micro-batch, then AdamW.

  Gradients of the micro-batches are summed in float32 by a `lax.scan`, so
  k micro-batches of b give the update of one batch of k*b. The state is
  donated: its buffers are reused for the new state.
  """

  def train_step(state: TrainState, tokens_ABT1: Batch) -> tuple[TrainState, dict]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(lambda p, t, r: _loss(model, p, t, r))

    def micro_step(grads_sum, xs):
      i, tokens_BT1 = xs
      loss, grads = grad_fn(state.params, tokens_BT1, jax.random.fold_in(step_rng, i))
      return jax.tree.map(jnp.add, grads_sum, grads), loss

    n_micro = tokens_ABT1.shape[0]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads_sum, losses_A = jax.lax.scan(micro_step, zeros, (jnp.arange(n_micro), tokens_ABT1))
    grads = jax.tree.map(lambda g: g / n_micro, grads_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    return new_state, {"loss": losses_A.mean(), "grad_norm": optax.tree.norm(grads)}

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(model: GPT) -> Callable[[Any, jax.Array], jax.Array]:
  """A jitted mean loss of one (batch_size, block_size+1) batch, dropout off."""
  return jax.jit(lambda params, tokens_BT1: _loss(model, params, tokens_BT1, None))


def evaluate(eval_step: Callable, params: Any, sources: dict[str, data.TokenWindows],
             config: ml_collections.ConfigDict) -> dict[str, float]:
  """Mean loss over the same eval_iters batches of each split at every call."""
  losses = {}
  for split, source in sources.items():
    total = jnp.zeros((), jnp.float32)
    for batch in data.eval_batches(source, batch_size=config.batch_size,
                                   n_batches=config.eval_iters, seed=config.seed):
      total += eval_step(params, batch)
    losses[split] = float(total) / config.eval_iters  # one host sync per split
  return losses


def open_data(config: ml_collections.ConfigDict) -> dict[str, data.TokenWindows]:
  """The train and val windows, making the built-in corpus on first use."""
  data_dir = data.resolve_data_dir(config.dataset, config.data_dir)
  if config.dataset == "python_docs":
    prepare.ensure_python_docs(data_dir)
  if not shards.find_shards(data_dir, "train"):
    raise FileNotFoundError(
        f"no token shards in data_dir={data_dir!r} for dataset={config.dataset!r}. "
        f"Make them with:\n  python -m jaxgpt.prepare fineweb --out={data_dir}\n"
        "or point --config.data_dir at existing train/val .bin or .npy shards.")
  return {split: data.open_split(data_dir, split, config.block_size, config.vocab_size)
          for split in ("train", "val")}


def _format_train_line(it: int, max_iters: int, m: dict) -> str:
  mfu = "n/a" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
  return (f"iter {it}/{max_iters}: loss {m['loss']:.4f}, lr {m['lr']:.2e}, "
          f"grad norm {m['grad_norm']:.3f}, {m['ms_per_iter']:.1f} ms/iter, "
          f"{m['tokens_per_sec']:,.0f} tok/s, mfu {mfu}")


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Trains per `config`; returns the last evaluation's losses."""
  defaults.validate(config)
  os.makedirs(config.out_dir, exist_ok=True)
  with open(os.path.join(config.out_dir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))

  sources = open_data(config)
  device = jax.devices()[0]
  model_config = GPTConfig.from_config(config)
  model = GPT(model_config)
  tx = make_optimizer(config)
  state = create_train_state(model, tx, config.seed)
  n_params = count_params(state.params)
  tokens_per_iter = config.gradient_accumulation_steps * config.batch_size * config.block_size
  run_plan = plan.log_launch(config, train_tokens=len(sources["train"]) * config.block_size)
  for split, source in sources.items():
    logging.info("%s: %s", split, source)
  if len(sources["val"]) < config.batch_size:
    logging.warning("val split holds %d windows of %d+1 tokens, fewer than one eval batch of %d: "
                    "evaluation repeats them", len(sources["val"]), config.block_size,
                    config.batch_size)

  flops_per_token = metrics.flops_per_token(n_params, config.n_layer, config.n_head,
                                            config.n_embd, config.block_size)
  peak = metrics.peak_flops(device.device_kind, config.peak_flops)
  schedule = lr_schedule(config)
  writer = sinks.open_sinks(config)

  train_ds = data.train_dataset(sources["train"], accum_steps=config.gradient_accumulation_steps,
                                batch_size=config.batch_size, seed=config.seed,
                                workers=config.data_workers)
  # Batches are staged on the device ahead of the step, so the step never waits on a copy.
  train_iter = iter(grain.experimental.device_put(train_ds, device,
                                                  cpu_buffer_size=config.data_prefetch,
                                                  device_buffer_size=config.data_prefetch))
  eval_step = make_eval_step(model)

  t0 = time.perf_counter()
  first_batch = next(train_iter)
  # Compiled ahead of time: a batch of another shape would be an error, never a recompile.
  train_step = make_train_step(model, tx).lower(state, first_batch).compile()
  logging.info("train step compiled in %.1f s", time.perf_counter() - t0)
  batches = itertools.chain([first_batch], train_iter)

  losses: dict[str, float] = {}
  last_log_time, last_log_iter = time.perf_counter(), 0
  n_logs = 0
  for it in range(config.max_iters + 1):
    if it % config.eval_interval == 0 or it == config.max_iters:
      losses = evaluate(eval_step, state.params, sources, config)
      logging.info("step %d: train loss %.4f, val loss %.4f", it, losses["train"], losses["val"])
      writer.write({"event": "eval", "iter": it, "tokens": it * tokens_per_iter,
                    "train_loss": losses["train"], "val_loss": losses["val"],
                    "lr": float(schedule(it))})
      last_log_time = time.perf_counter()  # evaluation time is not training time
      last_log_iter = it
      if config.eval_only:
        break
    if it == config.max_iters:
      break
    state, step_metrics = train_step(state, next(batches))
    if it % config.log_interval == 0:
      m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}  # host sync
      now = time.perf_counter()
      n_iters = max(it + 1 - last_log_iter, 1)
      dt = (now - last_log_time) / n_iters
      tok_s = tokens_per_iter / dt
      m.update(lr=float(schedule(it)), ms_per_iter=1000 * dt, tokens_per_sec=tok_s,
               mfu=metrics.mfu(tok_s, flops_per_token, peak, 1))
      if not math.isfinite(m["loss"]):
        raise FloatingPointError(f"non-finite loss {m['loss']} at iter {it}")
      logging.info(_format_train_line(it, config.max_iters, m))
      n_logs += 1
      if n_logs == 2:  # the first log times one step; the second is a steady measurement
        logging.info(plan.eta_message(run_plan, it + 1, tok_s, m["mfu"]))
      writer.write({"event": "train", "iter": it, "tokens": (it + 1) * tokens_per_iter, **m})
      last_log_time, last_log_iter = now, it + 1
  writer.close()

  if config.sample_tokens > 0:
    print_sample(model, state.params, config)
  return losses


def print_sample(model: GPT, params: Any, config: ml_collections.ConfigDict) -> None:
  """Prints one sample that starts a new document (prompt: end-of-text)."""
  prompt_BP = jnp.array([[tokenizer.EOT_TOKEN]], jnp.int32)
  tokens = sampling.generate_recompute(model, params, prompt_BP, jax.random.PRNGKey(config.seed),
                                       max_new_tokens=config.sample_tokens, temperature=0.8,
                                       top_k=200)
  text = tokenizer.gpt2().decode(np.asarray(tokens[0]).tolist())
  print(f"---------------\n{text}\n---------------", flush=True)
