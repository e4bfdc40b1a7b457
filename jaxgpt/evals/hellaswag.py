"""HellaSwag as llm.c and build-nanogpt score it: which of 4 endings the model finds likeliest.

How an ending is scored, and `acc` against `acc_norm`: docs/design.md. A row
longer than block_size + 1 tokens keeps its last block_size + 1: the context
is cut from the left (an ending longer than block_size would lose its first
tokens too). The data is the published validation file (10,042 examples),
read from a path or downloaded once into data/cache/.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import sys
import urllib.error
import urllib.request
from typing import Any, NamedTuple

import numpy as np

from jaxgpt import tokenizer
from jaxgpt.errors import UserError, missing_folders

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
CACHE_PATH = os.path.join("data", "cache", "hellaswag_val.jsonl")
N_ENDINGS = 4
# OpenAI's GPT-2 124M scored this way over the 10,042 rows: acc 0.2859, acc_norm 0.2955
# (karpathy/build-nanogpt, hellaswag.py's docstring; llm.c's dev/data/hellaswag.py says the same).
GPT2_124M_ACC_NORM = 0.2955


class Example(NamedTuple):
  context: list[int]  # GPT-2 tokens of ctx
  endings: list[list[int]]  # GPT-2 tokens of " " + ending, for each of the 4
  label: int  # index of the right ending


def resolve(path: str) -> str:
  """The file to read: `path` as given, or the cached copy, downloaded on first use."""
  path = os.path.expanduser(path)  # a config's `~/x` too
  if path:
    if not os.path.isfile(path):
      what = "a directory" if os.path.isdir(path) else "not found"
      raise UserError(f"HellaSwag file {path}: {what}; give the path of hellaswag_val.jsonl "
                      f"({URL})")
    return path
  if os.path.lexists(CACHE_PATH) and not os.path.isfile(CACHE_PATH):  # never replaced
    what = "a directory" if os.path.isdir(CACHE_PATH) else "a link to no file"
    raise UserError(f"{CACHE_PATH}: {what}, where HellaSwag's file is downloaded to; move it "
                    "aside, or pass a HellaSwag file's path (--hellaswag_file / "
                    "--config.hellaswag_file)")
  if not os.path.isfile(CACHE_PATH):
    download(URL, CACHE_PATH)
  return CACHE_PATH


def download(url: str, path: str, timeout_s: float = 30.0) -> None:
  """`url` to `path`, written whole or not at all: a failure leaves no folder it made."""
  made = missing_folders(os.path.dirname(path) or ".")  # the folders this download makes
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  except OSError as e:  # a read-only working directory, or `data` a file
    raise UserError(f"{os.path.dirname(path)}: cannot make the folder to download {url} into "
                    f"({e.strerror}); pass a HellaSwag file's path (--hellaswag_file / "
                    "--config.hellaswag_file)") from None
  print(f"downloading {url} to {path} ...", file=sys.stderr, flush=True)
  tmp = f"{path}.{os.getpid()}.part"  # processes of one run on a shared disk may all download
  try:
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as f:
      shutil.copyfileobj(response, f, 1 << 20)
      left = getattr(response, "length", None)  # Content-Length's bytes not received: urllib
      # reads a body the server cut short as if it were whole
      if left:
        raise OSError(f"the connection closed after {f.tell():,} of {f.tell() + left:,} bytes")
  except BaseException as e:  # a network error, or a stop (Ctrl-C) mid-download
    if os.path.exists(tmp):
      os.remove(tmp)
    for folder in made:
      os.rmdir(folder)
    if not isinstance(e, (urllib.error.URLError, OSError, http.client.HTTPException)):
      raise
    reason = (f"the transfer broke off: {e!r}" if isinstance(e, http.client.HTTPException) else
              getattr(e, "reason", e))
    raise UserError(f"could not download {url} ({reason}). Fetch it where "
                    f"there is a network and put it at {path}, or pass its path "
                    "(--hellaswag_file / --config.hellaswag_file)") from None
  os.replace(tmp, path)


def read(path: str, limit: int = 0) -> list[Example]:
  """The examples of a HellaSwag jsonl file (the first `limit`, if > 0), tokenized."""
  try:
    with open(path, "rb") as f:  # decoded line by line: an error names its line
      lines = f.read().splitlines()  # at \n, \r\n or \r, as text mode splits them
  except OSError as e:  # no permission
    raise UserError(f"{path}: {e.strerror}") from None
  enc = tokenizer.gpt2()
  examples = []
  for n, raw in enumerate(lines, 1):
    if limit and len(examples) == limit:
      break
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start} of the line); "
                      f"HellaSwag's file is UTF-8 JSON lines ({URL})") from None
    if n == 1:
      line = line.removeprefix("\ufeff")  # the byte-order mark some editors write
    if not line.strip():
      continue
    ctx, endings, label = _fields(line, f"{path}:{n}")
    examples.append(Example(enc.encode_ordinary(ctx),
                            [enc.encode_ordinary(" " + e) for e in endings], label))
  if not examples:
    raise UserError(f"{path}: no HellaSwag examples")
  return examples


def _fields(line: str, where: str) -> tuple[str, list[str], int]:
  try:
    record: Any = json.loads(line)
    ctx, endings, label = record["ctx"], record["endings"], record["label"]
  except (ValueError, KeyError, TypeError, RecursionError) as e:  # [[[... too deep
    raise UserError(f"{where}: not a HellaSwag example ({type(e).__name__}: {e}); each line is "
                    "a JSON object with ctx, endings and label") from None
  if isinstance(label, str) and label.isascii() and label.isdigit():  # as Hugging Face's copy
    # writes it; not "²", a digit to isdigit that int() refuses
    label = int(label)
  if not (isinstance(ctx, str) and ctx and isinstance(endings, list)
          and len(endings) == N_ENDINGS and all(isinstance(e, str) for e in endings)
          and type(label) is int and 0 <= label < N_ENDINGS):  # not 2.7 as 2, nor true as 1
    raise UserError(f"{where}: not a HellaSwag example: needs a non-empty ctx, {N_ENDINGS} "
                    f"endings and a label in 0..{N_ENDINGS - 1}")
  return ctx, endings, label


def rows(examples: list[Example], block_size: int) -> list[tuple[list[int], int]]:
  """(tokens, how many of the last are the ending's) for every ending, 4 per example in order.

  A context too long for block_size + 1 tokens with the longest ending is cut from the left
  once for the example, so its four endings are scored after the same context; its last
  token stays even where an ending alone fills the block, so a short ending has one to follow.
  """
  out = []
  for example in examples:
    context = example.context[-max(_context_room(example, block_size), 1):]
    for ending in example.endings:
      tokens = (context + ending)[-(block_size + 1):]
      out.append((tokens, min(len(ending), len(tokens) - 1)))
  return out


def n_cut(examples: list[Example], block_size: int) -> int:
  """How many examples `rows` cuts the context of."""
  return sum(_context_room(e, block_size) < len(e.context) for e in examples)


def _context_room(example: Example, block_size: int) -> int:
  return block_size + 1 - max(len(ending) for ending in example.endings)


def accuracy(examples: list[Example], token_rows: list[tuple[list[int], int]],
             loss_sums: np.ndarray) -> dict[str, float]:
  """acc (least summed loss) and acc_norm (least mean loss) from the rows' summed losses."""
  sums_E4 = np.asarray(loss_sums, np.float64).reshape(-1, N_ENDINGS)
  if not np.isfinite(sums_E4).all():  # argmin would pick a NaN ending: chance, not an error
    return {"acc": math.nan, "acc_norm": math.nan, "examples": len(examples)}
  counts_E4 = np.array([n for _, n in token_rows], np.float64).reshape(-1, N_ENDINGS)
  labels_E = np.array([e.label for e in examples])
  return {"acc": float(np.mean(sums_E4.argmin(axis=1) == labels_E)),
          "acc_norm": float(np.mean((sums_E4 / counts_E4).argmin(axis=1) == labels_E)),
          "examples": len(examples)}
