"""python -m jaxgpt.bench: speed and memory of the train step, and of decoding.

  python -m jaxgpt.bench --config=configs/gpt2_124m.py [--config.KEY=VALUE ...]
      [--iters=50] [--warmup=5] [--data_workers=2] [--peer=torch] [--peak_flops=FLOP/s]
      [--out=PATH] [--profile=DIR]
  python -m jaxgpt.bench --config=... --memory        # kept for the backward pass, per remat
  python -m jaxgpt.bench --config=... --collectives   # dp vs fsdp memory and traffic
  python -m jaxgpt.bench --config=... --checkpoint    # step time during an async save
  python -m jaxgpt.bench --config=... --decode        # sampling tokens/s, cache vs recompute
  python -m jaxgpt.bench --gpu_report [--nogpu_tests]  # a first GPU run: tests, rows, memory
  python -m jaxgpt.bench --compare_recipes [--variants=nanogpt,modern | --ablation]
      [--lr_scales=0.5,1,2] [--compare_iters=250] [--compare_data=python_docs|DIR]
      [--out=out/compare_recipes]                    # nanoGPT vs modern recipe: loss, speed

The default prints a summary and one JSON line of every figure (appended to
--out too); the other modes print their own table and JSON lines. A flag the
chosen mode does not read is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any

import jax
from absl import flags, logging
from ml_collections import config_flags

from jaxgpt import attention, cli, defaults, train_step
from jaxgpt.bench import collectives, decode, gpu_report, memory, recipes, save_overhead, throughput
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig

GiB = 2**30
# Each mode answers another question than the default's (the train step's speed).
MODES = {
    "checkpoint": "Time steps with and without an asynchronous checkpoint save in flight.",
    "memory": ("Print the activations one micro-batch keeps for its backward pass under each "
               "remat policy, with the loss in chunks and whole (no device needed: counted "
               "from the program)."),
    "collectives": ("Compile the step for every device under dp and fsdp and report "
                    "per-device memory and the bytes its collectives move (run with simulated "
                    "devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                    "JAX_PLATFORMS=cpu)."),
    "decode": ("Measure sampling tokens/s of the config's model (randomly initialised), with "
               "the KV cache and recomputing the context per token."),
    "gpu_report": ("Run the GPU tests, the benchmark rows of both recipes and the memory "
                   "check, and write one markdown page."),
    "compare_recipes": ("Train the nanoGPT recipe and modern variants of it at a 4-layer, "
                        "256-wide size, block 256, on the same data; write their loss curves "
                        "and a table of val loss, tokens to the baseline's final val loss, and "
                        "step time."),
}
CONFIGLESS_MODES = ("gpu_report", "compare_recipes")
# The flags each mode reads ("": the default); any other one given is refused, not ignored.
READS = {
    "": ("iters", "warmup", "data_workers", "peer", "torch_compile", "peak_flops", "out",
         "profile"),
    "checkpoint": ("iters", "warmup"),
    "memory": (),
    "collectives": (),
    "decode": ("decode_batch_sizes", "decode_tokens", "decode_recompute_tokens"),
    "gpu_report": ("iters", "warmup", "gpu_tests", "out"),
    "compare_recipes": ("variants", "ablation", "lr_scales", "compare_iters", "compare_data",
                        "out"),
}


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file (every "
                                  "mode but --gpu_report and --compare_recipes, which train "
                                  "recipes of their own).", lock_config=True)
  flags.DEFINE_integer("iters", 50, "Timed iterations (each of the three runs; --gpu_report: "
                       f"{gpu_report.ITERS}).", lower_bound=1)
  flags.DEFINE_integer("warmup", 5, "Untimed iterations before each timed run (--gpu_report: "
                       f"{gpu_report.WARMUP}).", lower_bound=1)
  flags.DEFINE_integer("data_workers", 2, "Grain worker processes for the pipeline runs (0: "
                       "read in the main process).", lower_bound=0)
  flags.DEFINE_enum("peer", None, ["torch"], "Also time the same model in this framework.")
  flags.DEFINE_boolean("torch_compile", None, "torch.compile the peer (default: on CUDA, off "
                       "on CPU where compiling is slow).")
  flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s of the device for MFU; 0 uses "
                     "config.peak_flops, then the table by device kind.", lower_bound=0.0)
  flags.register_validator("peak_flops", math.isfinite, "must be a finite number")
  flags.register_validator("peak_flops", defaults.peak_flops_ok,
                           defaults.PEAK_FLOPS_RULE)
  cli.define_path("out", None, "What the mode writes: the throughput's JSON line is "
                  "appended to this file (default: none), --gpu_report's page (default: "
                  "gpu_report.md), --compare_recipes' runs, curves.png, table.md and "
                  "rows.jsonl (a directory of its own, whose finished runs a later comparison "
                  "reuses; default: out/compare_recipes).")
  cli.define_path("profile", None, "Also trace "
                  f"{throughput.PROFILE_ITERS} iterations of the step with jax.profiler into a "
                  "new folder under this directory: perfetto_trace.json.gz (ui.perfetto.dev) "
                  "and the xplane.pb that xprof or TensorBoard's profile plugin reads.")
  for mode, help_text in MODES.items():
    flags.DEFINE_boolean(mode, False, help_text)
  flags.DEFINE_boolean("gpu_tests", True, "--gpu_report: run `pytest -m gpu` first "
                       "(--nogpu_tests where they have just run).")
  flags.DEFINE_list("variants", [recipes.BASELINE, recipes.MODERN], "--compare_recipes: "
                    "'nanogpt', 'modern', or one modern change alone as KEY=VALUE (see "
                    "defaults.MODERN).")
  flags.DEFINE_boolean("ablation", False, "--compare_recipes: every variant: the baseline, each "
                       "modern change alone, and all of them.")
  flags.DEFINE_list("lr_scales", ["1"], "--compare_recipes: train each variant with its "
                    "learning rates times each of these (a sweep).")
  flags.DEFINE_integer("compare_iters", 250, "--compare_recipes: iterations per run.",
                       lower_bound=1)
  cli.define_path("compare_data", "python_docs", "--compare_recipes: a dataset name or a "
                  "directory of token shards.")
  flags.DEFINE_list("decode_batch_sizes", ["1", "16"], "--decode: batch sizes.")
  flags.DEFINE_integer("decode_tokens", 500, "--decode: new tokens with the KV cache.",
                       lower_bound=1)
  flags.DEFINE_integer("decode_recompute_tokens", 10, "--decode: new tokens for the slow "
                       "recompute baseline.", lower_bound=1)


def _gib(x: int | None) -> str:
  return "n/a" if x is None else f"{x / GiB:.2f} GiB"


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def summary(r: dict[str, Any]) -> str:
  """The human-readable lines of a throughput result."""
  m = r["model"]
  peak = "" if r["peak_flops"] is None else f" of {r['peak_flops'] / 1e12:,.4g} TFLOP/s"
  lines = [
      (f"model: {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, block "
       f"{m['block_size']}, {r['n_params'] / 1e6:.2f}M params, {r['dtype']}"),
      f"device: {r['device_kind']} ({r['platform']}), jax {r['jax_version']}, git {r['git']}",
      (f"batch: {r['gradient_accumulation_steps']} x {r['batch_size']} x {m['block_size']} = "
       f"{r['tokens_per_iter']:,} tokens/iter"),
      f"compile: {r['compile_s']:.1f} s",
      (f"step: {r['ms_per_iter_median']:.1f} ms/iter median ({r['ms_per_iter_mean']:.1f} mean) "
       f"over {r['iters']} iterations after {r['warmup']}; {r['tokens_per_sec']:,.0f} tokens/s; "
       f"MFU {_pct(r['mfu'])}{peak}"),
      (f"peak device memory: {_gib(r['peak_memory_bytes'])} (XLA's plan of the step: "
       f"{_gib(r['step_plan_bytes'])}); the program asks to keep for the backward pass "
       f"{_gib(r['backward_residual_bytes'])} per micro-batch, before XLA's fusion"),
      (f"input pipeline ({r['data_workers']} workers): {r['pipeline_tokens_per_sec']:,.0f} "
       f"tokens/s, {r['pipeline_ratio']:.1f}x what the step consumes"),
      (f"step fed by the pipeline: {r['loop_ms_per_iter_median']:.1f} ms/iter median, "
       f"waiting for data {r['data_wait_ms_per_iter']:.2f} ms/iter "
       f"({_pct(r['data_wait_fraction'])})"),
  ]
  if r.get("profile"):
    lines.append(f"profile of {throughput.PROFILE_ITERS} iterations: {r['profile']}")
  if "peer" in r:
    p = r["peer"]
    lines.append(
        f"torch peer ({p['device_name']}, torch {p['torch_version']}, compile {p['compile']}, "
        f"bf16 autocast {p['autocast_bf16']}, fused AdamW {p['fused_adamw']}): "
        f"{p['ms_per_iter_median']:.1f} ms/iter median ({p['ms_per_iter_mean']:.1f} mean), "
        f"{p['tokens_per_sec']:,.0f} tokens/s, MFU {_pct(p['mfu'])}, memory "
        f"{_gib(p['peak_memory_bytes'])}, first step {p['first_step_s']:.1f} s, "
        f"{p['n_params']:,} params (jax {r['n_params_total']:,})")
    lines.append(f"jax / torch tokens/s: {r['jax_over_peer']:.2f}x")
  return "\n".join(lines)


def _print_checkpoint(f: flags.FlagValues) -> None:
  report = save_overhead.checkpoint_overhead(f.config, iters=f.iters, warmup=f.warmup)
  during = report["ms_per_iter_during_save"]
  during_text = "n/a" if during is None else f"{during:.1f}"
  print(f"{report['device_kind']}: state {_gib(report['state_bytes'])}; step "
        f"{report['ms_per_iter_alone']:.1f} ms/iter alone, {during_text} ms/iter during the "
        f"save ({report['steps_during_save']} steps); save blocked the loop "
        f"{report['save_blocked_ms']:.0f} ms, on disk after {report['save_total_s']:.2f} s\n"
        + json.dumps(report))


def _print_memory(f: flags.FlagValues) -> None:
  config = attention.settle(f.config)
  print(f"kept for the backward pass of one {config.batch_size} x {config.block_size} "
        f"micro-batch ({config.dtype}, {config.attention} attention), as the program asks "
        "before XLA's fusion:")
  rows = memory.memory_report(GPTConfig.from_config(config), config.batch_size)
  for row in rows:
    print(f"  remat {row['remat']:<5} loss chunks {row['loss_chunk_size'] or 'none':<6} "
          f"{_gib(row['residual_bytes'])}")
  print(json.dumps(rows))


def _print_collectives(f: flags.FlagValues) -> None:
  step = train_step.StepConfig.from_config(attention.settle(f.config))
  if jax.device_count() == 1:
    logging.warning("one device: no collectives to count; simulate several with "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu")
  reports = []
  for mode in ("dp", "fsdp"):
    try:
      r = collectives.sharding_report(step, mode)
    except collectives.UncountedLoop as e:  # Muon's loops under fsdp
      print(f"{mode}: {e}")
      continue
    reports.append(r)
    sent = ", ".join(f"{k} {v / GiB:.3f} GiB" for k, v in r["sent_bytes_per_iter"].items())
    print(f"{r['mode']} on {r['devices']} devices, {r['gradient_accumulation_steps']} x "
          f"{r['batch_per_device']} per device: params+state {_gib(r['argument_bytes'])}, "
          f"temporaries {_gib(r['temp_bytes'])} per device; sent per device per iteration: "
          f"{sent}")
  if reports:
    print("\n".join(map(json.dumps, reports)))


def _print_decode(f: flags.FlagValues) -> None:
  batch_sizes = _positive_ints("decode_batch_sizes", f.decode_batch_sizes)
  config = attention.settle(f.config)
  print(f"device: {jax.devices()[0].device_kind}, dtype {config.dtype}, prompt 1 token")
  rows = decode.decode_rows(GPT(GPTConfig.from_config(config)), batch_sizes,
                            cache_tokens=f.decode_tokens,
                            recompute_tokens=f.decode_recompute_tokens)
  print(decode.table(rows))
  print(json.dumps(rows))


def _positive_ints(name: str, values: list[str]) -> list[int]:
  try:
    numbers = [int(v) for v in values]
  except ValueError:
    numbers = []
  if not numbers or min(numbers) < 1:
    raise UserError(f"--{name}={','.join(values)}: expected whole numbers >= 1, comma-separated")
  return numbers


def _out_path(path: str) -> str:
  """`path`, a file this process may write in a folder that exists: said before a benchmark's
  minutes, not after them."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UserError(f"--out={path}: there is no folder {folder}")
  if os.path.isdir(path):
    raise UserError(f"--out={path}: a folder; name a file in it")
  if not os.access(path if os.path.exists(path) else folder, os.W_OK):
    raise UserError(f"--out={path}: not writable here")
  return path


