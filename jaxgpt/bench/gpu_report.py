"""One command for a first GPU run: the GPU tests, the benchmark rows and the memory check.

  python -m jaxgpt.bench --gpu_report [--out=PATH] [--iters=10] [--warmup=2] [--nogpu_tests]

Runs `pytest -m gpu` (unless --nogpu_tests), then times the train step of both
recipes with the default levers and each lever changed alone (the rows of
docs/benchmarks.md), the user's recipe first. Each row is `python -m
jaxgpt.bench` in a process of its own: the device's peak memory is that row's
alone (JAX keeps one peak per process) and a row that runs out of memory leaves
the next a clean device. Beside the peak stand XLA's memory plan of the step on
this GPU and `plan --device`'s, compiled in this process on the CPU for the
card's target description, as on a machine without a GPU, while the rows run.
Each line is handed on as it is made, so a run cut short keeps the rows it
finished: a row never waits for its CPU plan (the GPU would idle), and a plan
done after its row is printed below the table ("below" in the row); a row that
fails or outlasts ROW_TIMEOUT_S is reported as such and the others run (tests that
outlast TESTS_TIMEOUT_S, likewise). What the tests and each row printed goes to
`log`, whole.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any, TextIO

from jaxgpt import defaults, train_step
from jaxgpt.plan import memory, targets

GiB = 2**30
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")
ITERS, WARMUP = 10, 2  # timed and untimed iterations of each of a row's three timed runs
ROW_TIMEOUT_S = 300  # a row takes about a minute on an H100-class GPU
TESTS_TIMEOUT_S = 900  # `pytest -m gpu` took 3 to 5.5 minutes on an H200; a hung test ends
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


def _python(*args: str, log: TextIO | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
  """`python ARGS` in the repository's root, what it printed also written to `log`; past
  `timeout`, it ends with every process it started (a GPU test's run would hold the device
  through the rows)."""
  with subprocess.Popen([sys.executable, *args], cwd=defaults.CHECKOUT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True) as proc:
    try:
      stdout, stderr = proc.communicate(timeout=timeout)
      done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:
      for pid in [proc.pid, *_descendants(proc.pid)]:  # all found before any ends
        with contextlib.suppress(ProcessLookupError):
          os.kill(pid, signal.SIGKILL)
      stdout, stderr = proc.communicate()
      done = subprocess.CompletedProcess(proc.args, 124, stdout,
                                         stderr + f"\ntimed out after {timeout:.0f} s")
    except BaseException:  # a stop of the report: the row ends with it, not after it
      proc.kill()
      raise
  if log is not None:
    log.write(f"$ python {' '.join(args)}\n{done.stdout}{done.stderr}\n(exit {done.returncode})"
              "\n\n")
    log.flush()
  return done


def _descendants(pid: int) -> list[int]:
  """The processes `pid` started, and theirs, from /proc (Linux, as the GPU images are)."""
  parents = {}
  for entry in filter(str.isdigit, os.listdir("/proc")):
    with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:  # OSError: ended
      parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
  found, todo = [], [pid]
  while todo:
    above = todo.pop()
    children = [child for child, parent in parents.items() if parent == above]
    found += children
    todo += children
  return found


def _last_line(done: subprocess.CompletedProcess) -> str:
  lines = (done.stdout + done.stderr).strip().splitlines()
  return lines[-1] if lines else f"exit {done.returncode}, nothing printed"


def device() -> tuple[str, str, str]:
  """The accelerator's kind and platform as the rows' processes see it (this process compiles
  on the CPU), and a line with both, their count and the versions of the libraries the step is
  made of: a GPU image may hold others than CI's."""
  done = _python("-c", "import jax; d = jax.devices()[0]; print(d.device_kind); "
                 "print(d.platform); "
                 "print(f'{d.device_kind} ({d.platform}), {jax.device_count()} device(s)')")
  lines = done.stdout.strip().splitlines()
  kind, platform, about = lines[-3:] if len(lines) >= 3 else ("", "", _last_line(done))
  return kind, platform, (f"{about}; "
                          f"{', '.join(f'{name} {_version(name)}' for name in _LIBRARIES)}")


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:  # importable without its metadata, say
    return "(version unknown)"


