"""python -m jaxgpt.plan: what a config will train, for how long, whether it fits a card.

  python -m jaxgpt.plan --config=configs/fineweb_40m.py [--max_iters=6000,10000,20000]
      [--train_tokens=3.68B] [--tokens_per_sec=N | --device="RTX 4070" [--mfu=0.4]]

prints, per candidate max_iters, the tokens seen, epochs over the train split,
tokens per parameter (Chinchilla ~20), FLOPs and the time at a throughput;
the run logs the same summary and its warnings at launch (summary.py). With
--device it compiles the train step for that GPU (with JAX's CUDA plugin, on
any machine) and says whether XLA's plan fits the card, and which layout of
the same tokens per iteration fits when it does not (memory.py).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import sys
from typing import Any

import jax
from absl import flags
from ml_collections import config_flags

from jaxgpt import cli, data, defaults, formatting, model, report, run_dir, summary, train_step
from jaxgpt.errors import UserError
from jaxgpt.interop import weights
from jaxgpt.plan import iters, memory, targets

# What sets one device's speed: a rate measured with other values is not this run's.
_STEP_KEYS = (*(field.name for field in dataclasses.fields(model.GPTConfig)), "batch_size",
              "sharding")


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file.",
                                  lock_config=True)
  flags.DEFINE_list("max_iters", [], "Candidate max_iters, comma-separated (default: the "
                    "config's, Chinchilla's and the data's limit). lr_decay_iters follows each.")
  flags.DEFINE_float("tokens_per_sec", None, lower_bound=0,
                     help="Throughput for the time column (default: the median measured in the "
                     "config's out_dir/metrics.jsonl).")
  flags.DEFINE_string("train_tokens", None, "Tokens in the train split, e.g. 3.68B (default: "
                      "counted from the shards, or meta.json, in the config's data dir).")
  flags.DEFINE_integer("devices", 1, lower_bound=1,
                       help="GPUs in the run: tokens per iteration grow with them, and --device "
                       "compiles the step for that many (config.sharding).")
  flags.DEFINE_string("device", "", "A GPU, e.g. 'RTX 4070' or 'H100': the train step is "
                      "compiled for it (with JAX's CUDA plugin; no GPU needed) to say whether "
                      "it fits, and, without a throughput measured on a card of its peak, its "
                      "time is estimated at --mfu of its peak bf16 FLOP/s.")
  flags.DEFINE_float("mfu", 0.4, lower_bound=0, upper_bound=1,
                     help="--device: the model FLOPs utilisation the estimate assumes.")
  flags.DEFINE_float("peak_flops", 0.0, lower_bound=0,
                     help="--device: its peak FLOP/s, where the table lacks it.")
  flags.DEFINE_float("memory_gib", 0.0, lower_bound=0,
                     help="Check the step against a card of this much memory with the CPU's "
                     "estimate (without it: --device's plan, compiled for it).")
  for name in ("tokens_per_sec", "mfu", "peak_flops", "memory_gib"):
    flags.register_validator(name, lambda v: v is None or math.isfinite(v),
                             "must be a finite number")
  flags.register_validator("peak_flops", defaults.peak_flops_ok,
                           defaults.PEAK_FLOPS_RULE)
  for name in ("tokens_per_sec", "mfu"):  # 0 would be no throughput at all
    flags.register_validator(name, lambda v: v is None or v > 0, "must be above 0")
  flags.mark_flags_as_required(["config"])


def _throughput(f: flags.FlagValues, out_dir: str, config_peak_flops: float,
                flops_per_token: float, n_devices: int, step: dict[str, Any]
                ) -> tuple[float | None, str]:
  """tokens/s for the time column, and where it comes from; --device's peak is --peak_flops,
  else the config's peak_flops (as the run's MFU takes it), else the table's."""
  if f.tokens_per_sec:
    return f.tokens_per_sec, f"{f.tokens_per_sec:,.0f} tok/s, as given"
  card = targets.card(f.device) if f.device else None
  table_peak = card.peak_flops if card else None
  # The estimate takes the run's peak (the config's, as its MFU does) before the table's; a
  # measured run is held to the card --device names, whose own peak comes first.
  estimate_peak = f.peak_flops or config_peak_flops or table_peak
  device_peak = (f.peak_flops or (table_peak if card else config_peak_flops)) if f.device else None
  tok_s, measured = _measured(out_dir, step, n_devices, flops_per_token, device_peak)
  if tok_s:
    return tok_s, measured
  if f.device:
    if not estimate_peak:
      raise UserError(f"--device={f.device!r}: its peak FLOP/s is not in the table; give it "
                      "with --peak_flops")
    tok_s = estimate_peak * f.mfu * n_devices / flops_per_token
    # The MFU and peak as given (0.004 is 0.4%, not '0%'): the figures this time comes from.
    return tok_s, (f"{tok_s:,.0f} tok/s, estimated for {n_devices} x {f.device} at "
                   f"{100 * f.mfu:g}% MFU of {estimate_peak / 1e12:,.6g} TFLOP/s (an assumption, "
                   f"not a measurement; {measured})")
  return None, f"unknown ({measured}; --tokens_per_sec or --device sets it)"


