"""What one micro-batch keeps for its backward pass, counted from the program (no device)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxgpt import defaults, step


def backward_residual_bytes(config: ml_collections.ConfigDict) -> int:
  """Bytes one micro-batch's backward pass keeps from its forward pass, params included.

  Counted from the program (the arrays `jax.vjp` closes over), so it is the
  same on every backend: the activation memory that remat and the chunked loss
  cut, before XLA fuses anything. The step's peak adds the params, AdamW state
  and gradient sums (16 bytes a parameter) and the largest op's workspace.
  """
  setup = step.build(config)
  tokens_BT = jax.ShapeDtypeStruct((config.batch_size, config.block_size), jnp.int32)

  def backward_fn(p: Any, x_BT: jax.Array) -> Callable:
    return jax.vjp(lambda p: setup.model.apply({"params": p}, x_BT, targets_BT=x_BT), p)[1]

  residuals = jax.eval_shape(backward_fn, setup.abstract_state.params, tokens_BT)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals))


def memory_report(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """`backward_residual_bytes` under every remat policy, with the config's loss chunks and none."""
  rows = []
  for remat in defaults.REMAT_POLICIES:
    for chunk in dict.fromkeys((config.loss_chunk_size, 0)):
      variant = config.copy_and_resolve_references()
      variant.unlock()
      variant.update(remat=remat, loss_chunk_size=chunk)
      rows.append({"remat": remat, "loss_chunk_size": chunk,
                   "residual_bytes": backward_residual_bytes(variant)})
  return rows
