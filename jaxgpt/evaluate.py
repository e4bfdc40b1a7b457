"""Is the model any good? HellaSwag accuracy and a text's perplexity, for a run, GPT-2 or nanoGPT.

  python -m jaxgpt.evaluate --out_dir=out/quickstart --task=hellaswag [--limit=1000]
  python -m jaxgpt.evaluate --init_from=gpt2 --task=text:wikitext2_raw_test.txt [--stride=512]
  python -m jaxgpt.evaluate --init_from=nanogpt:out/ckpt.pt --task=hellaswag,text:book.txt

How each task is scored: tasks.py and hellaswag.py; the batching and the
compilations: scoring.py.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

from jaxgpt import cli, scoring, tasks, units, weights
from jaxgpt.model import GPT, GPTConfig


def _define_flags() -> None:
  flags.DEFINE_string("out_dir", "out", "Run directory whose checkpoint to evaluate.")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the latest.")
  flags.DEFINE_string("init_from", "resume", "'resume': a checkpoint of out_dir; 'gpt2*': "
                      "OpenAI's weights; 'nanogpt:PATH': a nanoGPT ckpt.pt.")
  flags.DEFINE_string("hf_checkpoint_dir", "",
                      "init_from=gpt2*: local Hugging Face checkpoint; '' downloads it.")
  flags.DEFINE_string("task", "hellaswag", "Comma-separated: 'hellaswag', 'text:FILE'.")
  flags.DEFINE_integer("limit", 0, "Score the first N examples (HellaSwag) or windows (text); "
                       "0: all.")
  flags.DEFINE_string("hellaswag_file", "", "HellaSwag's hellaswag_val.jsonl; '' means "
                      "data/cache/hellaswag_val.jsonl, downloaded once.")
  flags.DEFINE_integer("stride", 0, "text: tokens between window starts; 0 is block_size "
                       "(windows that do not overlap).")
  flags.DEFINE_integer("batch_rows", scoring.ROWS_PER_BATCH, "Rows (endings, windows) per "
                       "batch.")
  flags.DEFINE_string("dtype", None, "Activation dtype; default the run's (float32 for GPT-2 "
                      "and nanoGPT).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  config, params, source = weights.load(f.init_from, out_dir=f.out_dir, step=f.step,
                                        hf_checkpoint_dir=f.hf_checkpoint_dir, dtype=f.dtype)
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(config)), rows_per_batch=f.batch_rows)
  task_list = tasks.load(f.task, scorer, limit=f.limit, hellaswag_file=f.hellaswag_file,
                         stride=f.stride)
  print(f"evaluating {source} (block_size {config.block_size}, {config.dtype})",
        file=sys.stderr, flush=True)
  for task in task_list:
    t0 = time.perf_counter()
    result = tasks.run(scorer, params, [task])[task.name]
    print(f"{tasks.describe(task.name, result)} [{task.source}, "
          f"{units.duration(time.perf_counter() - t0)}]", flush=True)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
