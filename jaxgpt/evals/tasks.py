"""Evaluation tasks, as rows to score and the numbers their losses give.

  hellaswag    acc, acc_norm over HellaSwag's validation examples (hellaswag.py)
  text:FILE    tokens, mean loss and perplexity of a text file

A text's windows (docs/design.md) with a stride below block_size give each
scored token at least block_size + 1 - stride tokens of context: the
sliding-window perplexity commonly reported. The metrics are named
'<task>_<number>': hellaswag_acc_norm, wikitext2_raw_test_ppl, ...
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

from jaxgpt import defaults, formatting, tokenizer
from jaxgpt.errors import UserError
from jaxgpt.evals import hellaswag
from jaxgpt.inference import scoring


@dataclasses.dataclass(frozen=True)
class Task:
  name: str  # the metrics' prefix: 'hellaswag', or a text file's name without extension
  source: str  # the file scored
  n_rows: int
  about: str  # what is scored, in words: '283 windows of ...', '100 examples, 4 endings each'
  unit: str  # what `limit` counts: 'examples' or 'windows'
  batches: list[scoring.Batch]  # made once: every evaluation reuses them, and their shapes
  summarize: Callable[[np.ndarray], dict[str, float]]  # the rows' loss sums -> metrics


def load(spec: str, scorer: scoring.Scorer, *, limit: int = 0, hellaswag_file: str = "",
         stride: int = 0) -> list[Task]:
  """The tasks of a comma-separated spec, read, tokenized and batched for `scorer`'s model.

  `limit` > 0 keeps the first examples (HellaSwag) or windows (text).
  """
  if limit < 0:
    raise UserError(f"limit={limit}: must be >= 0 (0: all)")
  names = defaults.eval_tasks(spec)
  if names:
    tokenizer.require_gpt2_vocabulary(scorer.vocab_size, "every task's text is")
  _check_unique(names)
  tasks = []
  for name in names:
    if name == "hellaswag":
      path = hellaswag.resolve(hellaswag_file)
      examples = hellaswag.read(path, limit)
      rows = hellaswag.rows(examples, scorer.block_size)
      summarize = lambda sums, e=examples, r=rows: hellaswag.accuracy(e, r, sums)
      cut = hellaswag.n_cut(examples, scorer.block_size)
      about = f"{formatting.plural(len(examples), 'example')}, 4 endings each" + (
          f"; {cut:,} with their context cut from the left to fit block_size "
          f"{scorer.block_size}" if cut else "")
      tasks.append(Task("hellaswag", path, len(rows), about, "examples", scorer.batches(rows),
                        summarize))
    else:
      path = name.removeprefix("text:")
      rows = text_rows(read_text_tokens(path), scorer.block_size, stride)
      rows = rows[:limit] if limit else rows
      about = (f"{formatting.plural(len(rows), 'window')} of up to {scorer.block_size + 1} tokens, "
               f"{sum(n for _, n in rows):,} tokens scored")
      tasks.append(Task(_task_name(name), path, len(rows), about, "windows", scorer.batches(rows),
                        lambda sums, r=rows: perplexity(r, sums)))
  return tasks


def check_files(spec: str, hellaswag_file: str = "", limit: int = 0) -> None:
  """Refuses a task whose file is missing or unreadable as the task (HellaSwag's is downloaded
  if need be) and two tasks of one name: said before anything slow (data prep, a download of
  weights) runs."""
  names = defaults.eval_tasks(spec)
  _check_unique(names)
  for name in names:
    if name == "hellaswag":
      hellaswag.read(hellaswag.resolve(hellaswag_file), limit)
    else:
      read_text_tokens(name.removeprefix("text:"))


def _task_name(spec: str) -> str:
  """The metrics' prefix of one task: 'hellaswag', or a text file's name without extension."""
  if spec == "hellaswag":
    return spec
  return re.sub(r"\W", "_", os.path.splitext(os.path.basename(spec.removeprefix("text:")))[0])


def _check_unique(specs: list[str]) -> None:
  """Refuses two tasks of one name: the later one's metrics would overwrite the earlier's."""
  seen: dict[str, str] = {}
  for spec in specs:
    name = _task_name(spec)
    if name in seen:
      raise UserError(f"evaluation tasks {seen[name]!r} and {spec!r} are both named {name!r}, "
                      "so one's metrics would overwrite the other's: list a task once, and give "
                      "text files different names")
    seen[name] = spec


def _open_text(path: str) -> TextIO:
  path = os.path.expanduser(path)  # text:~/x, which no shell expands
  try:
    return open(path, encoding="utf-8", newline="")  # the file's line ends, as written
  except FileNotFoundError:
    comma = (" (a comma after text:FILE is part of its name; the tasks are hellaswag, "
             "text:FILE)" if "," in path else "")
    raise UserError(f"text:{path}: no such file{comma}") from None
  except OSError as e:  # a directory, no permission
    raise UserError(f"text:{path}: {e.strerror}") from None


def read_text_tokens(path: str) -> list[int]:
  with _open_text(path) as f:
    try:
      text = f.read()
    except UnicodeDecodeError as e:
      raise UserError(f"text:{f.name}: not UTF-8 text ({e})") from None
  tokens = tokenizer.gpt2().encode_ordinary(text)
  if len(tokens) < 2:
    raise UserError(f"text:{f.name}: {len(tokens)} token(s): a text needs at least 2 to score one")
  return tokens


def text_rows(tokens: list[int], block_size: int, stride: int = 0) -> list[scoring.Row]:
  """Windows of at most block_size + 1 tokens that score every token but the first once (of
  2 or more tokens, as `read_text_tokens` gives)."""
  stride = stride or block_size
  check_stride(stride, block_size)
  rows, scored_until, start = [], 1, 0
  while scored_until < len(tokens):
    end = min(start + block_size + 1, len(tokens))
    rows.append((tokens[start:end], end - scored_until))
    scored_until, start = end, start + stride
  return rows


def check_stride(stride: int, block_size: int) -> None:
  """Refuses a stride (0: block_size) no window of block_size + 1 tokens can take."""
  if not 0 <= stride <= block_size:
    raise UserError(f"stride={stride}: must be in 1..block_size={block_size}")


def perplexity(rows: list[scoring.Row], loss_sums: np.ndarray) -> dict[str, float]:
  n_tokens = sum(n for _, n in rows)
  loss = float(np.sum(loss_sums, dtype=np.float64)) / n_tokens
  ppl = math.exp(loss) if loss < 709.0 else math.inf  # exp overflows past ~709.78
  return {"tokens": n_tokens, "loss": loss, "ppl": math.nan if math.isnan(loss) else ppl}


def metrics(scorer: scoring.Scorer, params: Any, task: Task,
            progress: Callable[[int], None] = lambda rows: None) -> dict[str, float]:
  """One task's numbers: acc and acc_norm, or loss and perplexity."""
  return task.summarize(scorer.loss_sums(params, task.batches, task.n_rows, progress))


