"""Is the model any good? HellaSwag accuracy and a text's perplexity, for a run, GPT-2 or nanoGPT.

  python -m jaxgpt.evaluate --out_dir=out/quickstart --task=hellaswag [--limit=1000]
  python -m jaxgpt.evaluate --init_from=gpt2 --task=text:wikitext2_raw_test.txt [--stride=512]
  python -m jaxgpt.evaluate --init_from=nanogpt:out/ckpt.pt --task=hellaswag,text:book.txt

How each task is scored: evals/tasks.py and evals/hellaswag.py; the batching
and the compilations: inference/scoring.py.
"""

from __future__ import annotations

import sys
import time

import tqdm
from absl import flags

from jaxgpt import cli, defaults, formatting, tokenizer
from jaxgpt.errors import UserError
from jaxgpt.evals import tasks
from jaxgpt.inference import scoring
from jaxgpt.interop import weights


def _define_flags() -> None:
  weights.define_flags()
  flags.DEFINE_string("task", "hellaswag", "Comma-separated: 'hellaswag', 'text:FILE'.")
  flags.DEFINE_integer("limit", 0, "Score the first N examples (HellaSwag) or windows (text); "
                       "0: all.", lower_bound=0)
  cli.define_path("hellaswag_file", "", "HellaSwag's hellaswag_val.jsonl; '' means "
                  "data/cache/hellaswag_val.jsonl, downloaded once.")
  flags.DEFINE_integer("stride", 0, "text: tokens between window starts; 0 is block_size "
                       "(windows that do not overlap).", lower_bound=0)
  flags.DEFINE_integer("batch_rows", 0, "Rows (endings, windows) per batch; 0: "
                       f"{scoring.ROWS_PER_BATCH_CPU} on a CPU, {scoring.ROWS_PER_BATCH} on a GPU.",
                       lower_bound=0, upper_bound=65536)


def main() -> None:
  f = flags.FLAGS
  names = defaults.eval_tasks(f.task)
  if not names:
    raise UserError(f"--task={f.task!r}: name a task: hellaswag, text:FILE")
  for flag, task, used in (("hellaswag_file", "hellaswag", "hellaswag" in names),
                           ("stride", "text:FILE", any(n.startswith("text:") for n in names))):
    if f[flag].present and f[flag].value and not used:  # meant for a task not asked for
      raise UserError(f"--{flag} is for --task={task}, which --task={f.task!r} does not name")
  weights.refuse_unread_out_dir()
  if "hellaswag" in names or f.stride:  # the weights' vocabulary and positions, read without
    # them: a mistyped weights flag, a character-level run's HellaSwag or a stride past their
    # positions said before a download (HellaSwag's file, GPT-2's weights)
    vocab_size, block_size = weights.check_choice(f.init_from, out_dir=f.out_dir, step=f.step,
                                                  hf_checkpoint_dir=f.hf_checkpoint_dir)
    if "hellaswag" in names:
      tokenizer.require_gpt2_vocabulary(vocab_size, "every task's text is")
    if f.stride:
      tasks.check_stride(f.stride, block_size)
  tasks.check_files(f.task, f.hellaswag_file, f.limit)  # before the weights: GPT-2's is a download
  config, model, params, source = weights.from_flags()
  scorer = scoring.Scorer(model, rows_per_batch=f.batch_rows)
  task_list = tasks.load(f.task, scorer, limit=f.limit, hellaswag_file=f.hellaswag_file,
                         stride=f.stride)
  print(f"evaluating {source} (block_size {config.block_size}, {config.dtype})",
        file=sys.stderr, flush=True)
  for task in task_list:
    print(f"{task.name}: {task.about}" + ("" if f.limit else
          f" (--limit=N scores the first N {task.unit})"), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    # A bar with the time left on a terminal (scoring a long text on a CPU takes minutes).
    with tqdm.tqdm(total=task.n_rows, unit=" rows", desc=task.name, file=sys.stderr,
                   disable=not sys.stderr.isatty(), leave=False) as bar:
      result = tasks.metrics(scorer, params, task, bar.update)
    # The weights named where the result is kept: a run's latest step moves while it trains.
    print(f"{tasks.describe(task.name, result)} [{task.source}, {source}, "
          f"{formatting.duration(time.perf_counter() - t0)}]", flush=True)


if __name__ == "__main__":
  _define_flags()
  cli.run(main, beside_training=True)
