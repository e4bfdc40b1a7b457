"""What an asynchronous checkpoint save costs the loop: step time alone and during a save."""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import jax
import ml_collections

from jaxgpt import attention, run_dir, train_step
from jaxgpt.bench import throughput


def checkpoint_overhead(config: ml_collections.ConfigDict, *, iters: int,
                        warmup: int) -> dict[str, Any]:
  """ms/iter of the step alone and while an async save of its state is being written.

  Also the time `save` blocks the loop (copying device buffers to the host) and
  the time until the save is on disk: of a run's every save but its first, which
  also compiles the fingerprints (~0.4 s once).
  """
  config = attention.settle(config)  # a cuDNN that fails here falls back, as in training
  _, state, batch, compiled_step, _ = throughput.ready_step(
      train_step.StepConfig.from_config(config), config.seed)
  state, alone = throughput.time_step(compiled_step, state, batch, iters=iters, warmup=warmup)
  with tempfile.TemporaryDirectory(prefix="jaxgpt_ckpt_bench_") as tmp:
    ckpts = run_dir.RunDir(tmp).checkpoints(keep=2)
    ckpts.save(0, state, None, {"bench": True})  # untimed: the first save compiles fingerprints
    ckpts.wait()
    t0 = time.perf_counter()
    ckpts.save(1, state, None, {"bench": True})
    blocked_s = time.perf_counter() - t0
    during = []
    while ckpts.manager.is_saving_in_progress() and len(during) < iters:
      state, times = throughput.time_step(compiled_step, state, batch, iters=1, warmup=0)
      during.extend(times)
    ckpts.wait()
    save_s = time.perf_counter() - t0
    ckpts.close()
  return {"device_kind": jax.devices()[0].device_kind,
          "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
          "ms_per_iter_alone": 1000 * statistics.median(alone),
          "ms_per_iter_during_save": 1000 * statistics.median(during) if during else None,
          "steps_during_save": len(during), "save_blocked_ms": 1000 * blocked_s,
          "save_total_s": save_s}
