"""The accelerators jaxgpt knows by name: peak bf16 FLOP/s (for MFU) and memory, one entry each.

A device matches the first entry whose name is a case-insensitive word of its
`jax.Device.device_kind`, with a space, '-', '_' or nothing between its words alike ("H100" of
"NVIDIA H100 80GB HBM3", not of "GH200"; "A10" not of "A100X"; "RTX 4090" of "RTX4090"), so a
longer name comes before its prefix ("H100 PCIe" before "H100"); an entry without figures keeps
a name from matching a wrong entry further down.

Peak: dense bf16 tensor FLOP/s with FP32 accumulation, what XLA's bf16 matmuls use (GeForce
cards run it at half their FP16-accumulate rate): datasheets' sparse figures halved, GeForce
"AI TOPS" (FP8 / FP4 sparse) divided by 8 / 16, which equals the whitepapers' (Ampere GA102
v2.0, Ada v2.1, RTX Blackwell) figure where both exist. Memory: what the card reports, which
JAX takes its share of: nvidia-smi's total in MiB where we have it (H200: our own run's
docs/gpu_runs; H100, L40S, L4, A10 as modal-labs/modal-client#2797 quotes them: ECC keeps
1/16 of these cards' GDDR6; A10G, A40, L20, H800, H20 as public nvidia-smi logs show them),
else the spec page's GB as GiB.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Card:
  name: str
  peak_flops: float | None = None  # dense bf16, FP32 accumulate, per device
  memory_gib: float | None = None


CARDS: tuple[Card, ...] = (
    Card("MIG"),  # a MIG slice ("NVIDIA A100-SXM4-40GB MIG 1g.5gb"): a share of its card's SMs
    Card("Laptop"),  # mobile parts: far lower clocks than the desktop cards below
    Card("Max-Q"),
    Card("RTX 4090 D"),  # fewer SMs than the RTX 4090; no sourced figure
    Card("RTX 5090 D"),
    Card("TPU v4 lite"),  # the v4i inference chip
    Card("TPU v4", 275e12),  # cloud.google.com/tpu/docs/v4: 275 TFLOPS bf16 per chip
    Card("TPU v5 lite", 197e12),  # v5e; cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16 per chip
    Card("TPU v5e", 197e12),
    Card("TPU v5p", 459e12),  # cloud.google.com/tpu/docs/v5p: 459 TFLOPS bf16 per chip
    Card("TPU v5", 459e12),  # v5p reports "TPU v5"
    Card("TPU v6 lite", 918e12),  # v6e (Trillium); cloud.google.com/tpu/docs/v6e: 918 TFLOPS
    Card("TPU v6e", 918e12),
    Card("GH200 144G", 989.5e12, 144),  # "NVIDIA GH200 144G HBM3e": 144 GB HBM3e, as below
    Card("GH200", 989.5e12, 96),  # its Hopper GPU as an H100 SXM's (no GH200 bf16 figure)
    Card("H200 NVL", 835.5e12, 141),  # H200 datasheet: 1,671 sparse
    Card("H200", 989.5e12, 143771 / 1024),  # H200 datasheet: 1,979 sparse
    Card("H800 PCIe", 756.5e12, 80),  # the H100 PCIe's GH100 (114 SMs) with NVLink and FP64 cut
    Card("H800", 989.5e12, 81559 / 1024),  # SXM: the H100 SXM's (132 SMs; nvidia-smi 81559 MiB)
    Card("H20-3e", 148e12, 143771 / 1024),  # the 141 GB H20; nvidia-smi 143771 MiB
    Card("H20", 148e12, 97871 / 1024),  # 148 dense FP16 in third-party listings (no NVIDIA page)
    Card("H100 NVL", 835.5e12, 94),  # H100 datasheet: 1,671 sparse per GPU
    Card("H100 PCIe", 756.5e12, 80),  # H100 datasheet: 1,513 sparse
    Card("H100", 989.5e12, 81559 / 1024),  # H100 SXM ("NVIDIA H100 80GB HBM3"), datasheet:
    # 1,979 sparse
    Card("GB200", 2.5e15),  # GB200 NVL72 page: 5 PFLOPS sparse per GPU
    Card("B200", 2.25e15, 180),  # HGX B200 page: 4.5 PFLOPS sparse per GPU
    Card("B100", 1.75e15),  # 3.5 PFLOPS sparse (third-party listing only)
    Card("A100-SXM4-40GB", 312e12, 40),  # A100 datasheet: 312 dense
    Card("A100-PCIE-40GB", 312e12, 40),
    Card("A100 40GB", 312e12, 40),  # as a user names it (plan --device)
    Card("A100-SXM4-80GB", 312e12, 80),
    Card("A100", 312e12, 80),  # "NVIDIA A100-PCIE-80GB", "NVIDIA A100 80GB PCIe"
    Card("A800-SXM4-40GB", 312e12, 40),  # A800: the A100's GA100 with 400 GB/s NVLink; A100's 312
    Card("A800 PCIe 40GB", 312e12, 40),  # also "A800-PCIE-40GB"
    Card("A800 40GB", 312e12, 40),  # as a user names it; and "A800 40GB Active", a workstation
    # card with the A100 40GB's GA100 at its 1,410 MHz boost: 6,912 CUDA cores, 432 Tensor Cores,
    # 19.5 FP32 TFLOPS (spec listings; NVIDIA's A800 page was out of reach), so the A100's 312
    Card("A800-SXM4-80GB", 312e12, 80),
    Card("A800", 312e12, 80),  # "NVIDIA A800 80GB PCIe"
    Card("L40S", 362.05e12, 46068 / 1024),  # L40S datasheet: 362.05 dense
    Card("L40", 181.05e12, 48),  # L40 datasheet: 181.05 dense
    Card("NVIDIA L4", 121e12, 23034 / 1024),  # L4 datasheet: 242 sparse
    Card("NVIDIA L20", None, 46068 / 1024),  # no sourced bf16 figure; nvidia-smi 46068 MiB
    Card("NVIDIA A40", 149.7e12, 46068 / 1024),  # A40 datasheet: 149.7 with FP32 accumulate
    Card("NVIDIA A10", 125e12, 23028 / 1024),  # A10 datasheet: 125 dense
    Card("NVIDIA A10G", None, 23028 / 1024),  # AWS G5's A10 variant: no published bf16 figure
    Card("RTX 6000 Ada", 364.2e12, 48),  # Ada whitepaper: 364.2 with FP32 accumulate
    Card("RTX 5000 Ada", 261.1e12, 32),  # datasheet: 1,044.4 FP8 sparse / 4
    Card("RTX 4500 Ada", 158.5e12, 24),  # 60 SMs x 1024 x 2.58 GHz (derived; none published)
    Card("RTX 4000 SFF Ada"),
    Card("RTX 4000 Ada"),
    Card("RTX A6000", 154.8e12, 48),  # GA102 whitepaper: 154.8 with FP32 accumulate
    Card("RTX A5000", 111.1e12, 24),  # datasheet: 222.2 sparse
    Card("RTX A4500", 94.6e12, 20),  # datasheet: 189.2 sparse
    Card("RTX A4000", 76.7e12, 16),  # datasheet: 153.4 sparse
    Card("RTX 5090", 209.5e12, 32),  # RTX Blackwell whitepaper: 209.5 with FP32 accumulate
    Card("RTX 5080", 112.6e12, 16),  # 1,801 AI TOPS / 16
    Card("RTX 5070 Ti", 87.9e12, 16),  # 1,406 AI TOPS / 16
    Card("RTX 5070", 61.7e12, 12),  # 988 AI TOPS / 16
    Card("RTX 4090", 165.2e12, 24),  # Ada whitepaper: 165.2 with FP32 accumulate (1,321 / 8)
    Card("RTX 4080 SUPER", 104.4e12, 16),  # 836 AI TOPS / 8
    Card("RTX 4080", 97.5e12, 16),  # Ada whitepaper: 97.5 (780 AI TOPS / 8)
    Card("RTX 4070 Ti SUPER", 88.2e12, 16),  # 706 AI TOPS / 8
    Card("RTX 4070 Ti", 80.2e12, 12),  # 641 AI TOPS / 8
    Card("RTX 4070 SUPER", 71.0e12, 12),  # 568 AI TOPS / 8
    Card("RTX 4070", 58.3e12, 12),  # 466 AI TOPS / 8
    Card("RTX 4060 Ti", 44.1e12),  # 353 AI TOPS / 8; sold with 8 or 16 GB
    Card("RTX 4060", 30.2e12, 8),  # 242 AI TOPS / 8
    Card("RTX 3090 Ti", 80.0e12, 24),  # 84 SMs x 512 x 1.86 GHz (derived, as the 3090's 71)
    Card("RTX 3090", 71e12, 24),  # GA102 whitepaper: 71 with FP32 accumulate
    Card("RTX 3080 Ti", 68.2e12, 12),  # 80 SMs x 512 x 1.665 GHz (derived)
    Card("RTX 3080", 59.5e12, 10),  # GA102 whitepaper: 59.5 (a 12 GB card shares the name)
    Card("RTX 3070 Ti", 43.5e12, 8),  # 48 SMs x 512 x 1.77 GHz (derived)
    Card("RTX 3070", 40.6e12, 8),  # GA102 whitepaper (GA104): 40.6 with FP32 accumulate
    Card("RTX 3060 Ti", 32.4e12, 8),  # 38 SMs x 512 x 1.665 GHz (derived)
    Card("RTX 3060", 25.5e12, 12),  # 28 SMs x 512 x 1.777 GHz (derived)
)


def card(device_kind: str) -> Card | None:
  """The first entry whose name is a word of the device kind ("A100-40GB", as a user may
  write it, is "A100 40GB"); None for a device we do not know."""
  for c in CARDS:
    words = "[-_ ]*".join(re.escape(word) for word in re.split(r"[-_ ]+", c.name))
    if re.search(rf"(?<![a-z0-9]){words}(?![a-z0-9])", device_kind, re.IGNORECASE):
      return c
  return None


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
  """Peak bf16 FLOP/s of one device; `override` wins; None when unknown (e.g. a CPU)."""
  return override if override > 0 else getattr(card(device_kind), "peak_flops", None)
