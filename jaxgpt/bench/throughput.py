"""Speed of the train step: ms/iter, tokens/s, MFU, compile time, memory, input pipeline.

Times the very step training runs (same model, optimizer, state, jit, donation
and ahead-of-time compilation) on one device, fed a synthetic batch of the
config's shape that already sits on the device; then the Grain pipeline alone
over a synthetic llm.c shard; then the step fed by that pipeline as the
training loop feeds it, to show time spent waiting for data. With
`peer="torch"` it first times the same model, tokens per step and optimizer
in PyTorch on the same device (torch_peer.py).
"""

from __future__ import annotations

import glob
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from jaxgpt import attention, data, defaults, summary, train_step
from jaxgpt.bench import memory
from jaxgpt.errors import UserError
from jaxgpt.model import GPTConfig, count_params
from jaxgpt.prep import shards

_SHARD_ITERS = 8  # the synthetic shard holds this many iterations of tokens
PROFILE_ITERS = 3  # iterations traced by --profile, after the timed ones
_TORCH_DEVICE = {"gpu": "cuda", "cpu": "cpu"}  # JAX platform -> the torch device of the peer


class ReadyStep(NamedTuple):
  """The train step for one device, compiled ahead of time as training compiles it, on a
  batch of random tokens; with its setup and a fresh state."""

  setup: train_step.TrainSetup
  state: train_step.TrainState
  batch: jax.Array  # (accum, batch, block+1) uint16: the shape the pipeline delivers
  compiled: Callable
  compile_s: float


def ready_step(step: train_step.StepConfig, seed: int) -> ReadyStep:
  """`step` built, given a fresh state and a batch drawn from `seed`, and compiled (timed)."""
  setup = train_step.build(step)
  state = setup.new_state()
  A, B, T = step.gradient_accumulation_steps, step.batch_size, step.model.block_size
  tokens = np.random.default_rng(seed).integers(0, step.model.vocab_size, (A, B, T + 1))
  batch = jax.device_put(tokens.astype(np.uint16), jax.devices()[0])
  t0 = time.perf_counter()
  compiled = train_step.make_train_step(setup.model, setup.tx).lower(state, batch).compile()
  return ReadyStep(setup, state, batch, compiled, time.perf_counter() - t0)


def time_step(compiled_step: Callable, state: train_step.TrainState, batch: jax.Array, *,
              iters: int, warmup: int) -> tuple[train_step.TrainState, list[float]]:
  """Seconds per iteration of `iters` calls on one batch, each synced on its own results."""
  for _ in range(warmup):
    state, _ = compiled_step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state, step_metrics = compiled_step(state, batch)
    jax.block_until_ready((state, step_metrics))
    times.append(time.perf_counter() - t0)
  return state, times


def trace_steps(compiled_step: Callable, state: train_step.TrainState, batch: jax.Array,
                profile_dir: str | None) -> tuple[train_step.TrainState, str | None]:
  """PROFILE_ITERS steps traced by jax.profiler into a new folder under `profile_dir` (the
  device's kernels, each with its HLO op, where a GPU runs them); that folder. None: none."""
  if not profile_dir:
    return state, None
  logging.info("tracing %d iterations into %s", PROFILE_ITERS, profile_dir)
  with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
    state, _ = time_step(compiled_step, state, batch, iters=PROFILE_ITERS, warmup=0)
  traces = glob.glob(os.path.join(profile_dir, "plugins", "profile", "*", "*.xplane.pb"))
  return state, os.path.dirname(max(traces, key=os.path.getmtime))


def write_synthetic_shard(directory: str, n_tokens: int, vocab_size: int, seed: int) -> str:
  """An llm.c train shard of `n_tokens` random tokens."""
  tokens = np.random.default_rng(seed).integers(0, vocab_size, size=n_tokens)
  path = os.path.join(directory, "synthetic_train_000000.bin")
  shards.write_shard(path, tokens.astype(np.uint16))
  return path


Batches = Callable[[], grain.DatasetIterator]  # opens a new iterator of the pipeline's batches


