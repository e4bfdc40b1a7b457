"""Throughput arithmetic (FLOPs, MFU), and metrics.jsonl: its writer and its reader."""

from __future__ import annotations

import json
import os
import statistics
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
  """Appends one JSON object per event to out_dir/metrics.jsonl, flushed at once."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self.path = path
    self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

  def write(self, record: dict[str, Any]) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_metrics(path: str) -> dict[str, list[dict[str, Any]]]:
  """The records of a metrics.jsonl by event ("train", "eval"), each list in iteration order.

  A resumed run appends from its checkpoint's iteration: a record at or before
  the last one of its event replaces those, so the lists hold the run that
  continued. An unfinished last line (a run writing right now) is skipped.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such metrics file (is the directory a run's out_dir?)")
  events: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.endswith("\n"):
        break
      try:
        record = json.loads(line)
        kept = events.setdefault(record["event"], [])
        it = record["iter"]
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{n}: not a metrics record ({e}): {line.strip()[:80]}") from e
      while kept and kept[-1]["iter"] >= it:
        kept.pop()
      kept.append(record)
  return events


def median_throughput(train_records: list[dict[str, Any]]) -> dict[str, float | None]:
  """Median tokens_per_sec, ms_per_iter and mfu of train logs, skipping the first (one step)."""
  steady = train_records[1:] or train_records
  medians: dict[str, float | None] = {}
  for key in ("tokens_per_sec", "ms_per_iter", "mfu"):
    values = [r[key] for r in steady if r.get(key) is not None]
    medians[key] = statistics.median(values) if values else None
  return medians
