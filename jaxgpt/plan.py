"""The run plan: what a config trains, for how long, and what in it looks wrong.

`python -m jaxgpt.plan --config=configs/fineweb_40m.py --max_iters=6000,10000,20000
[--tokens_per_sec=N]` prints, per candidate max_iters, the tokens seen, epochs over
the train split, tokens per parameter (Chinchilla ~20), FLOPs and the time at a
throughput; `train` logs the same plan and its warnings at launch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxgpt import cli, data, defaults, flops, optim, run_dir, step, token_files, units
from jaxgpt.errors import UserError
from jaxgpt.model import count_params

CHINCHILLA_TOKENS_PER_PARAM = 20
SIZE_TOLERANCE = 0.25  # a stated model size further than this (relative) from the count is flagged
MAX_WARMUP_FRACTION = 0.1
MAX_EPOCHS = 10.0

# A model size stated in a name: "124m", "40M", "1.5b"; not "fineweb10B" or "bs32m" (no
# boundary before it) nor "10BT" (a letter after it).
_SIZE_RE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([mMbB])(?![A-Za-z0-9])")


@dataclasses.dataclass(frozen=True)
class Plan:
  n_params: int  # nanoGPT's count: the params in matmuls (model.count_params)
  n_params_total: int
  tokens_per_iter: int
  max_iters: int
  flops_per_token: float  # nanoGPT's 6N + 12*L*H*Q*T
  train_tokens: int | None  # tokens in one pass over the train split; None when unknown

  @property
  def tokens(self) -> int:
    return self.tokens_per_iter * self.max_iters

  @property
  def epochs(self) -> float | None:
    return None if not self.train_tokens else self.tokens / self.train_tokens

  @property
  def tokens_per_param(self) -> float:
    return self.tokens / self.n_params

  @property
  def flops(self) -> float:
    return self.flops_per_token * self.tokens

  def hours(self, tokens_per_sec: float) -> float:
    return self.tokens / tokens_per_sec / 3600


def param_counts(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(nanoGPT's count, total) of the model `config` describes, from shapes alone."""
  shapes = step.build(config).abstract_state.params
  return count_params(shapes), count_params(shapes, non_embedding=False)


def make_plan(config: ml_collections.ConfigDict, *, train_tokens: int | None = None,
              n_devices: int = 1) -> Plan:
  n_params, n_total = param_counts(config)
  return Plan(n_params=n_params, n_params_total=n_total,
              tokens_per_iter=defaults.tokens_per_iter(config, n_devices),
              max_iters=config.max_iters, flops_per_token=flops.per_token(n_params, config),
              train_tokens=train_tokens)


def count_train_tokens(data_dir: str) -> int | None:
  """Tokens of the train split: the shards' lengths, else meta.json's count; None without both."""
  paths = token_files.find_shards(data_dir, "train")
  if paths:
    return sum(len(token_files.read_tokens(p)) for p in paths)
  meta = token_files.read_meta(data_dir) or {}
  tokens = meta.get("splits", {}).get("train", {}).get("tokens")
  return int(tokens) if tokens else None


def stated_sizes(name: str) -> list[tuple[str, float]]:
  """The model sizes a name states, as (text, parameters): "gpt2_124m" -> [("124m", 124e6)]."""
  scale = {"m": 1e6, "b": 1e9}
  return [(m.group(0), float(m.group(1)) * scale[m.group(2).lower()])
          for m in _SIZE_RE.finditer(name)]


