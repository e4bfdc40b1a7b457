"""Speed of the train step: ms/iter, tokens/s, MFU, compile time, memory, input pipeline.

  python -m jaxgpt.bench --config=configs/gpt2_124m.py [--config.KEY=VALUE ...]
      [--steps=50] [--warmup=5] [--data_workers=2] [--peer=torch] [--peak_flops=FLOP/s]
      [--json_out=PATH]

Times the very step `train.train` runs (same model, optimizer, state, jit,
donation and ahead-of-time compilation) on one device, fed a synthetic batch
of the config's shape that already sits on the device; then the Grain
pipeline alone over a synthetic llm.c shard; then the step fed by that
pipeline as the training loop feeds it, to show time spent waiting for data.
`--peer=torch` first times the same model, tokens per step and optimizer in
PyTorch on the same device (`jaxgpt.bench_torch`). Prints a summary and one
JSON line of every figure (appended to `--json_out` too).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxgpt import checkpoint, data, defaults, metrics, sharding, shards
from jaxgpt.model import GPT, GPTConfig, attention_implementation, count_params, init_params
from jaxgpt.optim import make_optimizer
from jaxgpt.train import TrainState, compile_train_step, create_train_state, make_train_step

_SHARD_ITERS = 8  # the synthetic shard holds this many iterations of tokens
GiB = 2**30

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed iterations (each of the three runs).")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed iterations before each timed run.")
_DATA_WORKERS = flags.DEFINE_integer("data_workers", 2, "Grain worker processes for the pipeline "
                                     "runs (0: read in the main process).")
_PEER = flags.DEFINE_enum("peer", None, ["torch"], "Also time the same model in this framework.")
_TORCH_COMPILE = flags.DEFINE_boolean("torch_compile", None, "torch.compile the peer "
                                      "(default: on CUDA, off on CPU where compiling is slow).")
_PEAK_FLOPS = flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s of the device for MFU; 0 uses "
                                 "config.peak_flops, then the table by device kind.")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Append the JSON line of figures to this file.")
_CHECKPOINT = flags.DEFINE_boolean(
    "checkpoint", False, "Instead of the usual figures, time steps with and without an "
    "asynchronous checkpoint save in flight.")
_MEMORY = flags.DEFINE_boolean(
    "memory", False, "Instead of timing, print the activations one micro-batch keeps for its "
    "backward pass under each remat policy, with the loss in chunks and whole (no device "
    "needed: counted from the program).")
_COLLECTIVES = flags.DEFINE_boolean(
    "collectives", False, "Instead of timing, compile the step for every device under dp and "
    "fsdp and report per-device memory and the bytes its collectives move (run with simulated "
    "devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu).")


def _median_mean_ms(times: list[float]) -> tuple[float, float]:
  return 1000 * statistics.median(times), 1000 * statistics.mean(times)


def time_step(step: Callable, state: TrainState, batch: jax.Array, *, steps: int,
              warmup: int) -> tuple[TrainState, list[float]]:
  """Seconds per iteration of `steps` calls on one batch, each synced on its own results."""
  for _ in range(warmup):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, step_metrics = step(state, batch)
    jax.block_until_ready((state, step_metrics))
    times.append(time.perf_counter() - t0)
  return state, times


def write_synthetic_shard(directory: str, config: ml_collections.ConfigDict) -> str:
  """An llm.c train shard of random tokens, _SHARD_ITERS iterations long."""
  tokens_per_iter = config.gradient_accumulation_steps * config.batch_size * config.block_size
  rng = np.random.default_rng(config.seed)
  tokens = rng.integers(0, config.vocab_size, size=_SHARD_ITERS * tokens_per_iter + 1)
  path = os.path.join(directory, "synthetic_train_000000.bin")
  shards.write_shard(path, tokens.astype(np.uint16))
  return path


def _train_dataset(source: data.TokenWindows, config: ml_collections.ConfigDict,
                   workers: int) -> grain.IterDataset:
  return data.train_dataset(source, accum_steps=config.gradient_accumulation_steps,
                            batch_size=config.batch_size, seed=config.seed, workers=workers,
                            prefetch=config.data_prefetch)


def time_pipeline(source: data.TokenWindows, config: ml_collections.ConfigDict, *, workers: int,
                  batches: int, warmup: int) -> float:
  """Seconds per batch the Grain pipeline takes on the host, after its workers have started."""
  batch_iter = iter(_train_dataset(source, config, workers))
  try:
    for _ in range(max(warmup, workers)):  # worker i delivers batch i first
      next(batch_iter)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(batch_iter)
    return (time.perf_counter() - t0) / batches
  finally:
    batch_iter.close()  # stops the workers, which would otherwise slow what runs next


def time_loop(step: Callable, state: TrainState, source: data.TokenWindows,
              config: ml_collections.ConfigDict, device: jax.Device, *, workers: int, steps: int,
              warmup: int) -> tuple[TrainState, list[float], list[float]]:
  """Iteration and data-wait seconds of the step fed as `train.train` feeds it.

  Each iteration is synced, so the device is idle while the host waits for the
  next batch: the wait measured is an upper bound on what the loop loses to data.
  """
  batch_iter = iter(_train_dataset(source, config, workers))
  try:
    for _ in range(max(warmup, workers)):
      state, _ = step(state, jax.device_put(next(batch_iter), device))
    jax.block_until_ready(state)
    times, waits = [], []
    for _ in range(steps):
      t0 = time.perf_counter()
      batch = jax.device_put(next(batch_iter), device)
      waits.append(time.perf_counter() - t0)
      state, step_metrics = step(state, batch)
      jax.block_until_ready((state, step_metrics))
      times.append(time.perf_counter() - t0)
    return state, times, waits
  finally:
    batch_iter.close()


_COLLECTIVE_OP = re.compile(r"= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                            r"collective-permute)(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_CALLED = re.compile(r"(?:to_apply|calls|body|condition|branch_computations)=\{?%?([\w.\-]+)")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def _result_bytes(result_type: str) -> int:
  return sum(_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
             for dtype, dims in _ARRAY.findall(result_type))


def _sent_bytes(op: str, result: int, n: int) -> float:
  """Bytes one device sends for a collective over n devices, by the ring algorithm."""
  return {"all-reduce": 2 * (n - 1) / n * result, "all-gather": (n - 1) / n * result,
          "reduce-scatter": (n - 1) * result}.get(op, result)


def collectives(hlo_text: str, n_devices: int, loop_trips: int) -> dict[str, float]:
  """Bytes each device sends per iteration, by collective kind, from compiled HLO text.

  Collectives inside a while loop's body (the micro-batch scan) count once per
  trip; `loop_trips` is the number of micro-batches.
  """
  ops: dict[str, list[tuple[str, int]]] = {}
  calls: dict[str, set[str]] = {}
  bodies: set[str] = set()
  current = ""
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
      continue
    calls.setdefault(current, set()).update(_CALLED.findall(line))
    bodies.update(re.findall(r"body=%?([\w.\-]+)", line))
    op = _COLLECTIVE_OP.search(line)
    if op:
      ops.setdefault(current, []).append((op.group(2), _result_bytes(op.group(1))))
  in_loop, todo = set(), list(bodies)
  while todo:
    name = todo.pop()
    if name not in in_loop:
      in_loop.add(name)
      todo.extend(calls.get(name, ()))
  sent: dict[str, float] = {}
  for computation, found in ops.items():
    trips = loop_trips if computation in in_loop else 1
    for kind, result in found:
      sent[kind] = sent.get(kind, 0.0) + trips * _sent_bytes(kind, result, n_devices)
  return sent


def sharding_report(config: ml_collections.ConfigDict, mode: str) -> dict[str, Any]:
  """Per-device memory and collective traffic of the train step over every device."""
  config = config.copy_and_resolve_references()
  config.sharding = mode
  model = GPT(GPTConfig.from_config(config))
  tx = make_optimizer(config)
  mesh = sharding.make_mesh()
  abstract = jax.eval_shape(lambda: create_train_state(model, tx, config.seed))
  shardings = sharding.state_shardings(abstract, mesh, mode)
  state = checkpoint.abstract_like(abstract, shardings)
  A, T, n = config.gradient_accumulation_steps, config.block_size, mesh.size
  batch = jax.ShapeDtypeStruct((A, config.batch_size * n, T + 1), np.uint16,
                               sharding=sharding.batch_sharding(mesh, ndim=3, batch_axis=1))
  compiled = compile_train_step(model, tx, state, batch, shardings, mesh, mode)
  memory = compiled.memory_analysis()
  return {"mode": mode, "devices": n, "batch_per_device": config.batch_size,
          "gradient_accumulation_steps": A,
          "argument_bytes": memory.argument_size_in_bytes,
          "temp_bytes": memory.temp_size_in_bytes,
          "sent_bytes_per_iter": collectives(compiled.as_text(), n, A)}


def backward_residual_bytes(config: ml_collections.ConfigDict) -> int:
  """Bytes one micro-batch's backward pass keeps from its forward pass, params included.

  Counted from the program (the arrays `jax.vjp` closes over), so it is the
  same on every backend: the activation memory that remat and the chunked loss
  cut, before XLA fuses anything. The step's peak adds the params, AdamW state
  and gradient sums (16 bytes a parameter) and the largest op's workspace.
  """
  model = GPT(GPTConfig.from_config(config))
  tokens_BT = jax.ShapeDtypeStruct((config.batch_size, config.block_size), jnp.int32)
  params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))

  def backward_fn(p: Any, x_BT: jax.Array) -> Callable:
    return jax.vjp(lambda p: model.apply({"params": p}, x_BT, targets_BT=x_BT), p)[1]

  residuals = jax.eval_shape(backward_fn, params, tokens_BT)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals))


def memory_report(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """`backward_residual_bytes` under every remat policy, with the config's loss chunks and none."""
  rows = []
  for remat in defaults.REMAT_POLICIES:
    for chunk in dict.fromkeys((config.loss_chunk_size, 0)):
      variant = config.copy_and_resolve_references()
      variant.unlock()
      variant.update(remat=remat, loss_chunk_size=chunk)
      rows.append({"remat": remat, "loss_chunk_size": chunk,
                   "residual_bytes": backward_residual_bytes(variant)})
  return rows


