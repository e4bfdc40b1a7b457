"""One command for a first GPU run: the GPU tests, the benchmark rows and the memory check.

  python -m jaxgpt.bench --gpu_report [--out=PATH] [--iters=10] [--warmup=2]

Runs `pytest -m gpu`, then times the train step of both recipes with the
default levers and each lever changed alone (the rows of docs/benchmarks.md),
the user's recipe first. Each row is `python -m jaxgpt.bench` in a process of
its own: the device's peak memory is that row's alone (JAX keeps one peak per
process) and a row that runs out of memory leaves the next a clean device.
Beside the peak stand XLA's memory plan of the step on this GPU and `plan
--device`'s, compiled here for the card's target description as on a machine
without a GPU. Each line is handed on as it is made, so a run cut short keeps
the rows it finished; a row that fails is reported as such and the others run.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from jaxgpt import defaults, train_step
from jaxgpt.plan import memory, targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GiB = 2**30
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")
ITERS, WARMUP = 10, 2  # timed and untimed steps of each of a row's two timed runs
# (recipe, overrides): the defaults, then each lever alone; a run cut short has the first.
ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fineweb_40m", {}),
    ("gpt2_124m", {}),
    ("fineweb_40m", {"attention": "xla"}),
    ("fineweb_40m", {"loss_chunk_size": 0}),
    ("fineweb_40m", {"remat": "dots"}),
    ("fineweb_40m", {"batch_size": 32, "gradient_accumulation_steps": 16}),
    ("gpt2_124m", {"attention": "xla"}),
)


def _python(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        check=False)


def _last_line(done: subprocess.CompletedProcess) -> str:
  lines = (done.stdout + done.stderr).strip().splitlines()
  return lines[-1] if lines else f"exit {done.returncode}, nothing printed"


def device() -> str:
  """The accelerator as the rows' processes see it (this process compiles on the CPU), and the
  versions of the libraries the step is made of: a GPU image may hold others than CI's."""
  done = _python("-c", "import jax; d = jax.devices()[0]; print(f'{d.device_kind} "
                 "({d.platform}), {jax.device_count()} device(s)')")
  return f"{_last_line(done)}; {', '.join(f'{name} {_version(name)}' for name in _LIBRARIES)}"


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:  # importable without its metadata, say
    return "(version unknown)"


def _measure(name: str, overrides: dict[str, Any], iters: int, warmup: int) -> dict[str, Any]:
  """One row's figures from `python -m jaxgpt.bench` in a process of its own."""
  with tempfile.TemporaryDirectory(prefix="jaxgpt_gpu_report_") as tmp:
    out = os.path.join(tmp, "row.jsonl")
    done = _python("-m", "jaxgpt.bench", f"--config={os.path.join(ROOT, 'configs', name)}.py",
                   *(f"--config.{k}={v}" for k, v in overrides.items()), f"--iters={iters}",
                   f"--warmup={warmup}", "--data_workers=2", f"--out={out}")
    if done.returncode:
      return {"error": _last_line(done)[:120]}
    with open(out, encoding="utf-8") as f:
      return json.loads(f.readline())


def _planned(name: str, overrides: dict[str, Any], device_kind: str) -> int | None:
  """What `plan --device` says the step needs on this card; None where it cannot say."""
  config = defaults.recipe(name)
  config.update(overrides)
  try:
    step = train_step.StepConfig.from_config(config)
    return memory.planned_need(step, targets.target(device_kind)).total
  except Exception:  # noqa: BLE001 - an unknown card, or no plugin: the row says n/a
    return None


def _gib(value: int | None) -> str:
  return "n/a" if value is None else f"{value / GiB:.2f} GiB"


def _cell(value: Any, fmt: str) -> str:
  return "n/a" if value is None else format(value, fmt)


def report(rows: tuple[tuple[str, dict[str, Any]], ...] = ROWS, *, iters: int = ITERS,
           warmup: int = WARMUP, base: dict[str, Any] | None = None,
           run_tests: bool = True) -> Iterator[str]:
  """The markdown page, line by line: device, GPU tests, a row per benchmark."""
  yield from [f"## GPU report: {device()}", "",
              (f"{iters} timed iterations after {warmup}, each row in a process of its own; "
               "command: `python -m jaxgpt.bench --gpu_report`"), ""]
  if run_tests:
    tests = _last_line(_python("-m", "pytest", "-q", "-m", "gpu", "tests"))
    yield from [f"`python -m pytest -q -m gpu`: {tests}", ""]
  yield ("| recipe | levers | batch | ms/iter | tokens/s | MFU | compile s | peak memory | "
         "XLA's plan here | plan --device's | waiting for data | row s |")
  yield "|" + " --- |" * 12
  for name, overrides in rows:
    t0 = time.perf_counter()
    label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
    overrides = {**(base or {}), **overrides}
    r = _measure(name, overrides, iters, warmup)
    if "error" in r:
      cells = [f"failed: {r['error']}"] + [""] * 8
    else:
      planned = _planned(name, overrides, r["device_kind"])
      cells = [(f"{r['gradient_accumulation_steps']} x {r['batch_size']} x "
                f"{r['model']['block_size']}"), f"{r['ms_per_iter_median']:.1f}",
               f"{r['tokens_per_sec']:,.0f}", _cell(r["mfu"], ".1%"), f"{r['compile_s']:.1f}",
               _gib(r["peak_memory_bytes"]), _gib(r["step_plan_bytes"]), _gib(planned),
               f"{r['data_wait_fraction']:.1%}"]
    yield "| " + " | ".join([name, label, *cells, f"{time.perf_counter() - t0:.0f}"]) + " |"