def _measured(out_dir: str, step: dict[str, Any], n_devices: int, flops_per_token: float,
              device_peak: float | None) -> tuple[float | None, str]:
  """The median tokens/s of the run in out_dir, for n_devices, and where it comes from; None,
  and why, where none was measured, that run's step differs from `step`, whose keys (the
  model, each device's micro-batch, the sharding) set the speed of one device, or, given
  --device's peak FLOP/s, the run's MFU says it ran on a card of another peak."""
  rundir = run_dir.RunDir(out_dir)
  if not os.path.isfile(rundir.metrics_path):
    return None, f"none measured in {rundir.metrics_path}"
  ran = rundir.read_config()
  if ran is not None:
    ran = defaults.with_defaults(ran)
    changed = [f"{k}={ran[k]!r} there, {v!r} here" for k, v in step.items()
               if ran[k] != v and (k, v) != ("attention", "auto")]  # a run saves what auto ran
    if changed:
      return None, (f"the run measured in {rundir.metrics_path} ran another step: "
                    f"{', '.join(changed)}")
  train_records = report.load(out_dir, {"train": ("tokens",)})["train"]
  if not train_records:
    return None, f"none measured in {rundir.metrics_path}"
  records, tokens_per_iter = report.last_layout(train_records)
  if not records:
    return None, f"none measured in {rundir.metrics_path} since a resume on another layout"
  medians = report.median_throughput(records)
  measured, ran_on = medians["tokens_per_sec"], iters.measured_devices(ran, tokens_per_iter)
  if not measured:
    return None, f"none measured in {rundir.metrics_path}"
  if device_peak:
    elsewhere = _another_card(measured, medians["mfu"], flops_per_token, ran_on, device_peak)
    if elsewhere:
      return None, f"the run measured in {rundir.metrics_path} ran {elsewhere}"
  return _scaled(measured, ran_on, n_devices, rundir.metrics_path)


def _another_card(tokens_per_sec: float, mfu: float | None, flops_per_token: float,
                  ran_on: int | None, device_peak: float) -> str:
  """Why a measured rate is not --device's, or '': the run's MFU divided its FLOP/s by its
  card's peak, so it gives that peak back (none where the run knew no peak: a CPU's)."""
  if not mfu:
    return "on a device of unknown peak FLOP/s (a CPU, say), not --device's card"
  if ran_on is None:
    return "on an unknown number of devices, whose card cannot be told from its MFU"
  peak = tokens_per_sec * flops_per_token / (mfu * ran_on)
  if math.isclose(peak, device_peak, rel_tol=0.01):
    return ""
  return (f"on a card of {peak / 1e12:,.0f} TFLOP/s peak (from its MFU), not --device's "
          f"{device_peak / 1e12:,.0f}")


def _scaled(measured: float, ran_on: int | None, n_devices: int, metrics_path: str
            ) -> tuple[float, str]:
  """A measured rate for --devices: times n_devices / the devices it was measured on (each
  device keeping its rate), or as measured where that count is unknown, said so."""
  if ran_on is None:
    return measured, (f"{measured:,.0f} tok/s, measured in {metrics_path} on an unknown number "
                      "of devices: the time is at the measured run's rate, --devices does not "
                      "scale it")
  rate = measured * n_devices / ran_on
  where = f"measured in {metrics_path} on {ran_on} device(s)"
  if ran_on == n_devices:  # the figure once
    return rate, f"{rate:,.0f} tok/s, {where}"
  return rate, f"{rate:,.0f} tok/s: {measured:,.0f} {where}, scaled to --devices={n_devices}"


def _refuse_estimate_flags_without_device(f: flags.FlagValues) -> None:
  """--mfu and --peak_flops shape --device's estimate alone: without it they would be
  ignored, the time 'unknown' whatever they said."""
  unread = [f"--{name}" for name in ("mfu", "peak_flops") if f[name].present]
  if unread and not f.device:
    raise UserError(f"{', '.join(unread)}: read with --device alone (the estimate of its time); "
                    f"add --device=CARD, or drop {'it' if len(unread) == 1 else 'them'}")


def _train_tokens(f: flags.FlagValues, data_dir: str, block_size: int
                  ) -> tuple[int | None, str | None]:
  """(tokens of one pass over the train split, the folder they were counted in): --train_tokens
  where given (counted in none), else counted in `data_dir` as the launch log counts them."""
  if not f.train_tokens:
    return iters.count_train_tokens(data_dir, block_size), data_dir
  try:
    train_tokens = formatting.parse_count(f.train_tokens)
  except ValueError as e:
    raise UserError(f"--train_tokens: {e}") from None
  if train_tokens <= 0:
    raise UserError(f"--train_tokens={f.train_tokens}: the train split holds tokens (> 0)")
  return train_tokens, None


