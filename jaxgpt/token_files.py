"""Token-shard formats: read llm.c, nanoGPT and build-nanogpt files (prep/shards.py writes).

1. llm.c / modded-nanogpt `.bin`: a 256 x int32 header (magic 20240520,
   version 1, token count), then uint16 tokens.
2. nanoGPT's headerless `train.bin` / `val.bin`: uint16 tokens.
3. build-nanogpt's `.npy`: a numpy uint16 array.

Readers return read-only memory maps, so a shard of any size costs no RAM.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
from typing import Any

import numpy as np

from jaxgpt.errors import UserError, read_json_object

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
META_FILE = "meta.json"
SPLITS = ("train", "val")


class ShardError(UserError, ValueError):
  """A token file that cannot be read as what it claims to be."""


def read_tokens(path: str) -> np.ndarray:
  """Memory-maps the uint16 tokens of one file in any of the three formats."""
  try:
    return _read_tokens(path)
  except OSError as e:  # a file of another user's, an I/O error
    raise ShardError(f"{path}: cannot read it ({e.strerror or e})") from e


def _read_tokens(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise ShardError(f"{path}: " + ("a folder, not a token file" if os.path.isdir(path)
                                    else "no such token file"))
  size = os.path.getsize(path)
  if path.lower().endswith(".npy"):
    try:
      tokens = np.load(path, mmap_mode="r")
    except (ValueError, EOFError) as e:  # EOFError: an empty file (a writer killed at once)
      raise ShardError(f"{path}: not a readable .npy file ({e or type(e).__name__})") from e
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
      raise ShardError(f"{path}: expected a 1-D uint16 array, got {tokens.dtype} "
                       f"with shape {tokens.shape}")
    return tokens
  if not path.lower().endswith(".bin"):
    raise ShardError(f"{path}: unknown token-file format (expected .bin or .npy)")
  head = np.fromfile(path, dtype=np.uint8, count=HEADER_BYTES).tobytes()
  if head.startswith(b"\x93NUMPY"):
    raise ShardError(f"{path}: a .npy file named .bin; rename it to .npy")
  if size < HEADER_BYTES and int.from_bytes(head[:4], "little") == MAGIC:
    raise ShardError(f"{path}: an llm.c shard cut short ({size} bytes, less than its "
                     f"{HEADER_BYTES}-byte header); it is truncated or corrupt")
  header = (np.frombuffer(head, "<i4") if size >= HEADER_BYTES else np.zeros(HEADER_INTS, "<i4"))
  # A header's shape (a small version, a token count, 253 zero ints) where tokens would need
  # 506 zero tokens in a row, which text never gives.
  if header[0] != MAGIC and 0 < header[1] < 1000 and header[2] > 0 and not header[3:].any():
    raise ShardError(f"{path}: starts with an llm.c-style header of magic {header[0]} (version "
                     f"{header[1]}), not llm.c's {MAGIC}; refusing to read the header as tokens. "
                     "Rewrite the file with `python -m jaxgpt.prepare`.")
  if header[0] == MAGIC:
    if header[1] != VERSION:
      raise ShardError(f"{path}: llm.c shard version {header[1]}, expected {VERSION}")
    n = int(header[2])
    if size != HEADER_BYTES + 2 * n:
      raise ShardError(f"{path}: header says {n} tokens ({HEADER_BYTES + 2 * n} bytes) but "
                       f"the file has {size} bytes; it is truncated or corrupt")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
  if size % 2:
    raise ShardError(f"{path}: {size} bytes is not a whole number of uint16 tokens")
  if size == 0:
    raise ShardError(f"{path}: empty token file")
  tokens = np.memmap(path, dtype="<u2", mode="r")
  if not os.path.isfile(os.path.join(os.path.dirname(path), "meta.pkl")):
    _check_not_wider(path, np.asarray(tokens[:4096]))
  return tokens


def _check_not_wider(path: str, first: np.ndarray) -> None:
  """Refuses int32 or int64 tokens written without a header (`np.array(ids).tofile(...)` writes
  int64): read as uint16, every second value is 0, which GPT-2 tokens of text never give (0 is
  '!'). Not asked of nanoGPT's character-level data (a meta.pkl beside it), whose 0 is a
  newline: one character per line gives that pattern."""
  if first.size >= 64 and first[::2].any() and not first[1::2].any():
    bits = 32 if first[2::4].any() else 64
    raise ShardError(f"{path}: every second uint16 of the first {first.size} is 0: int{bits} "
                     "tokens, not nanoGPT's uint16. Write them with "
                     "np.asarray(ids, np.uint16).tofile(...), or with python -m jaxgpt.prepare")


def split_of(filename: str) -> str | None:
  """The split a token file's name says: the last of its words (between '_', '-' and '.') that
  names one. 'medieval_train_000000.bin' is train, though 'medieval' holds 'val'."""
  said = [word for word in re.split(r"[_.\-]", filename.lower()) if word in SPLITS]
  return said[-1] if said else None


def find_shards(data_dir: str, split: str) -> list[str]:
  """The token files of a split (.bin or .npy, `split_of` their name), sorted; both kinds in
  one split are one dataset twice (a conversion left beside its source), refused."""
  names = glob.glob(os.path.join(glob.escape(data_dir), "*"))  # TRAIN.BIN too: a copy's case
  found = [sorted(p for p in names if p.lower().endswith(f".{kind}")
                  and split_of(os.path.basename(p)) == split) for kind in ("bin", "npy")]
  if found[0] and found[1]:
    raise ShardError(f"{data_dir}: {split} files of two kinds, {os.path.basename(found[0][0])} "
                     f"and {os.path.basename(found[1][0])}: one dataset twice? Keep one kind "
                     "(.bin or .npy) in the folder")
  paths = found[0] or found[1]
  by_name = {p.lower(): p for p in paths}  # a later spelling in place of an earlier one
  if len(by_name) < len(paths):
    again = next(p for p in paths if by_name[p.lower()] != p)
    raise ShardError(f"{data_dir}: {os.path.basename(again)} and "
                     f"{os.path.basename(by_name[again.lower()])}: one file twice, in two "
                     "cases? Keep one")
  return paths


def check_vocab(path: str, tokens: np.ndarray, vocab_size: int) -> None:
  """Fails naming the file when a token id does not fit the model's vocabulary."""
  largest = int(tokens.max()) if tokens.size else -1
  if largest >= vocab_size:
    raise ShardError(f"{path}: token id {largest} >= vocab_size {vocab_size}")


