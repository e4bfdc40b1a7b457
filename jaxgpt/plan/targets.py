"""NVIDIA GPUs to compile for on a machine without them: XLA's target description of each card.

JAX compiles for a CUDA target without a GPU or a driver ("deviceless"
ahead-of-time compilation) when its CUDA plugin is installed: a
`GpuTargetConfigProto` in protobuf text format describes the card (compute
capability, SMs, clock, memory, bandwidth, L2, shared memory and thread
limits, cuDNN and CUDA versions, the name JAX reports), and
`jax.experimental.topologies.get_topology_desc` turns it into compile-only
devices. A card's peak FLOP/s and memory are its `gpus.Card` entry (the one
source the run's MFU reads too); its architecture figures are here, each
with its source.

XLA ships such descriptions for A100, H100, H200, B200 and a few others
(`xla/backends/gpu/target_config/specs/`), newer than some jaxlibs accept
and none for sm_89 cards; these are written from the public specifications
below, in the fields jaxlib 0.10.2 knows.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import re

from jaxgpt import gpus
from jaxgpt.attention import Capability
from jaxgpt.errors import UserError

KiB, MiB, GiB = 2**10, 2**20, 2**30

# Per compute capability: threads per SM, shared memory per SM and the per-block opt-in,
# FP32 cores per SM. NVIDIA CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability" and the per-architecture sections. The same for all of these: 32
# threads a warp, 1024 threads a block, block dims 1024 x 1024 x 64, 48 KiB shared memory
# a block without opt-in, 64 K registers an SM and a block.
ARCHITECTURES = {
    (8, 0): (2048, 164 * KiB, 163 * KiB, 64),
    (8, 6): (1536, 100 * KiB, 99 * KiB, 128),
    (8, 9): (1536, 100 * KiB, 99 * KiB, 128),
    (9, 0): (2048, 228 * KiB, 227 * KiB, 128),
    (12, 0): (1536, 100 * KiB, 99 * KiB, 128),
}


@dataclasses.dataclass(frozen=True)
class Target:
  card: str  # its gpus.Card name: peak FLOP/s and memory
  device_kind: str  # what jax.Device.device_kind says on the card
  capability: Capability
  sms: int
  clock_ghz: float  # boost
  bandwidth: float  # memory, bytes/s
  l2_mib: int

  @property
  def memory_bytes(self) -> int:
    return int(gpus.card(self.card).memory_gib * GiB)

  @property
  def arch(self) -> str:
    return f"sm_{self.capability[0]}{self.capability[1]}"


# Sources, per row: wp, NVIDIA's architecture whitepaper (Ampere GA102, Ada v2.1, RTX
# Blackwell, A100, H100); ds, its datasheet or spec page; tpu-db, TechPowerUp's GPU
# database, for the boost clocks and L2 sizes NVIDIA leaves out.
TARGETS: tuple[Target, ...] = (
    Target("RTX 3090", "NVIDIA GeForce RTX 3090", (8, 6), 82, 1.695, 936e9, 6),  # GA102 wp
    Target("RTX 4070", "NVIDIA GeForce RTX 4070", (8, 9), 46, 2.475, 504e9, 36),  # ds; tpu-db
    Target("RTX 4080", "NVIDIA GeForce RTX 4080", (8, 9), 76, 2.505, 716.8e9, 64),  # Ada wp
    Target("RTX 4090", "NVIDIA GeForce RTX 4090", (8, 9), 128, 2.52, 1008e9, 72),  # Ada wp
    Target("RTX 5090", "NVIDIA GeForce RTX 5090", (12, 0), 170, 2.407, 1792e9, 96),  # RTX BW wp
    Target("A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", (8, 0), 108, 1.41, 1555.2e9, 40),  # wp, ds
    Target("A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 2039.04e9, 40),
    Target("H100 PCIe", "NVIDIA H100 PCIe", (9, 0), 114, 1.755, 2039.04e9, 50),  # wp, ds, tpu-db
    Target("H100", "NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 3352.32e9, 50),  # SXM5: wp, ds
    Target("H200", "NVIDIA H200", (9, 0), 132, 1.98, 4800e9, 50),  # ds; the H100 SXM's GH100
    Target("NVIDIA L4", "NVIDIA L4", (8, 9), 58, 2.04, 300e9, 48),  # ds; tpu-db
    Target("L40S", "NVIDIA L40S", (8, 9), 142, 2.52, 864e9, 96),  # ds; tpu-db
)


# Cards compiled for as another of the same chip and memory (only their bandwidth differs, which
# no memory plan reads): an A100 named without its form factor, or a PCIe one; an A800 or
# H800, the A100's or H100's chip (same SMs, clocks and memory) with slower NVLink.
SAME_CHIP = {"A100 40GB": "A100-SXM4-40GB", "A100-PCIE-40GB": "A100-SXM4-40GB",
             "A100": "A100-SXM4-80GB",
             "A800-SXM4-40GB": "A100-SXM4-40GB", "A800 PCIe 40GB": "A100-SXM4-40GB",
             "A800 40GB": "A100-SXM4-40GB", "A800-SXM4-80GB": "A100-SXM4-80GB",
             "A800": "A100-SXM4-80GB", "H800 PCIe": "H100 PCIe", "H800": "H100"}


def card(name: str) -> gpus.Card | None:
  """The card a user names: as JAX reports it ('NVIDIA H100 80GB HBM3') or for short ('H100',
  'L4', 'A100'), which the device kind prefixes with 'NVIDIA '."""
  return gpus.card(name) or gpus.card(f"NVIDIA {name}")


def target(name: str) -> Target:
  """The target a device name means ('RTX 4070', 'NVIDIA H100 80GB HBM3', 'H100', ...)."""
  card_named = card(name)
  for t in TARGETS:
    if card_named is not None and t.card == SAME_CHIP.get(card_named.name, card_named.name):
      return t
  raise UserError(f"--device={name!r}: no target description of that card to compile for; "
                  f"the targets are {', '.join(repr(t.card) for t in TARGETS)}")


def plugin_installed() -> bool:
  """Whether JAX's CUDA plugin is installed (found, not imported: no GPU backend starts)."""
  if importlib.util.find_spec("jax_plugins") is None:
    return False
  return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") is not None
             for v in (12, 13))


