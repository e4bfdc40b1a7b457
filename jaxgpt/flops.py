"""FLOP arithmetic: training FLOPs per token, peak FLOP/s per device, and MFU."""

from __future__ import annotations

import ml_collections

# Peak dense (not 2:4-sparse) bf16 tensor FLOP/s of one device, with FP32 accumulation
# (what XLA's bf16 matmuls use; GeForce cards run it at half their FP16-accumulate rate).
# Matched case-insensitively as a substring of `jax.Device.device_kind` ("NVIDIA GeForce
# RTX 4070", "NVIDIA H100 80GB HBM3", "TPU v5 lite"); the first match wins, so a longer
# name comes before its prefix ("H100 PCIe" before "H100", "L40S" before "L40" before "L4",
# "Ti SUPER" before "Ti"). None marks a name with no sourced figure, and keeps it from
# matching a wrong entry further down. Sources: NVIDIA's datasheets and architecture
# whitepapers (Ampere GA102 v2.0, Ada v2.1, RTX Blackwell), halved where they quote sparse
# figures; GeForce 40/50 from the "AI TOPS" of NVIDIA's spec pages (FP8 / FP4 with
# sparsity) divided by 8 / 16, which equals the whitepapers' FP32-accumulate figure where
# both exist (4090: 1321 / 8 = 165.2); Google Cloud's TPU pages.
PEAK_BF16_FLOPS: tuple[tuple[str, float | None], ...] = (
    ("Laptop", None),  # mobile parts: far lower clocks than the desktop cards below
    ("Max-Q", None),
    ("RTX 4090 D", None),  # fewer SMs than the RTX 4090; no sourced figure
    ("RTX 5090 D", None),
    ("TPU v4 lite", None),  # the v4i inference chip
    ("TPU v4", 275e12),  # cloud.google.com/tpu/docs/v4: 275 TFLOPS bf16 per chip
    ("TPU v5 lite", 197e12),  # v5e; cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16 per chip
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),  # cloud.google.com/tpu/docs/v5p: 459 TFLOPS bf16 per chip
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v6 lite", 918e12),  # v6e (Trillium); cloud.google.com/tpu/docs/v6e: 918 TFLOPS
    ("TPU v6e", 918e12),
    ("GH200", 989.5e12),  # its Hopper GPU as an H100 SXM's (no GH200 bf16 figure published)
    ("H200 NVL", 835.5e12),  # H200 datasheet: 1,671 sparse
    ("H200", 989.5e12),  # H200 datasheet: 1,979 sparse
    ("H100 NVL", 835.5e12),  # H100 datasheet: 1,671 sparse per GPU
    ("H100 PCIe", 756.5e12),  # H100 datasheet: 1,513 sparse
    ("H100", 989.5e12),  # H100 SXM ("NVIDIA H100 80GB HBM3"), datasheet: 1,979 sparse
    ("GB200", 2.5e15),  # GB200 NVL72 page: 5 PFLOPS sparse per GPU
    ("B200", 2.25e15),  # HGX B200 page: 4.5 PFLOPS sparse per GPU
    ("B100", 1.75e15),  # 3.5 PFLOPS sparse (third-party listing only)
    ("A100-", 312e12),  # A100 datasheet: 312 dense ("NVIDIA A100-SXM4-80GB", "-PCIE-40GB")
    ("A100 ", 312e12),  # "NVIDIA A100 80GB PCIe"; the space keeps "RTX A1000" out
    ("L40S", 362.05e12),  # L40S datasheet: 362.05 dense
    ("L40", 181.05e12),  # L40 datasheet: 181.05 dense
    ("NVIDIA L4", 121e12),  # L4 datasheet: 242 sparse
    ("A10G", None),  # AWS's A10 variant: no published figure
    ("NVIDIA A10", 125e12),  # A10 datasheet: 125 dense
    ("RTX 6000 Ada", 364.2e12),  # Ada whitepaper: 364.2 with FP32 accumulate
    ("RTX 5000 Ada", 261.1e12),  # datasheet: 1,044.4 FP8 sparse / 4
    ("RTX 4500 Ada", 158.5e12),  # 60 SMs x 1024 x 2.58 GHz (derived; no published figure)
    ("RTX 4000 SFF Ada", None),
    ("RTX 4000 Ada", None),
    ("RTX A6000", 154.8e12),  # GA102 whitepaper: 154.8 with FP32 accumulate
    ("RTX A5000", 111.1e12),  # datasheet: 222.2 sparse
    ("RTX A4500", 94.6e12),  # datasheet: 189.2 sparse
    ("RTX A4000", 76.7e12),  # datasheet: 153.4 sparse
    ("RTX 5090", 209.5e12),  # RTX Blackwell whitepaper: 209.5 with FP32 accumulate
    ("RTX 5080", 112.6e12),  # 1,801 AI TOPS / 16
    ("RTX 5070 Ti", 87.9e12),  # 1,406 AI TOPS / 16
    ("RTX 5070", 61.7e12),  # 988 AI TOPS / 16
    ("RTX 4090", 165.2e12),  # Ada whitepaper: 165.2 with FP32 accumulate (1,321 AI TOPS / 8)
    ("RTX 4080 SUPER", 104.4e12),  # 836 AI TOPS / 8
    ("RTX 4080", 97.5e12),  # Ada whitepaper: 97.5 (780 AI TOPS / 8)
    ("RTX 4070 Ti SUPER", 88.2e12),  # 706 AI TOPS / 8
    ("RTX 4070 Ti", 80.2e12),  # 641 AI TOPS / 8
    ("RTX 4070 SUPER", 71.0e12),  # 568 AI TOPS / 8
    ("RTX 4070", 58.3e12),  # 466 AI TOPS / 8
    ("RTX 4060 Ti", 44.1e12),  # 353 AI TOPS / 8
    ("RTX 4060", 30.2e12),  # 242 AI TOPS / 8
    ("RTX 3090 Ti", 80.0e12),  # 84 SMs x 512 x 1.86 GHz (derived, as the 3090's 71)
    ("RTX 3090", 71e12),  # GA102 whitepaper: 71 with FP32 accumulate
    ("RTX 3080 Ti", 68.2e12),  # 80 SMs x 512 x 1.665 GHz (derived)
    ("RTX 3080", 59.5e12),  # GA102 whitepaper: 59.5 (the 12 GB card, same name, is ~3% more)
    ("RTX 3070 Ti", 43.5e12),  # 48 SMs x 512 x 1.77 GHz (derived)
    ("RTX 3070", 40.6e12),  # GA102 whitepaper (GA104): 40.6 with FP32 accumulate
    ("RTX 3060 Ti", 32.4e12),  # 38 SMs x 512 x 1.665 GHz (derived)
    ("RTX 3060", 25.5e12),  # 28 SMs x 512 x 1.777 GHz (derived)
)


