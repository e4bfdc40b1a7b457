"""Will the train step fit a card? XLA's memory plan of the step, and layouts that fit.

The step is compiled for the config's shapes (nothing is allocated) and its
memory analysis read: the arguments (params, optimizer state, batch) and the
temporaries XLA plans.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgpt import attention, train_step
from jaxgpt.model import GPT, GPTConfig, init_params

GiB = 2**30


def backward_residuals(model: GPT, batch_size: int) -> list[jax.ShapeDtypeStruct]:
  """The arrays one micro-batch's backward pass keeps from its forward pass, params included.

  Read from the program (what `jax.vjp` closes over), so the same on every
  backend: the activation memory that remat and the chunked loss cut.
  """
  tokens_BT = jax.ShapeDtypeStruct((batch_size, model.config.block_size), jnp.int32)
  params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))

  def backward_fn(p: Any, x_BT: jax.Array) -> Callable:
    return jax.vjp(lambda p: model.apply({"params": p}, x_BT, x_BT, method=GPT.loss), p)[1]

  return jax.tree.leaves(jax.eval_shape(backward_fn, params, tokens_BT))


def memory_estimate(config: ml_collections.ConfigDict) -> dict[str, int]:
  """XLA's memory analysis of the train step compiled for one device at the config's shapes.

  Compiled for the backend at hand (a CPU where there is no GPU), from shapes
  alone: nothing is allocated. It is an estimate of a GPU's need, not a
  measurement: XLA's GPU backend plans its buffers differently, and the GPU
  adds cuBLAS/cuDNN workspaces and the allocator's fragmentation. cuDNN's
  flash attention keeps none of the T x T attention scores that XLA's
  attention keeps for the backward pass (`attention_scores`, read from the
  program): `needed_with_flash` is the estimate without them.
  """
  setup = train_step.build(config)
  batch = jax.ShapeDtypeStruct((config.gradient_accumulation_steps, config.batch_size,
                                config.block_size + 1), np.uint16)
  compiled = train_step.make_train_step(setup.model, setup.tx).lower(setup.abstract_state,
                                                               batch).compile()
  m = compiled.memory_analysis()
  needed = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)
  T = config.block_size
  residuals = backward_residuals(GPT(GPTConfig.from_config(config)), config.batch_size)
  scores = sum(leaf.size * leaf.dtype.itemsize for leaf in residuals
               if leaf.shape[-2:] == (T, T))
  return {"arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes,
          "needed": needed, "attention_scores": scores,
          "needed_with_flash": max(needed - scores, m.argument_size_in_bytes)}


def fitting_variants(config: ml_collections.ConfigDict, budget_bytes: float,
                     figure: str = "needed") -> list[tuple[str, int]]:
  """Ways to the same tokens per iteration that fit: smaller micro-batches, then remat.

  Returns (the flags, estimated bytes) of each that fits, best first; [] if none does.
  `figure` is the estimate's key to compare ("needed_with_flash" on a card running
  cuDNN's attention).
  """
  tried = []
  batch, accum = config.batch_size, config.gradient_accumulation_steps
  while batch > 1 and batch % 2 == 0:
    batch, accum = batch // 2, accum * 2
    tried.append({"batch_size": batch, "gradient_accumulation_steps": accum})
  tried += [{"remat": "dots"}, {"remat": "full"}]
  fits = []
  for overrides in tried:
    variant = copy.deepcopy(config)
    with variant.unlocked():
      variant.update(overrides)
    needed = memory_estimate(variant)[figure]
    if needed <= budget_bytes:
      fits.append((" ".join(f"--config.{k}={v}" for k, v in overrides.items()), needed))
      if "remat" not in overrides:
        break  # the largest micro-batch that fits is the one to take
  return fits


USABLE_FRACTION = 0.9  # of a card's memory, past the CUDA context and the allocator's slack


def fit_report(config: ml_collections.ConfigDict, memory_gib: float,
               device: str = "") -> list[str]:
  """Whether the train step fits a card, and if not, what fits at the same tokens per step."""
  estimate = memory_estimate(config)
  # Every NVIDIA card gpus.py knows is of compute capability 8.0 or more.
  gpu = None if "TPU" in device.upper() else (8, 0)
  head_size = config.n_embd // config.n_head
  flash = attention.resolve(config.attention, config.dtype, head_size, gpu) == "cudnn"
  figure = "needed_with_flash" if flash else "needed"
  budget = USABLE_FRACTION * memory_gib * GiB
  lines = [
      (f"memory: about {estimate['needed'] / GiB:.1f} GiB for the train step at "
       f"{config.batch_size} x {config.block_size} per micro-batch (params, AdamW state and "
       f"batch {estimate['arguments'] / GiB:.2f} GiB, temporaries "
       f"{estimate['temporaries'] / GiB:.2f} GiB): XLA's plan for this step compiled on "
       f"{jax.devices()[0].platform}, an estimate, not a measurement"),
  ]
  if flash:
    lines.append(f"memory: of it, {estimate['attention_scores'] / GiB:.1f} GiB are the "
                 "T x T attention scores XLA's attention keeps; cuDNN's attention, which this "
                 f"card runs, keeps none: about {estimate[figure] / GiB:.1f} GiB there")
  if estimate[figure] <= budget:
    lines.append(f"memory: fits in {USABLE_FRACTION:.0%} of {memory_gib:g} GiB")
  else:
    variants = fitting_variants(config, budget, figure)
    lines.append(f"memory: does not fit in {USABLE_FRACTION:.0%} of {memory_gib:g} GiB" +
                 ("; the same tokens per iteration fit with:" if variants else
                  "; no smaller micro-batch or remat fits: pick a smaller model or block"))
    lines += [f"  {flags_text}  (about {needed / GiB:.1f} GiB)" for flags_text, needed in variants]
  lines.append("memory: JAX takes 75% of the GPU up front; on a 12 GB card set "
               "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 to give the step the rest")
  return lines