def score(scorer: scoring.Scorer, params: Any, tasks: list[Task]
          ) -> tuple[dict[str, float], list[str]]:
  """Every task's numbers as metrics.jsonl records them ('hellaswag_acc_norm', ...), and a
  line of each for the log: what the training loop's `tasks` hook returns."""
  results = {task.name: metrics(scorer, params, task) for task in tasks}
  flat = {f"{name}_{key}": value for name, m in results.items() for key, value in m.items()}
  return flat, [describe(name, m) for name, m in results.items()]


def describe(name: str, m: dict[str, float]) -> str:
  """One task's result as a line, with what to read it against."""
  if "acc_norm" in m:
    se = lambda p: math.sqrt(p * (1 - p) / m["examples"])  # of an accuracy over n examples
    return (f"{name}: acc {m['acc']:.4f} ± {se(m['acc']):.4f}, acc_norm {m['acc_norm']:.4f} ± "
            f"{se(m['acc_norm']):.4f} over {formatting.plural(m['examples'], 'example')} (± one "
            f"standard error; random: 0.25; GPT-2 124M: acc_norm {hellaswag.GPT2_124M_ACC_NORM})")
  return f"{name}: loss {m['loss']:.4f}, perplexity {m['ppl']:.2f} over {m['tokens']:,} tokens"
