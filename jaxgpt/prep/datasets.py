"""The datasets a config names, made where they are missing: python_docs, local files, FineWeb.

`python_docs` is built in: the Python reference-manual topics that every
CPython ships in `pydoc_data.topics` (about 140k GPT-2 tokens), real English
on every machine with no download, made on first use in a folder named
python_docs (a run's data_dir named otherwise is likely mistyped). `fineweb` and
`fineweb_edu` are downloaded and tokenized before a run only with
`auto_prepare`; any other missing dataset is an error that prints the command
making it.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator

from absl import logging

from jaxgpt import token_files
from jaxgpt.errors import UserError, missing_folders
from jaxgpt.prep import fineweb
from jaxgpt.prep.readers import Piece, file_format, input_files, pieces_of, read_file
from jaxgpt.prep.shards import (
  LOCK_FILE,
  STAGING,
  check_out_dir,
  moved_in,
  remove_locked_dir,
  write_dataset,
  write_lock,
)
from jaxgpt.prep.tokenize import cpu_count

FINEWEB_DATASETS = {"fineweb": False, "fineweb_edu": True}  # config.dataset -> FineWeb-Edu?
PYTHON_DOCS = "python_docs"  # the built-in corpus; its shards are named python_docs_*
_PYTHON_DOCS_COMMAND = f"python -m jaxgpt.prepare {PYTHON_DOCS}"  # in its meta.json


def prepare_files(patterns: list[str], out_dir: str, *, text_field: str = "text",
                  separator: str = "", **kwargs) -> dict:
  """Local parquet / jsonl / txt files -> shards in out_dir.

  A document without an id is named by its file's path below its glob's fixed
  folder (`books/1/book.txt` and `books/2/book.txt` differ) and its place in
  the file. A `text_field` or `separator` other than its default, where no input
  reads it, is refused: meta.json would record an effect it did not have.
  """
  check_out_dir(out_dir)
  files = input_files(patterns)
  formats = {file_format(path) for path in files}
  if separator and ".txt" not in formats:
    raise UserError(f"--separator={separator!r} splits .txt files, and --input matches none (a "
                    "jsonl record or parquet row is one document)")
  if text_field != "text" and formats == {".txt"}:
    raise UserError(f"--text_field={text_field} names the text of parquet and jsonl files, and "
                    "--input matches only .txt files")
  sources: list[str] = []

  def pieces() -> Iterator[Piece]:
    for path, name in files.items():
      sources.append(path)
      yield from read_file(path, text_field, separator, name)

  return write_dataset(pieces(), out_dir, sources=sources,
                       total_bytes=sum(os.path.getsize(p) for p in files), **kwargs)


def make_command(dataset: str, data_dir: str) -> str:
  """The command that makes a config's data: python_docs and FineWeb by name, otherwise local
  files (whose globs only the user knows)."""
  out = shlex.quote(data_dir)
  if dataset == PYTHON_DOCS:  # `prepare python_docs` takes --out only
    return f"python -m jaxgpt.prepare {PYTHON_DOCS} --out={out}"
  if dataset in FINEWEB_DATASETS:
    edu = " --edu" if FINEWEB_DATASETS[dataset] else ""
    return f"python -m jaxgpt.prepare fineweb{edu} --out={out}"
  return f"python -m jaxgpt.prepare files --input='PATH/*.parquet' --out={out}"


def make_python_docs(out_dir: str) -> None:
  """Makes the built-in corpus's shards (once: later runs read them)."""
  from pydoc_data import topics
  check_out_dir(out_dir)  # a dataset there already is said before the line below
  _check_no_files_of_its_own(out_dir)
  print(f"tokenizing the built-in python_docs corpus into {out_dir} ...", flush=True)
  pieces = (p for key in sorted(topics.topics) for p in pieces_of(key, topics.topics[key]))
  meta = write_dataset(pieces, out_dir, prefix=PYTHON_DOCS, val_fraction=0.1, val_tokens=0,
                       sources=[f"pydoc_data.topics (Python {sys.version.split()[0]})"],
                       command=_PYTHON_DOCS_COMMAND, progress=False)
  print(f"python_docs: {meta['splits']['train']['tokens']:,} train tokens, "
        f"{meta['splits']['val']['tokens']:,} val tokens", flush=True)


def _check_no_files_of_its_own(out_dir: str) -> None:
  """Refuses a folder that holds files of its own (a data_dir pointed at one's own text, say)
  for the built-in corpus."""
  ours = {LOCK_FILE, STAGING, *moved_in(out_dir)}
  theirs = sorted(set(os.listdir(out_dir)) - ours) if os.path.isdir(out_dir) else []
  if theirs:
    raise UserError(
        f"{out_dir} holds files of its own ({', '.join(theirs[:3])}{', ...' * (len(theirs) > 3)})"
        f": the built-in {PYTHON_DOCS} corpus is made only in a new or empty folder. To train "
        f"on text there: python -m jaxgpt.prepare files --input='{os.path.join(out_dir, '*.txt')}'"
        " --out=DIR, then --config.data_dir=DIR")


