"""What one micro-batch keeps for its backward pass, counted from the program (no device)."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxgpt import defaults
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.plan.memory import backward_residuals


def backward_residual_bytes(config: GPTConfig, batch_size: int) -> int:
  """Bytes one micro-batch's backward pass keeps (`plan.memory.backward_residuals`).

  The step's peak adds the params, AdamW state and gradient sums (16 bytes a
  parameter) and the largest op's workspace.
  """
  residuals = backward_residuals(GPT(config), batch_size)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in residuals)


def memory_report(config: GPTConfig, batch_size: int) -> list[dict[str, Any]]:
  """`backward_residual_bytes` under every remat policy, with the model's loss chunks and none."""
  rows = []
  for remat in defaults.REMAT_POLICIES:
    for chunk in dict.fromkeys((config.loss_chunk_size, 0)):
      variant = dataclasses.replace(config, remat=remat, loss_chunk_size=chunk)
      rows.append({"remat": remat, "loss_chunk_size": chunk,
                   "residual_bytes": backward_residual_bytes(variant, batch_size)})
  return rows
