"""The run plan: what a config trains, for how long, and what in it looks wrong.

`python -m jaxgpt.plan --config=configs/fineweb_40m.py --max_iters=6000,10000,20000
[--tokens_per_sec=N]` prints, per candidate max_iters, the tokens seen, epochs over
the train split, tokens per parameter (Chinchilla ~20), FLOPs and the time at a
throughput; `train` logs the same plan and its warnings at launch.
"""

from __future__ import annotations

import dataclasses
import os
import re

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxgpt import data, defaults, flops, run_dir, step, token_files, units
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
  n_params: int  # nanoGPT's count: without position embeddings
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
  """The plan in three lines, for the launch log."""
  lines = [
      (f"parameters: {units.count(plan.n_params)} (nanoGPT's count, without position "
       f"embeddings; {units.count(plan.n_params_total)} in all)"),
      (f"tokens per iteration: {plan.tokens_per_iter:,} ({config.gradient_accumulation_steps} "
      f"accum x {config.batch_size} batch x {n_devices} device(s) x {config.block_size} block); "
      f"max_iters={plan.max_iters:,} -> {units.count(plan.tokens)} tokens"),
  ]
  epochs = ("epochs unknown" if plan.epochs is None else
            f"{plan.epochs:.2f} epochs of {units.count(plan.train_tokens)} train tokens")
  lines.append(f"{epochs}; {_ratio(plan.tokens_per_param)} tokens per parameter "
               f"(Chinchilla ~{CHINCHILLA_TOKENS_PER_PARAM}); {plan.flops:.3g} FLOPs")
  return lines


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
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.max_iters = c.lr_decay_iters = max_iters
    plan = dataclasses.replace(base, max_iters=max_iters)
    epochs = "?" if plan.epochs is None else f"{plan.epochs:.2f}"
    time_text = "?" if not tokens_per_sec else units.duration(plan.hours(tokens_per_sec) * 3600)
    rows.append(f"{max_iters:>10,} {units.count(plan.tokens):>9} {epochs:>7} "
                f"{_ratio(plan.tokens_per_param):>9} {plan.flops:>9.2e} {time_text:>8}")
    warnings += [f"max_iters={max_iters:,}: {w}" for w in check(c, plan, config_name=config_name)]
  return "\n".join(rows + [f"warning: {w}" for w in warnings])


def _define_flags() -> None:
  """CLI flags, defined only when run as a program: train imports this module under launch.py."""
  config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file.",
                                  lock_config=True)
  flags.DEFINE_list("max_iters", [], "Candidate max_iters, comma-separated (default: the "
                    "config's). lr_decay_iters follows each.")
  flags.DEFINE_float("tokens_per_sec", None, "Throughput for the time column (default: the "
                     "median measured in the config's out_dir/metrics.jsonl).")
  flags.DEFINE_integer("train_tokens", None, "Tokens in the train split (default: counted from "
                       "the shards, or meta.json, in the config's data dir).")
  flags.DEFINE_integer("devices", 1, "Data-parallel devices (tokens per iteration grow with them).")
  flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  config, n_devices = FLAGS.config, FLAGS.devices
  config_path = config_flags.get_config_filename(FLAGS["config"])
  try:
    candidates = [int(v) for v in FLAGS.max_iters] or [config.max_iters]
  except ValueError as e:
    raise app.UsageError(f"--max_iters={','.join(FLAGS.max_iters)}: {e}") from e

  n_params, n_total = param_counts(config)
  print(f"{config_path}: {units.count(n_params)} parameters (nanoGPT's count; "
        f"{units.count(n_total)} in all), {defaults.tokens_per_iter(config, n_devices):,} "
        f"tokens per iteration; Chinchilla-optimal is ~{CHINCHILLA_TOKENS_PER_PARAM} tokens "
        "per parameter")

  train_tokens = FLAGS.train_tokens
  if train_tokens is None:
    data_dir = data.resolve_data_dir(config.dataset, config.data_dir)
    train_tokens = count_train_tokens(data_dir)
    found = "unknown" if train_tokens is None else f"{train_tokens:,} tokens"
    print(f"train split: {found} (counted in {data_dir}; --train_tokens sets it)")

  tokens_per_sec = FLAGS.tokens_per_sec
  if tokens_per_sec is None:
    run = run_dir.RunDir(config.out_dir)
    path = run.metrics_path
    if os.path.isfile(path):
      train_logs = run.read_metrics()["train"]
      tokens_per_sec = run_dir.median_throughput(train_logs)["tokens_per_sec"]
    print("throughput: " + (f"{tokens_per_sec:,.0f} tok/s, measured in {path}" if tokens_per_sec
                            else f"unknown (none measured in {path}; --tokens_per_sec sets it)"))
  name = os.path.splitext(os.path.basename(config_path))[0]
  print(table(config, candidates, train_tokens=train_tokens, tokens_per_sec=tokens_per_sec,
              n_devices=n_devices, config_name=name))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