def checkpoint_overhead(config: ml_collections.ConfigDict, *, steps: int,
                        warmup: int) -> dict[str, Any]:
  """ms/iter of the step alone and while an async save of its state is being written.

  Also the time `save` blocks the loop (copying device buffers to the host) and
  the time until the save is on disk.
  """
  model = GPT(GPTConfig.from_config(config))
  tx = make_optimizer(config)
  device = jax.devices()[0]
  state = create_train_state(model, tx, config.seed)
  A, B, T = config.gradient_accumulation_steps, config.batch_size, config.block_size
  batch = jax.device_put(np.random.default_rng(0).integers(
      0, config.vocab_size, (A, B, T + 1)).astype(np.uint16), device)
  step = make_train_step(model, tx).lower(state, batch).compile()
  state, alone = time_step(step, state, batch, steps=steps, warmup=warmup)
  with tempfile.TemporaryDirectory(prefix="jaxgpt_ckpt_bench_") as tmp:
    ckpts = checkpoint.RunCheckpoints(tmp, keep=1)
    t0 = time.perf_counter()
    ckpts.save(1, state, None, {"bench": True}, None)
    blocked_s = time.perf_counter() - t0
    during = []
    while ckpts.manager.is_saving_in_progress() and len(during) < steps:
      state, times = time_step(step, state, batch, steps=1, warmup=0)
      during.extend(times)
    ckpts.wait()
    save_s = time.perf_counter() - t0
    ckpts.close()
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return {"device_kind": device.device_kind, "state_bytes": state_bytes,
          "ms_per_iter_alone": 1000 * statistics.median(alone),
          "ms_per_iter_during_save": 1000 * statistics.median(during) if during else None,
          "steps_during_save": len(during), "save_blocked_ms": 1000 * blocked_s,
          "save_total_s": save_s}