def ensure(dataset: str, data_dir: str, *, auto_prepare: bool) -> None:
  """A config's dataset in `data_dir`: made where it is missing (`make`; python_docs only in a
  folder of its name); the built-in corpus standing in for another dataset is refused.

  Every process of a run calls it: the first to find the data missing makes
  it, holding a lock in `data_dir`, and the others wait for it, then read it.
  """
  train_files = token_files.find_shards(data_dir, "train")
  makes = dataset == PYTHON_DOCS or (auto_prepare and dataset in FINEWEB_DATASETS)
  if makes and (not train_files or os.path.isdir(os.path.join(data_dir, STAGING))):
    if dataset == PYTHON_DOCS and not train_files:  # before the lock file is made there
      _check_no_files_of_its_own(data_dir)
      if os.path.basename(os.path.abspath(data_dir)) != PYTHON_DOCS:  # a mistyped path, say
        raise UserError(f"no token shards in data_dir={data_dir!r}: a run makes the built-in "
                        f"{PYTHON_DOCS} corpus only in a folder named {PYTHON_DOCS} (the default: "
                        f"data/{PYTHON_DOCS}); check the path, or make it there first: "
                        f"{make_command(PYTHON_DOCS, data_dir)}")
    made = missing_folders(data_dir)
    with write_lock(data_dir, wait=True) as lockless:  # write_dataset's lock, held through it
      if lockless:  # the processes of a run would each write the data
        raise UserError(f"data_dir={data_dir!r}: cannot lock it to make the data there "
                        f"({lockless}); make it first, from one process, with "
                        "python -m jaxgpt.prepare")
      try:
        if not token_files.find_shards(data_dir, "train") or moved_in(data_dir):
          make(dataset, data_dir, auto_prepare=auto_prepare)
      except BaseException:  # a download that failed, say: no folder left holding a lock file
        remove_locked_dir(made)
        raise
    train_files = token_files.find_shards(data_dir, "train")
  elif not train_files:
    make(dataset, data_dir, auto_prepare=auto_prepare)  # the error: the command that makes it
  if os.path.isdir(os.path.join(data_dir, STAGING)) and token_files.read_meta(data_dir) is None:
    # write_dataset removes its staging folder only after meta.json: a prepare killed while it
    # moved the shards in left some of them here, which a run would read as the whole dataset.
    raise UserError(f"{data_dir}: holds part of a dataset (a prepare was killed while moving "
                    f"its shards in from {STAGING}/; no meta.json). Remove its token files and "
                    f"{STAGING}/, then make the data again: {make_command(dataset, data_dir)}")
  if dataset != PYTHON_DOCS and all(re.fullmatch(rf"{PYTHON_DOCS}_train_\d+\.bin",
                                                 os.path.basename(p)) for p in train_files) \
      and _made_as_python_docs(data_dir):
    raise UserError(
        f"data_dir={data_dir!r} holds the built-in {PYTHON_DOCS} corpus, not dataset={dataset!r} "
        f"(made by `prepare {PYTHON_DOCS}`, or a run of it): add "
        f"--config.dataset={PYTHON_DOCS} to train on it, or give {dataset}'s data another "
        "--config.data_dir")


def _made_as_python_docs(data_dir: str) -> bool:
  """Whether shards named as the built-in corpus's are it: not where their meta.json names
  another command (`prepare files --out=X/python_docs` names its shards after the folder)."""
  try:
    meta = token_files.read_meta(data_dir) or {}
  except (UserError, OSError):  # unreadable: their names decide
    return True
  return meta.get("command", _PYTHON_DOCS_COMMAND) == _PYTHON_DOCS_COMMAND


def make(dataset: str, data_dir: str, *, auto_prepare: bool) -> None:
  """Makes a config's dataset, not yet whole in `data_dir`, where it may
  (python_docs; FineWeb with `auto_prepare`); otherwise the error prints the command."""
  if dataset == PYTHON_DOCS:
    make_python_docs(data_dir)
    return
  command = make_command(dataset, data_dir)
  if auto_prepare and dataset in FINEWEB_DATASETS:
    logging.info("no dataset in %s: making it (%s)", data_dir, command)
    fineweb.prepare_fineweb(data_dir, edu=FINEWEB_DATASETS[dataset],
                            prefix=os.path.basename(os.path.abspath(data_dir)), command=command,
                            workers=cpu_count())
    return
  auto = ("(or run with --config.auto_prepare=True to make them first), "
          if dataset in FINEWEB_DATASETS else "")
  raise UserError(
      f"no token shards in data_dir={data_dir!r} for dataset={dataset!r}. Make them with:\n"
      f"  {command}\n{auto}or point --config.data_dir at existing train/val .bin or .npy "
      "shards (nanoGPT, llm.c or build-nanogpt).")