def check(config: ml_collections.ConfigDict, plan: Plan, *, config_name: str = "") -> list[str]:
  """Warnings for a config that likely trains something other than what its author meant."""
  found = []
  names = {"config": config_name, "out_dir": config.out_dir}
  if config.wandb_log:
    names["wandb_run_name"] = config.wandb_run_name
  for key, name in names.items():
    for text, size in stated_sizes(os.path.basename(os.path.normpath(name)) if name else ""):
      if abs(size - plan.n_params) > SIZE_TOLERANCE * plan.n_params:
        found.append(f"{key} {name!r} says {text} but the model has "
                     f"{units.count(plan.n_params)} parameters ({config.n_layer} layers x "
                     f"{config.n_embd} wide); rename it or fix n_layer/n_head/n_embd")
  if config.decay_lr and config.lr_decay_iters != config.max_iters:
    if config.lr_decay_iters < config.max_iters:
      effect = (f"the last {config.max_iters - config.lr_decay_iters:,} iterations run at "
                f"min_lr={config.min_lr:g}")
    else:
      effect = "the cosine is cut off before it reaches min_lr"
    found.append(f"lr_decay_iters={config.lr_decay_iters:,} differs from "
                 f"max_iters={config.max_iters:,}: {effect}")
  if config.decay_lr and config.warmup_iters > MAX_WARMUP_FRACTION * config.max_iters:
    share = config.warmup_iters / max(config.max_iters, 1)
    found.append(f"warmup_iters={config.warmup_iters:,} is {share:.0%} of "
                 f"max_iters={config.max_iters:,} (more than {MAX_WARMUP_FRACTION:.0%})")
  if plan.epochs is not None and plan.epochs > MAX_EPOCHS:
    found.append(f"{plan.epochs:.1f} epochs over a train split of "
                 f"{units.count(plan.train_tokens)} tokens (more than {MAX_EPOCHS:g}): the model "
                 "will memorise it; use more data or fewer max_iters")
  return found


def describe(config: ml_collections.ConfigDict, plan: Plan, n_devices: int = 1) -> list[str]:
  """The plan in four lines, for the launch log."""
  lines = [
      (f"parameters: {units.count(plan.n_params)} (nanoGPT's count, without lookup-only "
       f"embeddings; {units.count(plan.n_params_total)} in all)"),
      (f"tokens per iteration: {plan.tokens_per_iter:,} ({config.gradient_accumulation_steps} "
      f"accum x {config.batch_size} batch x {n_devices} device(s) x {config.block_size} block); "
      f"max_iters={plan.max_iters:,} -> {units.count(plan.tokens)} tokens"),
  ]
  epochs = ("epochs unknown" if plan.epochs is None else
            f"{plan.epochs:.2f} epochs of {units.count(plan.train_tokens)} train tokens")
  lines.append(f"{epochs}; {_ratio(plan.tokens_per_param)} tokens per parameter "
               f"(Chinchilla ~{CHINCHILLA_TOKENS_PER_PARAM}); {plan.flops:.3g} FLOPs")
  lines.append(schedule(config))
  return lines


def schedule(config: ml_collections.ConfigDict) -> str:
  """The learning-rate schedule as the run will follow it (recipes tie it to max_iters)."""
  muon = ""
  if config.optimizer == "muon":
    muon = (f"; Muon's matrices at {config.muon_learning_rate:g} on the same schedule, momentum "
            f"{config.muon_momentum_start:g} to {config.muon_momentum:g} over "
            f"{config.muon_momentum_warmup_iters:,} iterations")
  if not config.decay_lr:
    return f"learning rate: constant {config.learning_rate:g}{muon}"
  if config.lr_schedule == "wsd":
    decay = (f"held until iteration {optim.decay_start(config):,.0f}, then linear to "
             f"{config.min_lr:g} at iteration {config.lr_decay_iters:,}")
  else:
    decay = f"cosine to {config.min_lr:g} at iteration {config.lr_decay_iters:,}"
  return (f"learning rate: warmup over {config.warmup_iters:,} iterations to "
          f"{config.learning_rate:g}, {decay} (max_iters={config.max_iters:,}){muon}")


def log_launch(config: ml_collections.ConfigDict, train_tokens: int | None,
               n_devices: int = 1) -> Plan:
  """Logs the plan and its warnings at the start of a run; returns the plan."""
  plan = make_plan(config, train_tokens=train_tokens, n_devices=n_devices)
  for line in describe(config, plan, n_devices):
    logging.info("plan: %s", line)
  for warning in check(config, plan):
    logging.warning("plan: %s", warning)
  return plan


def eta_message(plan: Plan, iters_done: int, tokens_per_sec: float, mfu: float | None) -> str:
  """The time to finish at a measured throughput, logged once the first steps are timed."""
  seconds = (plan.max_iters - iters_done) * plan.tokens_per_iter / tokens_per_sec
  mfu_text = "MFU n/a (peak FLOP/s unknown: set peak_flops)" if mfu is None else f"MFU {mfu:.1%}"
  return (f"estimated time to finish: {units.duration(seconds)} of training at "
          f"{tokens_per_sec:,.0f} tok/s, {mfu_text} (evaluation time not included)")


def _ratio(x: float) -> str:
  return f"{x:,.1f}" if x >= 1 else f"{x:.2g}"


