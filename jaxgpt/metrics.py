"""Throughput arithmetic (FLOPs, MFU) and the metrics.jsonl writer."""

from __future__ import annotations

import json
import os
from typing import Any

# Peak dense bf16 FLOP/s per device, from the vendors' datasheets. Matched by
# substring against `jax.Device.device_kind`, first match wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v6", 918e12),
)


def flops_per_token(n_params: int, n_layer: int, n_head: int, n_embd: int,
                    block_size: int) -> float:
  """Training FLOPs per token, nanoGPT's 6N + 12*L*H*Q*T (N without position embeddings)."""
  head_size = n_embd // n_head
  return 6 * n_params + 12 * n_layer * n_head * head_size * block_size


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
  """Peak bf16 FLOP/s of one device; `override` wins; None when unknown (e.g. CPU)."""
  if override > 0:
    return override
  for name, flops in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def mfu(tokens_per_sec: float, flops_per_tok: float, peak_per_device: float | None,
        n_devices: int) -> float | None:
  """Model FLOPs utilisation as a fraction, or None when the peak is unknown."""
  if peak_per_device is None:
    return None
  return tokens_per_sec * flops_per_tok / (peak_per_device * n_devices)


def drop_records_after(path: str, step: int) -> int:
  """Moves the records of iterations a resumed run will redo to `path`.superseded.

  Kept: train records of iterations before `step` and evaluations at or before
  it. Returns how many records were moved; none is deleted.
  """
  if not os.path.isfile(path):
    return 0
  keep, moved = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      record = json.loads(line)
      redone = record["iter"] > step or (record["iter"] == step and record["event"] != "eval")
      (moved if redone else keep).append(line)
  if moved:
    with open(path + ".superseded", "a", encoding="utf-8") as f:
      f.writelines(moved)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return len(moved)


class MetricsWriter:
  """Appends one JSON object per event to out_dir/metrics.jsonl, flushed at once.

  Only one process of a multi-host run writes (`enabled`); the others' writes
  are dropped.
  """

  def __init__(self, path: str, enabled: bool = True):
    self.path = path
    self._file = None
    if enabled:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      self._file = open(path, "a", encoding="utf-8")

  def write(self, record: dict[str, Any]) -> None:
    if self._file is not None:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
