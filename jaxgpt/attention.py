"""Which attention kernel a run uses: `auto` resolved for a GPU, and cuDNN's checked once.

cuDNN's flash attention never holds the (B, N, T, T) scores that XLA's
attention writes, reads and keeps for the backward pass. It runs on NVIDIA
GPUs of compute capability 8.0 or more, with 16-bit activations and a head
size that is a multiple of 8 up to 128 (`resolve`, the one place that says
so: training, the plan's compile for a named card and the benchmarks all ask
it). Even there a cuDNN build can lack an engine for a shape ("No valid
engine configs" has been reported on Ada cards): hence `settle`.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from jaxgpt import sharding
from jaxgpt.errors import UserError, first_line

Capability = tuple[int, int]  # an NVIDIA GPU's compute capability, e.g. (8, 9)


def capability(device: jax.Device) -> Capability | None:
  """(major, minor) of an NVIDIA GPU; None elsewhere (a ROCm GPU reports e.g. 'gfx90a')."""
  if device.platform != "gpu":
    return None
  found = re.fullmatch(r"(\d+)\.(\d+)", str(getattr(device, "compute_capability", "")))
  return (int(found[1]), int(found[2])) if found else None


def resolve(requested: str, dtype: str, head_size: int, gpu: Capability | None) -> str:
  """`requested`, with 'auto' resolved to 'cudnn' where cuDNN's flash attention runs."""
  if requested != "auto":
    return requested
  fits = (gpu is not None and gpu >= (8, 0) and dtype in ("bfloat16", "float16")
          and head_size % 8 == 0 and head_size <= 128)
  return "cudnn" if fits else "xla"


def for_device(requested: str, dtype: str, head_size: int, device: jax.Device) -> str:
  return resolve(requested, dtype, head_size, capability(device))


def probe(kernel: str, dtype: str, head_size: int, length: int) -> None:
  """One tiny forward and backward pass of the kernel at the run's head size and length."""
  shape = (1, length, 1, head_size)
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), shape, dtype) for i in range(3))

  def loss(q, k, v):
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=kernel)
    return out.astype(jnp.float32).sum()

  jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))


def settle(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run uses: `attention` resolved to the kernel that runs on this device.

  cuDNN is first tried on a tiny pass of the run's shapes (`probe`). Where 'auto' picked it
  and it fails, XLA's, with one warning naming the error; an explicit 'cudnn' that fails is
  an error. The given config is left as it is.
  """
  head_size, device = config.n_embd // config.n_head, jax.devices()[0]
  kernel = for_device(config.attention, config.dtype, head_size, device)
  if kernel == "cudnn":
    # Every process runs what all can: hosts whose cuDNN differed would compile other programs.
    error, _ = sharding.agree("cuDNN's attention", probe, kernel, config.dtype, head_size,
                              config.block_size)
    if error is not None:
      reason = f"{type(error).__name__}: {first_line(error)}"
      if config.attention == "cudnn":
        raise UserError(f"attention=cudnn fails on {device.device_kind} ({reason}); run with "
                        "--config.attention=xla (or auto)") from error
      logging.warning("cuDNN attention fails on %s (%s); using XLA's attention instead",
                      device.device_kind, reason)
      kernel = "xla"
  settled = config.copy_and_resolve_references()
  settled.attention = kernel
  return settled
