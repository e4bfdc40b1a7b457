"""The nanoGPT recipe against the modern one (and each modern change alone), trained side by side.

Every variant trains as a user's run does (`python launch.py`) on the same data,
model size, tokens per iteration, seed and batches; only its overrides of
the nanoGPT recipe differ. A variant's tokens-to-target is where its val
loss first reaches the baseline's final val loss (interpolated linearly
between evaluations), as a fraction of the baseline's tokens. Step times are
timed afterwards, every variant back to back on the same batch, so that
they compare like with like whatever else ran beside the training.

A variant whose directory holds a finished run of the same config is not
trained again: an ablation can add variants to a comparison's directory. One that
was stopped goes on from its checkpoint (`auto_resume`, so that its stop's "continue with
the same command" is the comparison's command).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
from typing import Any

import ml_collections
from absl import logging

from jaxgpt import attention, data, defaults, formatting, report, run_dir, token_files, train_step
from jaxgpt.bench import throughput
from jaxgpt.errors import UserError
from jaxgpt.prep import datasets

LAUNCH = os.path.join(defaults.CHECKOUT, "launch.py")

_RECIPE_HEAD = ("import json\nfrom jaxgpt import defaults\n\n\ndef get_config():\n"
                "  c = defaults.get_config()\n  c.update(json.loads(")
BASELINE = "nanogpt"
MODERN = "modern"
# The 4-layer, 256-wide model at block 256 of the comparison, 8 x 256 tokens per iteration.
SIZE = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 256, "batch_size": 8,
        "gradient_accumulation_steps": 1}
# Learning rates picked by the sweep in docs/benchmarks.md ("A modern recipe").
BASELINE_LR = 1e-3
MODERN_LRS = {"learning_rate": 4e-3, "min_lr": 4e-4, "muon_learning_rate": 0.02}
GO_ON = "run the same command again to go on"  # a stopped variant resumes (auto_resume)


def variants() -> dict[str, dict[str, Any]]:
  """Overrides of the nanoGPT recipe by name: the baseline, each modern change alone, all."""
  named = {BASELINE: {}}
  named.update({f"{key}={value}": {key: value} for key, value in defaults.MODERN.items()})
  named[MODERN] = {**defaults.MODERN, **MODERN_LRS}
  return named


def check_names(names: list[str]) -> None:
  """Refuses a variant name `variants` does not know."""
  known = variants()
  unknown = [n for n in names if n not in known]
  if unknown:
    raise UserError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")


def base_config(data: str, out_dir: str, max_iters: int) -> ml_collections.ConfigDict:
  """The nanoGPT recipe at the comparison's size; `data` is a dataset name or a shard directory."""
  c = defaults.get_config()
  is_dir = os.path.isdir(data)
  if os.path.isfile(data):
    raise UserError(f"--compare_data={data}: a file, not a directory of token shards (make "
                    "one with python -m jaxgpt.prepare files --input=... --out=DIR)")
  if not is_dir and os.sep in data:  # a dataset's name holds none
    raise UserError(f"--compare_data={data}: no such directory of token shards (make it with "
                    "python -m jaxgpt.prepare files --input=... --out=DIR)")
  shards = os.path.join("data", data)  # where a run of that dataset name reads
  if not is_dir and data != datasets.PYTHON_DOCS and not token_files.find_shards(shards, "train"):
    raise UserError(f"--compare_data={data}: no token shards in {shards} (make them with "
                    f"{datasets.make_command(data, shards)}), or give a directory of them")
  c.update(SIZE)
  c.update(out_dir=out_dir, dataset=os.path.basename(os.path.normpath(data)) if is_dir else data,
           data_dir=data if is_dir else "", max_iters=max_iters,
           warmup_iters=max_iters // 10, muon_momentum_warmup_iters=max_iters // 10,
           eval_interval=max(1, max_iters // 5), eval_iters=10,
           log_interval=max(1, max_iters // 50), learning_rate=BASELINE_LR,
           min_lr=BASELINE_LR / 10, dropout=0.0, dtype="float32", keep_checkpoints=1,
           auto_resume=True)
  return c


def variant_config(base: ml_collections.ConfigDict, name: str, overrides: dict[str, Any],
                   lr_scale: float) -> ml_collections.ConfigDict:
  """`base` with a variant's overrides, every learning rate times `lr_scale`, its own out_dir."""
  c = ml_collections.ConfigDict(base.to_dict())
  c.update(overrides)
  c.learning_rate *= lr_scale
  c.min_lr *= lr_scale
  c.muon_learning_rate *= lr_scale
  suffix = "" if lr_scale == 1 else f"_lr_x{lr_scale:g}"
  c.out_dir = os.path.join(base.out_dir, name + suffix)
  return c


def tokens_to_target(evals: list[dict[str, Any]], target: float) -> float | None:
  """Tokens at which val loss first reaches `target`, linear between evaluations; None if never."""
  previous = None
  for r in evals:
    if r["val_loss"] <= target:
      if previous is None or previous["val_loss"] == r["val_loss"]:
        return float(r["tokens"])
      share = (previous["val_loss"] - target) / (previous["val_loss"] - r["val_loss"])
      return previous["tokens"] + share * (r["tokens"] - previous["tokens"])
    previous = r
  return None


def train_variant(config: ml_collections.ConfigDict) -> None:
  """`python launch.py` on a recipe file holding the variant's config, written beside its run
  (over one this benchmark wrote, never another file).

  A SIGTERM to the benchmark (`timeout`, a scheduler) is passed on to the run, which saves
  and stops; a Ctrl-C reaches both, and the benchmark waits for the run to stop.
  """
  recipe = f"{config.out_dir}.recipe.py"
  if os.path.exists(recipe) and not pathlib.Path(recipe).read_text(
      encoding="utf-8", errors="replace").startswith(_RECIPE_HEAD):
    raise UserError(f"{recipe} exists and is not a recipe this benchmark wrote; move it or "
                    "pick another --out")
  os.makedirs(os.path.dirname(recipe) or ".", exist_ok=True)
  with open(recipe, "w", encoding="utf-8") as f:
    f.write(f"{_RECIPE_HEAD}{config.to_json_best_effort()!r}))\n  return c\n")
  stopped, passed, runs = [], [], []  # a SIGTERM before the run starts is passed on once it has

  def pass_on(signum: int, _) -> None:
    stopped.append(signum)
    if runs:
      runs[0].send_signal(signum)
      passed.append(signum)

  previous = signal.signal(signal.SIGTERM, pass_on)
  try:
    with subprocess.Popen([sys.executable, LAUNCH, f"--config={recipe}"]) as run:
      runs.append(run)
      if len(stopped) > len(passed):
        run.send_signal(signal.SIGTERM)
      try:
        returncode = run.wait()
      except KeyboardInterrupt:
        run.wait()
        raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  if stopped:  # the run may have finished first: the comparison stops all the same
    raise UserError(f"stopped by SIGTERM while training {config.out_dir}; the comparison "
                    f"stops here ({GO_ON})")
  if returncode:
    raise UserError(f"training {config.out_dir} failed (exit {returncode}); the "
                    "comparison stops here")


def run_variant(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains one variant (goes on with its stopped run, or reuses its finished one); returns its
  records.

  Its checkpoints are deleted, its metrics and config kept.
  """
  rundir = run_dir.RunDir(config.out_dir)

  def finished() -> bool:
    evals = rundir.read_metrics()["eval"]
    return bool(evals) and evals[-1]["iter"] == config.max_iters

  if os.path.exists(rundir.out_dir):
    # config.json holds the config as the run used it: attention resolved for this device, and
    # init_from=resume where auto_resume went on with it (which comparisons before it lack).
    ran = json.loads(attention.settle(config).to_json_best_effort())
    if {**(rundir.read_config() or {}), "init_from": config.init_from,
        "auto_resume": config.auto_resume} != ran:
      raise UserError(f"{config.out_dir} exists and is not a run of this variant's config; "
                      "delete it or pick another --out")
  if os.path.exists(rundir.out_dir) and finished():
    logging.info("%s: reusing its finished run", config.out_dir)
  else:
    train_variant(config)
    if not finished():  # stopped by a signal
      raise UserError(f"{config.out_dir} stopped before max_iters={config.max_iters}; the "
                      f"comparison stops here ({GO_ON})")
  if os.path.exists(rundir.checkpoints_dir):  # a stop may have come before their removal
    shutil.rmtree(rundir.checkpoints_dir, ignore_errors=True)
    # The run's closing `Next:` lines name commands that read them.
    logging.info("%s: its checkpoints removed (the comparison keeps metrics.jsonl and "
                 "config.json, which report reads)", config.out_dir)
  return rundir.read_metrics()


def step_ms(step: train_step.StepConfig, iters: int = 10, warmup: int = 2) -> float:
  """Median milliseconds of one train step, on one fixed random batch."""
  _, state, batch, compiled_step, _ = throughput.ready_step(step, seed=0)
  _, seconds = throughput.time_step(compiled_step, state, batch, iters=iters, warmup=warmup)
  return 1000 * statistics.median(seconds)


def compare(base: ml_collections.ConfigDict, names: list[str],
            lr_scales: list[float]) -> list[dict[str, Any]]:
  """Trains every (variant, lr scale) and returns a row of figures for each.

  The target is the final val loss of the baseline at lr scale 1 (or the
  first run when the baseline is not among them); ratios are against that run.
  """
  check_names(names)
  check_outputs(base.out_dir)
  report.pyplot()  # curves.png's, refused before any training where it does not import
  known = variants()
  configs = [variant_config(base, name, known[name], scale)
             for name in names for scale in lr_scales]
  for config in configs:  # each refused before any trains (a wsd decay too short for the iters)
    try:
      defaults.validate(config)
    except UserError as e:
      raise UserError(f"{os.path.basename(config.out_dir)}: {e}") from None
  # Evaluations of at most the batches the val split holds on one device (python_docs, the
  # default data, holds about 4): a run warns of one that scores windows twice, and here the
  # user can change neither the data nor eval_iters. (Asking JAX for the device count would
  # start its client here, which holds 75% of each GPU through every variant's training.)
  batches = _val_batches(base.dataset, base.data_dir, base.block_size, base.vocab_size,
                         base.batch_size)
  for config in configs:
    config.eval_iters = max(1, min(config.eval_iters, batches))
  runs = {os.path.basename(c.out_dir): (c, run_variant(c)) for c in configs}
  reference = BASELINE if BASELINE in runs else next(iter(runs))
  ref_evals = runs[reference][1]["eval"]
  target, ref_tokens = ref_evals[-1]["val_loss"], ref_evals[-1]["tokens"]
  ms = {label: step_ms(train_step.StepConfig.from_config(config))
        for label, (config, _) in runs.items()}
  rows = []
  for label, (config, records) in runs.items():
    evals = records["eval"]
    reached = tokens_to_target(evals, target)
    rows.append({
        "variant": label, "learning_rate": config.learning_rate,
        "muon_learning_rate": config.muon_learning_rate if config.optimizer == "muon" else None,
        "final_val_loss": evals[-1]["val_loss"], "best_val_loss": min(r["val_loss"] for r in evals),
        "tokens": evals[-1]["tokens"], "target_val_loss": target,
        "tokens_to_target": reached,
        "tokens_to_target_ratio": None if reached is None else reached / ref_tokens,
        "ms_per_iter": ms[label], "step_time_ratio": ms[label] / ms[reference],
    })
  report.plot({label: records for label, (_, records) in runs.items()},
              os.path.join(base.out_dir, "curves.png"))
  return rows


def _val_batches(dataset: str, data_dir: str, block_size: int, vocab_size: int,
                 batch_windows: int) -> int:
  """Batches of `batch_windows` windows the dataset's val split holds (python_docs is made
  where it is missing; another dataset missing is an error naming the command that makes it)."""
  data_dir = data.resolve_data_dir(dataset, data_dir)
  datasets.ensure(dataset, data_dir, auto_prepare=False)
  return len(data.open_split(data_dir, "val", block_size, vocab_size)) // batch_windows


_TABLE_HEAD = "| variant | lr (AdamW / Muon) | final val | tokens to baseline's final val | "


def check_outputs(out_dir: str) -> None:
  """Refuses, before any training, a table.md, rows.jsonl or curves.png in out_dir that a
  comparison did not write: it would replace them (a curves.png is a comparison's where its
  table.md is)."""
  path = lambda name: os.path.join(out_dir, name)

  def begins(name: str, head: str) -> bool:
    try:
      with open(path(name), encoding="utf-8", errors="replace") as f:
        return f.readline().startswith(head)
    except OSError:  # a folder of that name, a file it cannot read
      return False

  ours = {"table.md": lambda: begins("table.md", _TABLE_HEAD),
          "rows.jsonl": lambda: begins("rows.jsonl", '{"variant": '),
          "curves.png": lambda: begins("table.md", _TABLE_HEAD)}
  for name, written_here in ours.items():
    if os.path.lexists(path(name)) and not written_here():
      raise UserError(f"{path(name)} exists and is not a comparison's this benchmark wrote; "
                      "move it or pick another --out")


def table(rows: list[dict[str, Any]]) -> str:
  """The rows as a markdown table."""
  lines = [f"{_TABLE_HEAD}step time |", "|---|---|---|---|---|"]
  for r in rows:
    lr = f"{r['learning_rate']:.3g}"
    if r["muon_learning_rate"] is not None:
      lr += f" / {r['muon_learning_rate']:.3g}"
    reached = "not reached"
    if r["tokens_to_target"] is not None:
      reached = (f"{formatting.count(r['tokens_to_target'])} "
                 f"({100 * r['tokens_to_target_ratio']:.0f}%)")
    lines.append(f"| {r['variant']} | {lr} | {r['final_val_loss']:.4f} | {reached} | "
                 f"{r['ms_per_iter']:.0f} ms ({r['step_time_ratio']:.2f}x) |")
  return "\n".join(lines)


def write(rows: list[dict[str, Any]], out_dir: str) -> str:
  """Writes table.md and rows.jsonl into `out_dir`; returns the table."""
  text = table(rows)
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  with open(os.path.join(out_dir, "rows.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return text
