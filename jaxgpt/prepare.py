"""python -m jaxgpt.prepare: a corpus to GPT-2 token shards (llm.c's format) plus meta.json.

  python -m jaxgpt.prepare fineweb --out=data/fineweb [--name=sample-10BT | CC-MAIN-2024-10]
      [--edu] [--shards=N] [--max_tokens=500M]
  python -m jaxgpt.prepare files --input='corpus/*.parquet' --out=data/mine [--text_field=text]
  python -m jaxgpt.prepare files --input='books/*.txt' --out=data/books [--separator='\\n\\n']
  python -m jaxgpt.prepare python_docs --out=data/python_docs   # built in, no download

Documents are encoded with GPT-2's `encode_ordinary` and end with the
end-of-text token; how they are read, split between train and val and
written safely: jaxgpt/prep/. Streaming: the main process reads documents in
batches and `--workers` processes tokenize them; the output is the same for
any number of workers. A run that stops (Ctrl-C, SIGTERM) leaves no shard
the trainer would read, and running the command again starts over (after a
kill too; the hub files it finished downloading are cached). An `--out` that already holds a
dataset, or that another prepare is writing to, is refused, never
overwritten.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from absl import flags, logging

from jaxgpt import cli, formatting
from jaxgpt.errors import UserError
from jaxgpt.prep import datasets, fineweb, shards
from jaxgpt.prep.tokenize import cpu_count

SOURCE_FLAGS = {"fineweb": ("name", "edu", "shards"),
                "files": ("input", "text_field", "separator"),
                "python_docs": ()}
# The flags fineweb and files share; python_docs is made one way, as a run makes it.
SHARED_FLAGS = ("max_tokens", "val_fraction", "val_tokens", "workers", "shard_tokens")


def _unescape(separator: str) -> str:
  """`\\n`, `\\t`, `\\r` and `\\\\` as typed on a shell command line."""
  return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m[1]],
                separator)


class _CountParser(flags.IntegerParser):
  """An integer written as plan's --train_tokens takes it (500M, 5e8, 3.68B): one spelling."""

  def convert(self, argument: int | str) -> int:
    return formatting.parse_count(argument) if isinstance(argument, str) else argument


def _define_flags() -> None:
  cli.define_path("out", None, "Directory for the token shards and meta.json.")
  flags.DEFINE_string("name", "sample-10BT", "fineweb: a sample (sample-10BT, sample-100BT, "
                      "sample-350BT) or a Common Crawl dump such as CC-MAIN-2024-10.")
  flags.DEFINE_bool("edu", False, "fineweb: FineWeb-Edu instead of FineWeb.")
  flags.DEFINE_integer("shards", 0, "fineweb: use only the first N parquet files (0: all).",
                       lower_bound=0)
  flags.DEFINE_multi(flags.ListParser(), flags.CsvListSerializer(","), "input", None,
                     "files: globs of .parquet, .jsonl or .txt files, comma-separated or the "
                     "flag repeated.")
  flags.DEFINE_string("text_field", "text", "files: the parquet column / jsonl field of the text.")
  flags.DEFINE_string("separator", "", "files: split .txt files into documents at this string "
                      "(\\n, \\t, \\r escapes work); empty: one document per file.")
  flags.DEFINE(_CountParser(lower_bound=0), "max_tokens", 0, "Stop after the document that "
               "reaches this many tokens, e.g. 500M or 5e8 (0: the whole corpus).")
  flags.DEFINE_float("val_fraction", shards.VAL_FRACTION, "Share of documents (by a hash of "
                     "their id) that go to val, until val holds --val_tokens.", lower_bound=0,
                     upper_bound=1)
  flags.register_validator("val_fraction", lambda v: v > 0,
                           "must be above 0: a run evaluates on val documents")
  flags.DEFINE_integer("val_tokens", shards.VAL_TOKENS, "Cap on val tokens; later documents "
                       "all go to train (0: no cap).", lower_bound=0)
  flags.DEFINE_integer("workers", cpu_count(), "Tokenizer processes (default: all cores).",
                       lower_bound=1)
  flags.DEFINE_integer("shard_tokens", shards.SHARD_TOKENS, "Tokens per shard file.",
                       lower_bound=1, upper_bound=shards.MAX_SHARD_TOKENS)
  flags.mark_flags_as_required(["out"])


def main(source: str) -> None:
  # Its tokenizer processes are shut down too (left to SIGTERM's default, they would run on).
  with cli.sigterm_stops(f"nothing of this run is left in {flags.FLAGS.out}"):
    _prepare(source)


def _prepare(source: str) -> None:
  f = flags.FLAGS
  out = f.out
  for other, names in SOURCE_FLAGS.items():
    for flag_name in names:
      if other != source and f[flag_name].present:
        raise UserError(f"--{flag_name} applies to `{other}`, not `{source}`")
  if source == "python_docs":
    given = [name for name in SHARED_FLAGS if f[name].present]
    if given:
      raise UserError(f"--{given[0]} does not apply to `python_docs`: the built-in corpus is "
                      "made one way, as a run makes it")
    datasets.make_python_docs(out)
    return
  if f.val_fraction == 1 and not f.val_tokens:  # was refused only after the whole corpus
    raise UserError("--val_fraction=1 with --val_tokens=0 (no cap) puts every document in val, "
                    "none in train; lower --val_fraction or cap --val_tokens")
  common = {"prefix": os.path.basename(os.path.abspath(out)),
            "command": "python -m jaxgpt.prepare " + shlex.join(sys.argv[1:]),
            **{name: f[name].value for name in SHARED_FLAGS}}
  if common["workers"] > cpu_count():  # a process each, and twice as many batches queued
    logging.warning("--workers=%d: %d, the cores this process may use (a worker keeps one "
                    "busy; more would only take memory)", common["workers"], cpu_count())
    common["workers"] = cpu_count()
  if source == "fineweb":
    meta = fineweb.prepare_fineweb(out, subset=f.name, edu=f.edu, shards_limit=f.shards,
                                   **common)
  else:
    inputs = [pattern for given in f.input or [] for pattern in given]  # each --input a list
    if not inputs:
      raise UserError("files: --input is required (globs of .parquet, .jsonl or .txt files)")
    meta = datasets.prepare_files(inputs, out, text_field=f.text_field,
                                  separator=_unescape(f.separator), **common)
  train, val = meta["splits"]["train"], meta["splits"]["val"]
  print(f"wrote {out}: train {train['tokens']:,} tokens "
        f"({formatting.plural(train['shards'], 'shard')}), val {val['tokens']:,} tokens "
        f"({formatting.plural(val['shards'], 'shard')})")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, subcommands=tuple(SOURCE_FLAGS))
