"""Will the train step fit a card? XLA's own memory plan of the step, compiled for that card.

With JAX's CUDA plugin installed, the real train step (the recipe's shapes,
dtype, attention as `auto` resolves it on that card, remat, loss chunks,
accumulation, sharding) is compiled for the card on any machine, without a
GPU (plan/targets.py), and its memory analysis read: the arguments (params,
optimizer state, batch), the temporaries, their total per device.

XLA sizes its rematerialisation to the memory it is told about: a step that
would not fit is squeezed toward the limit by recomputing activations, and a
figure at the limit means "slowed by recomputation, or out of memory", not
"fits". So the step is compiled twice: with the memory JAX will have on the
card (what XLA will do there) and with ample memory (what it needs without
recomputing). A run on a GPU hands XLA the allocator's share, 75% of the card
unless XLA_CLIENT_MEM_FRACTION says otherwise; a compile without a
GPU takes 80% of the memory the target describes, so the target is described
with share / 0.8 of memory to plan as the card will (read from XLA's source).
On an H200 the plan of each step that fitted was within 0.5% of the device's
peak (docs/benchmarks.md).

Without the plugin, the step compiled for the CPU gives an estimate, labelled
as one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxgpt import attention, sharding, train_step
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig, init_params
from jaxgpt.plan import targets

GiB = 2**30
DEFAULT_MEM_FRACTION = 0.75  # JAX's preallocation, when XLA_CLIENT_MEM_FRACTION is unset
DEVICELESS_SHARE = 0.8  # of the described memory, XLA's budget when it compiles without a GPU
AMPLE = 8  # times the card's memory: room enough that XLA recomputes nothing
NOT_COUNTED = ("the CUDA context (outside JAX's share), cuDNN's workspace (sized when the "
               "kernel runs) and the allocator's fragmentation")


def mem_fraction() -> float:
  """The share of a GPU's memory JAX's allocator takes, as this environment sets it (jaxlib
  reads XLA_PYTHON_CLIENT_MEM_FRACTION, deprecated, where XLA_CLIENT_MEM_FRACTION is unset)."""
  name = next((n for n in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")
               if os.environ.get(n)), "")
  if not name:
    return DEFAULT_MEM_FRACTION
  try:
    fraction = float(os.environ[name])
  except ValueError:
    raise UserError(f"{name}={os.environ[name]!r} is not a number") from None
  if fraction <= 0 or fraction > 1 and not os.environ.get("TF_FORCE_UNIFIED_MEMORY"):
    raise UserError(f"{name}={os.environ[name]}: a share of the card's memory, in (0, 1] "
                    "(more with TF_FORCE_UNIFIED_MEMORY=1, which spills into host memory)")
  return fraction


def compile_for(step: train_step.StepConfig, t: targets.Target, n_devices: int = 1,
                memory_bytes: int | None = None) -> Any:
  """The train step as training compiles it, for `n_devices` such cards in one host."""
  m = step.model
  kernel = attention.resolve(m.attention, m.dtype, m.n_embd // m.n_head, t.capability)
  mesh = jax.sharding.Mesh(np.array(targets.devices(t, n_devices, memory_bytes)),
                           (sharding.DATA,))
  return train_step.compile_on(
      dataclasses.replace(step, model=dataclasses.replace(m, attention=kernel)), mesh)


@dataclasses.dataclass(frozen=True)
class GpuPlan:
  """XLA's memory plan of a config's step on a card, per device, against what JAX will have."""

  budget: int  # bytes JAX's allocator will have on the card
  need: train_step.Need  # compiled with `budget`: what XLA will do on the card
  need_unsqueezed: int  # compiled with ample memory: the need without recomputation

  @property
  def fits(self) -> bool:
    return self.need.total <= self.budget

  @property
  def recomputes(self) -> bool:
    """Fits only because XLA recomputes activations it would rather keep: slower."""
    return self.fits and self.need_unsqueezed > self.budget


def planned_need(step: train_step.StepConfig, t: targets.Target, n_devices: int = 1,
                 budget: int | None = None) -> train_step.Need:
  """XLA's plan of the step on the card given `budget` bytes (default: JAX's share of it):
  what it will do there."""
  budget = int(mem_fraction() * t.memory_bytes) if budget is None else budget
  return train_step.memory_need(compile_for(step, t, n_devices, int(budget / DEVICELESS_SHARE)))


def gpu_plan(step: train_step.StepConfig, t: targets.Target, n_devices: int = 1,
             fraction: float | None = None) -> GpuPlan:
  """The step compiled for the card twice: with JAX's share of it, and with plenty."""
  budget = int((mem_fraction() if fraction is None else fraction) * t.memory_bytes)
  ample = compile_for(step, t, n_devices, AMPLE * t.memory_bytes)
  return GpuPlan(budget, planned_need(step, t, n_devices, budget),
                 train_step.memory_need(ample).total)


