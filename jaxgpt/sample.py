"""Samples from a trained run or from GPT-2, with nanoGPT's sample.py flags.

  python -m jaxgpt.sample --out_dir=runs/x --start="Once upon a time" --num_samples=10
  python -m jaxgpt.sample --init_from=gpt2 --start=FILE:prompt.txt --stop_at_eot
  python -m jaxgpt.sample --init_from=nanogpt:out-shakespeare/ckpt.pt --start="ROMEO:"

Samples are decoded --batch_rows at a time with a KV cache (inference/decoding.py),
each batch printed as it is done; the decoding speed is measured by
`python -m jaxgpt.bench --config=configs/NAME.py --decode`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import jax
from absl import flags

from jaxgpt import cli, tokenizer
from jaxgpt.errors import UserError
from jaxgpt.inference import decoding
from jaxgpt.interop import weights
from jaxgpt.model import GPT


def read_start(start: str) -> str:
  """The prompt: the text itself, or a file's contents for FILE:path."""
  if not start.startswith("FILE:"):
    return start
  path = os.path.expanduser(start[len("FILE:"):])  # FILE:~/x, which no shell expands
  if not path:
    raise UserError("--start=FILE: names no file: give its path, --start=FILE:prompt.txt")
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except FileNotFoundError as e:
    raise UserError(f"--start=FILE:{path}: no such file") from e
  except UnicodeDecodeError as e:
    raise UserError(f"--start=FILE:{path}: not UTF-8 text ({e})") from None
  except OSError as e:
    raise UserError(f"--start=FILE:{path}: {e.strerror}") from None


def sample_texts(model: GPT, params: Any, start: str, *, num_samples: int, batch_rows: int,
                 max_new_tokens: int, temperature: float, top_k: int | None, top_p: float,
                 stop_at_eot: bool, seed: int) -> Iterator[str]:
  """num_samples completions of `start`, each with its prompt as nanoGPT prints them.

  They are decoded batch_rows at a time, so that one batch's memory, not num_samples', must
  fit the device. The first batch draws with the seed's key, as the closing sample does (up
  to batch_rows samples are those one batch always gave); batch i after it draws with
  fold_in(key, MAX_NEW_TOKENS + i), a key the first batch never draws with (decoding draws
  token j with fold_in(key, j)). The last batch is filled out to the others' rows (the
  extras dropped, and not waited for at stop_at_eot), so every batch runs one compiled program.
  """
  tokenizer.require_gpt2_vocabulary(model.config.vocab_size, "prompts and samples are")
  prompt = decoding.prompt_tokens(start)
  key = jax.random.PRNGKey(seed)
  rows = min(num_samples, batch_rows)
  for i, first in enumerate(range(0, num_samples, rows)):
    batch_key = jax.random.fold_in(key, decoding.MAX_NEW_TOKENS + i) if i else key
    tokens_BN = decoding.generate(
        model, params, [prompt] * rows, batch_key,
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        stop_token=tokenizer.EOT_TOKEN if stop_at_eot else None,
        kept_rows=min(rows, num_samples - first))
    for row in tokens_BN[:num_samples - first].tolist():
      if stop_at_eot and tokenizer.EOT_TOKEN in row:
        row = row[:row.index(tokenizer.EOT_TOKEN)]
      yield start + tokenizer.decode_whole_characters(row)


def _define_flags() -> None:
  weights.define_flags()
  flags.DEFINE_string("start", "\n", "Prompt text, or FILE:path to read it from a file.")
  flags.DEFINE_integer("num_samples", 10, "Samples to draw.", lower_bound=1)
  flags.DEFINE_integer("batch_rows", 32, "Samples decoded together: more is faster, until "
                       "the device's memory runs out.", lower_bound=1)
  flags.DEFINE_integer("max_new_tokens", 500, "Tokens generated per sample.", lower_bound=1)
  flags.DEFINE_float("temperature", decoding.TEMPERATURE,
                     "1.0 as trained, lower is surer, 0 greedy.", lower_bound=0)
  flags.DEFINE_integer("top_k", decoding.TOP_K, "Keep only the k most likely tokens; 0 keeps all.",
                       lower_bound=0)
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: keep the most likely tokens holding "
                     "this much probability; 1.0 keeps all.")
  flags.DEFINE_bool("stop_at_eot", False, "End a sample at <|endoftext|>.")
  flags.DEFINE_integer("seed", 1337, "Random seed: the same seed (and batch_rows) gives the "
                       "same samples.",
                       lower_bound=0, upper_bound=2**32 - 1)


def main() -> None:
  f = flags.FLAGS
  start = read_start(f.start)
  decoding.check_settings(f.max_new_tokens, f.temperature, f.top_k or None, f.top_p)
  _, model, params, source = weights.from_flags()
  tokenizer.require_gpt2_vocabulary(model.config.vocab_size, "prompts and samples are")  # first
  print(f"sampling {f.num_samples} x {f.max_new_tokens} tokens from {source}", file=sys.stderr,
        flush=True)
  texts = sample_texts(model, params, start, num_samples=f.num_samples,
                       batch_rows=f.batch_rows, max_new_tokens=f.max_new_tokens,
                       temperature=f.temperature, top_k=f.top_k or None, top_p=f.top_p,
                       stop_at_eot=f.stop_at_eot, seed=f.seed)
  for text in texts:
    print(text)
    print("---------------", flush=True)


if __name__ == "__main__":
  _define_flags()
  cli.run(main, beside_training=True)
