"""FLOP arithmetic: training FLOPs per token, peak FLOP/s per device, and MFU."""

from __future__ import annotations

import ml_collections

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


def per_token(n_params: int, config: ml_collections.ConfigDict) -> float:
  """Training FLOPs per token, nanoGPT's 6N + 12*L*H*Q*T (N without position embeddings)."""
  head_size = config.n_embd // config.n_head
  return 6 * n_params + 12 * config.n_layer * config.n_head * head_size * config.block_size


def peak(device_kind: str, override: float = 0.0) -> float | None:
  """Peak bf16 FLOP/s of one device; `override` wins; None when unknown (e.g. CPU)."""
  if override > 0:
    return override
  for name, flops in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def mfu(tokens_per_sec: float, flops_per_token: float, peak_per_device: float | None,
        n_devices: int) -> float | None:
  """Model FLOPs utilisation as a fraction, or None when the peak is unknown."""
  if peak_per_device is None:
    return None
  return tokens_per_sec * flops_per_token / (peak_per_device * n_devices)