def table(config: ml_collections.ConfigDict, candidates: list[int], *,
          train_tokens: int | None, tokens_per_sec: float | None,
          n_devices: int = 1, config_name: str = "") -> str:
  """One row per candidate max_iters (lr_decay_iters following it), then its warnings."""
  base = make_plan(config, train_tokens=train_tokens, n_devices=n_devices)
  rows = [(f"{'max_iters':>10} {'tokens':>9} {'epochs':>7} {'tok/param':>9} {'FLOPs':>9} "
          f"{'time':>8}")]
  warnings = []
  for max_iters in candidates:
    c = copy.deepcopy(config)  # keeps the recipe's ties: its warmup may follow max_iters
    with c.unlocked():
      c.max_iters = c.lr_decay_iters = max_iters
    plan = dataclasses.replace(base, max_iters=max_iters)
    epochs = "?" if plan.epochs is None else f"{plan.epochs:.2f}"
    time_text = "?" if not tokens_per_sec else units.duration(plan.hours(tokens_per_sec) * 3600)
    rows.append(f"{max_iters:>10,} {units.count(plan.tokens):>9} {epochs:>7} "
                f"{_ratio(plan.tokens_per_param):>9} {plan.flops:>9.2e} {time_text:>8}")
    warnings += [f"max_iters={max_iters:,}: {w}" for w in check(c, plan, config_name=config_name)]
  return "\n".join(rows + [f"warning: {w}" for w in warnings])


MAX_USEFUL_EPOCHS = 4  # repeated tokens pay nearly as much as new ones up to ~4 epochs
GiB = 2**30


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
  setup = step.build(config)
  batch = jax.ShapeDtypeStruct((config.gradient_accumulation_steps, config.batch_size,
                                config.block_size + 1), np.uint16)
  compiled = step.make_train_step(setup.model, setup.tx).lower(setup.abstract_state,
                                                               batch).compile()
  m = compiled.memory_analysis()
  needed = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)
  T = config.block_size
  scores = sum(leaf.size * leaf.dtype.itemsize for leaf in step.backward_residuals(config)
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


def suggestions(config: ml_collections.ConfigDict, train_tokens: int | None,
                n_devices: int = 1) -> tuple[list[int], list[str]]:
  """The max_iters worth comparing, and why: the recipe's own, Chinchilla's, the data's limit.

  Chinchilla's ~20 tokens per parameter is the compute-optimal point; a small
  model keeps improving well past it, as long as there is data. Repeating
  data pays nearly as much as new data for up to ~4 epochs and little after
  (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models").
  """
  base = make_plan(config, train_tokens=train_tokens, n_devices=n_devices)
  chinchilla = math.ceil(CHINCHILLA_TOKENS_PER_PARAM * base.n_params / base.tokens_per_iter)
  candidates = {config.max_iters, chinchilla}
  notes = [(f"max_iters={chinchilla:,} gives ~{CHINCHILLA_TOKENS_PER_PARAM} tokens per "
            "parameter (compute-optimal); a small model keeps improving past it while there is "
            "new data")]
  if train_tokens:
    limit = MAX_USEFUL_EPOCHS * train_tokens // base.tokens_per_iter
    candidates.add(limit)
    notes.append(f"max_iters={limit:,} is {MAX_USEFUL_EPOCHS} epochs of the "
                 f"{units.count(train_tokens)} train tokens: up to there repeated tokens pay "
                 "nearly as much as new ones, past it they stop paying (more data helps more)")
  return sorted(candidates), notes


def _define_flags() -> None:
  """CLI flags, defined only when run as a program: train imports this module under launch.py."""
  config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file.",
                                  lock_config=True)
  flags.DEFINE_list("max_iters", [], "Candidate max_iters, comma-separated (default: the "
                    "config's, Chinchilla's and the data's limit). lr_decay_iters follows each.")
  flags.DEFINE_float("tokens_per_sec", None, "Throughput for the time column (default: the "
                     "median measured in the config's out_dir/metrics.jsonl).")
  flags.DEFINE_string("train_tokens", None, "Tokens in the train split, e.g. 3.68B (default: "
                      "counted from the shards, or meta.json, in the config's data dir).")
  flags.DEFINE_integer("devices", 1, "Data-parallel devices (tokens per iteration grow with them).")
  flags.DEFINE_string("device", "", "Without a measured throughput, estimate it for this GPU "
                      "(e.g. 'H100'): its peak bf16 FLOP/s at --mfu.")
  flags.DEFINE_float("mfu", 0.4, "--device: the model FLOPs utilisation the estimate assumes.")
  flags.DEFINE_float("peak_flops", 0.0, "--device: its peak FLOP/s, where the table lacks it.")
  flags.DEFINE_float("memory_gib", 0.0, "Check that the train step fits a card of this much "
                     "memory (default: --device's, where its name says it).")
  flags.mark_flags_as_required(["config"])