def _peak_memory_bytes(device: jax.Device) -> int | None:
  stats = device.memory_stats()  # None on CPU
  return stats.get("peak_bytes_in_use") if stats else None


def _git_revision() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  return out.stdout.strip()


_TORCH_DEVICE = {"gpu": "cuda", "cpu": "cpu"}  # JAX platform -> the torch device of the peer


def run(config: ml_collections.ConfigDict, *, steps: int, warmup: int, data_workers: int,
        peer: str | None = None, torch_compile: bool | None = None,
        peak_flops: float = 0.0) -> dict[str, Any]:
  """Every figure of one benchmark, as a flat-ish dict (see the module docstring)."""
  defaults.validate(config)
  if steps < 1 or warmup < 1:
    raise ValueError(f"steps={steps} and warmup={warmup} must both be >= 1 (warm-up also "
                     "starts Grain's workers)")
  if data_workers < 0:
    raise ValueError(f"data_workers={data_workers} must be >= 0")
  if peer not in (None, "torch"):
    raise ValueError(f"peer={peer!r}: the only peer is 'torch'")
  peer_result = None
  if peer == "torch":
    from jaxgpt import bench_torch  # imports torch

    # The peer runs first and hands its memory back, so JAX then allocates on the
    # GPU as it does in training (75% up front) and neither runs out.
    logging.info("timing the PyTorch peer")
    peer_result = bench_torch.run(config, steps=steps, warmup=warmup, compile=torch_compile)
  device = jax.devices()[0]
  if peer_result and peer_result["device"] != _TORCH_DEVICE.get(device.platform):
    raise RuntimeError(f"the PyTorch peer ran on {peer_result['device']!r} but JAX runs on "
                       f"{device.platform!r}: install torch and jax builds for the same device")
  A, B, T = config.gradient_accumulation_steps, config.batch_size, config.block_size
  tokens_per_iter = A * B * T

  model = GPT(GPTConfig.from_config(config))
  tx = make_optimizer(config)
  state = create_train_state(model, tx, config.seed)
  n_params = count_params(state.params)
  batch = jax.device_put(jax.random.randint(jax.random.PRNGKey(config.seed), (A, B, T + 1), 0,
                                            config.vocab_size, dtype=jnp.int32).astype(jnp.uint16),
                         device)  # the dtype and shape the pipeline delivers

  logging.info("compiling the train step")
  t0 = time.perf_counter()
  step = make_train_step(model, tx).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  logging.info("timing %d steps on a synthetic batch", steps)
  state, step_times = time_step(step, state, batch, steps=steps, warmup=warmup)
  ms_median, ms_mean = _median_mean_ms(step_times)
  tokens_per_sec = tokens_per_iter / (ms_median / 1000)
  flops_per_token = metrics.flops_per_token(n_params, config.n_layer, config.n_head,
                                            config.n_embd, config.block_size)
  peak = metrics.peak_flops(device.device_kind, peak_flops or config.peak_flops)

  with tempfile.TemporaryDirectory(prefix="jaxgpt_bench_") as tmp:
    source = data.TokenWindows([write_synthetic_shard(tmp, config)], config.block_size)
    logging.info("timing the input pipeline (%d workers)", data_workers)
    pipeline_s = time_pipeline(source, config, workers=data_workers, batches=steps,
                               warmup=warmup)
    logging.info("timing %d steps fed by the input pipeline", steps)
    state, loop_times, waits = time_loop(step, state, source, config, device,
                                         workers=data_workers, steps=steps, warmup=warmup)
  jax.block_until_ready(state)
  loop_median, loop_mean = _median_mean_ms(loop_times)
  pipeline_tokens_per_sec = tokens_per_iter / pipeline_s

  result: dict[str, Any] = {
      "git": _git_revision(),
      "jax_version": jax.__version__,
      "platform": device.platform,
      "device_kind": device.device_kind,
      "model": {k: config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                       "bias", "dropout", "gelu_approximate", "attention")},
      "dtype": config.dtype,
      "gradient_accumulation_steps": A,
      "batch_size": B,
      "tokens_per_iter": tokens_per_iter,
      "n_params": n_params,
      "n_params_total": count_params(state.params, non_embedding=False),
      "steps": steps,
      "warmup": warmup,
      "compile_s": compile_s,
      "ms_per_iter_median": ms_median,
      "ms_per_iter_mean": ms_mean,
      "tokens_per_sec": tokens_per_sec,
      "flops_per_token": flops_per_token,
      "peak_flops": peak,
      "mfu": metrics.mfu(tokens_per_sec, flops_per_token, peak, 1),
      "peak_memory_bytes": _peak_memory_bytes(device),
      "backward_residual_bytes": backward_residual_bytes(config),
      "data_workers": data_workers,
      "pipeline_tokens_per_sec": pipeline_tokens_per_sec,
      "pipeline_ratio": pipeline_tokens_per_sec / tokens_per_sec,
      "loop_ms_per_iter_median": loop_median,
      "loop_ms_per_iter_mean": loop_mean,
      "data_wait_ms_per_iter": 1000 * statistics.mean(waits),
      "data_wait_fraction": sum(waits) / sum(loop_times),
  }
  if peer_result:
    peer_result["tokens_per_sec"] = tokens_per_iter / (peer_result["ms_per_iter_median"] / 1000)
    peer_result["mfu"] = metrics.mfu(peer_result["tokens_per_sec"], flops_per_token, peak, 1)
    result["peer"] = peer_result
    result["jax_over_peer"] = tokens_per_sec / peer_result["tokens_per_sec"]
  return result


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def _gib(x: int | None) -> str:
  return "n/a" if x is None else f"{x / GiB:.2f} GiB"