def time_pipeline(open_batches: Batches, *, workers: int, batches: int, warmup: int) -> float:
  """Seconds per batch the Grain pipeline takes on the host, after its workers have started."""
  batch_iter = open_batches()
  try:
    for _ in range(max(warmup, workers)):  # worker i delivers batch i first
      next(batch_iter)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(batch_iter)
    return (time.perf_counter() - t0) / batches
  finally:
    batch_iter.close()  # stops the workers, which would otherwise slow what runs next


def time_loop(compiled_step: Callable, state: train_step.TrainState, open_batches: Batches,
              device: jax.Device, *, workers: int, iters: int, warmup: int
              ) -> tuple[train_step.TrainState, list[float], list[float]]:
  """Iteration and data-wait seconds of the step fed as the training loop feeds it.

  Each iteration is synced, so the device is idle while the host waits for the
  next batch: the wait measured is an upper bound on what the loop loses to data.
  """
  batch_iter = open_batches()
  try:
    for _ in range(max(warmup, workers)):
      state, _ = compiled_step(state, jax.device_put(next(batch_iter), device))
    jax.block_until_ready(state)
    times, waits = [], []
    for _ in range(iters):
      t0 = time.perf_counter()
      batch = jax.device_put(next(batch_iter), device)
      waits.append(time.perf_counter() - t0)
      state, step_metrics = compiled_step(state, batch)
      jax.block_until_ready((state, step_metrics))
      times.append(time.perf_counter() - t0)
    return state, times, waits
  finally:
    batch_iter.close()


