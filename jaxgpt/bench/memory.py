"""What one micro-batch keeps for its backward pass, counted from the program (no device)."""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxgpt import defaults, step


def backward_residual_bytes(config: ml_collections.ConfigDict) -> int:
  """Bytes one micro-batch's backward pass keeps (`step.backward_residuals`).

  The step's peak adds the params, AdamW state and gradient sums (16 bytes a
  parameter) and the largest op's workspace.
  """
  return sum(leaf.size * leaf.dtype.itemsize for leaf in step.backward_residuals(config))


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