# Memory of the cards whose name says it (GiB, the vendors' spec pages), for the plan's
# "will it fit" without --memory_gib. First match wins, as above.
MEMORY_GIB: tuple[tuple[str, float], ...] = (
    ("RTX 3060 Ti", 8), ("RTX 3060", 12), ("RTX 3070", 8), ("RTX 3080 Ti", 12), ("RTX 3080", 10),
    ("RTX 3090", 24), ("RTX 4060", 8), ("RTX 4070 Ti SUPER", 16), ("RTX 4070", 12),
    ("RTX 4080", 16), ("RTX 4090", 24), ("RTX 5070 Ti", 16), ("RTX 5070", 12), ("RTX 5080", 16),
    ("RTX 5090", 32), ("RTX A4000", 16), ("RTX A4500", 20), ("RTX A5000", 24), ("RTX A6000", 48),
    ("RTX 6000 Ada", 48), ("L40", 48), ("NVIDIA L4", 24), ("A100-SXM4-40GB", 40),
    ("A100-PCIE-40GB", 40), ("A100", 80), ("H100 NVL", 94), ("H100", 80), ("GH200", 96),
    ("H200", 141), ("B200", 180),
)


def memory_gib(device_kind: str) -> float | None:
  """The card's memory where its name says it; None otherwise."""
  for name, gib in MEMORY_GIB:
    if name.lower() in device_kind.lower():
      return gib
  return None


def per_token(n_params: int, config: ml_collections.ConfigDict) -> float:
  """Training FLOPs per token, nanoGPT's 6N + 12*L*H*Q*T (N: model.count_params).

  Norms, rotary positions, activations and the soft-cap are elementwise and
  left out, as nanoGPT leaves out LayerNorm and GELU.
  """
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


def unknown_peak_message(device_kind: str) -> str:
  return (f"MFU: the peak FLOP/s of {device_kind!r} is not in jaxgpt's table; set "
          "--config.peak_flops=FLOP/s (its dense bf16 rate) to see MFU")


def mfu(tokens_per_sec: float, flops_per_token: float, peak_per_device: float | None,
        n_devices: int) -> float | None:
  """Model FLOPs utilisation as a fraction, or None when the peak is unknown."""
  if peak_per_device is None:
    return None
  return tokens_per_sec * flops_per_token / (peak_per_device * n_devices)
