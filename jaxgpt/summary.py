"""What a config trains, as the launch log and `plan` say it: counts, FLOPs, schedule, MFU."""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import ml_collections

from jaxgpt import attention, formatting, gpus, optim, sharding, train_step
from jaxgpt.model import count_params

CHINCHILLA_TOKENS_PER_PARAM = 20
SIZE_TOLERANCE = 0.25  # a stated model size further than this (relative) from the count is flagged
MAX_WARMUP_FRACTION = 0.1
MAX_EPOCHS = 10.0

# A model size stated in a name: "124m", "40M", "1.5b"; not "fineweb10B" or "bs32m" (no
# boundary before it) nor "10BT" (a letter after it).
_SIZE_RE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([mMbB])(?![A-Za-z0-9])")


@dataclasses.dataclass(frozen=True)
class Summary:
  n_params: int  # nanoGPT's count: all but the lookup-only embeddings (model.count_params)
  n_params_total: int
  tokens_per_iter: int
  max_iters: int
  flops_per_token: float  # nanoGPT's 6N + 12*L*H*Q*T
  train_tokens: int | None  # tokens in one pass over the train split; None when unknown
  schedule: str  # the learning-rate schedule as the run follows it
  peak_flops: float | None = None  # of one device, for MFU; None when unknown
  n_devices: int = 1
  start_iter: int = 0  # a resume's: the iterations before it may have had another layout
  start_tokens: int = 0

  @property
  def tokens(self) -> int:
    """Tokens trained on by max_iters (below a resume's iteration: at its mean rate)."""
    if self.max_iters < self.start_iter:
      return self.start_tokens * self.max_iters // self.start_iter
    return self.start_tokens + self.tokens_per_iter * (self.max_iters - self.start_iter)

  @property
  def epochs(self) -> float | None:
    return None if not self.train_tokens else self.tokens / self.train_tokens

  @property
  def tokens_per_param(self) -> float:
    return self.tokens / self.n_params

  @property
  def flops(self) -> float:
    return self.flops_per_token * self.tokens

  def mfu(self, tokens_per_sec: float) -> float | None:
    return mfu(tokens_per_sec, self.flops_per_token, self.peak_flops, self.n_devices)