def _measure(name: str, overrides: dict[str, Any], iters: int, warmup: int,
             log: TextIO | None = None) -> dict[str, Any]:
  """One row's figures from `python -m jaxgpt.bench` in a process of its own."""
  with tempfile.TemporaryDirectory(prefix="jaxgpt_gpu_report_") as tmp:
    out = os.path.join(tmp, "row.jsonl")
    recipe = os.path.join(defaults.CHECKOUT, "configs", f"{name}.py")
    done = _python("-m", "jaxgpt.bench", f"--config={recipe}",
                   *(f"--config.{k}={v}" for k, v in overrides.items()), f"--iters={iters}",
                   f"--warmup={warmup}", "--data_workers=2", f"--out={out}", log=log,
                   timeout=ROW_TIMEOUT_S)
    if done.returncode:
      return {"error": _last_line(done)[:200]}
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


def _label(levers: dict[str, Any]) -> str:
  return ", ".join(f"{k}={v}" for k, v in levers.items()) or "defaults"


def _row(name: str, levers: dict[str, Any], r: dict[str, Any], plan: str, seconds: float
         ) -> str:
  """A benchmark's table row; `plan` its CPU plan's cell, `seconds` its own time on the GPU."""
  if "error" in r:
    cells = [f"failed: {r['error']}"] + [""] * 9
  else:
    cells = [r["model"]["attention"],
             (f"{r['gradient_accumulation_steps']} x {r['batch_size']} x "
              f"{r['model']['block_size']}"), f"{r['ms_per_iter_median']:.1f}",
             f"{r['tokens_per_sec']:,.0f}", _cell(r["mfu"], ".1%"), f"{r['compile_s']:.1f}",
             _gib(r["peak_memory_bytes"]), _gib(r["step_plan_bytes"]), plan,
             f"{r['data_wait_fraction']:.1%}"]
  return "| " + " | ".join([name, _label(levers), *cells, f"{seconds:.0f}"]) + " |"


def report(rows: tuple[tuple[str, dict[str, Any]], ...] = ROWS, *, iters: int = ITERS,
           warmup: int = WARMUP, base: dict[str, Any] | None = None, run_tests: bool = True,
           log: TextIO | None = None, seen: tuple[str, str, str] | None = None
           ) -> Iterator[str]:
  """The markdown page, line by line: device (`seen`, where `device()` was asked already), GPU
  tests, a row per benchmark."""
  kind, _, about = seen or device()
  yield from [f"## GPU report: {about}", "",
              (f"{iters} timed iterations after {warmup}, each row in a process of its own; "
               f"command: `python -m jaxgpt.bench {shlex.join(sys.argv[1:])}`"), ""]
  if run_tests:
    tests = _last_line(_python("-m", "pytest", "-q", "-rfEs", "-m", "gpu", "tests", log=log,
                               timeout=TESTS_TIMEOUT_S))
    yield from [f"`python -m pytest -q -m gpu`: {tests}", ""]
  yield ("| recipe | levers | attention | batch | ms/iter | tokens/s | MFU | compile s | "
         "peak memory | XLA's plan here | plan --device's | waiting for data | row s |")
  yield "|" + " --- |" * 13
  rows = [(name, {**(base or {}), **overrides}, overrides) for name, overrides in rows]
  planner = futures.ThreadPoolExecutor(1)  # on the CPU, while the GPU runs the rows
  plans = [planner.submit(_planned, name, overrides, kind) for name, overrides, _ in rows]
  late = []  # plans the CPU had not finished when their row's GPU run had
  try:
    for (name, overrides, levers), plan in zip(rows, plans):
      t0 = time.perf_counter()
      r = _measure(name, overrides, iters, warmup, log)
      seconds, ready = time.perf_counter() - t0, plan.done()
      # Printed at once, so that a device lent for minutes keeps every row it ran.
      yield _row(name, levers, r, _gib(plan.result()) if ready else "below", seconds)
      if not ready and "error" not in r:
        late.append((name, levers, plan))
    if late:
      yield ""
    for name, levers, plan in late:
      yield f"plan --device's of {name} ({_label(levers)}): {_gib(plan.result())}"
  finally:  # a report cut short waits for no plan it will not print
    planner.shutdown(wait=False, cancel_futures=True)
