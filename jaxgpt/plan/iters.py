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
from typing import Any

import ml_collections

from jaxgpt import data, defaults, formatting, summary, token_files
from jaxgpt.errors import UserError

MAX_USEFUL_EPOCHS = 4  # repeated tokens pay nearly as much as new ones up to ~4 epochs


def count_train_tokens(data_dir: str, block_size: int) -> int | None:
  """Tokens of one pass over the train split: its windows' (as the launch log counts them: a
  file's tail past its last window goes unread), else meta.json's count; None without both."""
  paths = token_files.find_shards(data_dir, "train")
  if paths:
    return len(data.TokenWindows(paths, block_size)) * block_size
  tokens = token_files.split_record(token_files.read_meta(data_dir) or {}, "train").get("tokens")
  return tokens if isinstance(tokens, int) and tokens > 0 else None


def measured_devices(run_config: dict[str, Any] | None, tokens_per_iter: float) -> int | None:
  """The devices of the run that logged `tokens_per_iter` (from `report.last_layout`): that over one
  device's share (from its config.json, the last layout's). None where that is no whole
  count, or there is no config.json."""
  if not run_config:
    return None
  share = [run_config.get(k) for k in ("gradient_accumulation_steps", "batch_size", "block_size")]
  if not all(type(k) is int and k > 0 for k in share):  # a config.json edited by hand
    return None
  n = tokens_per_iter / math.prod(share)
  return int(n) if n >= 1 and n == int(n) else None


def table(config: ml_collections.ConfigDict, base: summary.Summary, candidates: list[int], *,
          tokens_per_sec: float | None, config_file: str = "") -> str:
  """One row per candidate max_iters (lr_decay_iters and a tied warmup following it, as they
  do a --config.max_iters override), then its warnings, a candidate launch.py would refuse
  among them; `base` is the config's summary."""
  rows = [(f"{'max_iters':>10} {'tokens':>9} {'epochs':>7} {'tok/param':>9} {'FLOPs':>9} "
          f"{'time':>8}")]
  said = {}  # each candidate's warnings
  for max_iters in candidates:
    c, refused = candidate(config, max_iters)
    s = dataclasses.replace(base, max_iters=max_iters)
    epochs = "?" if s.epochs is None else f"{s.epochs:.2f}"
    time_text = "?" if not tokens_per_sec else formatting.duration(s.tokens / tokens_per_sec)
    rows.append(f"{max_iters:>10,} {formatting.count(s.tokens):>9} {epochs:>7} "
                f"{summary.ratio(s.tokens_per_param):>9} {s.flops:>9.2e} {time_text:>8}")
    said[max_iters] = ([f"launch.py refuses it: {refused}"] if refused else []) + summary.check(
        c, s, config_file=config_file)
  everyone = [w for w in said[candidates[0]] if all(w in ws for ws in said.values())]
  warnings = everyone + [f"max_iters={m:,}: {w}" for m, ws in said.items() for w in ws
                         if w not in everyone]
  return "\n".join(rows + [f"warning: {w}" for w in warnings])


def candidate(config: ml_collections.ConfigDict, max_iters: int
              ) -> tuple[ml_collections.ConfigDict, str | None]:
  """The config trained for `max_iters`, as a --config.max_iters override makes it (the
  recipe's ties kept: its warmup and decay may follow max_iters), and why launch.py would
  refuse it, or None."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.max_iters = max_iters
  try:
    defaults.validate(c)
  except UserError as e:
    return c, str(e)
  return c, None


def _chinchilla_iters(base: summary.Summary) -> int:
  """The iterations that train on ~20 tokens per parameter (Chinchilla's)."""
  return math.ceil(summary.CHINCHILLA_TOKENS_PER_PARAM * base.n_params / base.tokens_per_iter)


def suggestions(base: summary.Summary) -> tuple[list[int], list[str]]:
  """The max_iters worth comparing, and why: the recipe's own, Chinchilla's, the data's limit
  (the module's docstring says why those)."""
  chinchilla = _chinchilla_iters(base)
  candidates = {base.max_iters, chinchilla} - {0}  # 0: an evaluation-only recipe
  train_tokens = base.train_tokens
  notes = [(f"max_iters={chinchilla:,} gives ~{summary.CHINCHILLA_TOKENS_PER_PARAM} tokens per "
            "parameter (compute-optimal); a small model keeps improving past it while there is "
            "new data")]
  limit = train_tokens and MAX_USEFUL_EPOCHS * train_tokens // base.tokens_per_iter
  if limit:
    candidates.add(limit)
    notes.append(f"max_iters={limit:,} is {limit * base.tokens_per_iter / train_tokens:.2f} "
                 f"epochs of the {formatting.count(train_tokens)} train tokens, the most within "
                 f"{MAX_USEFUL_EPOCHS}: up to there repeated tokens pay nearly as much as new "
                 "ones, past it they stop paying (more data helps more)")
  elif train_tokens:
    notes.append(f"one iteration's {base.tokens_per_iter:,} tokens are more than "
                 f"{MAX_USEFUL_EPOCHS} epochs of the {formatting.count(train_tokens)} train "
                 "tokens: more data would pay more than any max_iters")
  return sorted(candidates), notes


def verdict(base: summary.Summary, candidates: list[int]) -> str:
  """Which of the candidates to train for, and why, in one line.

  The longest that stays within MAX_USEFUL_EPOCHS of the train data: past
  Chinchilla's point a longer run still lowers the loss, and repeated tokens
  pay nearly as much as new ones up to there. Time is the user's to weigh.
  """
  train_tokens = base.train_tokens
  epochs = {m: None if not train_tokens else m * base.tokens_per_iter / train_tokens
            for m in candidates}
  useful = [m for m in candidates if epochs[m] is None or epochs[m] <= MAX_USEFUL_EPOCHS]
  if not useful:
    pick = min(candidates)
    return (f"verdict: max_iters={pick:,}, the shortest asked: every one repeats the "
            f"{formatting.count(train_tokens)} train tokens more than {MAX_USEFUL_EPOCHS} times "
            f"({epochs[pick]:.1f} epochs here), where repeats stop paying; more data would")
  pick = max(useful)
  chinchilla = _chinchilla_iters(base)
  longest = "the longest candidate" + ("" if len(useful) == len(candidates) else
                                       f" within {MAX_USEFUL_EPOCHS} epochs")
  data = ("the train split's size is unknown (--train_tokens sets it), so epochs were not "
          "weighed" if epochs[pick] is None else
          f"at {epochs[pick]:.2f} epochs every token is new" if epochs[pick] <= 1 else
          f"at {epochs[pick]:.2f} epochs its repeated tokens still pay nearly as much as new ones")
  past = (f"; past Chinchilla's {chinchilla:,} the loss keeps falling with more "
          "tokens, so the shorter ones only save time" if pick > chinchilla else "")
  return f"verdict: max_iters={pick:,}, {longest}: {data}{past}"