def summary(r: dict[str, Any]) -> str:
  """The human-readable lines of a result."""
  m = r["model"]
  peak = "" if r["peak_flops"] is None else f" of {r['peak_flops'] / 1e12:.0f} TFLOP/s"
  lines = [
      (f"model: {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, block "
      f"{m['block_size']}, {r['n_params'] / 1e6:.2f}M params, {r['dtype']}"),
      f"device: {r['device_kind']} ({r['platform']}), jax {r['jax_version']}, git {r['git']}",
      (f"batch: {r['gradient_accumulation_steps']} x {r['batch_size']} x {m['block_size']} = "
      f"{r['tokens_per_iter']:,} tokens/iter"),
      f"compile: {r['compile_s']:.1f} s",
      (f"step: {r['ms_per_iter_median']:.1f} ms/iter median ({r['ms_per_iter_mean']:.1f} mean) "
      f"over {r['steps']} steps after {r['warmup']}; {r['tokens_per_sec']:,.0f} tokens/s; "
      f"MFU {_pct(r['mfu'])}{peak}"),
      (f"peak device memory: {_gib(r['peak_memory_bytes'])}; kept for the backward pass: "
       f"{_gib(r['backward_residual_bytes'])} per micro-batch"),
      (f"input pipeline ({r['data_workers']} workers): {r['pipeline_tokens_per_sec']:,.0f} "
      f"tokens/s, {r['pipeline_ratio']:.1f}x what the step consumes"),
      (f"step fed by the pipeline: {r['loop_ms_per_iter_median']:.1f} ms/iter median, "
      f"waiting for data {r['data_wait_ms_per_iter']:.2f} ms/iter "
      f"({_pct(r['data_wait_fraction'])})"),
  ]
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  if _CHECKPOINT.value:
    report = checkpoint_overhead(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value)
    during = report["ms_per_iter_during_save"]
    print(f"{report['device_kind']}: state {_gib(report['state_bytes'])}; step "
          f"{report['ms_per_iter_alone']:.1f} ms/iter alone, "
          f"{'n/a' if during is None else f'{during:.1f}'} ms/iter during the save "
          f"({report['steps_during_save']} steps); save blocked the loop "
          f"{report['save_blocked_ms']:.0f} ms, on disk after {report['save_total_s']:.2f} s",
          flush=True)
    print(json.dumps(report), flush=True)
    return
  if _MEMORY.value:
    config = _CONFIG.value
    attention = attention_implementation(config.attention, config.dtype,
                                         config.n_embd // config.n_head, jax.devices()[0])
    print(f"kept for the backward pass of one {config.batch_size} x {config.block_size} "
          f"micro-batch ({config.dtype}, {attention} attention):", flush=True)
    for row in memory_report(config):
      print(f"  remat {row['remat']:<5} loss chunks {row['loss_chunk_size'] or 'none':<6} "
            f"{_gib(row['residual_bytes'])}", flush=True)
    return
  if _COLLECTIVES.value:
    for mode in ("dp", "fsdp"):
      report = sharding_report(_CONFIG.value, mode)
      sent = ", ".join(f"{k} {v / GiB:.3f} GiB" for k, v in report["sent_bytes_per_iter"].items())
      print(f"{mode} on {report['devices']} devices, {report['gradient_accumulation_steps']} x "
            f"{report['batch_per_device']} per device: params+state "
            f"{_gib(report['argument_bytes'])}"
            f", temporaries {_gib(report['temp_bytes'])} per device; sent per device per "
            f"iteration: {sent}", flush=True)
      print(json.dumps(report), flush=True)
    return
  result = run(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value,
               data_workers=_DATA_WORKERS.value, peer=_PEER.value,
               torch_compile=_TORCH_COMPILE.value, peak_flops=_PEAK_FLOPS.value)
  result["config"] = config_flags.get_config_filename(flags.FLAGS["config"])
  result["overrides"] = config_flags.get_override_values(flags.FLAGS["config"])
  line = json.dumps(result)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "a", encoding="utf-8") as f:
      f.write(line + "\n")
  print(summary(result), flush=True)
  print(line, flush=True)


if __name__ == "__main__":
  app.run(main)