def gpu_report(step: train_step.StepConfig, t: targets.Target, n_devices: int = 1,
               progress: Callable[[str], None] = print) -> list[str]:
  """Lines saying whether the step fits the card and, where it does not (or only by
  recomputing), the fastest layout at the same tokens per iteration that does."""
  m = step.model
  kernel = _training_kernel(m, t.capability)
  progress(f"compiling the train step for {t.card} ({t.arch}), twice ...")
  p = gpu_plan(step, t, n_devices)
  where = f"{n_devices} x {t.device_kind}" if n_devices > 1 else t.device_kind
  lines = [
      (f"memory: compiled for {where} ({t.arch}; {kernel} attention; "
       f"{step.gradient_accumulation_steps} accum x {step.batch_size} batch x {m.block_size} "
       f"block, remat {m.remat}): XLA plans {p.need.total / GiB:.2f} GiB per device (params, "
       f"optimizer state and batch {p.need.arguments / GiB:.2f} GiB, temporaries "
       f"{p.need.temporaries / GiB:.2f} GiB); JAX will have {p.budget / GiB:.2f} GiB "
       f"({p.budget / t.memory_bytes:.0%} of {t.memory_bytes / GiB:g} GiB; "
       "XLA_CLIENT_MEM_FRACTION sets the share)"),
  ]
  if p.fits and not p.recomputes:
    lines.append(f"memory: fits, {(p.budget - p.need.total) / GiB:.2f} GiB to spare")
  else:
    lines.append(
        f"memory: fits only because XLA recomputes activations ({p.need_unsqueezed / GiB:.2f} "
        "GiB without): slower" if p.fits else
        f"memory: does not fit (XLA could not bring it under {p.budget / GiB:.2f} GiB)")
    found = train_step.fitting_layout(
        step, p.budget,
        lambda variant: train_step.memory_need(
            compile_for(variant, t, n_devices, AMPLE * t.memory_bytes)).total,
        lambda flags: progress(f"compiling {flags} for {t.card} ..."))
    lines.append(
        f"memory: at the same tokens per iteration, {found[0]} fits without recomputing "
        f"({found[1] / GiB:.2f} GiB)" if found
        else "memory: no smaller micro-batch or remat fits: pick a smaller model or block")
  lines.append(f"memory: not counted: {NOT_COUNTED}")
  return lines


# Without the CUDA plugin: the step compiled for the CPU, an estimate.

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


def cpu_estimate(step: train_step.StepConfig) -> dict[str, int]:
  """XLA's memory plan of the train step compiled for this machine's CPU: an estimate of a
  GPU's need, not its plan (XLA's GPU backend plans buffers and recomputation otherwise).

  cuDNN's flash attention keeps none of the T x T scores XLA's attention keeps
  for the backward pass (`attention_scores`, read from the program):
  `needed_with_flash` is the estimate without them.
  """
  setup = train_step.build(step)
  T = step.model.block_size
  batch = jax.ShapeDtypeStruct((step.gradient_accumulation_steps, step.batch_size, T + 1),
                               np.uint16)
  compiled = train_step.make_train_step(setup.model, setup.tx).lower(setup.abstract_state,
                                                                     batch).compile()
  need = train_step.memory_need(compiled)
  residuals = backward_residuals(setup.model, step.batch_size)
  scores = sum(leaf.size * leaf.dtype.itemsize for leaf in residuals
               if leaf.shape[-2:] == (T, T))
  return {"arguments": need.arguments, "temporaries": need.temporaries, "needed": need.total,
          "attention_scores": scores,
          "needed_with_flash": max(need.total - scores, need.arguments)}