def _git_revision() -> str | None:
  try:
    # The commit, marked '-dirty' where tracked files differ from it.
    out = subprocess.run(["git", "describe", "--always", "--dirty", "--exclude=*"],
                         capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  return out.stdout.strip()


def _check(iters: int, warmup: int, data_workers: int, peer: str | None) -> None:
  if iters < 1 or warmup < 1:
    raise UserError(f"--iters={iters} and --warmup={warmup} must both be >= 1 (warm-up also "
                    "starts Grain's workers)")
  if data_workers < 0:
    raise UserError(f"--data_workers={data_workers} must be >= 0")
  if peer not in (None, "torch"):
    raise UserError(f"--peer={peer!r}: the only peer is 'torch'")


def _time_peer(config: ml_collections.ConfigDict, *, iters: int, warmup: int,
               torch_compile: bool | None) -> dict[str, Any]:
  """The PyTorch peer's figures; it runs first and hands its memory back, so JAX then
  allocates on the GPU as it does in training (75% up front) and neither runs out."""
  from jaxgpt.interop import gpt2

  departures = gpt2.differences(GPTConfig.from_config(config)) + (
      [f"optimizer={config.optimizer}"] if config.optimizer != "adamw" else [])
  if departures:
    raise UserError(f"--peer=torch times GPT-2 with AdamW, and this config departs from it "
                    f"({', '.join(departures)}): the two would time different models")
  from jaxgpt.bench import gpu_report, torch_peer  # torch_peer imports torch

  # Asked in a process of its own: in this one, JAX's GPU client would take its 75% of the
  # card at once, before the peer runs.
  _, platform, about = gpu_report.device()
  if not platform:
    raise UserError(f"--peer=torch: JAX would not start ({about.split('; ')[0]})")
  device = torch_peer.peer_device()
  if device != _TORCH_DEVICE.get(platform):  # said before the peer's minutes, not after them
    raise UserError(f"--peer=torch: torch runs on {device!r} but JAX on {platform!r}: install "
                    "torch and jax builds for the same device")
  logging.info("timing the PyTorch peer")
  return torch_peer.measure(config, iters=iters, warmup=warmup, compile=torch_compile)


def _about(setup: train_step.TrainSetup, device: jax.Device) -> dict[str, Any]:
  """What was measured: code, device, model and batch."""
  step, model = setup.step, setup.step.model
  return {
      "git": _git_revision(), "jax_version": jax.__version__, "platform": device.platform,
      "device_kind": device.device_kind,
      "model": {k: getattr(model, k) for k in ("n_layer", "n_head", "n_embd", "block_size",
                                               "vocab_size", "bias", "dropout",
                                               "gelu_approximate", "attention")},
      "dtype": model.dtype, "gradient_accumulation_steps": step.gradient_accumulation_steps,
      "batch_size": step.batch_size,
      "tokens_per_iter": step.tokens_per_iter(1),
      "n_params": count_params(setup.abstract_state.params),
      "n_params_total": count_params(setup.abstract_state.params, non_embedding=False),
  }


def _peak_memory_bytes(device: jax.Device) -> int | None:
  stats = device.memory_stats()  # None on CPU
  return stats.get("peak_bytes_in_use") if stats else None


def measure(config: ml_collections.ConfigDict, *, iters: int, warmup: int, data_workers: int,
            peer: str | None = None, torch_compile: bool | None = None,
            peak_flops: float = 0.0, profile_dir: str | None = None) -> dict[str, Any]:
  """Every figure of one benchmark, as a flat-ish dict (see the module docstring)."""
  defaults.validate(config)
  _check(iters, warmup, data_workers, peer)
  peer_result = (_time_peer(config, iters=iters, warmup=warmup, torch_compile=torch_compile)
                 if peer else None)
  device = jax.devices()[0]
  config = attention.settle(config)  # a cuDNN that fails here falls back, as in training
  logging.info("compiling the train step")
  setup, state, batch, compiled_step, compile_s = ready_step(
      train_step.StepConfig.from_config(config), config.seed)
  logging.info("timing %d iterations on a synthetic batch", iters)
  state, step_times = time_step(compiled_step, state, batch, iters=iters, warmup=warmup)
  state, profile = trace_steps(compiled_step, state, batch, profile_dir)
  with tempfile.TemporaryDirectory(prefix="jaxgpt_bench_") as tmp:
    n_tokens = _SHARD_ITERS * setup.step.tokens_per_iter(1) + 1
    source = data.TokenWindows(
        [write_synthetic_shard(tmp, n_tokens, config.vocab_size, config.seed)], config.block_size)
    open_batches = lambda: iter(data.train_dataset(
        source, accum_steps=config.gradient_accumulation_steps, batch_size=config.batch_size,
        seed=config.seed,
        workers=data_workers, prefetch=config.data_prefetch))
    logging.info("timing the input pipeline (%d workers), then %d iterations fed by it",
                 data_workers, iters)
    pipeline_s = time_pipeline(open_batches, workers=data_workers, batches=iters, warmup=warmup)
    state, loop_times, waits = time_loop(compiled_step, state, open_batches, device,
                                         workers=data_workers, iters=iters, warmup=warmup)
  jax.block_until_ready(state)
  r = _about(setup, device)
  tokens_per_sec = r["tokens_per_iter"] / statistics.median(step_times)
  s = summary.summarize(config, device_kind=device.device_kind)
  flops_per_token, peak = s.flops_per_token, peak_flops or s.peak_flops
  r.update(
      iters=iters, warmup=warmup, compile_s=compile_s,
      ms_per_iter_median=1000 * statistics.median(step_times),
      ms_per_iter_mean=1000 * statistics.mean(step_times), tokens_per_sec=tokens_per_sec,
      flops_per_token=flops_per_token, peak_flops=peak,
      mfu=summary.mfu(tokens_per_sec, flops_per_token, peak, 1),
      peak_memory_bytes=_peak_memory_bytes(device),
      step_plan_bytes=train_step.memory_need(compiled_step).total,
      backward_residual_bytes=memory.backward_residual_bytes(setup.model.config,
                                                              config.batch_size),
      data_workers=data_workers, pipeline_tokens_per_sec=r["tokens_per_iter"] / pipeline_s,
      pipeline_ratio=r["tokens_per_iter"] / pipeline_s / tokens_per_sec,
      loop_ms_per_iter_median=1000 * statistics.median(loop_times),
      loop_ms_per_iter_mean=1000 * statistics.mean(loop_times),
      data_wait_ms_per_iter=1000 * statistics.mean(waits),
      data_wait_fraction=sum(waits) / sum(loop_times), profile=profile)
  if peer_result:
    peer_result["tokens_per_sec"] = r["tokens_per_iter"] / (
        peer_result["ms_per_iter_median"] / 1000)
    peer_result["mfu"] = summary.mfu(peer_result["tokens_per_sec"], flops_per_token, peak, 1)
    r["peer"] = peer_result
    r["jax_over_peer"] = tokens_per_sec / peer_result["tokens_per_sec"]
  return r