def _out_dir(path: str, flag: str = "out") -> str:
  """`path`, a folder made where it is missing, for a benchmark's files: a file there, or a
  folder that cannot be made, is said before the benchmark."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--{flag}={path}: a file, not a folder")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"--{flag}={path}: the folder cannot be made ({e.strerror})") from None
  return path


def _print_throughput(f: flags.FlagValues) -> None:
  overrides = config_flags.get_override_values(f["config"])
  if "data_workers" in overrides:
    raise UserError("--config.data_workers: the pipeline runs take the bench's own "
                    f"--data_workers (default 2); give --data_workers={f.config.data_workers}")
  ignored = [f"--config.{key}" for key in ("dataset", "data_dir") if key in overrides]
  if ignored:  # else the figure would seem to be of that data
    logging.warning("%s: not read; the bench times the step and the pipeline on a synthetic "
                    "shard of the config's vocabulary", ", ".join(ignored))
  out = f.out and _out_path(f.out)
  profile_dir = f.profile and _out_dir(f.profile, "profile")
  result = throughput.measure(f.config, iters=f.iters, warmup=f.warmup,
                              data_workers=f.data_workers, peer=f.peer,
                              torch_compile=f.torch_compile, peak_flops=f.peak_flops,
                              profile_dir=profile_dir)
  result["config"] = config_flags.get_config_filename(f["config"])
  result["overrides"] = config_flags.get_override_values(f["config"])
  line = json.dumps(result)
  print(summary(result))
  print(line)
  if out:
    try:
      with open(out, "a", encoding="utf-8") as file:
        file.write(line + "\n")
    except OSError as e:  # a full disk: the line is printed above
      raise UserError(f"--out={out}: cannot write it ({e.strerror or e}); the line is "
                      "above") from None


def _require_in_checkout(path: str, needed_by: str) -> None:
  """Refuses `needed_by` where `path` (launch.py, a recipe in configs/, a file of tests/) is
  not in this clone: a `pip install .` without -e leaves them out. Said before its work."""
  full = os.path.join(defaults.CHECKOUT, path)
  if not os.path.isfile(full):
    raise UserError(f"{needed_by} needs {path} from a jaxgpt clone, and {full} is missing: run "
                    "it in a clone, installed with pip install -e .")


def _print_gpu_report(f: flags.FlagValues) -> None:
  for name in dict.fromkeys(name for name, _ in gpu_report.ROWS):
    _require_in_checkout(f"configs/{name}.py", "--gpu_report")
  if f.gpu_tests:
    _require_in_checkout("tests/conftest.py", "--gpu_report")
  jax.config.update("jax_platforms", "cpu")  # the rows' processes use the GPU; this one compiles
  path = _out_path(f.out or "gpu_report.md")
  log_path = os.path.splitext(path)[0] + ".log"  # what the tests and rows printed, whole
  if log_path == path:
    raise UserError(f"--out={path}: the page's log takes that name; name the page *.md")
  for taken in (path, log_path):
    if os.path.exists(taken):
      raise UserError(f"{taken} exists; pass --out=PATH or move it")
  seen = gpu_report.device()
  if seen[1] != "gpu":  # its rows are the recipes themselves: hours each on a CPU
    raise UserError(f"--gpu_report times both recipes on a GPU, and JAX finds none here: "
                    f"{seen[2].split(';')[0]}")
  iters = f.iters if f["iters"].present else gpu_report.ITERS
  warmup = f.warmup if f["warmup"].present else gpu_report.WARMUP
  with open(path, "w", encoding="utf-8") as out, open(log_path, "w", encoding="utf-8") as log:
    for line in gpu_report.report(iters=iters, warmup=warmup, run_tests=f.gpu_tests, log=log,
                                  seen=seen):
      print(line, flush=True)
      out.write(line + "\n")
      out.flush()  # a run cut short keeps the rows it finished
  print(f"wrote {path} and {log_path}")


def _print_compare_recipes(f: flags.FlagValues) -> None:
  _require_in_checkout("launch.py", "--compare_recipes")
  out = f.out or "out/compare_recipes"
  names = list(recipes.variants()) if f.ablation else f.variants
  if not names:
    raise UserError("--variants is empty: name at least one (nanogpt, modern or KEY=VALUE)")
  try:
    lr_scales = [float(s) for s in f.lr_scales]
  except ValueError as e:
    raise UserError(f"--lr_scales={','.join(f.lr_scales)}: {e}") from None
  if not lr_scales:
    raise UserError("--lr_scales is empty: name at least one factor (1 trains the recipe's)")
  if not all(math.isfinite(s) and s > 0 for s in lr_scales):
    raise UserError(f"--lr_scales={','.join(f.lr_scales)}: each must be a positive number")
  recipes.check_names(names)
  base = recipes.base_config(f.compare_data, out, f.compare_iters)
  made = not os.path.exists(out)
  _out_dir(out)  # a file there is said before any trains
  try:
    rows = recipes.compare(base, names, lr_scales)
  except UserError:  # the data refused, say: the folder made for it is not left behind
    if made:
      with contextlib.suppress(OSError):  # one a variant has written into stays
        os.rmdir(out)
    raise
  print(recipes.write(rows, out))
  print(f"wrote {out}/table.md, rows.jsonl and curves.png")


def main() -> None:
  f = flags.FLAGS
  chosen = [mode for mode in MODES if f[mode].value]
  if len(chosen) > 1:
    raise UserError(f"pick one of --{', --'.join(MODES)}, not {', '.join(chosen)}")
  mode = chosen[0] if chosen else ""
  unread = [f"--{name}" for name in sorted(set().union(*READS.values()))
            if f[name].present and name not in READS[mode]]
  if unread:
    what = f"--{mode}" if mode else "the default mode (the train step's speed)"
    raise UserError(f"{', '.join(unread)}: not read by {what}; drop "
                    f"{'it' if len(unread) == 1 else 'them'}")
  if f["torch_compile"].present and not f.peer:
    raise UserError("--torch_compile is read with --peer=torch alone: add it, or drop "
                    "--torch_compile")
  if f.ablation and f["variants"].present:
    raise UserError("--ablation trains every variant: drop --variants, or --ablation")
  configless = set(chosen) & set(CONFIGLESS_MODES)
  if f.config is None and not configless:
    raise UserError("--config is required (a configs/*.py file), except for "
                    f"--{' and --'.join(CONFIGLESS_MODES)}")
  if f.config is not None and configless:
    raise UserError(f"--{chosen[0]} trains recipes of its own and takes no --config; drop it")
  if f.config is not None:
    defaults.validate(f.config)
  logging.set_verbosity(logging.INFO)
  printers = {"checkpoint": _print_checkpoint, "memory": _print_memory,
              "collectives": _print_collectives, "decode": _print_decode,
              "gpu_report": _print_gpu_report, "compare_recipes": _print_compare_recipes}
  with cli.sigterm_stops("the benchmark ended before its figures"):
    printers.get(mode, _print_throughput)(f)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
