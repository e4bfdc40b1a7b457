"""Samples from a trained run or from GPT-2, with nanoGPT's sample.py flags.

  python -m jaxgpt.sample --out_dir=runs/x --start="Once upon a time" --num_samples=10
  python -m jaxgpt.sample --init_from=gpt2 --start=FILE:prompt.txt --stop_at_eot
  python -m jaxgpt.sample --benchmark   # decode tokens/s of GPT-2 124M, cache vs recompute

All samples are decoded in one batch with a KV cache (see sampling.py).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from jaxgpt import defaults, hf, sampling, tokenizer
from jaxgpt.model import GPT, GPTConfig, init_params
from jaxgpt.train import restore_params

_OUT_DIR = flags.DEFINE_string("out_dir", "out", "Run directory whose checkpoints to sample.")
_INIT_FROM = flags.DEFINE_enum("init_from", "resume", ("resume",) + defaults.GPT2_MODELS,
                               "'resume': a checkpoint of out_dir; 'gpt2*': OpenAI's weights.")
_HF_DIR = flags.DEFINE_string("hf_checkpoint_dir", "",
                              "init_from=gpt2*: local Hugging Face checkpoint; '' downloads it.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to sample; default the latest.")
_START = flags.DEFINE_string("start", "\n", "Prompt text, or FILE:path to read it from a file.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10, "Samples to draw (one batch).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 500, "Tokens generated per sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "1.0 as trained, lower is surer, 0 greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 200, "Keep only the k most likely tokens; 0 keeps all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: keep the most likely tokens "
                            "holding this much probability; 1.0 keeps all.")
_STOP_AT_EOT = flags.DEFINE_bool("stop_at_eot", False, "End a sample at <|endoftext|>.")
_SEED = flags.DEFINE_integer("seed", 1337, "Random seed: the same seed gives the same samples.")
_DTYPE = flags.DEFINE_enum("dtype", None, defaults.DTYPES,
                           "Activation dtype; default the run's (float32 for GPT-2).")
_BENCHMARK = flags.DEFINE_bool("benchmark", False, "Measure decoding tokens/s of a randomly "
                               "initialised GPT-2 124M, with the KV cache and recomputing.")
_BENCH_BATCHES = flags.DEFINE_list("benchmark_batch_sizes", ["1", "16"], "Benchmark batch sizes.")
_BENCH_RECOMPUTE = flags.DEFINE_integer("benchmark_recompute_tokens", 10,
                                        "Benchmark: new tokens for the slow recompute baseline.")


def read_start(start: str) -> str:
  """The prompt: the text itself, or a file's contents for FILE:path."""
  if not start.startswith("FILE:"):
    return start
  path = start[len("FILE:"):]
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--start=FILE:{path}: no such file") from e


def load_model() -> tuple[GPT, Any, str]:
  """The model and params the flags name, and where they came from."""
  if _INIT_FROM.value == "resume":
    config, params, step = restore_params(_OUT_DIR.value, _STEP.value)
    source = f"{_OUT_DIR.value} step {step}"
  else:
    source = hf.checkpoint_dir(_INIT_FROM.value, _HF_DIR.value)
    arch, params = hf.load(source)
    config = defaults.get_config()
    config.update(arch, dropout=0.0, dtype="float32")
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  return GPT(GPTConfig.from_config(config)), params, source


def sample_texts(model: GPT, params: Any, start: str, seed: int) -> list[str]:
  """num_samples completions of `start`, each with its prompt as nanoGPT prints them."""
  enc = tokenizer.gpt2()
  prompt = enc.encode(start, allowed_special={"<|endoftext|>"})
  tokens_BN = sampling.generate(
      model, params, [prompt] * _NUM_SAMPLES.value, jax.random.PRNGKey(seed),
      max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value or None, top_p=_TOP_P.value,
      stop_token=tokenizer.EOT_TOKEN if _STOP_AT_EOT.value else None)
  texts = []
  for row in tokens_BN.tolist():
    if _STOP_AT_EOT.value and tokenizer.EOT_TOKEN in row:
      row = row[:row.index(tokenizer.EOT_TOKEN)]
    texts.append(start + enc.decode(row))
  return texts


def benchmark() -> None:
  """Prints decoding tokens/s of GPT-2 124M (random init) per batch size, cache vs recompute."""
  config = defaults.get_config()
  config.dtype = _DTYPE.value or "float32"
  model = GPT(GPTConfig.from_config(config))
  params = init_params(model, jax.random.PRNGKey(0))
  print(f"device: {jax.devices()[0].device_kind}, dtype {config.dtype}, prompt 1 token")
  print(f"{'batch':>5} {'method':>9} {'new tokens':>10} {'compile s':>9} {'run s':>8} "
        f"{'tokens/s':>9} {'per-row tok/s':>13}")
  for batch in map(int, _BENCH_BATCHES.value):
    rates = {}
    for method, n in (("cache", _MAX_NEW_TOKENS.value), ("recompute", _BENCH_RECOMPUTE.value)):
      rng = jax.random.PRNGKey(0)
      if method == "cache":
        prompt_BP, lengths_B = map(jnp.asarray, sampling.pad_prompts([[0]] * batch,
                                                                     config.block_size))
        args = (params, prompt_BP, lengths_B, rng)
        fn = sampling._generate
        static = {"max_new_tokens": n, "temperature": 1.0, "top_k": 200, "top_p": None,
                  "stop_token": None}
      else:
        args = (params, jnp.zeros((batch, 1), jnp.int32), rng)
        fn = sampling.generate_recompute
        static = {"max_new_tokens": n, "temperature": 1.0, "top_k": 200}
      t0 = time.perf_counter()
      compiled = fn.lower(model, *args, **static).compile()
      t1 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      t2 = time.perf_counter()
      rates[method] = batch * n / (t2 - t1)
      print(f"{batch:>5} {method:>9} {n:>10} {t1 - t0:>9.1f} {t2 - t1:>8.2f} "
            f"{rates[method]:>9.1f} {rates[method] / batch:>13.1f}")
    print(f"batch {batch}: cache is {rates['cache'] / rates['recompute']:.1f}x recompute "
          "(tokens/s)")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _BENCHMARK.value:
    benchmark()
    return
  start = read_start(_START.value)
  model, params, source = load_model()
  print(f"sampling {_NUM_SAMPLES.value} x {_MAX_NEW_TOKENS.value} tokens from {source}",
        file=sys.stderr, flush=True)
  for text in sample_texts(model, params, start, _SEED.value):
    print(text)
    print("---------------", flush=True)


if __name__ == "__main__":
  app.run(main)