# The most the CPU estimate has overstated XLA's plan for a card, on the same step
# (docs/benchmarks.md, "Will it fit"): fineweb_40m at batch 32 x accum 16, 19.5 GiB against 8.43
# planned for the RTX 4070 (with recomputation) and 9.39 used on an H200; at its own batch 16 x
# accum 32, 11.3 against 6.77.
CPU_OVERSTATES = 19.5 / 8.43


def _training_kernel(m: GPTConfig, gpu: attention.Capability | None) -> str:
  """The attention the train step computes on the card: spelled out with dropout, which no
  fused kernel takes (model.py), else the kernel `attention` resolves to."""
  if m.dropout > 0:
    return "spelled-out"
  return attention.resolve(m.attention, m.dtype, m.n_embd // m.n_head, gpu)


def _fsdp_whole(shapes: Any, n_shards: int) -> float:
  """The share of a tree's elements that fsdp over `n_shards` leaves whole on every device
  (a matrix none of whose dimensions `n_shards` divides is not split)."""
  leaves = jax.tree.leaves(shapes)
  whole = sum(x.size for x in leaves if sharding.leaf_spec(x.shape, n_shards, "fsdp") == P())
  return whole / sum(x.size for x in leaves)


def cpu_report(step: train_step.StepConfig, memory_gib: float, device: str, n_devices: int = 1
               ) -> list[str]:
  """The CPU estimate, said to be one, against a card's memory; how to get the real plan."""
  estimate = cpu_estimate(step)
  m = step.model
  card, tpu = targets.card(device), "TPU" in device.upper()
  # The NVIDIA cards gpus.py gives figures for are all 8.0+; another (a T4, a V100, a 2080 Max-Q
  # that only the "Max-Q" entry matches) may be older, where `auto` picks XLA's attention, which
  # keeps the scores.
  known = card is not None and bool(card.peak_flops or card.memory_gib)
  gpu = (8, 0) if known and not tpu else None
  flash = _training_kernel(m, gpu) == "cudnn"
  figure = estimate["needed_with_flash" if flash else "needed"]
  budget = mem_fraction() * memory_gib * GiB
  scores = (" (without the T x T attention scores cuDNN's attention never keeps; "
            f"{estimate['needed'] / GiB:.1f} GiB with them)" if flash else
            " (with the T x T attention scores XLA's attention keeps, as on a card older than "
            "compute capability 8.0: jaxgpt does not know this one; "
            f"{estimate['needed_with_flash'] / GiB:.1f} GiB under cuDNN's, on 8.0+)"
            if not known and not tpu and _training_kernel(m, (8, 0)) == "cudnn" else "")
  lines = [
      (f"memory: an estimate from the step compiled for this machine's CPU, not the card's "
       f"plan: about {figure / GiB:.1f} GiB for micro-batches of {step.batch_size} batch x "
       f"{m.block_size} block{scores}"),
      (f"memory: JAX will have {budget / GiB:.2f} GiB ({mem_fraction():.0%} of {memory_gib:.4g} "
       f"GiB): " + ("fits by this estimate" if figure <= budget else
                    f"does not fit by this estimate, nor by {1 / CPU_OVERSTATES:.0%} of it"
                    if figure > CPU_OVERSTATES * budget else
                    f"less than this estimate, which has been up to {CPU_OVERSTATES:.1f}x "
                    "XLA's plan for a card: it may fit")),
  ]
  if step.sharding == "fsdp" and n_devices > 1:
    whole = _fsdp_whole(train_step.build(step).abstract_state, n_devices)
    kept = (f"1/{n_devices} of the weights and AdamW's moments on each, so less"
            if whole < 0.05 else  # the vectors (norms, biases) stay whole: a share of a tiny model
            f"{whole:.0%} of the weights and AdamW's moments whole on each ({n_devices} divides "
            f"none of their dimensions), so {'no less' if whole > 0.995 else 'less'}")
    lines.insert(1, f"memory: on one device, unsharded: fsdp over {n_devices} devices keeps {kept}")
  if targets.plugin_installed():
    return lines
  return lines + [("memory: XLA's own plan for the card needs JAX's CUDA plugin (no GPU or "
                  "driver needed): pip install -e '.[cuda12]', then run this again")]