def _throughput(f: flags.FlagValues, config: ml_collections.ConfigDict,
                n_devices: int) -> tuple[float | None, str]:
  """tokens/s for the time column, and where it comes from."""
  if f.tokens_per_sec:
    return f.tokens_per_sec, f"{f.tokens_per_sec:,.0f} tok/s, as given"
  run = run_dir.RunDir(config.out_dir)
  if os.path.isfile(run.metrics_path):
    measured = run_dir.median_throughput(run.read_metrics()["train"])["tokens_per_sec"]
    if measured:
      return measured, f"{measured:,.0f} tok/s, measured in {run.metrics_path}"
  if f.device:
    peak = flops.peak(f.device, f.peak_flops)
    if peak is None:
      raise UserError(f"--device={f.device!r}: its peak FLOP/s is not in the table; give it "
                      "with --peak_flops")
    tok_s = peak * f.mfu * n_devices / make_plan(config, n_devices=n_devices).flops_per_token
    return tok_s, (f"{tok_s:,.0f} tok/s, estimated for {n_devices} x {f.device} at "
                   f"{f.mfu:.0%} MFU of {peak / 1e12:,.0f} TFLOP/s (an assumption, not a "
                   "measurement)")
  return None, (f"unknown (none measured in {run.metrics_path}; --tokens_per_sec or --device "
                "sets it)")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  config, n_devices = f.config, f.devices
  config_path = config_flags.get_config_filename(f["config"])
  n_params, n_total = param_counts(config)
  print(f"{config_path}: {units.count(n_params)} parameters (nanoGPT's count; "
        f"{units.count(n_total)} in all), {defaults.tokens_per_iter(config, n_devices):,} "
        f"tokens per iteration")
  if f.train_tokens:
    try:
      train_tokens = units.parse_count(f.train_tokens)
    except ValueError as e:
      raise app.UsageError(f"--train_tokens: {e}") from None
  else:
    data_dir = data.resolve_data_dir(config.dataset, config.data_dir)
    train_tokens = count_train_tokens(data_dir)
    found = "unknown" if train_tokens is None else f"{train_tokens:,} tokens"
    print(f"train split: {found} (counted in {data_dir}; --train_tokens sets it)")
  tokens_per_sec, source = _throughput(f, config, n_devices)
  print(f"throughput: {source}")
  try:
    candidates = [int(v) for v in f.max_iters]
  except ValueError as e:
    raise app.UsageError(f"--max_iters={','.join(f.max_iters)}: {e}") from e
  suggested, notes = suggestions(config, train_tokens, n_devices)
  name = os.path.splitext(os.path.basename(config_path))[0]
  print(table(config, candidates or suggested, train_tokens=train_tokens,
              tokens_per_sec=tokens_per_sec, n_devices=n_devices, config_name=name))
  for note in notes:
    print(f"note: {note}")
  memory = f.memory_gib or (flops.memory_gib(f.device) if f.device else None)
  if memory:
    print("\n".join(fit_report(config, memory, f.device)))
  elif f.device:
    print(f"memory: {f.device!r} does not say its memory; --memory_gib sets it")


USABLE_FRACTION = 0.9  # of a card's memory, past the CUDA context and the allocator's slack


def runs_flash_attention(config: ml_collections.ConfigDict, device: str) -> bool:
  """Whether a named NVIDIA card (or any, unnamed) runs cuDNN's attention for this config.

  Every NVIDIA card of the peak table is of compute capability 8.0 or more.
  """
  head_size = config.n_embd // config.n_head
  return (config.attention != "xla" and "TPU" not in device.upper()
          and config.dtype in ("bfloat16", "float16") and head_size % 8 == 0
          and head_size <= 128)


def fit_report(config: ml_collections.ConfigDict, memory_gib: float,
               device: str = "") -> list[str]:
  """Whether the train step fits a card, and if not, what fits at the same tokens per step."""
  estimate = memory_estimate(config)
  flash = runs_flash_attention(config, device)
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


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
