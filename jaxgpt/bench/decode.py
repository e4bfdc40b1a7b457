"""Sampling speed: tokens/s of KV-cache decoding against recomputing the context per token."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from jaxgpt.inference import decoding
from jaxgpt.model import GPT, init_params

_SETTINGS = {"temperature": 1.0, "top_k": 200}


def _programs(model: GPT, params: Any, batch: int, new_tokens: dict[str, int]
              ) -> Iterator[tuple[str, int, Callable, tuple]]:
  """(method, new tokens, jitted function, its arguments) for a one-token prompt per row."""
  rng = jax.random.PRNGKey(0)
  prompt_BP, lengths_B = map(jnp.asarray, decoding.pad_prompts([[0]] * batch,
                                                               model.config.block_size))
  n = new_tokens["cache"]
  yield "cache", n, decoding.generate_padded, (
      (model, params, prompt_BP, lengths_B, rng),
      {"max_new_tokens": n, "top_p": None, "stop_token": None, **_SETTINGS})
  n = new_tokens["recompute"]
  yield "recompute", n, decoding.generate_recompute, (
      (model, params, jnp.zeros((batch, 1), jnp.int32), rng),
      {"max_new_tokens": n, **_SETTINGS})


def decode_rows(model: GPT, batch_sizes: list[int], *, cache_tokens: int,
                recompute_tokens: int) -> list[dict[str, Any]]:
  """Compile and run seconds and tokens/s per batch size and method, randomly initialised."""
  params = init_params(model, jax.random.PRNGKey(0))
  rows = []
  for batch in batch_sizes:
    for method, n, fn, (args, static) in _programs(
        model, params, batch, {"cache": cache_tokens, "recompute": recompute_tokens}):
      t0 = time.perf_counter()
      compiled = fn.lower(*args, **static).compile()
      compile_s = time.perf_counter() - t0
      jax.block_until_ready(compiled(*args[1:]))  # untimed: the first run's one-off costs
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args[1:]))
      run_s = time.perf_counter() - t0
      rows.append({"batch": batch, "method": method, "new_tokens": n, "compile_s": compile_s,
                   "run_s": run_s, "tokens_per_sec": batch * n / run_s})
  return rows


def table(rows: list[dict[str, Any]]) -> str:
  header = (f"{'batch':>5} {'method':>9} {'new tokens':>10} {'compile s':>9} {'run s':>8} "
            f"{'tokens/s':>9} {'per-row tok/s':>13}")
  lines = [header]
  lines += [f"{r['batch']:>5} {r['method']:>9} {r['new_tokens']:>10} {r['compile_s']:>9.1f} "
            f"{r['run_s']:>8.2f} {r['tokens_per_sec']:>9.1f} "
            f"{r['tokens_per_sec'] / r['batch']:>13.1f}" for r in rows]
  for batch in dict.fromkeys(r["batch"] for r in rows):
    rate = {r["method"]: r["tokens_per_sec"] for r in rows if r["batch"] == batch}
    lines.append(f"batch {batch}: cache is {rate['cache'] / rate['recompute']:.1f}x recompute "
                 "(tokens/s)")
  return "\n".join(lines)