def nanogpt_vocab(data_dir: str) -> int | None:
  """The vocab_size in nanoGPT's meta.pkl beside train.bin (its character-level datasets
  have one), read as plain data: no code in the pickle runs."""
  path = os.path.join(data_dir, "meta.pkl")
  if not os.path.isfile(path):
    return None

  class PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
      raise pickle.UnpicklingError(f"it names {module}.{name}, not only plain data")

  try:
    with open(path, "rb") as f:
      meta = PlainData(f).load()
  except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways
    raise UserError(f"{path}: not a nanoGPT meta.pkl ({type(e).__name__}: {e})") from None
  vocab_size = meta.get("vocab_size") if isinstance(meta, dict) else None
  return vocab_size if isinstance(vocab_size, int) else None


def read_meta(data_dir: str) -> dict[str, Any] | None:
  """A dataset's meta.json (a write cut short: make it again); None where there is none."""
  return read_json_object(os.path.join(data_dir, META_FILE), "a dataset's meta.json",
                          "; make the dataset again")


def split_record(meta: dict[str, Any], split: str) -> dict[str, Any]:
  """What a meta.json records of a split (its "shards", "tokens", "documents"); {} where it
  records nothing of it, as another tool's may not (its "splits" a list, say)."""
  splits = meta.get("splits")
  record = splits.get(split) if isinstance(splits, dict) else None
  return record if isinstance(record, dict) else {}


def check_whole(data_dir: str, split: str, paths: list[str], tokens: int) -> int | None:
  """Fails where meta.json says the split was written as other files or tokens than are
  there (a copy cut short, a shard deleted), which a run would read without a word. Returns
  the vocab_size of the tokenizer that wrote them where it records them as these (no id is
  above it: no need to read every token to know), else None."""
  meta = read_meta(data_dir) or {}
  written = split_record(meta, split)
  files, said = written.get("shards"), written.get("tokens")
  if not (isinstance(files, int) and isinstance(said, int)):
    return None
  if (files, said) == (len(paths), tokens):
    vocab = meta.get("vocab_size")
    return vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
  raise UserError(f"{data_dir}: its {META_FILE} says the '{split}' split was written as "
                  f"{files} files of {said:,} tokens, and {len(paths)} files of {tokens:,} "
                  "are there (a copy cut short, a file lost?); copy or make the dataset again")
