"""One command for a first GPU run: the GPU tests, the benchmark rows and the memory check.

  python -m jaxgpt.bench --gpu_report [--out=PATH] [--iters=20]

Runs `pytest -m gpu`, times the train step of both recipes with the default
levers and each lever changed alone (the rows of docs/benchmarks.md), compares
`plan`'s memory plan for this card (the step compiled for its target
description, as on a machine without a GPU) with the peak the device reports,
and writes it all as one markdown page to paste into docs/benchmarks.md. A
row that fails (out of memory, say) is reported as such; the others still run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import jax

from jaxgpt import defaults
from jaxgpt.bench import throughput
from jaxgpt.plan import memory, targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GiB = 2**30
# (recipe, overrides): the defaults, then each lever alone.
ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("gpt2_124m", {}),
    ("gpt2_124m", {"attention": "xla"}),
    ("fineweb_40m", {}),
    ("fineweb_40m", {"attention": "xla"}),
    ("fineweb_40m", {"loss_chunk_size": 0}),
    ("fineweb_40m", {"remat": "dots"}),
    ("fineweb_40m", {"batch_size": 32, "gradient_accumulation_steps": 16}),
)


def gpu_tests() -> str:
  """The summary line of `pytest -m gpu`."""
  run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=ROOT,
                       capture_output=True, text=True, check=False)
  lines = (run.stdout + run.stderr).strip().splitlines()
  return lines[-1] if lines else f"pytest exited {run.returncode} and printed nothing"


def _row(name: str, overrides: dict[str, Any], base: dict[str, Any], iters: int,
         warmup: int) -> dict[str, Any]:
  config = defaults.recipe(name)
  config.update({**base, **overrides})
  label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
  try:
    r = throughput.measure(config, iters=iters, warmup=warmup, data_workers=2)
  except Exception as e:  # noqa: BLE001 - a row that fails (OOM) is a result too
    return {"recipe": name, "levers": label, "error": (str(e).splitlines() or [""])[0][:120]}
  estimate = _planned(config)
  return {"recipe": name, "levers": label, "batch": f"{r['gradient_accumulation_steps']} x "
          f"{r['batch_size']} x {config.block_size}", "ms": r["ms_per_iter_median"],
          "tok_s": r["tokens_per_sec"], "mfu": r["mfu"], "compile_s": r["compile_s"],
          "peak": r["peak_memory_bytes"], "estimate": estimate,
          "data_wait": r["data_wait_fraction"]}


def _planned(config: Any) -> int | None:
  """What `plan --device` says the step needs on this card; None where it cannot say."""
  try:
    t = targets.target(jax.devices()[0].device_kind)
    return memory.gpu_plan(config, t).need.total
  except Exception:  # noqa: BLE001 - an unknown card, or no plugin: the row says n/a
    return None


def _gib(value: int | None) -> str:
  return "n/a" if value is None else f"{value / GiB:.2f} GiB"


def _cell(value: Any, fmt: str) -> str:
  return "n/a" if value is None else format(value, fmt)


def report(rows: tuple[tuple[str, dict[str, Any]], ...] = ROWS, *, iters: int = 20,
           warmup: int = 3, base: dict[str, Any] | None = None, run_tests: bool = True) -> str:
  """The markdown page: device, GPU tests, and a row per benchmark with its memory check."""
  device = jax.devices()[0]
  lines = [f"## GPU report: {device.device_kind}", "",
           (f"jax {jax.__version__}, {jax.device_count()} device(s), {iters} timed iterations "
           f"after {warmup}; command: `python -m jaxgpt.bench --gpu_report`"), ""]
  if run_tests:
    lines += [f"`python -m pytest -q -m gpu`: {gpu_tests()}", ""]
  lines += [("| recipe | levers | batch | ms/iter | tokens/s | MFU | compile s | peak memory | "
            "plan's compile for this card | waiting for data |"), "|" + " --- |" * 10]
  for name, overrides in rows:
    r = _row(name, overrides, base or {}, iters, warmup)
    if "error" in r:
      lines.append(f"| {name} | {r['levers']} | failed: {r['error']} |" + " |" * 7)
      continue
    lines.append(
        f"| {name} | {r['levers']} | {r['batch']} | {r['ms']:.1f} | {r['tok_s']:,.0f} | "
        f"{_cell(r['mfu'], '.1%')} | {r['compile_s']:.1f} | {_gib(r['peak'])} | "
        f"{_gib(r['estimate'])} | {r['data_wait']:.1%} |")
  return "\n".join(lines) + "\n"
