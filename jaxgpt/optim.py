"""The optimizer: nanoGPT's AdamW, or Muon for the blocks' matrices; their schedules."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import optax
from optax import contrib

# Params Muon never takes: the embeddings and the LM head are lookups and a
# classifier rather than hidden linear maps, and stay on AdamW as in modded-nanogpt.
_ADAMW_ONLY = ("wte", "wpe", "lm_head")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The config keys the optimizer and its schedule read (defaults.py says what each means)."""

  optimizer: str
  learning_rate: float
  min_lr: float
  weight_decay: float
  beta1: float
  beta2: float
  grad_clip: float
  decay_lr: bool
  lr_schedule: str
  warmup_iters: int
  lr_decay_iters: int
  wsd_decay_frac: float
  muon_learning_rate: float
  muon_momentum: float
  muon_momentum_start: float
  muon_momentum_warmup_iters: int


# The keys `lr_schedule` reads (Muon's own rate scales it by muon_learning_rate).
SCHEDULE_KEYS = ("learning_rate", "min_lr", "decay_lr", "lr_schedule", "warmup_iters",
                 "lr_decay_iters", "wsd_decay_frac")


def lr_schedule(config: OptimConfig, xp: types.ModuleType = jnp,
                peak: float | None = None) -> optax.Schedule:
  """nanoGPT's `get_lr` (or warmup-stable-decay) as an Optax schedule of the iteration number.

  `peak` replaces learning_rate (Muon's own rate) and scales min_lr with it.
  Written as nanoGPT's formula rather than optax's warmup schedules, whose
  float32 interpolation drifts from it by 1e-5 relative at small steps. With
  `xp=numpy` the same float32 formula runs on the host: the loop logs the rate
  without touching the device.
  """
  lr, min_lr = config.learning_rate, config.min_lr
  if peak is not None:
    lr, min_lr = peak, min_lr * peak / lr if lr else 0.0
  warmup, decay_end = config.warmup_iters, config.lr_decay_iters
  if not config.decay_lr:
    return optax.constant_schedule(lr) if xp is jnp else lambda it: xp.float32(lr)
  start = decay_start(config)
  # Zero or less only where nothing trains (max_iters=0) or a wsd decay rounds to nothing
  # (wsd_decay_frac=1e-17): the rate then steps to min_lr at decay_end, not at warmup's end.
  span = decay_end - start

  def schedule(it: jax.Array) -> jax.Array:
    it = xp.asarray(it, xp.float32)
    warmup_lr = lr * (it + 1) / (warmup + 1)
    ratio = (xp.clip((it - start) / span, 0.0, 1.0) if span > 0
             else xp.where(it >= decay_end, xp.float32(1.0), xp.float32(0.0)))
    if config.lr_schedule == "wsd":
      decayed_lr = lr - ratio * (lr - min_lr)
    else:
      decayed_lr = min_lr + 0.5 * (1.0 + xp.cos(xp.pi * ratio)) * (lr - min_lr)
    return xp.where(it < warmup, warmup_lr, decayed_lr)

  return schedule


def decay_start(config: OptimConfig) -> float:
  """The iteration the decay starts: warmup's end, or for 'wsd' the last wsd_decay_frac of the
  iterations from warmup_iters to lr_decay_iters."""
  warmup, end = config.warmup_iters, config.lr_decay_iters
  if config.lr_schedule == "wsd":
    return warmup + (1 - config.wsd_decay_frac) * (end - warmup)
  return warmup


def _adamw(config: OptimConfig) -> optax.GradientTransformation:
  # Weight decay on matrices and embeddings only, never on biases or norm scales.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.adamw(learning_rate=lr_schedule(config), b1=config.beta1, b2=config.beta2,
                     eps=1e-8, weight_decay=config.weight_decay, mask=decay_mask)


def optimizer_groups(params: optax.Params) -> optax.Params:
  """'muon' for the blocks' 2-D matrices, 'adamw' for embeddings, head, biases and gains."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: "muon" if p.ndim == 2 and path[0].key not in _ADAMW_ONLY else "adamw", params)


def _scale_by_width(updates: optax.Updates, params: optax.Params | None = None) -> optax.Updates:
  """Muon's orthogonal update times sqrt(max(1, fan_out / fan_in)) (Flax kernels: in x out)."""
  del params
  return jax.tree.map(lambda u: u * max(1.0, u.shape[1] / u.shape[0]) ** 0.5, updates)


def _muon(config: OptimConfig) -> optax.GradientTransformation:
  """optax.contrib's Muon step with a momentum warmup, on the learning-rate schedule.

  Like modded-nanogpt's Muon: Nesterov momentum, Newton-Schulz orthogonalisation,
  the width scale, and no weight decay; unlike it, the fused c_attn is one matrix,
  not Q, K and V each alone (docs/design.md says why).
  """
  if config.muon_momentum_warmup_iters == 0:  # optax's linear schedule would hold the start
    momentum = optax.constant_schedule(config.muon_momentum)
  else:
    momentum = optax.linear_schedule(config.muon_momentum_start, config.muon_momentum,
                                     config.muon_momentum_warmup_iters)
  as_matrices = lambda updates: jax.tree.map(lambda _: contrib.MuonDimensionNumbers(), updates)
  scale_by_muon = optax.inject_hyperparams(contrib.scale_by_muon,
                                           static_args=("weight_dimension_numbers",))
  return optax.chain(
      scale_by_muon(beta=momentum, weight_dimension_numbers=as_matrices),
      optax.stateless(_scale_by_width),
      optax.scale_by_learning_rate(lr_schedule(config, peak=config.muon_learning_rate)),
  )


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
  """Global-norm clipping (when grad_clip > 0), then AdamW(eps=1e-8), or Muon + AdamW."""
  if config.optimizer == "muon":
    tx = optax.partition({"muon": _muon(config), "adamw": _adamw(config)}, optimizer_groups)
  else:
    tx = _adamw(config)
  if config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx
