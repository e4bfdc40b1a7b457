"""How long to train: max_iters candidates and what each gives (tokens, epochs, FLOPs, time).

Chinchilla's ~20 tokens per parameter is the compute-optimal point; a small
model keeps improving well past it, as long as there is data. Repeating
data pays nearly as much as new data for up to ~4 epochs and little after
(Muennighoff et al. 2023, "Scaling Data-Constrained Language Models").
"""

from __future__ import annotations

import copy
import dataclasses
import math

import ml_collections

from jaxgpt import formatting, summary, token_files

MAX_USEFUL_EPOCHS = 4  # repeated tokens pay nearly as much as new ones up to ~4 epochs


def count_train_tokens(data_dir: str) -> int | None:
  """Tokens of the train split: the shards' lengths, else meta.json's count; None without both."""
  paths = token_files.find_shards(data_dir, "train")
  if paths:
    return sum(len(token_files.read_tokens(p)) for p in paths)
  meta = token_files.read_meta(data_dir) or {}
  tokens = meta.get("splits", {}).get("train", {}).get("tokens")
  return int(tokens) if tokens else None


def table(config: ml_collections.ConfigDict, candidates: list[int], *,
          train_tokens: int | None, tokens_per_sec: float | None,
          n_devices: int = 1, config_name: str = "") -> str:
  """One row per candidate max_iters (lr_decay_iters following it), then its warnings."""
  base = summary.summarize(config, train_tokens=train_tokens, n_devices=n_devices)
  rows = [(f"{'max_iters':>10} {'tokens':>9} {'epochs':>7} {'tok/param':>9} {'FLOPs':>9} "
          f"{'time':>8}")]
  warnings = []
  for max_iters in candidates:
    c = copy.deepcopy(config)  # keeps the recipe's ties: its warmup may follow max_iters
    with c.unlocked():
      c.max_iters = c.lr_decay_iters = max_iters
    s = dataclasses.replace(base, max_iters=max_iters)
    epochs = "?" if s.epochs is None else f"{s.epochs:.2f}"
    time_text = "?" if not tokens_per_sec else formatting.duration(s.tokens / tokens_per_sec)
    rows.append(f"{max_iters:>10,} {formatting.count(s.tokens):>9} {epochs:>7} "
                f"{summary.ratio(s.tokens_per_param):>9} {s.flops:>9.2e} {time_text:>8}")
    warnings += [f"max_iters={max_iters:,}: {w}"
                 for w in summary.check(c, s, config_name=config_name)]
  return "\n".join(rows + [f"warning: {w}" for w in warnings])


def suggestions(config: ml_collections.ConfigDict, train_tokens: int | None,
                n_devices: int = 1) -> tuple[list[int], list[str]]:
  """The max_iters worth comparing, and why: the recipe's own, Chinchilla's, the data's limit.

  Chinchilla's ~20 tokens per parameter is the compute-optimal point; a small
  model keeps improving well past it, as long as there is data. Repeating
  data pays nearly as much as new data for up to ~4 epochs and little after
  (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models").
  """
  base = summary.summarize(config, train_tokens=train_tokens, n_devices=n_devices)
  chinchilla = math.ceil(summary.CHINCHILLA_TOKENS_PER_PARAM * base.n_params / base.tokens_per_iter)
  candidates = {config.max_iters, chinchilla}
  notes = [(f"max_iters={chinchilla:,} gives ~{summary.CHINCHILLA_TOKENS_PER_PARAM} tokens per "
            "parameter (compute-optimal); a small model keeps improving past it while there is "
            "new data")]
  if train_tokens:
    limit = MAX_USEFUL_EPOCHS * train_tokens // base.tokens_per_iter
    candidates.add(limit)
    notes.append(f"max_iters={limit:,} is {MAX_USEFUL_EPOCHS} epochs of the "
                 f"{formatting.count(train_tokens)} train tokens: up to there repeated tokens pay "
                 "nearly as much as new ones, past it they stop paying (more data helps more)")
  return sorted(candidates), notes
