"""Summed losses of token rows, batched and jitted once per bucket shape: what evaluations score.

A row is (tokens, n): the loss of its last n tokens, each predicted from all
the tokens before it (HellaSwag's ending after its context, a text window's
new tokens). Rows are padded to power-of-two buckets in batches of a fixed
row count (docs/design.md), so an evaluation in the training loop reuses the
same shapes every time. The LM head runs on the scored positions alone: most
of a HellaSwag row is context, and the head is most of a small model's FLOPs.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import sharding
from jaxgpt.model import GPT

Row = tuple[Sequence[int], int]  # tokens (at most block_size + 1), how many of the last to score
ROWS_PER_BATCH = 64  # on an accelerator
ROWS_PER_BATCH_CPU = 16  # 1.5x the throughput of 64 on a 2-core CPU (docs/benchmarks.md)
MIN_BUCKET = 8


class Batch(NamedTuple):
  index_R: np.ndarray  # each row's index in the caller's list; -1 for padding
  inputs_RT: np.ndarray  # int32 tokens, right-padded
  scored_RS: np.ndarray  # int32 positions of inputs whose predictions count
  targets_RS: np.ndarray  # int32 tokens those positions predict
  weights_RS: np.ndarray  # float32: 1 where scored, 0 on padding


def bucket(n: int, cap: int, least: int = MIN_BUCKET) -> int:
  """The padded length of n: the next power of two from n, raised to `least`, then capped at
  `cap` (so `cap` itself where that is not a power of two)."""
  return min(cap, max(least, 1 << (n - 1).bit_length()))


class Scorer:
  """One model's jitted row losses, on one device or on every device of a mesh.

  On a mesh (the training loop's), a batch's rows are split over the data
  axis and the sums come back replicated, so every process reads them all.
  `data_parallel`: the params are on every device of it (sharding=dp), so each
  device scores its rows alone (left to XLA, the chunked head's scan gathered
  every row to every device). Else XLA splits the rows (fsdp), and the head
  takes interleaved chunks, each split like the rows (as fsdp's eval step).
  """

  def __init__(self, model: GPT, mesh: jax.sharding.Mesh | None = None,
               rows_per_batch: int = 0, data_parallel: bool = False):
    self.block_size, self.vocab_size = model.config.block_size, model.config.vocab_size
    n_devices = 1 if mesh is None else mesh.size
    rows_per_batch = rows_per_batch or (ROWS_PER_BATCH_CPU if jax.default_backend() == "cpu"
                                        else ROWS_PER_BATCH)
    self.rows_per_batch = -(-rows_per_batch // n_devices) * n_devices
    self.mesh = mesh
    model = model.clone(rows_on=mesh if n_devices > 1 and not data_parallel else None)

    def loss_sums_R(params: Any, inputs_RT, scored_RS, targets_RS, weights_RS) -> jax.Array:
      losses_RS = model.apply({"params": params}, inputs_RT, scored_RS, targets_RS,
                              method=GPT.token_losses)
      return jnp.sum(losses_RS * weights_RS, axis=-1)

    if data_parallel and n_devices > 1:
      P = jax.sharding.PartitionSpec
      loss_sums_R = jax.shard_map(  # check_vma=False: the head's scan carries are not typed so
          loss_sums_R, mesh=mesh, in_specs=(P(), *[P(sharding.DATA)] * 4),
          out_specs=P(sharding.DATA), check_vma=False)
    self._loss_sums = jax.jit(loss_sums_R, out_shardings=None if mesh is None
                              else sharding.replicated(mesh))

  def batches(self, rows: Sequence[Row]) -> list[Batch]:
    """The rows as padded batches, grouped by bucket, in order within a bucket."""
    groups: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for i, (tokens, n) in enumerate(rows):
      if not (len(tokens) <= self.block_size + 1 and 0 < n < len(tokens)):
        raise ValueError(f"row {i}: {len(tokens)} tokens, {n} scored "
                         f"(block_size {self.block_size})")
      T = bucket(len(tokens) - 1, self.block_size)
      groups[T, bucket(n, T)].append(i)
    R = self.rows_per_batch
    batches = []
    for (T, S), indices in sorted(groups.items()):
      for start in range(0, len(indices), R):
        batch = Batch(np.full(R, -1), *(np.zeros((R, size), dtype) for size, dtype in
                      ((T, np.int32), (S, np.int32), (S, np.int32), (S, np.float32))))
        for r, i in enumerate(indices[start:start + R]):
          tokens, n = rows[i]
          L = len(tokens) - 1  # inputs; the targets are the tokens shifted by one
          batch.index_R[r] = i
          batch.inputs_RT[r, :L] = tokens[:L]
          batch.scored_RS[r, :n] = np.arange(L - n, L)
          batch.targets_RS[r, :n] = tokens[L - n + 1:]
          batch.weights_RS[r, :n] = 1.0
        batches.append(batch)
    return batches

  def _place(self, array: np.ndarray) -> np.ndarray | jax.Array:
    if self.mesh is None:
      return array
    spec = sharding.batch_sharding(self.mesh, array.ndim, 0)
    return jax.make_array_from_callback(array.shape, spec, lambda index: array[index])

  def loss_sums(self, params: Any, batches: list[Batch], n_rows: int,
                progress: Callable[[int], None] = lambda rows: None) -> np.ndarray:
    """Each row's summed loss (float32 sums), in the rows' order.

    Every batch is dispatched before any result is read, so the device never
    waits on the host; `progress` hears of each batch's rows as they arrive.
    """
    pending = [(b.index_R, self._loss_sums(params, *map(self._place, b[1:]))) for b in batches]
    sums = np.zeros(n_rows, np.float32)
    for index_R, sums_R in pending:
      real = index_R >= 0
      sums[index_R[real]] = np.asarray(sums_R)[real]
      progress(int(real.sum()))
    return sums