def _installed_version(*dists: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
  for dist in dists:
    try:
      parts = [int(p) for p in re.findall(r"\d+", importlib.metadata.version(dist))[:3]]
    except importlib.metadata.PackageNotFoundError:
      continue
    return tuple((parts + [0, 0])[:3])
  return default


def config_text(t: Target, memory_bytes: int) -> str:
  """The card as a GpuTargetConfigProto (text format), with `memory_bytes` of device memory.

  cuDNN and CUDA runtime versions are the installed wheels' (XLA checks cuDNN's
  when it lowers cuDNN attention).
  """
  threads, smem, smem_optin, fp32 = ARCHITECTURES[t.capability]
  dnn = _installed_version("nvidia-cudnn-cu12", "nvidia-cudnn-cu13", default=(9, 8, 0))
  runtime = _installed_version("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime",
                               default=(12, 8, 0))
  major, minor = t.capability
  features = "ACCELERATED_FEATURES" if t.capability == (9, 0) else "NONE"  # sm_90a
  fields = {
      "threads_per_block_limit": 1024, "threads_per_warp": 32,
      "shared_memory_per_block": 48 * KiB, "shared_memory_per_core": smem,
      "threads_per_core_limit": threads, "core_count": t.sms, "fpus_per_core": fp32,
      "block_dim_limit_x": 2**31 - 1, "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
      "memory_bandwidth": int(t.bandwidth), "l2_cache_size": t.l2_mib * MiB,
      "clock_rate_ghz": t.clock_ghz, "device_memory_size": memory_bytes,
      "shared_memory_per_block_optin": smem_optin, "registers_per_core_limit": 65536,
      "registers_per_block_limit": 65536, "thread_dim_limit_x": 1024,
      "thread_dim_limit_y": 1024, "thread_dim_limit_z": 64,
  }
  lines = [f"  {key}: {value}" for key, value in fields.items()]
  return "\n".join([
      "gpu_device_info {", *lines,
      (f"  cuda_compute_capability {{ major: {major} minor: {minor} feature_extension: "
      f"{features} }}"),
      '  device_vendor: "NVIDIA Corporation"', f'  name: "{t.device_kind}"',
      f'  runtime_version: "{".".join(map(str, runtime))}"',
      f'  dnn_version: "{".".join(map(str, dnn))}"', "}",
      'platform_name: "CUDA"',
      f"dnn_version_info {{ major: {dnn[0]} minor: {dnn[1]} patch: {dnn[2]} }}",
      f'device_description_str: "{t.device_kind}"', ""])


def devices(t: Target, n_devices: int = 1, memory_bytes: int | None = None) -> list:
  """Compile-only devices of `n_devices` such cards in one host (nothing runs on them).

  Needs JAX's CUDA plugin; the process's own platform may be the CPU.
  """
  if not plugin_installed():
    raise UserError("compiling for an NVIDIA GPU needs JAX's CUDA plugin, which is not "
                    "installed: pip install -e '.[cuda12]' (no GPU or driver needed)")
  from jax.experimental import topologies
  text = config_text(t, t.memory_bytes if memory_bytes is None else memory_bytes)
  return topologies.get_topology_desc(platform="cuda", topology=f"1x1x{n_devices}",
                                      target_config=text).devices