def flops_per_token(n_params: int, n_layer: int, n_head: int, n_embd: int,
                    block_size: int) -> float:
  """Training FLOPs per token, nanoGPT's 6N + 12*L*H*Q*T (N: model.count_params).

  Norms, rotary positions, activations and the soft-cap are elementwise and
  left out, as nanoGPT leaves out LayerNorm and GELU.
  """
  return 6 * n_params + 12 * n_layer * n_head * (n_embd // n_head) * block_size


def mfu(tokens_per_sec: float, flops_per_token: float, peak_per_device: float | None,
        n_devices: int) -> float | None:
  """Model FLOPs utilisation as a fraction, or None when the peak is unknown."""
  if peak_per_device is None:
    return None
  return tokens_per_sec * flops_per_token / (peak_per_device * n_devices)


def summarize(config: ml_collections.ConfigDict, *, train_tokens: int | None = None,
              n_devices: int = 1, device_kind: str = "", start_iter: int = 0,
              start_tokens: int = 0) -> Summary:
  """The counts of the model `config` describes, from shapes alone (nothing allocated).

  `device_kind` names the accelerator for MFU (gpus.py); config.peak_flops overrides it. A
  resume gives its iteration and the tokens trained on before it.
  """
  step = train_step.StepConfig.from_config(config)
  shapes = train_step.build(step).abstract_state.params
  n_params = count_params(shapes)
  return Summary(n_params=n_params, n_params_total=count_params(shapes, non_embedding=False),
                 tokens_per_iter=step.tokens_per_iter(n_devices),
                 max_iters=config.max_iters,
                 flops_per_token=flops_per_token(n_params, config.n_layer, config.n_head,
                                                 config.n_embd, config.block_size),
                 train_tokens=train_tokens,
                 schedule=schedule(step.optim, config.max_iters),
                 n_devices=n_devices, peak_flops=gpus.peak_flops(device_kind, config.peak_flops),
                 start_iter=start_iter, start_tokens=start_tokens)


def stated_sizes(name: str) -> list[tuple[str, float]]:
  """The model sizes a name states, as (text, parameters): "gpt2_124m" -> [("124m", 124e6)]."""
  scale = {"m": 1e6, "b": 1e9}
  return [(m.group(0), float(m.group(1)) * scale[m.group(2).lower()])
          for m in _SIZE_RE.finditer(name)]


def check(config: ml_collections.ConfigDict, s: Summary, *, config_file: str = "",
          device: jax.Device | None = None, trains: bool = True) -> list[str]:
  """Warnings for a config that likely trains something other than what its author meant
  (`config_file`: the recipe's file, whose name may state a size), or on `device` (the run's
  jax.Device) slower than its author meant; those of the schedule and epochs only where it
  `trains`."""
  found = []
  gpu = attention.capability(device) if device is not None else None
  if config.dtype == "bfloat16" and gpu is not None and gpu < (8, 0):  # before Ampere
    found.append(f"dtype=bfloat16 on {device.device_kind} (compute capability "
                 f"{gpu[0]}.{gpu[1]}), which has no bfloat16 hardware: XLA computes its matmuls "
                 "in float32, so bfloat16 saves memory there, not time; --config.dtype=float32 "
                 "trains at float32's precision (with twice the activation memory)")
  names = {"config": config_file, "out_dir": config.out_dir}
  if config.wandb_log:
    names["wandb_run_name"] = config.wandb_run_name
  for key, name in names.items():
    stated = stated_sizes(os.path.basename(os.path.normpath(name)) if name else "")
    # One size that fits is the model's: "gpt2_124m_10b" states its tokens too.
    if stated and all(abs(size - s.n_params) > SIZE_TOLERANCE * s.n_params
                      for _, size in stated):
      found.append(f"{key} {name!r} says {' or '.join(text for text, _ in stated)} but the "
                   f"model has {formatting.count(s.n_params)} parameters ({config.n_layer} "
                   f"layers x {config.n_embd} wide); rename it or fix n_layer/n_head/n_embd")
  if trains and config.decay_lr and config.lr_decay_iters != config.max_iters:
    if config.lr_decay_iters < config.max_iters:
      effect = (f"the last {config.max_iters - config.lr_decay_iters:,} iterations run at "
                f"min_lr={config.min_lr:g}")
    else:
      effect = (f"the {config.lr_schedule} decay is cut off before it reaches "
                f"min_lr={config.min_lr:g}")
    found.append(f"lr_decay_iters={config.lr_decay_iters:,} differs from "
                 f"max_iters={config.max_iters:,}: {effect}")
  if trains and config.decay_lr and config.warmup_iters > MAX_WARMUP_FRACTION * config.max_iters:
    share = config.warmup_iters / max(config.max_iters, 1)
    found.append(f"warmup_iters={config.warmup_iters:,} is {share:.0%} of "
                 f"max_iters={config.max_iters:,} (more than {MAX_WARMUP_FRACTION:.0%})")
  if config.sharding == "fsdp" and s.n_devices > 1 and not any(  # a matrix split over them
      sharding.leaf_spec(x.shape, s.n_devices, "fsdp") for x in jax.tree.leaves(
          train_step.build(train_step.StepConfig.from_config(config)).abstract_state.params)):
    found.append(f"sharding=fsdp splits no matrix over {s.n_devices} devices ({s.n_devices} "
                 "divides none of their dimensions): each keeps the whole state, as under dp, "
                 "and sends more; use sharding=dp, or a device count that divides n_embd")
  if trains and s.epochs is not None and s.epochs > MAX_EPOCHS:
    found.append(f"{s.epochs:.1f} epochs over a train split of "
                 f"{formatting.count(s.train_tokens)} tokens (more than {MAX_EPOCHS:g}): the "
                 "model will memorise it; use more data or fewer max_iters")
  return found


def describe(s: Summary, layout: sharding.BatchLayout) -> list[str]:
  """The summary in four lines, for the launch log; tokens per iteration as `layout` makes them."""
  epochs = ("epochs unknown" if s.epochs is None else
            f"{s.epochs:.2f} epochs of {formatting.count(s.train_tokens)} train tokens")
  return [
      (f"parameters: {formatting.count(s.n_params)} (nanoGPT's count, without lookup-only "
       f"embeddings; {formatting.count(s.n_params_total)} in all)"),
      (f"tokens per iteration: {s.tokens_per_iter:,} ({layout.accum_steps} accum x "
       f"{layout.batch_size} batch x {layout.n_devices} device(s) x {layout.block_size} block); "
       f"max_iters={s.max_iters:,} -> {formatting.count(s.tokens)} tokens"),
      (f"{epochs}; {ratio(s.tokens_per_param)} tokens per parameter "
       f"(Chinchilla ~{CHINCHILLA_TOKENS_PER_PARAM}); {s.flops:.3g} FLOPs"),
      s.schedule,
  ]


def schedule(o: optim.OptimConfig, max_iters: int) -> str:
  """The learning-rate schedule as the run will follow it (recipes tie it to max_iters)."""
  muon = ""
  if o.optimizer == "muon":
    momentum = (f"{o.muon_momentum_start:g} to {o.muon_momentum:g} over "
                f"{o.muon_momentum_warmup_iters:,} iterations" if o.muon_momentum_warmup_iters
                else f"{o.muon_momentum:g}")
    muon = (f"; Muon's matrices at {o.muon_learning_rate:g} on the same schedule, momentum "
            f"{momentum}")
  if not o.decay_lr:
    return f"learning rate: constant {o.learning_rate:g}{muon}"
  if o.lr_schedule == "wsd":
    decay = (f"held until iteration {optim.decay_start(o):,.0f}, then linear to "
             f"{o.min_lr:g} at iteration {o.lr_decay_iters:,}")
  else:
    decay = f"cosine to {o.min_lr:g} at iteration {o.lr_decay_iters:,}"
  return (f"learning rate: warmup over {formatting.plural(o.warmup_iters, 'iteration')} to "
          f"{o.learning_rate:g}, {decay} (max_iters={max_iters:,}){muon}")


def eta(iters_left: int, tokens_per_iter: int, tokens_per_sec: float,
        mfu_value: float | None) -> str:
  """The time to finish at a measured throughput, logged once the first steps are timed."""
  seconds = iters_left * tokens_per_iter / tokens_per_sec
  # Of the card's bf16 peak, as nanoGPT's MFU (312 TFLOP/s, an A100's): a float32 run's reads
  # about half as high (TF32 matmuls), however well it runs.
  mfu_text = "" if mfu_value is None else f", MFU {mfu_value:.1%} of the bf16 peak"
  return (f"estimated time to finish: {formatting.duration(seconds)} of training at "
          f"{tokens_per_sec:,.0f} tok/s{mfu_text} (evaluation time not included)")


def ratio(x: float) -> str:
  return f"{x:,.1f}" if x >= 1 else f"{x:.2g}"
