"""AdamW with nanoGPT's learning-rate schedule, decay mask and gradient clipping."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import ml_collections
import optax


def lr_schedule(config: ml_collections.ConfigDict, xp: types.ModuleType = jnp) -> optax.Schedule:
  """nanoGPT's `get_lr` as an Optax schedule of the iteration number.

  lr*(it+1)/(warmup_iters+1) while it < warmup_iters, then a cosine from lr to
  min_lr that ends at lr_decay_iters, then min_lr; constant lr when decay_lr is
  false. Written as nanoGPT's formula rather than optax's warmup schedules,
  whose float32 interpolation drifts from it by 1e-5 relative at small steps.
  With `xp=numpy` the same float32 formula runs on the host: the loop logs the
  rate without touching the device.
  """
  lr, min_lr = config.learning_rate, config.min_lr
  warmup, decay_end = config.warmup_iters, config.lr_decay_iters
  if not config.decay_lr:
    return optax.constant_schedule(lr) if xp is jnp else lambda it: xp.float32(lr)

  def schedule(it: jax.Array) -> jax.Array:
    it = xp.asarray(it, xp.float32)
    warmup_lr = lr * (it + 1) / (warmup + 1)
    ratio = xp.clip((it - warmup) / (decay_end - warmup), 0.0, 1.0)
    cosine_lr = min_lr + 0.5 * (1.0 + xp.cos(xp.pi * ratio)) * (lr - min_lr)
    return xp.where(it < warmup, warmup_lr, cosine_lr)

  return schedule


def decay_mask(params: optax.Params) -> optax.Params:
  """Weight decay on matrices and embeddings only, never on biases or LayerNorm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping (when grad_clip > 0), then AdamW(eps=1e-8) on the schedule."""
  adamw = optax.adamw(
      learning_rate=lr_schedule(config),
      b1=config.beta1,
      b2=config.beta2,
      eps=1e-8,
      weight_decay=config.weight_decay,
      mask=decay_mask,
  )
  if config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return adamw