def _weights_architecture(init_from: str, hf_checkpoint_dir: str, cfg: model.GPTConfig
                          ) -> dict[str, Any]:
  """The architecture a run from GPT-2's or a nanoGPT run's weights takes from them (launch.py's
  `weights.for_training`), so the plan is of that model; what launch.py refuses, refused."""
  if init_from in ("scratch", "resume"):
    return {}
  weights.refuse_departures(init_from, cfg)
  if init_from.startswith(defaults.NANOGPT) and importlib.util.find_spec("torch") is None:
    print(f"plan: init_from={init_from}: its architecture is not read here (a ckpt.pt needs "
          "PyTorch: pip install torch); this plan is of the config's, which the run replaces "
          "with the checkpoint's")
    return {}
  return weights.architecture(init_from, hf_checkpoint_dir, cfg.block_size)


def main() -> None:
  jax.config.update("jax_platforms", "cpu")  # compiles for a GPU happen without one
  f = flags.FLAGS
  config, n_devices = f.config, f.devices
  defaults.validate(config)  # a mistyped key is one error, as launch.py says it
  _refuse_estimate_flags_without_device(f)
  if f.device and targets.card(f.device) is None and not (
      f.peak_flops or config.peak_flops or f.memory_gib):  # a typo, whatever gives the rate
    raise UserError(f"--device={f.device!r}: not a card jaxgpt knows (jaxgpt/gpus.py); for "
                    "another, give its --peak_flops and --memory_gib")
  arch = _weights_architecture(config.init_from, config.hf_checkpoint_dir,
                               model.GPTConfig.from_config(config))
  changed = {k: v for k, v in arch.items() if config[k] != v}
  if changed:
    print(f"plan: init_from={config.init_from}: the architecture of its weights, as the run "
          f"takes it: {', '.join(f'{k}={v}' for k, v in changed.items())} (the config had "
          f"{', '.join(str(config[k]) for k in changed)})")
    config = copy.deepcopy(config)  # its references kept: the schedule follows each candidate
    with config.unlocked():
      config.update(changed)
  config_path = config_flags.get_config_filename(f["config"])
  try:
    candidates = list(dict.fromkeys(int(v) for v in f.max_iters))  # each once, as given
  except ValueError:
    candidates = [0]
  if any(n <= 0 for n in candidates):
    raise UserError(f"--max_iters={','.join(f.max_iters)}: candidates are whole numbers > 0, "
                    "comma-separated")
  train_tokens, counted_in = _train_tokens(
      f, data.resolve_data_dir(config.dataset, config.data_dir), config.block_size)
  s = summary.summarize(config, train_tokens=train_tokens, n_devices=n_devices)
  step = {k: config[k] for k in _STEP_KEYS}
  # Before the table: an unknown --device is said first.
  tokens_per_sec, source = _throughput(f, config.out_dir, config.peak_flops, s.flops_per_token,
                                       n_devices, step)
  print(f"{config_path}: {formatting.count(s.n_params)} parameters (nanoGPT's count; "
        f"{formatting.count(s.n_params_total)} in all), {s.tokens_per_iter:,} tokens per "
        "iteration")
  if counted_in is not None:
    found = "unknown" if train_tokens is None else f"{train_tokens:,} tokens"
    print(f"train split: {found} (counted in {counted_in}; --train_tokens sets it)")
  print(f"throughput: {source}")
  suggested, notes = iters.suggestions(s)
  candidates = candidates or suggested
  print(iters.table(config, s, candidates, tokens_per_sec=tokens_per_sec,
                    config_file=config_path))
  for note in notes:
    print(f"note: {note}")
  trainable = [m for m in candidates if iters.candidate(config, m)[1] is None]
  if len(candidates) > 1 and not trainable:
    print("verdict: none of these trains as the config stands (the warnings say why)")
  elif len(candidates) > 1:
    among = "" if len(trainable) == len(candidates) else " (of those launch.py accepts)"
    print(iters.verdict(s, trainable) + among)
  _print_memory(f, train_step.StepConfig.from_config(config), n_devices)


def _print_memory(f: flags.FlagValues, step: train_step.StepConfig, n_devices: int) -> None:
  """XLA's plan of the step compiled for --device where it can be, else the CPU estimate."""
  card = targets.card(f.device) if f.device else None
  memory_gib = f.memory_gib or (card.memory_gib if card else None)
  if f.device and not f.memory_gib and targets.plugin_installed():
    try:
      target = targets.target(f.device)
    except UserError as e:  # a card gpus.py knows, whose target description is not written
      print(f"memory: {e}" + ("; estimated on the CPU instead" if memory_gib else ""))
    else:
      print("\n".join(memory.gpu_report(
          step, target, n_devices,
          progress=lambda line: print(line, file=sys.stderr, flush=True))))
      return
  if memory_gib:
    print("\n".join(memory.cpu_report(step, memory_gib, f.device, n_devices)))
  elif f.device:
    known = "does not say its memory" if card else "is not a card jaxgpt knows"
    print(f"memory: {f.device!r} {known}; --memory_gib sets its memory")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, beside_training=True)
